"""Turn what a person drew into the 28x28 image the model was trained on.

This is the only implementation of the MNIST normalization in the project: training, the server, the
client's local mode and the tests all call it, so a digit is seen the same way everywhere.

MNIST digits were made by cropping the ink to its bounding box, scaling it with anti-aliasing so that
the longer side is 20 px (aspect ratio kept), and placing it in a 28x28 field so that its centre of mass
sits at the centre. A model trained on MNIST only works on drawings that went through the same steps;
resizing a whole canvas to 28x28 instead loses most of the accuracy on real handwriting.

Three input forms are accepted (see :data:`Image`): a grayscale raster (:class:`Pixels`), a PNG file
(:class:`Png`, either polarity, transparency as background) and vector strokes (:class:`Strokes`).
:func:`preprocess` returns the model input, or ``None`` when there is no digit to recognise (no ink, or a
single dot): callers answer "empty" instead of guessing. :func:`pen_path` gives the model's second input,
the way a drawing's strokes were drawn, and :func:`model_input` both at once. Anything that is not a valid image raises
:class:`PreprocessError` with a message saying what to change.
"""

from __future__ import annotations

import array
import io
import itertools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image as PILImage

from livedigit.wire import PNG_SIGNATURE

_compiled_draw: Callable[..., bool] | None  # their signatures: livedigit/_draw.pyi
_compiled_gather: Callable[..., tuple[bytearray, bytearray] | None] | None
try:
    from livedigit._draw import draw as _compiled_draw
    from livedigit._draw import gather as _compiled_gather
except ImportError:  # installed where no C compiler was at hand (setup.py): numpy draws the same images
    _compiled_draw = _compiled_gather = None

SIZE = 28
"""Side of the model input, in pixels."""

BOX = 20
"""Side of the box the ink's longer side is scaled to, as in MNIST."""

INK_THRESHOLD = 0.1
"""Ink level (0..1) below which a pixel counts as background when cropping; absorbs faint noise."""

MIN_EXTENT = 0.03
"""A drawing whose longer side is below this fraction of its surface is a dot, not a digit."""

STROKE_WIDTH = 0.14
"""Pen width as a fraction of the drawing's longer side: 2.5 px once the ink, pen included, fills MNIST's
20 px box, like MNIST's ink."""

PATH_POINTS = 32
"""Points the pen's path is resampled to, evenly spaced along its travel (see :func:`pen_path`)."""

PATH_FEATURES = 4
"""Numbers per point of the pen's path: x, y, whether the pen was down, and whether there is a path."""


class PreprocessError(ValueError):
    """The input is not a usable image; the message says what is wrong and what is accepted."""


@dataclass(frozen=True)
class Limits:
    """Size caps checked before any expensive work, so a hostile input costs nothing to refuse."""

    max_side: int = 1024
    """Largest accepted width or height of a raster or PNG, in pixels."""
    max_png_bytes: int = 1 << 20
    """Largest accepted PNG file."""
    max_strokes: int = 64
    """Most strokes in one drawing."""
    max_points: int = 1024
    """Most points over all strokes of one drawing."""


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Pixels:
    """A grayscale raster, ink = high values: uint8 (0..255) or float (0..1), shape (height, width)."""

    array: np.ndarray


@dataclass(frozen=True)
class Png:
    """The bytes of a PNG file: RGBA, RGB or grayscale, dark ink on light or light ink on dark."""

    data: bytes


@dataclass(frozen=True)
class Strokes:
    """Pen-down polylines of ``[x, y]`` points, y growing downward as on a screen.

    ``surface`` is the optional (width, height) of the drawing area; with it, a tiny scribble relative to
    the area counts as a dot. Coordinates may be in any range.
    """

    strokes: Sequence[Sequence[Sequence[float]] | np.ndarray]
    surface: tuple[float, float] | None = field(default=None)


Image = Pixels | Png | Strokes


def preprocess(image: Image, limits: Limits = DEFAULT_LIMITS) -> np.ndarray | None:
    """Return the 28x28 float32 model input (ink = 1.0) for ``image``, or ``None`` if it has no digit."""
    if isinstance(image, Pixels):
        return normalize(ink_from_pixels(image.array, limits))
    if isinstance(image, Png):
        return normalize(ink_from_png(image.data, limits))
    if isinstance(image, Strokes):
        return render_strokes(image.strokes, image.surface, limits=limits)
    raise PreprocessError(f"unsupported image form {type(image).__name__}; use Pixels, Png or Strokes")


_PATH_SHARES = np.linspace(0.0, 1.0, PATH_POINTS)


def pen_path(image: Image, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """The way ``image`` was drawn, the model's second input beside the 28x28 image: float32
    (:data:`PATH_POINTS`, :data:`PATH_FEATURES`).

    Two drawings can make the same image and be different digits: one writer's one-stroke 4 is, as an
    image, their 5 without its bar. The strokes say which way the pen went. The pen's travel (every
    stroke in order, and the jumps between strokes) is resampled to :data:`PATH_POINTS` evenly spaced
    points, each with its x and y (from the centre of the drawing's box, in units of its longer side, so
    the coordinate range does not matter), 1 where the pen was down and 0 on a jump, and 1 to say that
    there is a path. A raster, a PNG, or strokes without any travel have none: all zeros, which the model
    also learned to read (MNIST's digits have no path).
    """
    if not isinstance(image, Strokes):
        return np.zeros((PATH_POINTS, PATH_FEATURES), np.float32)
    points = validate_strokes(image.strokes, limits)
    if not points:
        return np.zeros((PATH_POINTS, PATH_FEATURES), np.float32)
    points, everything = drop_strays(points)
    low = everything.min(axis=0)
    return _path(points, everything, low, everything.max(axis=0) - low)


def model_input(
    image: Image, limits: Limits = DEFAULT_LIMITS, path: bool = True
) -> tuple[np.ndarray, np.ndarray] | None:
    """Both inputs of the model for ``image`` at once: :func:`preprocess`'s 28x28 image and, with
    ``path``, :func:`pen_path` (else an empty array); ``None`` when there is no digit.

    What the server's worker and the training data call: a drawing's strokes are checked and measured
    once for both, which is a third of what the path costs on its own."""
    if not isinstance(image, Strokes):
        pixels = preprocess(image, limits)
        if pixels is None:
            return None
        return pixels, np.zeros((PATH_POINTS, PATH_FEATURES), np.float32) if path else _NO_PATH
    return _draw(image.strokes, image.surface, limits, STROKE_WIDTH, path)


_NO_PATH = np.empty(0, np.float32)


def _draw(
    strokes: Sequence[Sequence[Sequence[float]] | np.ndarray],
    surface: tuple[float, float] | None,
    limits: Limits,
    width: float,
    path: bool,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A drawing's image and, with ``path``, its :func:`pen_path` (else an empty array); ``None`` for no
    strokes or a dot. The one way strokes become the model's inputs, for every caller.

    Computed by ``livedigit/_draw.c`` where the package was built with it, else by numpy
    (:func:`measure_drawing`, :func:`_render`, :func:`_path`): the same operations in the same order, so
    the same image and path, bit for bit. Compiled, :func:`model_input` takes about 20 µs for a live
    snapshot, where numpy's calls on a few dozen points took about 190 (99 with only the ink compiled;
    docs/benchmarks.md, 2026-12-05).
    """
    if _compiled_draw is None:
        drawing = measure_drawing(strokes, surface, limits)
        if drawing is None:
            return None
        return _render(drawing, width), _path(*drawing) if path else _NO_PATH
    everything, lengths = _gathered(strokes, limits)
    surface_side = validate_surface(surface)
    if not lengths:
        return None
    image = np.empty((SIZE, SIZE), np.float32)
    drawn = np.empty((PATH_POINTS, PATH_FEATURES), np.float32) if path else _NO_PATH
    rules = (surface_side or 0.0, width, BOX, MIN_EXTENT, STRAY_SIDE, STRAY_GAP)
    if not _compiled_draw(image, drawn, _PATH_SHARES, everything, lengths, *rules):
        return None
    return image, drawn


def _path(points: list[np.ndarray], everything: np.ndarray, low: np.ndarray, span: np.ndarray) -> np.ndarray:
    """:func:`pen_path` of a drawing's checked strokes, all their points, and their box's corner and size."""
    path = np.zeros((PATH_POINTS, PATH_FEATURES), np.float32)
    steps = everything[1:] - everything[:-1]
    if not len(steps):
        return path
    lengths = np.hypot(steps[:, 0], steps[:, 1])
    travelled = lengths.cumsum()
    total = float(travelled[-1])
    if total <= 0.0:
        return path
    # Each resampled point lies on one step (point k to point k + 1), at a share of the step's length.
    at = _PATH_SHARES * total
    step = travelled.searchsorted(at)
    np.minimum(step, len(steps) - 1, out=step)
    along = 1.0 - (travelled[step] - at) / np.maximum(lengths[step], 1e-300)
    path[:, :2] = (everything[step] + steps[step] * along[:, None] - (low + span / 2.0)) / float(span.max())
    path[:, 2] = 1.0
    if len(points) > 1:  # a step from the last point of a stroke is a jump to the next stroke
        down = np.ones(len(steps), np.float32)
        down[[end - 1 for end in itertools.accumulate(len(stroke) for stroke in points[:-1])]] = 0.0
        path[:, 2] = down[step]
    path[:, 3] = 1.0
    return path


COST_UNIT = 4096
"""Pixels of a raster that cost about as much to preprocess as one drawn snapshot (64x64)."""

COST_POINTS = 64
"""Points of a drawing that cost about as much to render as one drawn snapshot (most have fewer)."""


def cost(image: Image) -> int:
    """The work ``image`` will take to preprocess, in drawn snapshots (at least 1), known before any of it.

    A drawing costs its points over :data:`COST_POINTS` (a snapshot of a digit being drawn has fewer: 1;
    1,024 points: 16); a raster or a PNG costs its pixel count (as its header declares it) over
    :data:`COST_UNIT`: a 1024x1024 PNG is 256 snapshots' work. The
    batcher uses it to keep one expensive image from delaying many cheap ones.
    """
    if isinstance(image, Pixels):
        return max(1, math.ceil(image.array.size / COST_UNIT))
    if isinstance(image, Png) and len(image.data) >= 24 and image.data[:8] == PNG_SIGNATURE:
        width, height = struct.unpack(">II", image.data[16:24])
        return max(1, math.ceil(int(width) * int(height) / COST_UNIT))
    if isinstance(image, Strokes):
        return max(1, math.ceil(sum(len(stroke) for stroke in image.strokes) / COST_POINTS))
    return 1


def ink_from_pixels(array: np.ndarray, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Validate a grayscale raster and return it as float32 ink in 0..1."""
    if not isinstance(array, np.ndarray):
        raise PreprocessError(f"pixels must be a numpy array, got {type(array).__name__}")
    if array.ndim != 2:
        raise PreprocessError(f"pixels must be 2-D (height, width), got shape {array.shape}")
    height, width = array.shape
    _check_dimensions(width, height, limits)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype.kind == "f":
        # Checked before the cast to float32, which would turn a large float64 into inf.
        if not np.isfinite(array).all():
            raise PreprocessError("pixels contain NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise PreprocessError("float pixels must lie in 0..1 (ink = 1); scale uint8 data or send it as uint8")
        return array.astype(np.float32)
    raise PreprocessError(f"pixels must be uint8 (0..255) or float (0..1), got dtype {array.dtype}")


def pixels_uint8(array: object) -> np.ndarray:
    """Return a 2-D raster as uint8 (0..255, ink high), the only raster the protocol carries.

    uint8 passes through; booleans become 0/255; other integers must lie in 0..255; floats must be finite
    and in 0..1 and are rounded to the nearest level. The client converts what it sends with this, and
    ``livedigit predict`` without a server does too, so both give the same answer.
    """
    if not isinstance(array, np.ndarray):
        raise PreprocessError(f"pixels must be a numpy array, got {type(array).__name__}")
    if array.ndim != 2:
        raise PreprocessError(f"pixels must be 2-D (height, width), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise PreprocessError("integer pixels must lie in 0..255 (ink = 255)")
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise PreprocessError("pixels contain NaN or infinite values")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise PreprocessError("float pixels must lie in 0..1 (ink = 1); send 0..255 data as uint8")
        return np.rint(array * 255.0).astype(np.uint8)
    raise PreprocessError(f"pixels must be uint8 (0..255) or float (0..1), got dtype {array.dtype}")


def ink_from_png(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode a PNG into float32 ink in 0..1, whatever its colour mode, bit depth and polarity.

    The decoder is given only the chunks that make pixels (:func:`pixel_chunks`), and the size it will
    decode is checked before it decompresses anything, so a small file that claims to be huge (a
    decompression bomb), or whose header lies, is refused at no cost. Transparent pixels are background.
    Otherwise the background colour is taken from the image border, and ink is the distance from it:
    black-on-white canvas exports and white-on-black images both work.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise PreprocessError(f"png must be bytes, got {type(data).__name__}")
    if len(data) > limits.max_png_bytes:
        raise PreprocessError(f"png is {len(data)} bytes; the limit is {limits.max_png_bytes}")
    luminance, alpha = _decode_png(pixel_chunks(bytes(data), limits), limits)
    border_alpha = float(np.median(_border(alpha)))
    if border_alpha < 0.5:
        return np.clip((alpha - border_alpha) / (1.0 - border_alpha), 0.0, 1.0).astype(np.float32)
    background = float(np.median(_border(luminance)))
    composed = alpha * luminance + (1.0 - alpha) * background
    if background >= 0.5:
        ink = (background - composed) / background
    else:
        ink = (composed - background) / (1.0 - background)
    clipped: np.ndarray = np.clip(ink, 0.0, 1.0).astype(np.float32)
    return clipped


PNG_CHUNK = struct.Struct(">I4s")
"""A chunk's length and type; its data and a 4-byte CRC follow."""
PNG_END = b"\x00\x00\x00\x00IEND\xae\x42\x60\x82"
PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT"})
"""The chunks that decide a PNG's pixels: header, palette, transparency, image data."""


def pixel_chunks(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The PNG ``data`` reduced to its :data:`PIXEL_CHUNKS`, after checking the size its header declares.

    Every other chunk is dropped unread: text and colour profiles (which Pillow would inflate, up to 64 MB
    of text per file), animation frames (an APNG is read as its default image) and anything unknown. None
    of them changes the pixels. A file with a second IHDR is refused: Pillow decodes the last one, so a
    first IHDR of 1x1 followed by one of 6000x6000 would otherwise pass the size check and be decoded at
    36 megapixels.
    """
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise PreprocessError("not a PNG file (bad signature or missing IHDR header); send a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    _check_dimensions(width, height, limits)
    kept = [PNG_SIGNATURE]
    position = 8
    while position + PNG_CHUNK.size <= len(data):
        length, kind = PNG_CHUNK.unpack_from(data, position)
        end = position + PNG_CHUNK.size + length + 4
        if end > len(data):
            raise PreprocessError("could not decode PNG: a chunk runs past the end of the file")
        if kind == b"IEND":
            break
        if kind == b"IHDR" and position != 8:
            raise PreprocessError("the PNG has more than one IHDR header; a PNG has exactly one")
        if kind in PIXEL_CHUNKS:
            kept.append(data[position:end])
        position = end
    kept.append(PNG_END)
    return b"".join(kept)


def _decode_png(data: bytes, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """Return (luminance, alpha) in 0..1. 16-bit grayscale keeps its precision instead of being clipped.

    The size checked is the one Pillow will decode, read before :meth:`~PIL.Image.Image.load` allocates
    and decompresses anything.
    """
    try:
        with PILImage.open(io.BytesIO(data), formats=["PNG"]) as decoded:
            _check_dimensions(*decoded.size, limits)
            decoded.load()
            if decoded.mode.startswith("I"):  # 16-bit grayscale; Pillow's convert() would clip it at 255.
                values = np.asarray(decoded, dtype=np.float32)
                transparent = decoded.info.get("transparency")
                alpha = np.ones_like(values) if transparent is None else (values != transparent).astype(np.float32)
                return np.clip(values / 65535.0, 0.0, 1.0), alpha
            rgba = np.asarray(decoded.convert("RGBA"), dtype=np.float32) / 255.0
    except PreprocessError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt files; all mean the same to a user.
        raise PreprocessError(f"could not decode PNG: {exc}") from None
    return rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32), rgba[..., 3]


def _border(channel: np.ndarray) -> np.ndarray:
    return np.concatenate([channel[0], channel[-1], channel[:, 0], channel[:, -1]])


def render_strokes(
    strokes: Sequence[Sequence[Sequence[float]] | np.ndarray],
    surface: tuple[float, float] | None = None,
    width: float = STROKE_WIDTH,
    limits: Limits = DEFAULT_LIMITS,
) -> np.ndarray | None:
    """Rasterise strokes straight into the 20 px box and place them in 28x28; ``None`` for no strokes or a dot.

    The pen is round and ``width`` times the drawing's longer side wide, so it looks the same whatever
    the coordinate range. The ink's bounding box, pen included, is scaled so that its longer side is 20 px
    (the crop and scale of :func:`normalize`), then its centre of mass is placed at the centre. Each
    pixel's ink is its centre's distance to the nearest segment turned into coverage
    (:func:`_coverage`): anti-aliased, and without drawing a large canvas only to shrink it.
    """
    drawn = _draw(strokes, surface, limits, width, path=False)
    return None if drawn is None else drawn[0]


def _render(drawing: tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray], width: float) -> np.ndarray:
    """:func:`render_strokes` of a drawing :func:`measure_drawing` measured."""
    points, everything, low, span = drawing
    extent = float(span.max())
    scale = BOX / (extent * (1.0 + width))  # output pixels per unit: centre line plus pen fill 20 px
    radius = width * extent * scale / 2.0
    ink_width, ink_height = (span * scale + 2.0 * radius).tolist()
    columns, rows = max(1, round(ink_width)), max(1, round(ink_height))
    placed = ((everything - low) * scale + radius).astype(np.float32)
    # The shorter side is stretched to the whole pixels it is given, as normalize()'s resize does.
    xs = PIXEL_CENTRES[:columns] * np.float32(ink_width / columns)
    ys = PIXEL_CENTRES[:rows] * np.float32(ink_height / rows)
    return _place(_coverage(placed, [len(stroke) for stroke in points], radius, xs, ys))


def measure_drawing(
    strokes: Sequence[Sequence[Sequence[float]] | np.ndarray],
    surface: tuple[float, float] | None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray] | None:
    """Validate a drawing and measure it: its strokes, all their points, the corner of their box and the
    box's size; ``None`` for no strokes or a dot (the rules every renderer of strokes applies)."""
    points = validate_strokes(strokes, limits)
    surface_side = validate_surface(surface)
    if not points:
        return None
    points, everything = drop_strays(points)
    low, high = everything.min(axis=0), everything.max(axis=0)
    span = high - low
    extent = float(span.max())
    if _is_dot(extent, max(abs(value) for value in (*low.tolist(), *high.tolist()))):
        return None
    if surface_side is not None and extent < MIN_EXTENT * surface_side:
        return None
    return points, everything, low, span


def _is_dot(extent: float, magnitude: float) -> bool:
    """Whether a drawing (or stroke) ``extent`` wide is lost in rounding of its coordinates, the largest of
    which is ``magnitude`` (or is below 1e-9): a dot."""
    return extent <= 1e-9 * max(1.0, magnitude)


STRAY_SIDE = 0.1
"""A stroke whose box's longer side is under this share of the largest stroke's may be a stray tap..."""

STRAY_GAP = 0.25
"""...and is one when it lies farther from the other strokes' box than this share of its longer side."""


def drop_strays(points: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """A drawing's checked strokes without its stray taps (:data:`STRAY_SIDE`, :data:`STRAY_GAP`), and
    all the points of those left.

    A tap or a flick of the pen away from the digit (a palm or a second finger on a touch screen) would
    set the drawing's box, and the digit would be drawn a few pixels small and its path squeezed: with
    one tap in a corner of the tablet, the shipped model read 36% of the pen-digits test split. A digit's
    own short strokes (the bar of a 5, a stroke just begun) start next to the rest of it and stay. Of
    the 10,992 pen digits, one whole digit has a stroke this removes (a 1's four-point flick), and 35
    have one when cut at 75% of their points (a second stroke just begun, away from the first).
    """
    everything = np.concatenate(points)
    if len(points) < 2:
        return points, everything
    starts = np.cumsum([0] + [len(stroke) for stroke in points[:-1]])
    lows = np.minimum.reduceat(everything, starts, axis=0)
    highs = np.maximum.reduceat(everything, starts, axis=0)
    sides = (highs - lows).max(axis=1)
    small = sides < STRAY_SIDE * sides.max()
    if not small.any() or _is_dot(float(sides.max()), float(np.abs(everything).max())):  # no body to stray from
        return points, everything
    low, high = lows[~small].min(axis=0), highs[~small].max(axis=0)
    gaps = np.maximum(lows - high, low - highs).max(axis=1)
    stray = small & (gaps > STRAY_GAP * float((high - low).max()))
    if not stray.any():
        return points, everything
    kept = [stroke for stroke, gone in zip(points, stray, strict=True) if not gone]
    return kept, np.concatenate(kept)


PIXEL_CENTRES = np.arange(SIZE, dtype=np.float32) + 0.5
"""Where the centres of a row's pixels lie, in pixels from its edge."""
PIXEL_INDICES = np.arange(SIZE, dtype=np.float64)
"""Each pixel's index along a row, the coordinates of a centre of mass (as ``scipy.ndimage`` takes them)."""

SEGMENTS_AT_ONCE = 64
"""Segments whose distances :func:`_coverage` takes in one pass, over the pixels near them only."""


def _coverage(placed: np.ndarray, lengths: list[int], radius: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The ink at the pixel centres ``xs`` x ``ys``: 1 within ``radius`` of a stroke, 0 beyond ``radius``
    + 1 px, linear between (the share of a pixel an edge crosses). ``placed`` holds every stroke's points
    in pixels, one after the other, ``lengths`` how many each has; a one-point stroke is a dot.

    A snapshot's segments (up to :data:`SEGMENTS_AT_ONCE`) are measured against every pixel at once, in
    about 25 numpy calls whatever their number. A longer drawing is measured a run of consecutive
    segments at a time, each over the pixels of its own box, so that a long stroke of short segments
    costs what its ink covers rather than segments times pixels.
    """
    # Every point starts a segment to the next point of its stroke; the last point of a stroke starts
    # one of length 0, to itself, so a one-point stroke is a dot and no segment joins two strokes.
    lasts = [total - 1 for total in itertools.accumulate(lengths)]
    following = np.arange(1, len(placed) + 1)
    following[lasts] = lasts
    start, end = placed, placed[following]
    if len(start) <= SEGMENTS_AT_ONCE:
        squared = _squared_distances(start, end, xs, ys)
    else:
        squared = np.full((len(ys), len(xs)), np.inf, dtype=np.float32)
        reach = radius + 1.0
        for run in range(0, len(start), SEGMENTS_AT_ONCE):
            part = slice(run, run + SEGMENTS_AT_ONCE)
            left, top = np.minimum(start[part].min(axis=0), end[part].min(axis=0)) - reach
            right, bottom = np.maximum(start[part].max(axis=0), end[part].max(axis=0)) + reach
            x0, x1 = np.searchsorted(xs, (left, right))
            y0, y1 = np.searchsorted(ys, (top, bottom))
            if x0 < x1 and y0 < y1:
                window = squared[y0:y1, x0:x1]
                np.minimum(window, _squared_distances(start[part], end[part], xs[x0:x1], ys[y0:y1]), out=window)
    ink: np.ndarray = np.float32(radius + 0.5) - np.sqrt(squared)
    np.minimum(np.maximum(ink, 0.0, out=ink), 1.0, out=ink)
    return ink


def _squared_distances(start: np.ndarray, end: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The squared distance from each pixel centre (``xs`` x ``ys``) to the nearest segment ``start`` to
    ``end`` (arrays of points)."""
    delta = end - start
    dx, dy = delta[:, 0], delta[:, 1]
    # A segment of length 0 (a dot, or a point sent twice) has along = 0: the distance to its point.
    inverse = 1.0 / np.maximum(dx * dx + dy * dy, np.float32(1e-12))
    dx, dy = dx[:, None], dy[:, None]
    rx = xs - start[:, :1]  # (segments, columns)
    ry = ys - start[:, 1:]  # (segments, rows)
    # Where each pixel's nearest point of each segment lies along it, 0..1: (segments, rows, columns).
    along = (rx * (dx * inverse[:, None]))[:, None, :] + (ry * (dy * inverse[:, None]))[:, :, None]
    np.minimum(np.maximum(along, 0.0, out=along), 1.0, out=along)
    across_x = rx[:, None, :] - along * dx[:, :, None]
    across_y = ry[:, :, None] - along * dy[:, :, None]
    across_x *= across_x
    across_y *= across_y
    across_x += across_y
    squared: np.ndarray = across_x.min(axis=0)
    return squared


def normalize(ink: np.ndarray) -> np.ndarray | None:
    """Apply the MNIST normalization to float32 ink (0..1); ``None`` when there is no ink or only a dot.

    Crop to the ink's bounding box, scale with area filtering (bilinear when enlarging) so the longer
    side is 20 px, then place the result in 28x28 with its centre of mass at the centre.

    MNIST's fields are clean; a scan or a photo of paper is not. Its paper has a level and a grain
    (:func:`clear_background` takes them off) and dust leaves specks away from the digit
    (:func:`drop_specks` leaves them out of the crop): one speck in a corner, or grain above the ink
    threshold, would otherwise set the crop, and the digit would be scaled down to a few pixels.
    """
    surface = max(ink.shape)
    ink = clear_background(ink)
    mask = ink > INK_THRESHOLD
    box = _box(mask)
    if box is None:
        return None
    # Specks are looked for within the ink's box only: in an image with margins, a fraction of its pixels.
    ink, mask = drop_specks(ink[box], mask[box])
    kept = _box(mask)
    assert kept is not None  # the largest patch of ink always stays
    crop = ink[kept]
    return _fit(np.ascontiguousarray(crop, dtype=np.float32), surface)


def _box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns of ``mask``'s bounding box; ``None`` when it holds nothing."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


GRAIN_SPREADS = 3.0
"""How far above the paper's level, in spreads of its grain, ink begins (:func:`clear_background`)."""

MAX_PAPER = 0.5
"""A border whose level plus grain reaches this much ink is not paper, but a digit cropped tight."""

SPECK_MASS = 0.1
"""A patch of ink with less than this share of the largest patch's ink may be a speck..."""

SPECK_GAP = 0.1
"""...and is one when none of its pixels lies within this share of the largest patch's box's longer side
of that box (:func:`drop_specks`)."""

_NEIGHBOURS = np.ones((3, 3), dtype=bool)
"""Pixels that touch, corners included, belong to one patch of ink."""


def clear_background(ink: np.ndarray) -> np.ndarray:
    """``ink`` with the paper's level and grain taken off: the border's median, plus
    :data:`GRAIN_SPREADS` times its spread (1.4826 x its median absolute deviation, the standard
    deviation of a normal grain), becomes 0 and the rest is stretched back to 0..1.

    The border is mostly paper in any image of a digit with a margin; where it is not (a digit cropped
    tight: the border's level reaches :data:`MAX_PAPER`), the image is left as it is. So is a clean field
    such as MNIST's, whose border is 0.
    """
    border = _border(ink)
    level = float(np.median(border))
    floor = level + GRAIN_SPREADS * 1.4826 * float(np.median(np.abs(border - level)))
    if not 0.0 < floor < MAX_PAPER:
        return ink
    cleared: np.ndarray = np.clip((ink - np.float32(floor)) / np.float32(1.0 - floor), 0.0, 1.0).astype(np.float32)
    return cleared


def drop_specks(ink: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ink`` and its ``mask`` (pixels above the threshold) without the specks: patches of touching ink
    pixels with less than :data:`SPECK_MASS` of the largest patch's ink and no pixel within
    :data:`SPECK_GAP` of its box's longer side of that box.

    A digit's own small parts (the detached bar of a 5, a gap in a scanned stroke) lie next to its main
    stroke and stay; dust and grain in the margin do not. Of MNIST's 70,000 digits, 363 lose such a
    speck (a few faint pixels away from the digit), and none of the MNIST test digits' answers changes.
    Every step is one pass over the pixels, whatever the number of patches: a raster of a quarter of a
    million separate dots costs a few passes over its pixels, not a step per dot.
    """
    # Imported here, by the first raster: SciPy adds about 30 MB to a process, and the processes of a
    # server that only ever receives strokes (the page) never need it.
    from scipy import ndimage

    patches, count = ndimage.label(mask, _NEIGHBOURS)
    if count < 2:
        return ink, mask
    mass = ndimage.sum_labels(ink, patches, np.arange(1, count + 1))
    largest = int(mass.argmax()) + 1
    main = patches == largest
    rows, cols = np.flatnonzero(main.any(axis=1)), np.flatnonzero(main.any(axis=0))
    reach = int(SPECK_GAP * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)) + 1
    near = patches[max(rows[0] - reach, 0) : rows[-1] + 1 + reach, max(cols[0] - reach, 0) : cols[-1] + 1 + reach]
    kept = np.ones(count + 1, dtype=bool)  # by patch number; 0 is the background
    kept[1:] = mass >= SPECK_MASS * mass[largest - 1]
    kept[np.unique(near)] = True
    if kept.all():
        return ink, mask
    speck = ~kept[patches]
    return np.where(speck, np.float32(0.0), ink), mask & ~speck


def _fit(crop: np.ndarray, surface: int) -> np.ndarray | None:
    """Scale the ink's bounding box ``crop`` into 20 px and centre its mass in 28x28 (see :func:`normalize`).

    ``surface`` is the longer side of the image it was cropped from: a crop below :data:`MIN_EXTENT` of
    it is a dot.
    """
    height, width = crop.shape
    longer = max(height, width)
    if longer < max(2.0, MIN_EXTENT * surface):
        return None
    scale = BOX / longer
    new_width = max(1, round(width * scale))
    new_height = max(1, round(height * scale))
    resample = PILImage.Resampling.BOX if scale < 1.0 else PILImage.Resampling.BILINEAR
    scaled = np.asarray(PILImage.fromarray(crop, mode="F").resize((new_width, new_height), resample))
    return _place(np.clip(scaled, 0.0, 1.0))


def _place(scaled: np.ndarray) -> np.ndarray:
    """The 28x28 model input with the ink ``scaled`` into the 20 px box placed so that its centre of
    mass sits at the centre (to the nearest pixel, without leaving the field)."""
    height, width = scaled.shape
    # Every sum runs in order (cumsum), as livedigit/_draw.c adds them: the same centre to the last bit.
    by_row = scaled.cumsum(axis=1, dtype=np.float64)[:, -1]
    by_column = scaled.cumsum(axis=0, dtype=np.float64)[-1]
    total = float(by_row.cumsum()[-1])
    centre_y = float((by_row * PIXEL_INDICES[:height]).cumsum()[-1]) / total
    centre_x = float((by_column * PIXEL_INDICES[:width]).cumsum()[-1]) / total
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    y = min(max(round(SIZE / 2 - centre_y), 0), SIZE - height)
    x = min(max(round(SIZE / 2 - centre_x), 0), SIZE - width)
    out[y : y + height, x : x + width] = scaled
    return out


def _check_dimensions(width: int, height: int, limits: Limits) -> None:
    if width < 1 or height < 1:
        raise PreprocessError(f"image is {width}x{height}; both sides must be at least 1 px")
    if width > limits.max_side or height > limits.max_side:
        raise PreprocessError(f"image is {width}x{height}; the limit is {limits.max_side} px per side")


def validate_surface(surface: object) -> float | None:
    """Return the longer side of ``surface``, a (width, height) pair of positive numbers below 1e9, or
    ``None``. The protocol checks it when a message arrives, a label's included, which is stored unrendered."""
    if surface is None:
        return None
    message = "surface must be [width, height], two positive numbers below 1e9"
    if not isinstance(surface, (list, tuple)) or len(surface) != 2:
        raise PreprocessError(message)
    sides = []
    for side in surface:
        if isinstance(side, bool) or not isinstance(side, (int, float, np.integer, np.floating)):
            raise PreprocessError(message)
        side = float(side)
        if not 0.0 < side < 1e9:  # also refuses NaN
            raise PreprocessError(message)
        sides.append(side)
    return max(sides)


MAX_COORDINATE = 1e9
"""Largest accepted magnitude of a stroke's coordinate."""


def validate_strokes(strokes: Sequence[Sequence[Sequence[float]] | np.ndarray], limits: Limits) -> list[np.ndarray]:
    """Check the stroke and point counts and every coordinate; return each non-empty stroke as a float64
    (n, 2) array. The protocol calls this when a message arrives, so a queued drawing is already compact.

    The coordinates of all strokes are checked at once: a drawing is checked again where it is rendered,
    and numpy's calls, not its arithmetic, are most of what a stroke of a snapshot costs to check. Where
    the package was built with ``livedigit/_draw.c``, well-formed strokes (lists or tuples of numbers, or
    float64 arrays) are checked and copied there without a numpy call per stroke, and the strokes come
    back as views of one array; anything else is checked here, which says what is wrong."""
    gathered = _compiled_gather_within(strokes, limits)
    if gathered is None:
        return _validate_strokes(strokes, limits)
    everything = np.frombuffer(gathered[0], np.float64).reshape(-1, 2)
    lengths = memoryview(gathered[1]).cast("i").tolist()
    return [everything[end - length : end] for length, end in zip(lengths, itertools.accumulate(lengths), strict=True)]


def _compiled_gather_within(
    strokes: Sequence[Sequence[Sequence[float]] | np.ndarray], limits: Limits
) -> tuple[bytearray, bytearray] | None:
    """``livedigit/_draw.c``'s check and copy of ``strokes`` within ``limits``, or ``None`` where it is not
    built or leaves ``strokes`` to the numpy check (which words the error, or takes an unusual input)."""
    if _compiled_gather is None:
        return None
    return _compiled_gather(strokes, limits.max_strokes, limits.max_points, MAX_COORDINATE)


def _gathered(
    strokes: Sequence[Sequence[Sequence[float]] | np.ndarray], limits: Limits
) -> tuple[bytearray | np.ndarray, bytearray | array.array[int]]:
    """:func:`validate_strokes` for ``livedigit/_draw.c``'s drawing: all the points (float64 x, y pairs)
    and the lengths (int32) of the non-empty strokes."""
    gathered = _compiled_gather_within(strokes, limits)
    if gathered is not None:
        return gathered
    points = _validate_strokes(strokes, limits)
    return np.concatenate(points) if points else _NO_POINTS, array.array("i", [len(stroke) for stroke in points])


_NO_POINTS = np.empty((0, 2), np.float64)


def _validate_strokes(strokes: Sequence[Sequence[Sequence[float]] | np.ndarray], limits: Limits) -> list[np.ndarray]:
    """:func:`validate_strokes` in numpy: every input it accepts, and the message for each it does not."""
    if not isinstance(strokes, (list, tuple)):
        raise PreprocessError("strokes must be a list of polylines, each a list of [x, y] points")
    if len(strokes) > limits.max_strokes:
        raise PreprocessError(f"{len(strokes)} strokes; the limit is {limits.max_strokes}")
    total = 0
    arrays = []
    for index, stroke in enumerate(strokes):
        if not isinstance(stroke, (list, tuple, np.ndarray)) or getattr(stroke, "ndim", 1) == 0:
            raise PreprocessError(f"stroke {index} must be a list of [x, y] points")
        total += len(stroke)
        if total > limits.max_points:
            raise PreprocessError(f"more than {limits.max_points} points in all; send fewer (downsample)")
        if len(stroke) == 0:
            continue
        try:
            array = np.asarray(stroke)
        except (TypeError, ValueError, OverflowError):
            raise PreprocessError(_coordinates_message(index)) from None
        if array.ndim != 2 or array.shape[1] != 2 or array.dtype.kind not in "iuf":
            raise PreprocessError(_coordinates_message(index))
        arrays.append(array.astype(np.float64, copy=False))
    if arrays and not (np.abs(np.concatenate(arrays)) <= MAX_COORDINATE).all():  # NaN is not <= anything
        index = next(i for i, array in enumerate(arrays) if not (np.abs(array) <= MAX_COORDINATE).all())
        raise PreprocessError(_coordinates_message([i for i, stroke in enumerate(strokes) if len(stroke)][index]))
    return arrays


def _coordinates_message(index: int) -> str:
    return f"stroke {index} must hold [x, y] points, each coordinate a number within \u00b11e9"
