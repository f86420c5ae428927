"""Read the UCI pen-digits trajectories: real pen input, the stand-in for people drawing on the page.

Training uses the ``train`` split (30 writers); accuracy on new writers is measured on the ``test`` split
(14 other writers), which training never reads. The file stores tablet coordinates with y growing upward;
:func:`load` flips them so every stroke is in screen coordinates (y downward), as the page sends them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pen_digits.jsonl"
"""Where the repository's sibling ``shared/`` folder keeps the file."""


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
