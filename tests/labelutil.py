"""What the tests of stored labels share: pointing ``livedigit labels`` (and ``serve``) at a database,
reading its export, and holding its write lock as a slow database would."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from livedigit import cli
from livedigit.labels import database


def location(target: str) -> list[str]:
    """The ``livedigit labels`` flags that point at ``target``."""
    if target.startswith("postgres"):
        return ["--database-url", target]
    return ["--data-dir", str(Path(target).parent)]


def exported(target: str, out: Path) -> list[dict[str, Any]]:
    assert cli.main(["labels", "export", "--out", str(out), *location(target)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@contextlib.contextmanager
def writes_blocked(target: str) -> Iterator[None]:
    """Another client holds the database's write lock: a slow database, as the store sees it."""
    if target.startswith("postgres"):
        import psycopg

        with psycopg.connect(database.url_for(target).set(drivername="postgresql").render_as_string(False)) as hold:
            hold.execute("LOCK TABLE labels IN EXCLUSIVE MODE")
            yield
            hold.rollback()
    else:
        hold = sqlite3.connect(target, isolation_level=None)
        hold.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            hold.execute("ROLLBACK")
            hold.close()
