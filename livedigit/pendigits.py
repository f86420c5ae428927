"""Read pen-digits JSONL: the UCI pen-digits trajectories, and labels exported by ``livedigit labels export``.

The UCI file holds real pen input, the stand-in for people drawing on the page. Training uses its
``train`` split (30 writers); accuracy on new writers is measured on its ``test`` split (14 other
writers), which training never reads. It stores tablet coordinates with y growing upward; :func:`load`
flips them so every stroke is in screen coordinates (y downward), as the page sends them.

An export of labels has the same layout, with ``"y_axis": "down"`` on rows whose strokes are already in
screen coordinates (kept as they are) and a ``pixels`` object instead of ``strokes`` for drawings sent as
a raster (see :mod:`livedigit.labels.export`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livedigit.preprocess import Pixels, Strokes

DEFAULT_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pen_digits.jsonl"
"""Where the repository's sibling ``shared/`` folder keeps the file."""


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
