"""``livedigit labels export`` and ``livedigit labels stats``: the stored corrections, outside the server.

Both read the database the server writes: ``--database-url`` (or ``DATABASE_URL``) when given, else the
SQLite file in ``--data-dir`` (or ``LIVEDIGIT_DATA_DIR``), as for ``livedigit serve``. The database
modules are imported only when a command runs, so other commands do not load them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from livedigit.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="labels_command", required=True, metavar="COMMAND")
    export = commands.add_parser(
        "export",
        help="write the labels as pen-digits JSONL (for python -m train --extra-pen)",
        description="Write every stored label as one JSON line in the pen-digits layout (see docs/operations.md).",
    )
    export.add_argument("--out", required=True, help="file to write ('-' for standard output)")
    stats = commands.add_parser(
        "stats",
        help="answers confirmed and corrected, per model version",
        description="Print, per model version, how many answers people confirmed and corrected.",
    )
    for command in (export, stats):
        for name in ("data_dir", "database_url"):
            item = Settings.__dataclass_fields__[name]
            env = ", ".join(("LIVEDIGIT_" + name.upper(), *item.metadata["env"]))
            command.add_argument(
                "--" + name.replace("_", "-"), dest=name, default=None, help=f"{item.metadata['help']} (env {env})"
            )
    export.set_defaults(run=export_command)
    stats.set_defaults(run=stats_command)


def _engine(args: argparse.Namespace) -> Engine:
    """The engine for the database the server uses, its schema migrated; exits with a message when the
    database cannot be used."""
    import sqlalchemy.exc

    from livedigit.labels import database

    settings = Settings.from_env(data_dir=args.data_dir, database_url=args.database_url)
    try:
        engine = database.create_engine(database.locate(settings.database_url, settings.data_dir), create=False)
        database.migrate(engine)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"livedigit labels: {exc}") from None
    except sqlalchemy.exc.DBAPIError as exc:
        raise SystemExit(f"livedigit labels: cannot use the database: {' '.join(str(exc.orig).split())}") from None
    print(f"labels database: {database.describe(engine.url)}", file=sys.stderr)
    return engine


def export_command(args: argparse.Namespace) -> int:
    """Write the labels to ``--out``; a file is replaced only once the export is complete."""
    from livedigit.labels.export import export

    engine = _engine(args)
    try:
        if args.out == "-":
            count = export(engine, sys.stdout)
        else:
            out = Path(args.out)
            handle, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as stream:
                    count = export(engine, stream, progress=sys.stderr)
                os.replace(partial, out)
            finally:
                Path(partial).unlink(missing_ok=True)
    finally:
        engine.dispose()
    print(f"wrote {count} labels to {args.out}", file=sys.stderr)
    return 0


def stats_command(args: argparse.Namespace) -> int:
    """Print confirmed and corrected answers per model version, and the accuracy people saw."""
    from livedigit.labels.store import read_stats

    engine = _engine(args)
    try:
        with engine.connect() as connection:
            stats = read_stats(connection)
    finally:
        engine.dispose()
    header = ("model", "version", "confirmed", "corrected", "accuracy")
    rows = [
        (s.model_name, s.model_version, str(s.confirmed), str(s.corrected), f"{s.accuracy:.1%}")
        for s in stats
        if s.accuracy is not None
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    for row in (header, *rows):
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    if not rows:
        print("no labels yet", file=sys.stderr)
    return 0
