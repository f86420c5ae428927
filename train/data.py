"""The data the training, calibration and evaluation steps read, split the same way by all three.

* MNIST: the first 55,000 training digits train; the last :data:`MNIST_VALIDATION` are validation
  digits (calibration and model choice); the 10,000 test digits only measure.
* Pen digits: the ``train`` writers minus six validation writers (:func:`livedigit.pendigits.split_writers`)
  train; the six validate; the 14 ``test`` writers only measure.

Every image reaches a model as the server would receive it and through the server's preprocessing:
MNIST digits as 8-bit rasters, pen digits as strokes with the tablet's ``surface``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence, Sized
from dataclasses import dataclass

import numpy as np

from livedigit import pendigits
from livedigit.preprocess import PATH_FEATURES, PATH_POINTS, SIZE, Image, Pixels, Strokes, model_input
from livedigit.runtime import Runtime

MNIST_VALIDATION = 5000
"""The last this many MNIST training digits are validation digits, never trained on."""


def load_mnist(path: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test) as uint8 images and labels."""
    if path is None:
        import keras

        return tuple(a for pair in keras.datasets.mnist.load_data() for a in pair)  # type: ignore[return-value]
    with np.load(path) as data:
        return data["x_train"], data["y_train"], data["x_test"], data["y_test"]


def as_served(digit: pendigits.PenDigit, fraction: float = 1.0) -> Strokes:
    """A UCI pen digit as the page sends it: strokes in screen coordinates with the tablet's surface; with
    ``fraction`` below 1, only its first ``ceil(fraction * points)`` points (the drawing so far). (A digit
    of a labels export is sent as :meth:`~livedigit.pendigits.PenDigit.image` says.)"""
    strokes = digit.strokes
    if fraction < 1.0:
        total = sum(len(stroke) for stroke in strokes)
        strokes = pendigits.prefix(strokes, math.ceil(fraction * total))
    return Strokes(strokes, pendigits.SURFACE)


REDRAWN = ("strokes_in_reverse_order", "each_stroke_reversed", "both")
"""The ways :func:`redrawn` draws a digit otherwise than its writer did."""


def redrawn(digit: pendigits.PenDigit, way: str) -> Strokes:
    """A pen digit as served (:func:`as_served`), drawn another way (one of :data:`REDRAWN`): its strokes
    in reverse order, each stroke from its other end, or both. The same image with another path: how a
    writer taught otherwise would draw it (a 0 clockwise, a 5's bar first, lines from right to left)."""
    if way not in REDRAWN:
        raise ValueError(f"way must be one of {REDRAWN}, got {way!r}")
    served = as_served(digit)
    strokes = list(served.strokes)
    if way != "each_stroke_reversed":
        strokes.reverse()
    if way != "strokes_in_reverse_order":
        strokes = [stroke[::-1] for stroke in strokes]
    return Strokes(strokes, served.surface)


TAP_MARGIN = 15.0
"""How far from the tablet's edges :func:`with_a_tap` taps, in its units (the strokes lie within 12..472)."""


def with_a_tap(digits: list[pendigits.PenDigit], seed: int = 0) -> list[Image]:
    """Pen digits as served (:func:`as_served`) with a stray tap: a one-point stroke in a random corner of
    the tablet, :data:`TAP_MARGIN` from its edges, before or after the digit's strokes at random. A
    stand-in for a palm or a second finger touching a touch screen while a digit is drawn."""
    rng = np.random.default_rng(seed)
    far = pendigits.SURFACE[0] - TAP_MARGIN
    tapped: list[Image] = []
    for digit in digits:
        served = as_served(digit)
        tap = [[float(rng.choice([TAP_MARGIN, far])), float(rng.choice([TAP_MARGIN, far]))]]
        strokes = [tap, *served.strokes] if rng.random() < 0.5 else [*served.strokes, tap]
        tapped.append(Strokes(strokes, served.surface))
    return tapped


def rasters(images: np.ndarray) -> list[Image]:
    """MNIST images as the server receives them: 8-bit rasters, ink high."""
    return [Pixels(image) for image in images]


PAPER_SIDE = 56
"""Side of the sheet :func:`on_paper` puts each digit on (the digit's 28x28 field in its middle)."""
PAPER_LEVEL = 0.12
"""The paper's own ink level in :func:`on_paper`: grey, above the ink threshold of the crop (0.1)."""
PAPER_GRAIN = 0.04
"""Standard deviation of the paper's grain in :func:`on_paper`."""


def on_paper(images: np.ndarray, seed: int = 0) -> list[Image]:
    """MNIST images as a scanner gives digits written on paper: each in the middle of a
    :data:`PAPER_SIDE` px sheet of grey (:data:`PAPER_LEVEL`), grainy (:data:`PAPER_GRAIN`) paper, the
    digit's ink darkening the paper, with a 2x2 speck of dust within 4 px of a random corner; 8-bit
    rasters, ink high. A stand-in, made from data at hand, for the scanned digits the model must read."""
    rng = np.random.default_rng(seed)
    offset = (PAPER_SIDE - SIZE) // 2
    sheets: list[Image] = []
    for image in images:
        sheet = np.full((PAPER_SIDE, PAPER_SIDE), PAPER_LEVEL, np.float64)
        field = sheet[offset : offset + SIZE, offset : offset + SIZE]
        field += (1.0 - PAPER_LEVEL) * (image / 255.0)
        sheet += rng.normal(0.0, PAPER_GRAIN, sheet.shape)
        top, left = (int(rng.integers(0, 3)) + (PAPER_SIDE - 6) * int(rng.integers(0, 2)) for _ in range(2))
        sheet[top : top + 2, left : left + 2] = 1.0
        sheets.append(Pixels(np.rint(np.clip(sheet, 0.0, 1.0) * 255.0).astype(np.uint8)))
    return sheets


@dataclass(frozen=True)
class Outputs:
    """A model's probabilities for a set of images, as the server computed them before the verdict rule;
    ``empty`` marks the images preprocessing found no digit in (their row is zeros; the server answers
    ``empty`` and never names a digit for them)."""

    probabilities: np.ndarray
    empty: np.ndarray

    def predicted(self) -> np.ndarray:
        """The digit the server names for each image; -1 for an empty one."""
        return np.where(self.empty, -1, self.probabilities.argmax(axis=1))


def model_inputs(images: Sequence[Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image through the server's preprocessing: the (n, 28, 28) float32 inputs, blank where the
    server finds no digit, the pen's paths (n, 32, 4), and which images are empty."""
    found = [model_input(image) for image in images]
    empty = np.array([inputs is None for inputs in found], dtype=bool)
    pixels = np.zeros((len(images), SIZE, SIZE), np.float32)
    paths = np.zeros((len(images), PATH_POINTS, PATH_FEATURES), np.float32)
    for index, inputs in enumerate(found):
        if inputs is not None:
            pixels[index], paths[index] = inputs
    return pixels, paths, empty


def run(runtime: Runtime, images: Sequence[Image], name: str = "", chunk: int = 1024) -> Outputs:
    """Preprocess ``images`` with the server's code and run them through ``runtime``, with progress."""
    started = time.perf_counter()
    probabilities = np.zeros((len(images), 10), dtype=np.float64)
    empty = np.zeros(len(images), dtype=bool)
    for start in range(0, len(images), chunk):
        inputs, paths, blank = model_inputs(images[start : start + chunk])
        empty[start : start + len(inputs)] = blank
        if not blank.all():
            probabilities[np.flatnonzero(~blank) + start] = runtime.predict(inputs[~blank], paths[~blank])
    if name:
        print(f"  {name}: {len(images)} images in {time.perf_counter() - started:.1f} s", flush=True)
    return Outputs(probabilities, empty)


def subset(items: Sized, limit: int | None) -> list[int]:
    """Indices of at most ``limit`` items spread evenly over ``items`` (all of them without a limit)."""
    if limit is None or limit >= len(items):
        return list(range(len(items)))
    return np.linspace(0, len(items) - 1, limit).round().astype(int).tolist()
