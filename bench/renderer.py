"""Compare the stroke renderer with the one it replaced: pixels, the shipped model's accuracy, and time.

    python bench/renderer.py [--model models/livedigit-cnn] [--pen-digits ../shared/data/pen_digits.jsonl]

The previous renderer drew the strokes with Pillow on a canvas of 96 px (the drawing's longer side) with
a round pen 14% of that side wide, and shrank the ink's box to 20 px with an area filter; it is kept
here, as it was, only to be compared with. :func:`livedigit.preprocess.render_strokes` now computes each
pixel of the 20 px box from its distance to the strokes. On every pen-digits test digit sent as strokes
with the tablet's ``surface``, whole and cut after 50%, 75% and 90% of its points (as
``train.evaluate`` cuts them), this prints the mean and largest absolute difference between the two
28x28 outputs, the shipped model's top-1 accuracy with each (an ``empty`` answer counts as a miss), and
the CPU time per drawing of each renderer, both timed in this process, interleaved, as a ratio, for
drawings of up to 40, 80 and more points (97% of these snapshots have fewer than 80).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from scipy import ndimage

from livedigit import pendigits
from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import (
    BOX,
    DEFAULT_LIMITS,
    SIZE,
    STROKE_WIDTH,
    Strokes,
    measure_drawing,
    pen_path,
    render_strokes,
    validate_strokes,
)
from livedigit.runtime import load_runtime

CUTS = (0.5, 0.75, 0.9, 1.0)
"""Where each digit is cut, as fractions of its points (1.0: the whole digit)."""
PREVIOUS_RESOLUTION = 96
"""The previous renderer's canvas: the drawing's longer side, in pixels."""

Renderer = Callable[[Sequence[np.ndarray], tuple[float, float] | None], np.ndarray | None]


def previous_renderer(strokes: Sequence[np.ndarray], surface: tuple[float, float] | None) -> np.ndarray | None:
    """The renderer as it was before (commit d3c132f): Pillow at 96 px, area-filtered down to 20 px."""
    drawing = measure_drawing(strokes, surface)
    if drawing is None:
        return None
    points, everything, low, span = drawing
    extent = float(span.max())
    pen = max(1.0, STROKE_WIDTH * PREVIOUS_RESOLUTION)
    margin = math.ceil(pen)
    side = PREVIOUS_RESOLUTION + 2 * margin + 1
    canvas = PILImage.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas).draw
    radius = pen / 2.0
    snapped = (np.round((everything - low) / extent * PREVIOUS_RESOLUTION * 64.0) / 64.0 + margin).tolist()
    start = 0
    for stroke in points:
        coords = list(map(tuple, snapped[start : start + len(stroke)]))
        start += len(stroke)
        if len(coords) > 1:
            draw.draw_lines(coords, 255, round(pen))
        for x, y in dict.fromkeys(coords):
            draw.draw_ellipse((x - radius, y - radius, x + radius, y + radius), 255, 1)
    box = canvas.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    crop = np.asarray(canvas)[top:bottom, left:right].astype(np.float32) / 255.0
    height, width = crop.shape
    scale = BOX / max(height, width)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    resample = PILImage.Resampling.BOX if scale < 1.0 else PILImage.Resampling.BILINEAR
    scaled = np.clip(np.asarray(PILImage.fromarray(crop, mode="F").resize((new_width, new_height), resample)), 0, 1)
    centre_y, centre_x = ndimage.center_of_mass(scaled)
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    y = min(max(round(SIZE / 2 - centre_y), 0), SIZE - new_height)
    x = min(max(round(SIZE / 2 - centre_x), 0), SIZE - new_width)
    out[y : y + new_height, x : x + new_width] = scaled
    return out


def current_renderer(strokes: Sequence[np.ndarray], surface: tuple[float, float] | None) -> np.ndarray | None:
    return render_strokes(strokes, surface)


def frames(digits: list[pendigits.PenDigit], cut: float) -> list[list[np.ndarray]]:
    """Each digit's first ``ceil(cut * points)`` points, validated as the protocol hands them on."""
    cut_digits = []
    for digit in digits:
        points = sum(len(stroke) for stroke in digit.strokes)
        cut_digits.append(validate_strokes(pendigits.prefix(digit.strokes, math.ceil(cut * points)), DEFAULT_LIMITS))
    return cut_digits


def timed(renderer: Renderer, drawings: list[list[np.ndarray]]) -> float:
    """CPU seconds per drawing of this thread: what the renderer costs, even beside other busy processes."""
    started = time.thread_time()
    for strokes in drawings:
        renderer(strokes, pendigits.SURFACE)
    return (time.thread_time() - started) / len(drawings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/renderer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model base path (.tflite)")
    parser.add_argument("--pen-digits", default=str(pendigits.DEFAULT_PATH), help="pen_digits.jsonl")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each renderer, interleaved")
    args = parser.parse_args(argv)
    runtime = load_runtime(args.model)
    digits = pendigits.load(args.pen_digits, "test")
    labels = np.array([digit.label for digit in digits])
    print(f"pen-digits test: {len(digits)} digits; model {args.model}")
    print("| cut | mean abs diff | max abs diff | accuracy, previous | accuracy, current |")
    print("| --- | --- | --- | --- | --- |")
    every: list[list[np.ndarray]] = []
    for cut in CUTS:
        drawings = frames(digits, cut)
        every.extend(drawings)
        accuracy = []
        diffs = []
        largest = 0.0
        outputs = {}
        for name, renderer in (("previous", previous_renderer), ("current", current_renderer)):
            images = [renderer(strokes, pendigits.SURFACE) for strokes in drawings]
            outputs[name] = images
            drawn = [index for index, image in enumerate(images) if image is not None]
            guesses = np.full(len(images), -1)
            if drawn:
                batch = np.stack([image for image in images if image is not None])
                paths = (
                    np.stack([pen_path(Strokes(drawings[index])) for index in drawn]) if runtime.reads_path else None
                )
                guesses[drawn] = runtime.predict(batch, paths).argmax(axis=1)
            accuracy.append(100.0 * float((guesses == labels).mean()))
        for before, after in zip(outputs["previous"], outputs["current"], strict=True):
            if before is None or after is None:
                if (before is None) != (after is None):
                    largest = 1.0
                continue
            difference = np.abs(before - after)
            diffs.append(float(difference.mean()))
            largest = max(largest, float(difference.max()))
        print(
            f"| {cut:.0%} | {np.mean(diffs):.4f} | {largest:.3f} | {accuracy[0]:.2f}% | {accuracy[1]:.2f}% "
            f"({accuracy[1] - accuracy[0]:+.2f}) |"
        )
    print(f"CPU time per drawing, best of {args.rounds} interleaved rounds:")
    sample = every[:: max(1, len(every) // 4000)]
    for least, most in ((1, 39), (40, 79), (80, None)):
        group = [strokes for strokes in sample if least <= sum(map(len, strokes)) <= (most or math.inf)]
        previous, current = [], []
        for _ in range(args.rounds):
            previous.append(timed(previous_renderer, group))
            current.append(timed(current_renderer, group))
        slow, fast = min(previous), min(current)
        points = f"{least}-{most}" if most else f"{least}+"
        print(
            f"  {points} points ({len(group)} drawings): previous {slow * 1e6:.0f} us, current {fast * 1e6:.0f} us, "
            f"ratio {fast / slow:.2f}"
        )


if __name__ == "__main__":
    main()
