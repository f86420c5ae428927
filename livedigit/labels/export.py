"""Write the stored labels as JSONL in the pen-digits layout, so training reads them like pen_digits.jsonl.

One JSON object per line, in id order::

    {"label": 7, "writer": "<browser id>", "strokes": [[[x, y], ...], ...], "surface": [w, h],
     "y_axis": "down", "source": "livedigit labels", "split": "train", "id": "label#42",
     "created": "2026-01-31T12:00:00.123456Z",
     "model": {"name": "livedigit-cnn", "version": "...", "digit": 1, "probabilities": [...], "verdict": null},
     "submit_id": "17"}

- ``strokes`` are in screen coordinates (y downward) exactly as the page sent them, hence
  ``"y_axis": "down"``; the UCI file has no such field and y upward, and :func:`livedigit.pendigits.load`
  flips only rows without it. ``surface`` is present when the client sent it.
- A drawing sent as pixels has ``"pixels": {"width": W, "height": H, "data": "<base64 of W*H bytes>"}``
  (8-bit, row-major, ink high: the protocol's ``pixels`` object) instead of ``strokes``.
- ``split`` is decided by the writer alone (a hash of the browser id: one writer in
  :data:`TEST_SHARE` is ``test``), so one person's drawings are all on one side, and the same row
  gets the same split in every export.
- ``model`` is what the model had answered; ``digit`` and ``probabilities`` are null when it saw no
  digit. ``submit_id`` is the id of the submit it corrects, as text, or null.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

from livedigit.labels import database

SOURCE = "livedigit labels"

TEST_SHARE = 5
"""One writer in this many goes to the ``test`` split."""

PROGRESS_INTERVAL = 0.2
"""Seconds between two progress lines on a terminal."""


def split_for(writer: str) -> str:
    """``"test"`` or ``"train"`` for every row of ``writer``: the same answer in every export."""
    digest = hashlib.sha256(writer.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_SHARE == 0 else "train"


def record(row: Row[Any]) -> dict[str, Any]:
    """One stored row as its JSONL object (see the module doc)."""
    item: dict[str, Any] = {"label": row.label, "writer": row.writer}
    if row.strokes is not None:
        item["strokes"] = json.loads(row.strokes)
        if row.surface_width is not None:
            item["surface"] = [row.surface_width, row.surface_height]
        item["y_axis"] = "down"
    else:
        item["pixels"] = {
            "width": row.pixels_width,
            "height": row.pixels_height,
            "data": base64.b64encode(row.pixels).decode("ascii"),
        }
    created: datetime = row.created
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)
    item.update(
        source=SOURCE,
        split=split_for(row.writer),
        id=f"label#{row.id}",
        created=created.isoformat().replace("+00:00", "Z"),
        model={
            "name": row.model_name,
            "version": row.model_version,
            "digit": row.predicted,
            "probabilities": None if row.probabilities is None else json.loads(row.probabilities),
            "verdict": row.verdict,
        },
        submit_id=row.submit_id,
    )
    return item


def export(engine: Engine, out: TextIO, progress: TextIO | None = None) -> int:
    """Write every row to ``out`` in id order and return how many; rows are streamed, not held in memory.

    ``progress``, when it is a terminal, gets a line updated as the export goes.
    """
    table = database.labels
    show = progress is not None and progress.isatty()
    written = 0
    with engine.connect() as connection, connection.begin():
        total = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() if show else 0
        rows = connection.execution_options(yield_per=500).execute(sa.select(table).order_by(table.c.id))
        shown = time.monotonic()
        for row in rows:
            out.write(json.dumps(record(row), separators=(",", ":")) + "\n")
            written += 1
            if show and time.monotonic() - shown >= PROGRESS_INTERVAL:
                assert progress is not None
                progress.write(f"\rexported {written:,} of {total:,} labels")
                progress.flush()
                shown = time.monotonic()
    if show:
        assert progress is not None
        progress.write(f"\rexported {written:,} labels{' ' * 16}\n")
    return written
