"""Drawings that are not digits, made here: handwritten-looking letters, scribbles and shapes.

The verdict's ``not_a_digit`` threshold is chosen on these (with real digits) and the reject figures are
measured on them. Nothing is stored: every drawing is generated from a seed, the same on every machine
with the same fonts, so the fitting and the measuring sets are reproducible.

Three kinds, each in two disjoint halves (``fit`` for choosing the rule's parameters, ``held_out`` for
measuring it), split by font where there is one, so a held-out letter is in a hand the fit never saw:

* **letter strokes**: letters from the Hershey vector fonts (Debian's ``hershey-fonts-data``), which are
  pen trajectories already. Resampled, wobbled with smooth noise, slanted, sheared and stretched, then
  sent as strokes with a ``surface``, exactly as the page sends a drawing.
* **letter rasters**: letters from handwriting TrueType/OpenType fonts (``fonts-dkg-handwriting``,
  ``fonts-bwht``, ``fonts-breip``, ``fonts-humor-sans``) and one print font per
  half (``fonts-dejavu-core``, ``fonts-liberation``), drawn thicker or thinner, warped by a random affine
  and a smooth elastic distortion, and sent as an 8-bit raster.
* **scribbles and shapes**: random smooth scribbles, zigzags, spirals, stars, grids, hatching, loops and
  loose lines, as strokes with a ``surface``.

The letters are those that do not resemble a digit: ``acefhkmnpruvwx`` and their capitals. Parts of
digits are never used. A font that is not installed is left out (:func:`missing_fonts` names it), so
the figures of a machine without the fonts are not comparable; the model card lists the sources used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont
from scipy import ndimage

from livedigit.preprocess import Image, Pixels, Strokes

Split = Literal["fit", "held_out"]
SPLITS: tuple[Split, ...] = ("fit", "held_out")

LETTERS = "acefhkmnpruvwxACEFHKMNPRUVWX"
"""Letters that do not look like any digit (an ``o`` is a 0, an ``l`` a 1, an ``s`` a 5...)."""

SURFACE = (500.0, 500.0)
"""The drawing area stroke negatives are sent with: the pen-digits tablet's."""

HERSHEY = Path("/usr/share/hershey-fonts")
HERSHEY_FONTS: dict[Split, tuple[str, ...]] = {
    "fit": ("rowmans", "futuram", "scripts", "timesr"),
    "held_out": ("futural", "rowmand", "scriptc", "cursive", "timesi"),
}
"""Hershey fonts (``.jhf`` files) per half: simplex, duplex, script and serif hands on both sides."""

FONTS = Path("/usr/share/fonts")
RASTER_FONTS: dict[Split, tuple[str, ...]] = {
    "fit": (
        "truetype/fifthhorseman/dkg.ttf",
        "truetype/fifthhorseman/dkgIt.ttf",
        "truetype/fifthhorseman/dkgBd.ttf",
        "opentype/bwht/BecauseWeLearn-Regular.otf",
        "opentype/bwht/BecauseWeBuild-Regular.otf",
        "opentype/bwht/BecauseWeConnect-Regular.otf",
        "truetype/dejavu/DejaVuSans.ttf",
    ),
    "held_out": (
        "truetype/breip/Breip.ttf",
        "truetype/humor-sans/Humor-Sans.ttf",
        "opentype/bwht/BecauseWeCreate-Regular.otf",
        "opentype/bwht/BecauseWeMentor-Regular.otf",
        "opentype/bwht/BecauseWeOrganize-Regular.otf",
        "truetype/liberation/LiberationSans-Regular.ttf",
    ),
}
"""Handwriting fonts per half (a hand is on one side only), plus one print font each."""

PACKAGES = (
    "hershey-fonts-data fonts-dkg-handwriting fonts-bwht fonts-breip fonts-humor-sans fonts-dejavu-core "
    "fonts-liberation"
)
"""The Debian packages holding every font above."""

SHAPES = ("scribble", "zigzag", "spiral", "star", "grid", "hatching", "loops", "lines")

STROKE_COPIES = 6
"""Jittered drawings per letter and Hershey font."""
RASTER_COPIES = 4
"""Jittered drawings per letter and raster font."""
SHAPE_COPIES = 60
"""Drawings per shape and half."""


@dataclass(frozen=True)
class Negative:
    """One drawing that is not a digit: its kind, where it came from (font or shape), and what it shows."""

    kind: Literal["letter-strokes", "letter-raster", "shape"]
    source: str
    name: str
    image: Image


def negatives(split: Split, seed: int = 0) -> list[Negative]:
    """Every negative of one half, in a fixed order; ``seed`` changes the jitter, not the sources."""
    return [*_letter_strokes(split, seed), *_letter_rasters(split, seed), *_shapes(split, seed)]


def missing_fonts() -> list[str]:
    """The fonts of either half that are not installed (their negatives are left out)."""
    wanted = [HERSHEY / f"{name}.jhf" for split in SPLITS for name in HERSHEY_FONTS[split]]
    wanted += [FONTS / name for split in SPLITS for name in RASTER_FONTS[split]]
    return [str(path) for path in wanted if not path.is_file()]


def _rng(seed: int, split: Split, kind: str, *key: int) -> np.random.Generator:
    """A generator of its own for each drawing, so adding a font or a shape changes no other drawing."""
    return np.random.default_rng([seed, SPLITS.index(split), sum(map(ord, kind)), *key])


# Letters as strokes, from the Hershey fonts.


def hershey_glyphs(path: Path) -> dict[str, list[np.ndarray]]:
    """The printable ASCII glyphs of a ``.jhf`` file as strokes in font units, y downward.

    One glyph a line, characters 32 to 127 in order: a 5-character number, a 3-character vertex count,
    the left and right bearings, then vertices as two characters each, offset from ``R``; `` R`` lifts
    the pen.
    """
    glyphs: dict[str, list[np.ndarray]] = {}
    for index, line in enumerate(path.read_text(encoding="ascii").splitlines()[:96]):
        body = line.rstrip("\n")[10:]
        strokes: list[np.ndarray] = []
        current: list[tuple[int, int]] = []
        for start in range(0, len(body) - 1, 2):
            pair = body[start : start + 2]
            if pair == " R":
                if len(current) > 1:
                    strokes.append(np.array(current, dtype=np.float64))
                current = []
            else:
                current.append((ord(pair[0]) - ord("R"), ord(pair[1]) - ord("R")))
        if len(current) > 1:
            strokes.append(np.array(current, dtype=np.float64))
        glyphs[chr(32 + index)] = strokes
    return glyphs


def _letter_strokes(split: Split, seed: int) -> Iterator[Negative]:
    for font_index, font in enumerate(HERSHEY_FONTS[split]):
        path = HERSHEY / f"{font}.jhf"
        if not path.is_file():
            continue
        glyphs = hershey_glyphs(path)
        for letter_index, letter in enumerate(LETTERS):
            for copy in range(STROKE_COPIES):
                rng = _rng(seed, split, "letter-strokes", font_index, letter_index, copy)
                strokes = _jitter_strokes(glyphs[letter], rng)
                yield Negative("letter-strokes", font, letter, Strokes(strokes, SURFACE))


def _jitter_strokes(strokes: list[np.ndarray], rng: np.random.Generator, wobble: float = 0.025) -> list[np.ndarray]:
    """Resample, add a smooth wobble, apply a random slant, shear and aspect, and place on the surface.

    The wobble is a sum of a few low-frequency sines along the pen's path, ``wobble`` of the drawing's
    size: a hand's unsteadiness, not noise on every point.
    """
    points = np.concatenate(strokes)
    size = float((points.max(axis=0) - points.min(axis=0)).max()) or 1.0
    phases = rng.uniform(0, 2 * math.pi, (3, 2))
    frequencies = rng.uniform(0.5, 2.5, 3)
    amplitudes = rng.uniform(0.3, 1.0, (3, 1)) * wobble * size
    travelled = 0.0
    wobbled = []
    for stroke in strokes:
        dense = _resample(stroke, spacing=size / 40)
        steps = np.r_[0.0, np.cumsum(np.hypot(*np.diff(dense, axis=0).T))]
        along = (travelled + steps) / size
        travelled += float(steps[-1])
        offset = sum(
            amplitudes[k] * np.sin(2 * math.pi * frequencies[k] * along[:, None] + phases[k]) for k in range(3)
        )
        wobbled.append(dense + offset)
    angle = math.radians(rng.uniform(-12, 12))
    shear = rng.uniform(-0.3, 0.3)
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    matrix = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = matrix @ np.array([[aspect, shear], [0.0, 1.0 / aspect]])
    moved = [stroke @ matrix.T for stroke in wobbled]
    return _place(moved, rng)


def _resample(stroke: np.ndarray, spacing: float) -> np.ndarray:
    """Points every ``spacing`` along the polyline (its corners kept approximately), as a tablet samples."""
    lengths = np.hypot(*np.diff(stroke, axis=0).T)
    total = float(lengths.sum())
    if total <= 0:
        return stroke
    distance = np.r_[0.0, np.cumsum(lengths)]
    samples = np.linspace(0.0, total, max(2, math.ceil(total / spacing) + 1))
    return np.stack([np.interp(samples, distance, stroke[:, 0]), np.interp(samples, distance, stroke[:, 1])], axis=1)


def _place(strokes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Scale the drawing to 30-80% of the surface's side and put it somewhere on it, rounded to 0.1."""
    points = np.concatenate(strokes)
    low = points.min(axis=0)
    extent = float((points.max(axis=0) - low).max()) or 1.0
    side = rng.uniform(0.3, 0.8) * SURFACE[0]
    scale = side / extent
    span = (points.max(axis=0) - low) * scale
    origin = rng.uniform(0, 1, 2) * (np.array(SURFACE) - span)
    return [np.round((stroke - low) * scale + origin, 1) for stroke in strokes]


# Letters as rasters, from handwriting fonts.


def _letter_rasters(split: Split, seed: int) -> Iterator[Negative]:
    for font_index, name in enumerate(RASTER_FONTS[split]):
        path = FONTS / name
        if not path.is_file():
            continue
        for letter_index, letter in enumerate(LETTERS):
            for copy in range(RASTER_COPIES):
                rng = _rng(seed, split, "letter-raster", font_index, letter_index, copy)
                raster = render_letter(path, letter, rng)
                yield Negative("letter-raster", path.stem, letter, Pixels(raster))


def render_letter(path: Path, letter: str, rng: np.random.Generator, side: int = 160) -> np.ndarray:
    """One letter as a uint8 raster (ink high): a random size and ink weight, an affine warp and a smooth
    elastic distortion, as a scan or a photo of a hand-drawn letter would show it."""
    font = ImageFont.truetype(str(path), size=int(rng.integers(64, 96)))
    canvas = PILImage.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    weight = int(rng.integers(0, 4))
    box = draw.textbbox((0, 0), letter, font=font, stroke_width=weight)
    origin = ((side - (box[2] - box[0])) / 2 - box[0], (side - (box[3] - box[1])) / 2 - box[1])
    draw.text(origin, letter, fill=255, font=font, stroke_width=weight, stroke_fill=255)
    angle = math.radians(rng.uniform(-12, 12))
    shear = rng.uniform(-0.3, 0.3)
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    matrix = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    inverse = np.linalg.inv(matrix @ np.array([[aspect, shear], [0.0, 1.0 / aspect]]))
    centre = np.array([side / 2, side / 2])
    offset = centre - inverse @ centre
    ink = np.asarray(canvas, dtype=np.float32)
    # The displacement field is smooth noise, a few pixels at most: a hand's wobble at the raster's scale.
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float32)
    # Smoothed at a quarter of the resolution and enlarged: the same field at a tenth of the cost.
    field = [
        ndimage.zoom(ndimage.gaussian_filter(rng.standard_normal((side // 4, side // 4)), 2.5), 4, order=1)
        for _ in range(2)
    ]
    strength = rng.uniform(1.0, 4.0) / max(float(np.abs(field[0]).max()), float(np.abs(field[1]).max()), 1e-9)
    warped_cols = inverse[0, 0] * cols + inverse[0, 1] * rows + offset[0] + strength * field[0]
    warped_rows = inverse[1, 0] * cols + inverse[1, 1] * rows + offset[1] + strength * field[1]
    warped = ndimage.map_coordinates(ink, [warped_rows, warped_cols], order=1, mode="constant")
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8)


# Scribbles and shapes.


def _shapes(split: Split, seed: int) -> Iterator[Negative]:
    for shape_index, shape in enumerate(SHAPES):
        for copy in range(SHAPE_COPIES):
            rng = _rng(seed, split, "shape", shape_index, copy)
            strokes = _jitter_strokes(SHAPE_MAKERS[shape](rng), rng, wobble=0.015)
            yield Negative("shape", shape, shape, Strokes(strokes, SURFACE))


def _scribble(rng: np.random.Generator) -> list[np.ndarray]:
    """A pen wandering with momentum, turning often: 1 to 3 strokes of 40 to 120 steps."""
    strokes = []
    position = rng.uniform(-1, 1, 2)
    for _ in range(int(rng.integers(1, 4))):
        heading = rng.uniform(0, 2 * math.pi)
        points = [position.copy()]
        for _ in range(int(rng.integers(40, 121))):
            heading += rng.normal(0, 0.6)
            position = np.clip(position + 0.08 * np.array([math.cos(heading), math.sin(heading)]), -1, 1)
            points.append(position.copy())
        strokes.append(np.array(points))
        position = rng.uniform(-1, 1, 2)
    return strokes


def _zigzag(rng: np.random.Generator) -> list[np.ndarray]:
    peaks = int(rng.integers(4, 9))
    xs = np.linspace(0, 1, 2 * peaks + 1) + rng.normal(0, 0.01, 2 * peaks + 1)
    ys = np.where(np.arange(2 * peaks + 1) % 2 == 0, 0.0, rng.uniform(0.3, 0.6)) + rng.normal(0, 0.03, 2 * peaks + 1)
    return [np.stack([xs, ys], axis=1)]


def _spiral(rng: np.random.Generator) -> list[np.ndarray]:
    """Two to two and a half turns, from a third of the radius out: a tighter spiral is a blot at the pen's
    width, a looser one a 6, a 9 or a 0."""
    turns = rng.uniform(2.0, 2.5)
    angles = np.linspace(0, 2 * math.pi * turns, int(60 * turns))
    radius = 0.3 + angles / angles[-1]
    direction = rng.choice([-1.0, 1.0])
    return [np.stack([radius * np.cos(direction * angles), radius * np.sin(direction * angles)], axis=1)]


def _star(rng: np.random.Generator) -> list[np.ndarray]:
    """A five- or seven-pointed star in one stroke."""
    points = int(rng.choice([5, 7]))
    step = 2 if points == 5 else 3
    angles = rng.uniform(0, 2 * math.pi) + 2 * math.pi * step * np.arange(points + 1) / points
    return [np.stack([np.cos(angles), np.sin(angles)], axis=1)]


def _grid(rng: np.random.Generator) -> list[np.ndarray]:
    """A noughts-and-crosses grid: two or three lines each way."""
    count = int(rng.integers(2, 4))
    at = np.linspace(0.25, 0.75, count)
    strokes = [np.array([[x, 0.0], [x, 1.0]]) + rng.normal(0, 0.02, (2, 2)) for x in at]
    strokes += [np.array([[0.0, y], [1.0, y]]) + rng.normal(0, 0.02, (2, 2)) for y in at]
    return strokes


def _hatching(rng: np.random.Generator) -> list[np.ndarray]:
    """Three to five parallel strokes at one angle (more fill in at the pen's width)."""
    count = int(rng.integers(3, 6))
    angle = rng.uniform(0, math.pi)
    along = np.array([math.cos(angle), math.sin(angle)])
    across = np.array([-along[1], along[0]])
    return [np.stack([across * t - along, across * t + along]) for t in np.linspace(-1, 1, count)]


def _loops(rng: np.random.Generator) -> list[np.ndarray]:
    """A row of three to five joined cursive loops, like ``eeee``."""
    count = int(rng.integers(3, 6))
    t = np.linspace(0, 2 * math.pi * count, 40 * count)
    return [np.stack([0.6 * t / math.pi - 0.5 * np.sin(t), -np.cos(t)], axis=1)]


def _lines(rng: np.random.Generator) -> list[np.ndarray]:
    """Five to nine straight strokes thrown anywhere."""
    return [rng.uniform(-1, 1, (2, 2)) for _ in range(int(rng.integers(5, 10)))]


SHAPE_MAKERS = {
    "scribble": _scribble,
    "zigzag": _zigzag,
    "spiral": _spiral,
    "star": _star,
    "grid": _grid,
    "hatching": _hatching,
    "loops": _loops,
    "lines": _lines,
}
