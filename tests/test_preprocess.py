"""The MNIST normalization: what every drawing goes through before the model sees it.

The invariants are the ones MNIST was built with (ink box 20 px on its longer side, aspect kept, centre of
mass at the centre, anti-aliased ink); every input form must meet them, and every malformed input must be
refused with a :class:`PreprocessError` saying what to change, never with another exception.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hardutil import lying_png
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image as PILImage
from PIL import ImageDraw
from scipy import ndimage

from livedigit import pendigits
from livedigit import preprocess as preprocessing
from livedigit.bench.workload import drawing
from livedigit.preprocess import (
    PNG_SIGNATURE,
    SIZE,
    STROKE_WIDTH,
    Limits,
    Pixels,
    Png,
    PreprocessError,
    Strokes,
    model_input,
    normalize,
    pixel_chunks,
    preprocess,
    render_strokes,
)

CENTRE = 14.0
"""Where MNIST puts the centre of mass, in pixel-index coordinates (measured on MNIST: 13.99, 14.00)."""

SMALL = Limits(max_side=64, max_png_bytes=4096, max_strokes=4, max_points=32)
"""Tight limits, so property tests reach the limit checks with small inputs."""


def ink_box(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the non-zero pixels."""
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def assert_model_input(image: np.ndarray | None) -> None:
    assert image is not None
    assert image.shape == (SIZE, SIZE)
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0


def ring(height: int = 120, width: int = 90, top: int = 30, left: int = 40, canvas: int = 200) -> np.ndarray:
    """A "0": an anti-aliased ellipse outline as float ink on a larger canvas, off-centre."""
    image = PILImage.new("L", (canvas * 4, canvas * 4), 0)
    ImageDraw.Draw(image).ellipse((left * 4, top * 4, (left + width) * 4, (top + height) * 4), outline=255, width=48)
    return np.asarray(image.resize((canvas, canvas), PILImage.Resampling.BOX), dtype=np.float32) / 255.0


def encode(image: PILImage.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG signature and a valid IHDR chunk declaring ``width`` x ``height``."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)


def png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): grey (0) or RGB (2)."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))
    return png_header(width, height, 16, colour_type) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# --- the MNIST invariants ---------------------------------------------------------------------------------


def test_mnist_digits_come_out_as_they_went_in(mnist_path: Path) -> None:
    """MNIST test digits are already normalized; normalizing them again must leave them (almost) alone."""
    with np.load(mnist_path) as data:
        digits = data["x_test"][:500]
    out = np.stack([preprocess(Pixels(digit)) for digit in digits])
    assert np.abs(out - digits / 255.0).mean() < 0.002


@pytest.mark.parametrize(
    "top, left, height, width",
    [(30, 40, 120, 90), (0, 0, 60, 60), (100, 120, 95, 75), (5, 150, 190, 45)],
)
def test_centre_of_mass_is_at_the_centre(top: int, left: int, height: int, width: int) -> None:
    image = preprocess(Pixels(ring(height, width, top, left)))
    assert_model_input(image)
    centre = np.array(ndimage.center_of_mass(image))
    assert np.abs(centre - CENTRE).max() <= 1.0


def test_lopsided_shape_is_centred_by_mass_not_by_box() -> None:
    """A "7"-like shape (heavy top bar) moves down: its box is off-centre so its mass can be centred."""
    ink = np.zeros((100, 100), np.float32)
    ink[10:18, 10:90] = 1.0  # bar
    ink[18:90, 65:75] = 1.0  # stem
    image = preprocess(Pixels(ink))
    assert_model_input(image)
    assert np.abs(np.array(ndimage.center_of_mass(image)) - CENTRE).max() <= 1.0
    rows = np.flatnonzero(image.any(axis=1))
    box_centre = (rows[0] + rows[-1]) / 2
    assert box_centre > CENTRE + 1.5


def test_very_lopsided_shape_is_moved_only_as_far_as_the_field_allows() -> None:
    """Centring never pushes ink out of the 28x28 field: the whole 20 px box stays visible."""
    ink = np.zeros((100, 100), np.float32)
    ink[10:30, 10:90] = 1.0  # a bar too heavy to centre without cutting the stem off
    ink[30:90, 70:75] = 1.0
    image = preprocess(Pixels(ink))
    assert_model_input(image)
    assert ink_box(image) == (20, 20)
    assert image[-1].any()  # pushed down to the edge, as far as it can go


@pytest.mark.parametrize("height, width", [(120, 90), (60, 150), (200, 200), (12, 9)])
def test_longer_side_of_the_ink_is_20_px(height: int, width: int) -> None:
    ink = np.zeros((256, 256), np.float32)
    ink[50 : 50 + height, 20 : 20 + width] = 1.0
    image = preprocess(Pixels(ink))
    assert_model_input(image)
    box = ink_box(image)
    assert max(box) == 20
    assert min(box) == pytest.approx(20 * min(height, width) / max(height, width), abs=1)


def test_thin_one_stays_thin() -> None:
    """A "1" is not stretched to a square: its width stays a pen width, its height 20 px."""
    image = preprocess(Strokes([[[100, 20], [104, 380]]]))
    assert_model_input(image)
    height, width = ink_box(image)
    assert height == 20
    assert width <= 5
    pixels = preprocess(Pixels(np.pad(np.ones((300, 12), np.uint8) * 255, 40)))
    assert_model_input(pixels)
    assert ink_box(pixels)[0] == 20 and ink_box(pixels)[1] <= 2


def test_output_is_anti_aliased() -> None:
    """Binary input comes out with grey edges, as MNIST's digits have."""
    binary = (ring() > 0.5).astype(np.uint8) * 255
    for image in (preprocess(Pixels(binary)), preprocess(Strokes([[[0, 0], [30, 0], [0, 50], [30, 50]]]))):
        assert_model_input(image)
        grey = ((image > 0.05) & (image < 0.95)).sum()
        assert grey >= 15
        assert image.max() > 0.95


# --- scans: paper, grain and specks ---------------------------------------------------------------------


def test_grey_grainy_paper_reads_as_a_clean_field() -> None:
    """A digit scanned from paper (its level and grain above the crop's ink threshold) is cropped to the
    digit, not to the sheet, and comes out as the same digit on a clean field would."""
    clean = ring()
    grain = np.random.default_rng(3).normal(0.0, 0.04, clean.shape)
    scanned = np.clip(0.15 + 0.85 * clean + grain, 0.0, 1.0)
    expected, image = preprocess(Pixels(clean)), preprocess(Pixels(np.rint(scanned * 255).astype(np.uint8)))
    assert_model_input(image)
    assert expected is not None
    assert ink_box(image > 0.3) == ink_box(expected > 0.3)
    assert np.abs(image - expected).mean() < 0.02


def test_a_speck_in_the_margin_is_left_out() -> None:
    """Dust far from the digit does not set the crop: the digit comes out exactly as without it."""
    clean = ring()
    specked = clean.copy()
    specked[190:193, 2:5] = 1.0
    assert np.array_equal(preprocess(Pixels(specked)), preprocess(Pixels(clean)))


def test_dust_all_over_the_margin_is_left_out() -> None:
    """Thousands of separate specks around the digit (a dusty scan) are all left out of the crop."""
    clean = ring()  # the 0's box: rows 30..150, columns 40..130
    dusty = clean.copy()
    margin = np.ones(clean.shape, dtype=bool)
    margin[10:170, 20:150] = False  # farther from the box than a tenth of its longer side
    dust = np.zeros(clean.shape, dtype=bool)
    dust[::3, ::3] = True
    dusty[margin & dust] = 1.0
    assert (margin & dust).sum() > 2000
    assert np.array_equal(preprocess(Pixels(dusty)), preprocess(Pixels(clean)))


def test_a_small_part_next_to_the_digit_is_the_digits() -> None:
    """A small detached part close to the main stroke (the bar of a 5, a gap in a scanned stroke) stays;
    the same part far from it is a speck."""
    stem = np.zeros((200, 200), np.float32)
    stem[40:160, 90:100] = 1.0
    near, far = stem.copy(), stem.copy()
    near[28:34, 92:110] = 1.0  # a tenth of the stem's ink, 6 px above it
    far[28:34, 172:190] = 1.0  # the same, 72 px to its right
    alone = preprocess(Pixels(stem))
    assert np.array_equal(preprocess(Pixels(far)), alone)
    with_part = preprocess(Pixels(near))
    assert_model_input(with_part)
    assert not np.array_equal(with_part, alone)
    assert (with_part > 0.5).sum(axis=1).max() > (alone > 0.5).sum(axis=1).max()  # the bar is wider than the stem


def test_a_digit_cropped_tight_keeps_its_ink() -> None:
    """A raster whose border is mostly ink (a digit cropped to its box) is not taken for grey paper."""
    tight = np.ones((60, 12), np.float32)
    tight[10:50, 3:9] = 0.0  # a "0" as thick as its box is narrow
    image = preprocess(Pixels(tight))
    assert_model_input(image)
    assert image.max() == 1.0 and ink_box(image)[0] == 20


def test_pixels_uint8_and_float_agree() -> None:
    ink = ring()
    as_uint8 = preprocess(Pixels(np.round(ink * 255).astype(np.uint8)))
    as_float = preprocess(Pixels(ink))
    as_float64 = preprocess(Pixels(ink.astype(np.float64)))
    assert np.abs(as_uint8 - as_float).max() < 0.01
    assert np.abs(as_float64 - as_float).max() < 1e-6


# --- PNG: modes, polarity, transparency --------------------------------------------------------------------


def png_variants(ink: np.ndarray) -> dict[str, bytes]:
    """The same drawing as the PNGs people send: canvas exports, scans, inverted images, 16-bit files."""
    level = np.round(ink * 255).astype(np.uint8)
    dark_on_light = 255 - level
    zeros = np.zeros_like(level)
    full = np.full_like(level, 255)
    deep = np.round(ink * 65535).astype(np.uint16)
    return {
        "grey black-on-white": encode(PILImage.fromarray(dark_on_light, "L")),
        "grey white-on-black": encode(PILImage.fromarray(level, "L")),
        "RGB black-on-white": encode(PILImage.fromarray(np.dstack([dark_on_light] * 3), "RGB")),
        "RGB white-on-black": encode(PILImage.fromarray(np.dstack([level] * 3), "RGB")),
        "RGBA canvas export (transparent, black ink)": encode(
            PILImage.fromarray(np.dstack([zeros, zeros, zeros, level]), "RGBA")
        ),
        "RGBA transparent white, white ink": encode(PILImage.fromarray(np.dstack([full, full, full, level]), "RGBA")),
        "RGBA opaque white, black ink": encode(PILImage.fromarray(np.dstack([dark_on_light] * 3 + [full]), "RGBA")),
        "grey+alpha": encode(PILImage.fromarray(np.dstack([zeros, level]), "LA")),
        "16-bit grey black-on-white": encode(PILImage.fromarray((65535 - deep).astype(np.uint16))),
        "16-bit grey white-on-black": encode(PILImage.fromarray(deep)),
        "16-bit RGB black-on-white": png16(np.dstack([65535 - deep] * 3), colour_type=2),
    }


@pytest.mark.parametrize("name", list(png_variants(np.zeros((2, 2), np.float32))))
def test_png_modes_and_polarities_give_the_same_digit(name: str) -> None:
    ink = ring()
    expected = preprocess(Pixels(ink))
    image = preprocess(Png(png_variants(ink)[name]))
    assert_model_input(image)
    assert np.abs(image - expected).max() < 0.02, name


def test_16_bit_grey_keeps_grey_levels() -> None:
    """Pillow clips 16-bit grey at 255 when converting; mid-grey ink must stay mid-grey."""
    ink = np.zeros((60, 60), np.float32)
    ink[10:50, 25:32] = 0.45
    image = preprocess(Png(encode(PILImage.fromarray(np.round(ink * 65535).astype(np.uint16)))))
    assert_model_input(image)
    assert 0.35 < image.max() < 0.55


def test_transparent_pixels_are_background_whatever_their_colour() -> None:
    """Canvas exports store transparent pixels as black (0, 0, 0, 0); colour alone would read all ink."""
    ink = ring()
    level = np.round(ink * 255).astype(np.uint8)
    black = np.zeros_like(level)
    rgba = np.dstack([black, black, black, level])
    image = preprocess(Png(encode(PILImage.fromarray(rgba, "RGBA"))))
    assert np.abs(image - preprocess(Pixels(ink))).max() < 0.02


def test_palette_and_one_bit_pngs() -> None:
    ink = ring() > 0.5
    expected = preprocess(Pixels(ink.astype(np.uint8) * 255))
    one_bit = PILImage.fromarray(~ink)  # mode "1": black ink on white
    palette = PILImage.fromarray(ink.astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 0, 0, 0])
    transparent_palette = encode(palette, transparency=0)
    for data in (encode(one_bit), encode(palette), transparent_palette):
        image = preprocess(Png(data))
        assert_model_input(image)
        assert np.abs(image - expected).max() < 0.02


def test_coloured_ink_on_white_is_ink() -> None:
    ink = ring() > 0.5
    rgb = np.full((*ink.shape, 3), 255, np.uint8)
    rgb[ink] = (0, 0, 200)
    image = preprocess(Png(encode(PILImage.fromarray(rgb, "RGB"))))
    assert_model_input(image)
    assert image.max() > 0.8


def split_chunks(data: bytes) -> list[bytes]:
    """A PNG file's chunks, each whole (length, type, data, CRC), after the signature."""
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        chunks.append(data[position : position + 12 + length])
        position += 12 + length
    return chunks


def test_only_the_chunks_that_make_pixels_reach_the_decoder() -> None:
    """Text, colour profiles, animation frames and unknown chunks change nothing and are never inflated:
    40 zTXt chunks that would inflate to 1 MB each (under Pillow's own 64 MB budget), an iCCP profile of
    8 MB, APNG frame chunks (the file is read as its default image) give the same bytes to the decoder,
    and the same digit, as the plain file."""
    plain = encode(PILImage.fromarray((255 - np.round(ring() * 255)).astype(np.uint8)), transparency=255)
    header, *pixels, end = split_chunks(plain)
    assert {part[4:8] for part in pixels} == {b"tRNS", b"IDAT"}
    width, height = struct.unpack(">II", header[8:16])
    frame = struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 10, 0, 0)
    before = {
        "text": b"".join(chunk(b"zTXt", b"note\x00\x00" + zlib.compress(bytes(1 << 20), 9)) for _ in range(40)),
        "profile": chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(8 << 20), 9)),
        "animation": chunk(b"acTL", struct.pack(">II", 2, 0)) + chunk(b"fcTL", frame),
        "private": chunk(b"prVt", bytes(1000)),
    }
    after = {
        "animation": chunk(b"fcTL", struct.pack(">I", 1) + frame[4:])
        + chunk(b"fdAT", struct.pack(">I", 2) + zlib.compress(bytes(height * (width + 1)))),
        "text": chunk(b"tEXt", b"Comment\x00" + b"x" * 5000),
    }
    expected = preprocess(Png(plain))
    for name in sorted(before.keys() | after.keys()):
        data = PNG_SIGNATURE + header + before.get(name, b"") + b"".join(pixels) + after.get(name, b"") + end
        assert len(data) < Limits().max_png_bytes, name
        assert pixel_chunks(data) == plain, name
        np.testing.assert_array_equal(preprocess(Png(data)), expected, err_msg=name)


def test_a_png_with_a_second_header_is_refused() -> None:
    """Pillow decodes a PNG's last IHDR: a first one of 1x1, then one of 6000x6000 and its data (15 KB)
    would be decoded at 36 megapixels. Any second IHDR, before or after the image data, is refused."""
    plain = valid_png()
    header, *rest = split_chunks(plain)
    for data in (
        lying_png(),
        PNG_SIGNATURE + header + header + b"".join(rest),
        PNG_SIGNATURE + header + b"".join(rest[:-1]) + png_header(6000, 6000)[8:] + rest[-1],
    ):
        with pytest.raises(PreprocessError, match="more than one IHDR"):
            preprocess(Png(data))


# --- strokes ---------------------------------------------------------------------------------------------

SEVEN = [[[10.0, 10.0], [60.0, 12.0], [35.0, 90.0]], [[25.0, 50.0], [50.0, 50.0]]]


@pytest.mark.parametrize("scale", [1e-3, 0.5, 1.0, 7.3, 1e3, 1e5])
@pytest.mark.parametrize("offset", [(0.0, 0.0), (-500.0, 1234.5), (1e6, -1e6)])
def test_strokes_in_any_coordinate_range_give_the_same_image(scale: float, offset: tuple[float, float]) -> None:
    expected = preprocess(Strokes(SEVEN))
    moved = [[[x * scale + offset[0], y * scale + offset[1]] for x, y in s] for s in SEVEN]
    image = preprocess(Strokes(moved))
    assert_model_input(image)
    assert np.abs(image - expected).max() < 1e-6


def drawings_to_compare(pen: list[pendigits.PenDigit]) -> list[tuple[list, tuple[float, float] | None]]:
    """Drawings of every kind a renderer meets: growing prefixes of pen digits (every other point, with the
    tablet's surface), the same moved and scaled, the same with a stray tap or flick, random scribbles
    of one to four strokes and up to 300 points (past the 64 segments numpy measures at once), dots and
    single points."""
    rng = np.random.default_rng(5)
    drawings: list[tuple[list, tuple[float, float] | None]] = []
    for digit in pen:
        total = sum(len(stroke) for stroke in digit.strokes)
        for points in range(1, total + 1, 2):
            drawings.append((pendigits.prefix(digit.strokes, points), pendigits.SURFACE))
        scale, shift = rng.uniform(0.01, 100.0), rng.uniform(-1e4, 1e4, 2)
        drawings.append(([[[x * scale + shift[0], y * scale + shift[1]] for x, y in s] for s in digit.strokes], None))
        tap = rng.uniform(0, 500, 2).tolist()
        drawings.append(([*digit.strokes, [tap, [tap[0] + 3.0, tap[1] + 1.0]]], pendigits.SURFACE))
    for _ in range(300):
        strokes = [
            rng.uniform(0, rng.uniform(1, 1000), (int(rng.integers(1, 80)), 2)).tolist()
            for _ in range(int(rng.integers(1, 5)))
        ]
        drawings.append((strokes, None))
    drawings += [
        ([[[5.0, 5.0]]], None),
        ([[[5.0, 5.0]], [[9.0, 1.0]]], None),
        ([[[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]]], None),
    ]
    return drawings


@pytest.mark.skipif(
    preprocessing._compiled_draw is None and not os.environ.get("CI"),
    reason="livedigit/_draw.c was not built here (no C compiler when installing): numpy draws every drawing",
)
def test_the_compiled_drawing_makes_numpys_image_and_path_bit_for_bit(pen_test, monkeypatch) -> None:
    assert preprocessing._compiled_draw is not None, "CI installs with a C compiler (scripts/test.sh)"
    drawings = drawings_to_compare(pen_test[:200])
    compiled = [model_input(Strokes(strokes, surface)) for strokes, surface in drawings]
    images = [render_strokes(strokes, surface, width=0.05) for strokes, surface in drawings[::10]]
    monkeypatch.setattr(preprocessing, "_compiled_draw", None)
    in_numpy = [model_input(Strokes(strokes, surface)) for strokes, surface in drawings]
    assert sum(found is not None for found in compiled) > 0.8 * len(drawings)  # the rest are dots
    for (strokes, surface), one, other in zip(drawings, compiled, in_numpy, strict=True):
        assert (one is None) == (other is None)
        if one is not None:
            assert np.array_equal(one[0], other[0]) and np.array_equal(one[1], other[1]), (strokes, surface)
    for (strokes, surface), image in zip(drawings[::10], images, strict=True):  # another pen
        other_image = render_strokes(strokes, surface, width=0.05)
        assert (image is None) == (other_image is None)
        assert image is None or np.array_equal(image, other_image), (strokes, surface)


def test_strokes_accept_tuples_ints_and_arrays() -> None:
    expected = preprocess(Strokes(SEVEN))
    as_ints = [[[int(x), int(y)] for x, y in s] for s in SEVEN]
    as_arrays = [np.asarray(s) for s in SEVEN]
    as_tuples = tuple(tuple(tuple(p) for p in s) for s in SEVEN)
    for strokes in (as_ints, as_arrays, as_tuples):
        image = preprocess(Strokes(strokes))
        assert_model_input(image)
        assert np.abs(image - expected).max() < 0.05


def test_strokes_and_pixels_of_the_same_drawing_agree() -> None:
    """The server's two main forms must not disagree about a drawing: stroke rendering == its raster."""
    rendered = render_strokes(SEVEN)
    raster = np.zeros((100, 100), np.uint8)
    canvas = PILImage.fromarray(raster)
    draw = ImageDraw.Draw(canvas)
    for stroke in SEVEN:
        draw.line([tuple(p) for p in stroke], fill=255, width=11, joint="curve")
    from_pixels = preprocess(Pixels(np.asarray(canvas)))
    assert_model_input(from_pixels)
    # Pens differ slightly in shape; the digit and its placement must not.
    assert np.abs(rendered - from_pixels).mean() < 0.06
    assert np.corrcoef(rendered.ravel(), from_pixels.ravel())[0, 1] > 0.85


def drawn_large(strokes: list, width: float = STROKE_WIDTH, side: int = 400) -> np.ndarray | None:
    """The same drawing by other means: Pillow's pen on a canvas of ``side`` px (the drawing's longer
    side), through the general normalize(): area-filtered down from a raster 20 times finer."""
    points = [np.asarray(stroke, dtype=np.float64) for stroke in strokes if len(stroke)]
    everything = np.concatenate(points)
    low = everything.min(axis=0)
    extent = float(np.ptp(everything, axis=0).max())
    pen = width * side
    canvas = PILImage.new("L", (side + 2 * round(pen) + 2,) * 2, 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in points:
        coords = [tuple(p) for p in ((stroke - low) / extent * side + pen).tolist()]
        if len(coords) > 1:
            draw.line(coords, fill=255, width=round(pen))
        for x, y in coords:
            draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=255)
    return normalize(np.asarray(canvas, dtype=np.float32) / 255.0)


@pytest.mark.slow
def test_strokes_render_as_their_fine_raster_does(pen_test: list[pendigits.PenDigit]) -> None:
    """render_strokes computes the 20 px box directly; on growing prefixes of real pen digits it must give
    what drawing them finely and shrinking the raster gives: the same shape, pen, size and place."""
    differences = []
    for digit in pen_test[::25]:
        for strokes in drawing(digit, 5).frames:
            rendered, reference = render_strokes(strokes), drawn_large(strokes)
            assert_model_input(rendered)
            assert_model_input(reference)
            differences.append(float(np.abs(rendered - reference).mean()))
    assert len(differences) > 1000
    # A pixel of difference costs 1/784 = 0.0013; placement may differ by one pixel where the centre of
    # mass lies halfway between two (a shifted digit differs by about 0.1).
    assert np.mean(differences) < 0.01
    assert np.percentile(differences, 75) < 0.006


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=1, max_size=12), min_size=1, max_size=5
    )
)
@example(strokes=[[(0.0, 0.0), (0.0, 5e-138)], [(0.0, 1.0)]])  # no stroke is more than a dot: none is a stray
def test_any_strokes_fill_the_box_as_mnist_does(strokes: list) -> None:
    """Whatever the strokes, the ink's longer side, pen included, is MNIST's 20 px."""
    everything = np.concatenate([np.asarray(stroke) for stroke in strokes])
    assume(np.ptp(everything, axis=0).max() > 1e-3)  # smaller is a dot, refused before drawing
    image = render_strokes(strokes)
    assert_model_input(image)
    assert max(ink_box(image > 0)) == 20


def test_pen_digits_render_like_mnist(mnist_path: Path, pen_test: list[pendigits.PenDigit]) -> None:
    """Real pen trajectories come out with MNIST's amount of ink, grey edges and centring."""
    with np.load(mnist_path) as data:
        mnist = data["x_test"][:2000] / 255.0
    digits = pen_test[::3]
    rendered = [preprocess(Strokes(digit.strokes)) for digit in digits]
    assert all(image is not None for image in rendered)
    pen = np.stack(rendered)
    assert abs(pen.mean() - mnist.mean()) / mnist.mean() < 0.15
    grey = lambda images: ((images > 0.05) & (images < 0.95)).mean()  # noqa: E731
    assert abs(grey(pen) - grey(mnist)) / grey(mnist) < 0.25
    centres = np.array([ndimage.center_of_mass(image) for image in pen])
    assert np.abs(centres - CENTRE).max() <= 1.0
    assert all(max(ink_box(image > 0.1)) in (19, 20) for image in pen)


# --- empty drawings ----------------------------------------------------------------------------------------

WHITE = encode(PILImage.new("L", (280, 280), 255))
TRANSPARENT = encode(PILImage.new("RGBA", (280, 280), (0, 0, 0, 0)))


@pytest.mark.parametrize(
    "image",
    [
        Pixels(np.zeros((28, 28), np.uint8)),
        Pixels(np.zeros((280, 280), np.float32)),
        Pixels(np.full((100, 100), 0.05, np.float32)),  # faint noise below the ink threshold
        Pixels(np.pad(np.ones((3, 3), np.float32), 200)),  # a dot on a large canvas
        Pixels(np.ones((1, 1), np.uint8) * 255),
        Png(WHITE),
        Png(TRANSPARENT),
        Png(encode(PILImage.new("L", (50, 50), 0))),
        Strokes([]),
        Strokes([[], []]),
        Strokes([[[5, 5]]]),
        Strokes([[[5, 5], [5, 5], [5, 5]], [[5, 5]]]),
        Strokes([[[100, 100], [103, 102]]], surface=(400, 300)),  # a scribble under 3% of the surface
        Strokes([[[0.0, 0.0], [1e-300, 1e-300]]]),
        Strokes([[[1e8, 1e8], [1e8 + 1e-8, 1e8]]]),
    ],
    ids=lambda image: type(image).__name__,
)
def test_empty_drawings_are_none(image: Pixels | Png | Strokes) -> None:
    assert preprocess(image) is None


def test_small_drawing_counts_when_the_surface_is_small() -> None:
    strokes = [[[100, 100], [103, 110]]]
    assert preprocess(Strokes(strokes, surface=(400, 300))) is None
    assert_model_input(preprocess(Strokes(strokes, surface=(100, 100))))
    assert_model_input(preprocess(Strokes(strokes)))


# --- refusals ----------------------------------------------------------------------------------------------


def valid_png() -> bytes:
    return encode(PILImage.fromarray((255 - np.round(ring() * 255)).astype(np.uint8)))


@pytest.mark.parametrize(
    "image, message",
    [
        (Pixels(np.zeros((28, 28, 3), np.uint8)), "2-D"),
        (Pixels(np.zeros(784, np.uint8)), "2-D"),
        (Pixels(np.zeros((28, 28), np.int64)), "uint8 (0..255) or float (0..1)"),
        (Pixels(np.zeros((28, 28), bool)), "uint8 (0..255) or float (0..1)"),
        (Pixels(np.zeros((28, 28), object)), "uint8 (0..255) or float (0..1)"),
        (Pixels(np.full((28, 28), np.nan, np.float32)), "NaN or infinite"),
        (Pixels(np.full((28, 28), np.inf, np.float64)), "NaN or infinite"),
        (Pixels(np.full((28, 28), 255.0, np.float32)), "0..1"),
        (Pixels(np.full((28, 28), -0.5, np.float32)), "0..1"),
        (Pixels(np.full((28, 28), 1e300, np.float64)), "0..1"),
        (Pixels(np.zeros((0, 28), np.uint8)), "at least 1 px"),
        (Pixels(np.zeros((28, 0), np.float32)), "at least 1 px"),
        (Pixels(np.zeros((1025, 10), np.uint8)), "limit is 1024 px"),
        (Pixels(np.zeros((10, 5000), np.uint8)), "limit is 1024 px"),
        (Pixels([[0, 1], [1, 0]]), "numpy array"),
        (Png(b""), "not a PNG"),
        (Png(b"GIF89a" + bytes(100)), "not a PNG"),
        (Png(b"\xff\xd8\xff\xe0" + bytes(100)), "not a PNG"),
        (Png(b"\x89PNG\r\n\x1a\n" + bytes(100)), "not a PNG"),
        (Png(valid_png()[:60]), "could not decode PNG"),
        (Png(valid_png()[: len(valid_png()) // 2]), "could not decode PNG"),
        (Png(valid_png()[:40] + bytes(50) + valid_png()[90:]), "could not decode PNG"),
        (Png(png_header(0, 10)), "at least 1 px"),
        (Png(png_header(100_000, 100_000) + b"garbage" * 10), "limit is 1024 px"),
        (Png(png_header(1024, 1025) + b"garbage" * 10), "limit is 1024 px"),
        (Png(bytes(2_000_000)), "limit is 1048576"),
        (Png("iVBORw0KGgo="), "must be bytes"),  # base64 left undecoded
        (Strokes("[[1, 2]]"), "list of polylines"),
        (Strokes({"x": [1, 2]}), "list of polylines"),
        (Strokes([[[0, 0], [1, 1]]] * 65), "65 strokes; the limit is 64"),
        (Strokes([[[0, 0]] * 1000, [[1, 1]] * 25]), "more than 1024 points"),
        (Strokes([5]), "stroke 0 must be a list"),
        (Strokes([None]), "stroke 0 must be a list"),
        (Strokes([[[0, 0], [1, 1]], "abc"]), "stroke 1 must be a list"),
        (Strokes([[[0, 0], [1, 1]], np.float64(3.0)]), "stroke 1 must be a list"),
        (Strokes([[[0, 0], [1, 1, 1]]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[[0, 0, 0], [1, 1, 1]]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[[0], [1]]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[0, 1, 2]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[["0", "1"], ["2", "3"]]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[[None, 1], [2, 3]]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[[True, False], [False, True]]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[{"x": 1, "y": 2}]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[[float("nan"), 1], [2, 3]]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[[float("inf"), 1], [2, 3]]]), "stroke 0 must hold [x, y] points"),
        (Strokes([[[1e10, 1], [2, 3]]]), "within \u00b11e9"),
        (Strokes([[[10**30, 1], [2, 3]]]), "within \u00b11e9"),
        (Strokes([[[0, 0], [1, 1]], [[1 + 1j, 0], [1, 1]]]), "stroke 1 must hold"),
        (Strokes([[[0, 0], [1, 1]]], surface=(0, 100)), "surface must be [width, height]"),
        (Strokes([[[0, 0], [1, 1]]], surface=(100,)), "surface must be [width, height]"),
        (Strokes([[[0, 0], [1, 1]]], surface=("a", "b")), "surface must be [width, height]"),
        (Strokes([[[0, 0], [1, 1]]], surface=(float("nan"), 100)), "surface must be [width, height]"),
        (Strokes([[[0, 0], [1, 1]]], surface=100), "surface must be [width, height]"),
        (Strokes([], surface=(-1, 5)), "surface must be [width, height]"),
        ("a path.png", "use Pixels, Png or Strokes"),
        (np.zeros((28, 28)), "use Pixels, Png or Strokes"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_invalid_input_is_refused_with_a_message(image: object, message: str) -> None:
    with pytest.raises(PreprocessError) as raised:
        preprocess(image)  # type: ignore[arg-type]
    assert message in str(raised.value)


def test_huge_declared_png_is_refused_from_its_header() -> None:
    """A 100000x100000 PNG is refused from its IHDR alone: the bytes after it are garbage and never read.

    Decoding would either fail on the garbage ("could not decode") or allocate 10 GB; the refusal names the
    size limit, so it happened before any decompression.
    """
    garbage = b"\x00\x00\x10\x00IDAT" + bytes(range(256)) * 4
    with pytest.raises(PreprocessError, match=r"image is 100000x100000; the limit is 1024 px"):
        preprocess(Png(png_header(100_000, 100_000) + garbage))
    with pytest.raises(PreprocessError, match="could not decode PNG"):
        preprocess(Png(png_header(100, 100) + garbage))


def test_limits_are_the_callers() -> None:
    tight = Limits(max_side=32, max_png_bytes=200, max_strokes=1, max_points=3)
    with pytest.raises(PreprocessError, match="limit is 32 px"):
        preprocess(Pixels(np.zeros((33, 10), np.uint8)), tight)
    with pytest.raises(PreprocessError, match="limit is 200"):
        preprocess(Png(valid_png()), tight)
    with pytest.raises(PreprocessError, match="2 strokes; the limit is 1"):
        preprocess(Strokes([[[0, 0], [1, 1]], [[2, 2], [3, 3]]]), tight)
    with pytest.raises(PreprocessError, match="more than 3 points"):
        preprocess(Strokes([[[0, 0], [1, 1], [2, 2], [3, 3]]]), tight)
    assert_model_input(preprocess(Strokes([[[0, 0], [1, 1], [2, 5]]]), tight))


def test_preprocess_error_is_a_value_error() -> None:
    """Callers that only know ValueError still catch a refusal."""
    assert issubclass(PreprocessError, ValueError)


# --- properties: anything in, a model input / None / PreprocessError out -----------------------------------


def check(image: Pixels | Png | Strokes, limits: Limits = SMALL) -> None:
    try:
        result = preprocess(image, limits)
    except PreprocessError as error:
        assert str(error)
        return
    if result is not None:
        assert_model_input(result)


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.one_of(
    hnp.unsigned_integer_dtypes(),
    hnp.integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
points = st.one_of(
    st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=2),
    st.lists(numbers, max_size=4),
    numbers,
)
strokes = st.one_of(
    st.lists(st.lists(points, max_size=12), max_size=6),
    st.lists(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), max_size=12), max_size=5),
    numbers,
)


@PROPERTY
@given(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=80)))
def test_any_array_is_an_image_none_or_refused(array: np.ndarray) -> None:
    check(Pixels(array))


@PROPERTY
@given(hnp.arrays(np.float32, (40, 40), elements=st.floats(0, 1, width=32)))
def test_any_valid_float_raster_is_an_image_or_none(array: np.ndarray) -> None:
    result = preprocess(Pixels(array))
    if result is not None:
        assert_model_input(result)


@PROPERTY
@given(strokes, st.one_of(st.none(), st.tuples(numbers, numbers), numbers))
def test_any_strokes_are_an_image_none_or_refused(drawing: object, surface: object) -> None:
    check(Strokes(drawing, surface))  # type: ignore[arg-type]


def checked(strokes: object, limits: Limits) -> list[np.ndarray] | str:
    """What validate_strokes makes of ``strokes``: the checked strokes, or the message refusing them."""
    try:
        return preprocessing.validate_strokes(strokes, limits)  # type: ignore[arg-type]
    except PreprocessError as error:
        return str(error)


def assert_same_check(strokes: object, monkeypatch: pytest.MonkeyPatch, limits: Limits = SMALL) -> None:
    compiled = checked(strokes, limits)
    with monkeypatch.context() as numpy_only:
        numpy_only.setattr(preprocessing, "_compiled_gather", None)
        in_numpy = checked(strokes, limits)
    if isinstance(in_numpy, str) or isinstance(compiled, str):
        assert compiled == in_numpy, strokes
        return
    assert len(compiled) == len(in_numpy), strokes
    for one, other in zip(compiled, in_numpy, strict=True):
        assert one.dtype == other.dtype == np.float64 and one.shape == other.shape, strokes
        assert np.array_equal(one, other), strokes
        assert one.flags.writeable  # a caller may shift or scale the strokes it got back in place


COMPILED = pytest.mark.skipif(
    preprocessing._compiled_gather is None and not os.environ.get("CI"),
    reason="livedigit/_draw.c was not built here (no C compiler when installing): numpy checks every drawing",
)


@COMPILED
@PROPERTY
@given(strokes)
def test_the_compiled_check_of_strokes_takes_and_refuses_what_numpys_does(drawing: object) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert_same_check(drawing, monkeypatch)


@COMPILED
@pytest.mark.parametrize(
    "drawing",
    [
        [[[1, 2], [3.5, 4]], [], [[1e9, -1e9]]],
        [[[1, 2]], [[3, True]]],  # numpy reads a bool among ints as a number
        [[[True, False]]],
        [[[1e9 + 1, 0.0]]],
        [[[10**30, 0]]],
        [[[float("nan"), 0.0]]],
        [[[float("inf"), 0.0]]],
        [[["1", "2"]]],
        [[[1.0, 2.0, 3.0]]],
        [[[np.float64(1.5), 2]]],
        [[[np.int64(1), 2]]],
        [[[1.0]] * 3],
        [[[1.0, 2.0]]] * 5,  # more strokes than SMALL allows
        [[[1.0, 2.0]] * 20, [[3.0, 4.0]] * 13],  # more points than SMALL allows
        [[[1.0, 2.0]] * 20, [[3.0, 4.0]] * 12],
        [np.arange(8.0).reshape(4, 2), [[1.0, 2.0]]],
        [np.arange(8.0).reshape(4, 2)[::2]],  # not contiguous
        [np.arange(8.0).reshape(2, 4).T[:, :2]],
        [np.arange(8, dtype=np.float32).reshape(4, 2)],
        [np.arange(8, dtype=">f8").reshape(4, 2)],
        [np.arange(8, dtype=np.int64).reshape(4, 2)],
        [np.zeros((0, 2))],
        [np.zeros(0)],
        [np.array([[np.nan, 1.0]])],
        [np.array(3.0)],
        ((1.0, 2.0), (3.0, 4.0)),
        np.zeros((1, 3, 2)),
        "strokes",
    ],
)
def test_the_compiled_check_of_strokes_agrees_with_numpys_on_every_kind_of_input(
    drawing: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_same_check(drawing, monkeypatch)


@COMPILED
def test_the_compiled_check_reads_the_strokes_the_page_and_the_protocol_send() -> None:
    """Lists or tuples of numbers (a decoded message) and float64 arrays (a checked drawing, checked again
    where it is drawn) are checked in C, not handed back to numpy."""
    assert preprocessing._compiled_gather is not None, "CI installs with a C compiler (scripts/test.sh)"
    limits = (SMALL.max_strokes, SMALL.max_points, preprocessing.MAX_COORDINATE)
    for sent in ([[[1, 2], [3.5, 4]], [], [[5.0, 6.0]]], (((1.0, 2.0),),), [np.arange(8.0).reshape(4, 2)]):
        gathered = preprocessing._compiled_gather(sent, *limits)
        assert gathered is not None, sent
        points, lengths = gathered
        expected = checked(sent, SMALL)
        assert np.array_equal(np.frombuffer(points, np.float64).reshape(-1, 2), np.concatenate(expected))
        assert list(memoryview(lengths).cast("i")) == [len(stroke) for stroke in expected]


@COMPILED
def test_the_compiled_check_reads_only_numpys_own_arrays() -> None:
    """A subclass's buffer could run Python code between the compiled check's two passes (``__buffer__``),
    even a subclass that takes numpy's name: its strokes are left to the numpy check, which reads them."""
    assert preprocessing._compiled_gather is not None, "CI installs with a C compiler (scripts/test.sh)"
    lookalike = type("numpy.ndarray", (np.ndarray,), {})
    stroke = np.arange(8.0).reshape(4, 2).view(lookalike)
    limits = (SMALL.max_strokes, SMALL.max_points, preprocessing.MAX_COORDINATE)
    assert preprocessing._compiled_gather([stroke], *limits) is None
    assert np.array_equal(preprocessing.validate_strokes([stroke], SMALL)[0], np.arange(8.0).reshape(4, 2))


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda tail: b"\x89PNG\r\n\x1a\n" + tail),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=200)).map(
            lambda t: png_header(t[0], t[1]) + t[2]
        ),
    )
)
def test_any_bytes_are_an_image_none_or_refused(data: bytes) -> None:
    check(Png(data))


@PROPERTY
@given(
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=48)),
    st.sampled_from(["L", "RGB", "RGBA", "LA", "1", "P", "I;16"]),
)
def test_any_decodable_png_is_an_image_or_none(array: np.ndarray, mode: str) -> None:
    image = PILImage.fromarray(array).convert(mode)
    result = preprocess(Png(encode(image)), SMALL)
    if result is not None:
        assert_model_input(result)


@PROPERTY
@given(st.binary(min_size=1, max_size=64), st.integers(8, 200))
def test_corrupted_png_is_an_image_none_or_refused(noise: bytes, at: int) -> None:
    data = bytearray(valid_png())
    at = min(at, len(data) - 1)
    data[at : at + len(noise)] = noise
    check(Png(bytes(data)), Limits())
