"""Read the UCI pen-digits trajectories: real pen input, the stand-in for people drawing on the page.

Training uses the ``train`` split (30 writers); accuracy on new writers is measured on the ``test`` split
(14 other writers), which training never reads. :func:`split_writers` sets a few ``train`` writers
aside as a validation split, for choosing and calibrating a model on people it was not trained on.

The file stores tablet coordinates with y growing upward; :func:`load` flips them so every stroke is in
screen coordinates (y downward), as the page sends them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pen_digits.jsonl"
"""Where the repository's sibling ``shared/`` folder keeps the file."""

SURFACE = (500.0, 500.0)
"""The tablet's coordinate range (the strokes lie within 12..472), sent as ``surface`` with a pen digit."""

VALIDATION_WRITERS = 6
"""How many of the 30 ``train`` writers :func:`split_writers` sets aside (1,500 digits)."""


@dataclass(frozen=True)
class PenDigit:
    """One handwritten digit: its label, its writer, and its strokes in screen coordinates."""

    label: int
    writer: str
    strokes: list[list[list[float]]]


def load(path: str | Path = DEFAULT_PATH, split: str | None = None) -> list[PenDigit]:
    """Return the digits of ``split`` ("train", "test" or ``None`` for both) in file order."""
    digits = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if split is not None and row["split"] != split:
                continue
            top = max(y for stroke in row["strokes"] for _, y in stroke)
            strokes = [[[x, top - y] for x, y in stroke] for stroke in row["strokes"]]
            digits.append(PenDigit(label=int(row["label"]), writer=row["writer"], strokes=strokes))
    return digits


def split_writers(digits: list[PenDigit], count: int = VALIDATION_WRITERS) -> tuple[list[PenDigit], list[PenDigit]]:
    """Split ``digits`` by writer into (training, validation): ``count`` writers drawn with a fixed seed
    from the sorted writer names go to validation, so every writer is on one side only and the split is
    the same on every machine."""
    writers = sorted({digit.writer for digit in digits})
    validation = set(random.Random(0).sample(writers, min(count, len(writers))))
    return [d for d in digits if d.writer not in validation], [d for d in digits if d.writer in validation]


def prefix(strokes: list[list[list[float]]], points: int) -> list[list[list[float]]]:
    """The drawing after its first ``points`` points: the strokes in order, the last one cut short, as the
    page would send it while the pen is still moving."""
    kept, left = [], points
    for stroke in strokes:
        if left <= 0:
            break
        kept.append(stroke[:left])
        left -= len(stroke)
    return kept
