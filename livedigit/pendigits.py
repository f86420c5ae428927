"""Read pen-digits JSONL: the UCI pen-digits trajectories, and labels exported by ``livedigit labels export``.

The UCI file holds real pen input, the stand-in for people drawing on the page. Training uses its
``train`` split (30 writers); accuracy on new writers is measured on its ``test`` split (14 other
writers), which training never reads. :func:`split_writers` sets a few ``train`` writers aside as a
validation split, for choosing and calibrating a model on people it was not trained on. The file stores
tablet coordinates with y growing upward; :func:`load` flips them so every stroke is in screen
coordinates (y downward), as the page sends them.

An export of labels has the same layout, with ``"y_axis": "down"`` on rows whose strokes are already in
screen coordinates (kept as they are) and a ``pixels`` object instead of ``strokes`` for drawings sent as
a raster (see :mod:`livedigit.labels.export`).
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livedigit.preprocess import Pixels, Strokes

DEFAULT_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pen_digits.jsonl"
"""Where the repository's sibling ``shared/`` folder keeps the file."""

SURFACE = (500.0, 500.0)
"""The tablet's coordinate range (the strokes lie within 12..472), sent as ``surface`` with a pen digit."""

VALIDATION_WRITERS = 6
"""How many of the 30 ``train`` writers :func:`split_writers` sets aside (1,500 digits)."""


@dataclass(frozen=True)
class PenDigit:
    """One handwritten digit: its label, its writer, and its strokes in screen coordinates.

    A digit drawn as a raster has no strokes and its ``pixels`` (uint8, ink high); ``surface`` is the
    drawing area, when the page sent it.
    """

    label: int
    writer: str
    strokes: list[list[list[float]]]
    surface: tuple[float, float] | None = None
    pixels: np.ndarray | None = None

    def image(self) -> Strokes | Pixels:
        """The digit as the server receives it, for :func:`livedigit.preprocess.preprocess`."""
        return Pixels(self.pixels) if self.pixels is not None else Strokes(self.strokes, self.surface)


def load(path: str | Path = DEFAULT_PATH, split: str | None = None) -> list[PenDigit]:
    """Return the digits of ``split`` ("train", "test" or ``None`` for both) in file order."""
    digits = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if split is not None and row["split"] != split:
                continue
            digits.append(_digit(row))
    return digits


def _digit(row: dict[str, Any]) -> PenDigit:
    label, writer = int(row["label"]), row["writer"]
    if "pixels" in row:
        raster = row["pixels"]
        data = np.frombuffer(base64.b64decode(raster["data"]), dtype=np.uint8)
        return PenDigit(label, writer, [], pixels=data.reshape(raster["height"], raster["width"]))
    surface = (float(row["surface"][0]), float(row["surface"][1])) if "surface" in row else None
    y_axis = row.get("y_axis", "up")
    if y_axis == "down":
        return PenDigit(label, writer, row["strokes"], surface)
    if y_axis != "up":
        raise ValueError(f"y_axis must be 'up' or 'down', got {y_axis!r}")
    top = max(y for stroke in row["strokes"] for _, y in stroke)
    strokes = [[[x, top - y] for x, y in stroke] for stroke in row["strokes"]]
    return PenDigit(label, writer, strokes, surface)


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
