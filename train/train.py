"""Train the livedigit CNN on MNIST plus real pen trajectories, and export what the server loads.

    python -m train --data ../shared/data/mnist.npz --pen-digits ../shared/data/pen_digits.jsonl \
        [--extra-pen labels.jsonl]

Every input goes through ``livedigit.preprocess``, the same code the server runs, so the model sees
training digits exactly as it will see a person's drawing. The pen-digits *train* split, minus six
validation writers, is rendered from its strokes several times with random slant, shear, aspect and pen
width; MNIST's training digits, minus the last 5,000, are used as they are (see ``train/data.py``).
``--extra-pen`` adds files in the same layout, such as the corrections people made on the page
(``livedigit labels export``), split by writer in the same way: their train rows join the training set
(drawings sent as pixels are used as rasters, as often as a stroke drawing is rendered), their test rows
are measured as ``extra_pen_test``. On-the-fly augmentation adds small rotations, shears, zooms, shifts
and thicker or thinner ink, and with ``--elastic`` a smooth random bending of each image. With
``--reorder``, some renderings carry the path of their strokes drawn in another order and direction.

Three additions teach what a person drawing on the page needs, beyond whole digits:

* **Prefixes** (``--prefix-cuts``): each pen-digits training digit cut after a share of its points, as
  the page sends it while the pen moves, carrying the final label at ``--prefix-weight``. A live
  snapshot is a partial drawing; a network that never saw one reads a half-drawn 4 as a 6.
* **Negatives** (``--negative-seeds``): drawings that are not digits (``train/negatives.py``, the
  ``fit`` half's fonts and shapes with other jitter seeds; the held-out fonts are never used), with the
  uniform distribution over the ten digits as their target, so the model spreads its belief on them and
  the verdict rule can call them ``not_a_digit``.
* **Distillation** (``--teacher``): the whole digits' target is mixed with a trained model's softened
  probabilities (``--teacher-share`` of it, at ``--teacher-temperature``), computed once on the
  un-augmented images; a small network learns more from a teacher's graded beliefs than from labels.
  The teacher is a LiteRT model, or the ``.keras`` that ``python -m train.teacher`` writes.

After training, the verdict rule is fitted on the validation digits and the fitting negatives
(``train/calibrate.py``), and every figure of the card is measured through the serving path
(``train/evaluate.py``); the test splits (MNIST test, the 14 pen-digits test writers) only measure.

Writes ``<out>/<name>.keras`` (Keras model), ``<out>/<name>.tflite`` (float32, for LiteRT; ``python -m
train.quantize`` makes the 8-bit one that is served) and
``<out>/<name>.json`` (model card: architecture, parameters, FLOPs, data, seed, commit, accuracies, the
verdict rule and the evaluation figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from livedigit import pendigits
from livedigit.preprocess import (
    PATH_FEATURES,
    PATH_POINTS,
    SIZE,
    STROKE_WIDTH,
    Strokes,
    model_input,
    pen_path,
    render_strokes,
)
from livedigit.runtime import LiteRTRuntime, Runtime, TensorFlowRuntime, load_runtime
from train import blend, calibrate, evaluate, negatives
from train.augment import augment
from train.data import MNIST_VALIDATION, as_served, load_mnist, model_inputs, rasters, run

REPO = Path(__file__).resolve().parent.parent
QUICK_LIMIT = 300
"""With ``--quick``: images per measured set (spread over each set)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="MNIST .npz in Keras layout (default: Keras's download)")
    parser.add_argument("--pen-digits", default=str(pendigits.DEFAULT_PATH), help="pen_digits.jsonl")
    parser.add_argument(
        "--extra-pen",
        action="append",
        default=[],
        metavar="JSONL",
        help="more digits in the pen-digits layout, e.g. from 'livedigit labels export' (repeatable)",
    )
    parser.add_argument("--pen-copies", type=int, default=6, help="augmented renderings per pen-digits train digit")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="separable", help="network (see build_model)")
    parser.add_argument(
        "--channels",
        type=widths,
        default=(32, 72, 144),
        help="channels at 28x28, 14x14 and 7x7 (comma-separated; default 32,72,144; see build_model)",
    )
    parser.add_argument(
        "--blocks",
        type=depths,
        default=None,
        help="convolution blocks at 14x14 and 7x7 (comma-separated; default 2,2 for separable, 2,1 for cnn)",
    )
    parser.add_argument(
        "--path",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the network the pen's path beside the image (livedigit.preprocess.pen_path)",
    )
    parser.add_argument(
        "--blend",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the path-reading network's logits with the path and without, averaged (train/blend.py)",
    )
    parser.add_argument(
        "--path-dropout",
        type=float,
        default=0.2,
        help="share of the drawings with strokes trained without their path, as a raster of them would come",
    )
    parser.add_argument(
        "--loop-starts",
        type=float,
        default=0.0,
        help="share of the augmented renderings of one-stroke 0s whose path begins elsewhere on the loop, "
        "either way round (default 0; see render_pen)",
    )
    parser.add_argument(
        "--reorder",
        type=float,
        default=0.0,
        help="share of the augmented renderings and cut digits of the pen-digits train drawings drawn in "
        "another order and direction: strokes shuffled, each reversed with even odds (default 0; see redraw)",
    )
    parser.add_argument(
        "--device",
        type=float,
        default=0.0,
        help="share of the augmented renderings of the pen-digits train drawings recorded as another device "
        "would: fewer points, each a little off (default 0; see as_recorded)",
    )
    parser.add_argument(
        "--elastic",
        type=float,
        default=0.0,
        help="standard deviation, pixels, of the on-the-fly elastic distortion at its control points "
        "(default 0: none; see train.augment.augment)",
    )
    parser.add_argument(
        "--prefix-cuts",
        default="0.75,0.9",
        help="shares of its points each pen-digits train digit is also cut at (comma-separated; '' for none)",
    )
    parser.add_argument("--prefix-weight", type=float, default=0.2, help="loss weight of a cut digit")
    parser.add_argument(
        "--negative-seeds", type=int, default=4, help="copies of the fitting negatives, each with its own jitter"
    )
    parser.add_argument("--negative-weight", type=float, default=0.3, help="loss weight of a negative")
    parser.add_argument(
        "--teacher",
        default=None,
        help="model base path whose beliefs are distilled: its .tflite, or its .keras (python -m train.teacher)",
    )
    parser.add_argument("--teacher-share", type=float, default=0.5, help="share of the target the teacher sets")
    parser.add_argument("--teacher-temperature", type=float, default=2.0, help="softening of the teacher's beliefs")
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "models"), help="output directory")
    parser.add_argument("--name", default="livedigit-cnn", help="base name of the output files")
    parser.add_argument("--quick", action="store_true", help="tiny subset and one epoch: checks the pipeline")
    return parser.parse_args(argv)


def widths(text: str) -> tuple[int, int, int]:
    """``--channels``: three positive widths, comma-separated."""
    try:
        first, middle, last = (int(width) for width in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"three comma-separated widths, got {text!r}") from None
    if min(first, middle, last) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return first, middle, last


def depths(text: str) -> tuple[int, int]:
    """``--blocks``: two positive counts, comma-separated."""
    try:
        middle, last = (int(count) for count in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"two comma-separated counts, got {text!r}") from None
    if min(middle, last) < 1:
        raise argparse.ArgumentTypeError(f"counts must be positive, got {text!r}")
    return middle, last


def normalize_all(images: np.ndarray) -> np.ndarray:
    """Pass raw uint8 images through the serving preprocessing; empty results become blank images."""
    return model_inputs(rasters(images))[0]


def render_pen(
    digits: list[pendigits.PenDigit],
    copies: int,
    rng: np.random.Generator,
    loop_starts: float = 0.0,
    loops: np.random.Generator | None = None,
    reorder: float = 0.0,
    orders: np.random.Generator | None = None,
    device: float = 0.0,
    devices: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render each digit once as drawn and ``copies`` more times with a random affine and pen width: the
    images, the pen's paths (of the same transformed strokes) and the labels.

    A share ``loop_starts`` of the copies of a 0 drawn in one stroke get the path of the same loop begun
    at a random one of its points, half of them going round the other way (:func:`restart_loop`, drawn
    from ``loops``); the image stays that of the strokes as drawn. The training writers nearly all begin
    a 0 at its top or left and go anticlockwise, and a network that reads the path would otherwise learn
    that a loop begun on the right, where 9s are begun, is a 9.

    A share ``reorder`` of the other copies get the path of their strokes drawn in another order and
    direction (:func:`redraw`, drawn from ``orders``); the image, which does not depend on either, stays.

    A share ``device`` of the copies are drawn as another device would record them (:func:`as_recorded`,
    drawn from ``devices``): fewer points, each a little off; image and path alike.

    A digit drawn as pixels is normalized once and used ``copies + 1`` times, so it weighs as much as a
    drawing with strokes; the on-the-fly augmentation varies its copies. It has no path.
    """
    images, paths, labels = [], [], []
    for digit in digits:
        if digit.pixels is not None:
            found = model_input(digit.image())
            if found is not None:
                images.extend([found[0]] * (copies + 1))
                paths.extend([found[1]] * (copies + 1))
                labels.extend([digit.label] * (copies + 1))
            continue
        for copy in range(copies + 1):
            strokes = [np.asarray(s, dtype=np.float64) for s in digit.strokes]
            width = STROKE_WIDTH
            if copy:
                angle = math.radians(rng.uniform(-12, 12))
                shear = rng.uniform(-0.3, 0.3)
                aspect = math.exp(rng.uniform(-0.2, 0.2))
                matrix = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
                matrix = matrix @ np.array([[aspect, shear], [0.0, 1.0 / aspect]])
                strokes = [s @ matrix.T for s in strokes]
                width = STROKE_WIDTH * rng.uniform(0.7, 1.4)
                if device and devices is not None and devices.random() < device:
                    strokes = as_recorded(strokes, devices)
            travelled = strokes
            if copy and digit.label == 0 and len(strokes) == 1 and loops is not None and loops.random() < loop_starts:
                travelled = [restart_loop(strokes[0], loops)]
            elif copy and reorder and orders is not None and orders.random() < reorder:
                travelled = redraw(strokes, orders)
            image = render_strokes(strokes, width=width)
            if image is not None:
                images.append(image)
                paths.append(pen_path(Strokes(travelled)))
                labels.append(digit.label)
    return np.stack(images), np.stack(paths), np.asarray(labels, dtype=np.int64)


DEVICE_STEPS = (2, 3, 4)
"""A device recording a drawing keeps one point in this many of the pen-digits tablet's (one chosen)..."""

DEVICE_JITTER = 0.015
"""...and places each up to (a standard deviation chosen up to) this share of the drawing's size off."""


def as_recorded(strokes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """``strokes`` as a device with a slower sampling rate and a noisier sensor records them: every k-th
    point of each stroke (:data:`DEVICE_STEPS`, from a random one, its first and last points kept), each
    moved by normal noise (:data:`DEVICE_JITTER`).

    The pen-digits tablet records a digit in about 37 points, each within a fraction of a pixel; a
    phone's finger or another tablet records fewer and less exactly. With every fourth point of each
    pen-digits test digit the shipped model read 96.7% of them, against 99.1% as recorded."""
    step = int(rng.choice(DEVICE_STEPS))
    everything = np.concatenate(strokes)
    spread = rng.uniform(0.0, DEVICE_JITTER) * float((everything.max(axis=0) - everything.min(axis=0)).max())
    recorded = []
    for stroke in strokes:
        kept = np.unique(
            np.concatenate([[0], np.arange(int(rng.integers(step)), len(stroke), step), [len(stroke) - 1]])
        )
        recorded.append(stroke[kept] + rng.normal(0.0, spread, (len(kept), 2)))
    return recorded


def restart_loop(stroke: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The loop ``stroke`` drawn from a random one of its points, and with even odds the other way round:
    another way of drawing the same 0. Its last point becomes the neighbour of its first, so the gap
    between where the loop ended and where it began is crossed by one step (a 0 ends near its start:
    about a fifth of its size away for the median training writer)."""
    start = int(rng.integers(len(stroke)))
    restarted = np.concatenate([stroke[start:], stroke[:start]])
    return restarted[::-1] if rng.random() < 0.5 else restarted


Stroke = TypeVar("Stroke", np.ndarray, list[list[float]])


def redraw(strokes: Sequence[Stroke], rng: np.random.Generator) -> list[Stroke]:
    """The same strokes drawn in another order and direction: shuffled, each reversed with even odds.

    Writers taught otherwise draw the same digit so: a 0 clockwise, a 4's two strokes the other way
    round, a 5's bar before its body, lines from right to left. The training writers mostly share one
    way, and a network that reads the path would take their way for the digit: with the strokes of each
    pen-digits validation digit in reverse order, the shipped model read 91.3% of them, against 99.7% as
    drawn and 98.8% from the image alone."""
    order = rng.permutation(len(strokes))
    return [strokes[index][::-1] if rng.random() < 0.5 else strokes[index] for index in order]


def render_prefixes(
    digits: list[pendigits.PenDigit],
    cuts: list[float],
    rng: np.random.Generator,
    reorder: float = 0.0,
    orders: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each stroke-drawn digit cut after each share in ``cuts`` of its points (as the page sends a drawing
    while the pen moves), rendered with a random pen width; the final label. A share ``reorder`` of the
    cuts are of the digit drawn in another order and direction (:func:`redraw`, from ``orders``), so
    their image is another partial drawing too. Cuts that are empty or a dot are left out, as the server
    answers ``empty`` for them. Returns the images, paths and labels."""
    images, paths, labels = [], [], []
    for digit in digits:
        if digit.pixels is not None:
            continue
        for cut in cuts:
            drawn = digit
            if reorder and orders is not None and orders.random() < reorder:
                drawn = dataclasses.replace(digit, strokes=redraw(digit.strokes, orders))
            served = as_served(drawn, cut)
            image = render_strokes(served.strokes, served.surface, width=STROKE_WIDTH * rng.uniform(0.8, 1.25))
            if image is not None:
                images.append(image)
                paths.append(pen_path(served))
                labels.append(digit.label)
    if not images:
        return (
            np.zeros((0, SIZE, SIZE), np.float32),
            np.zeros((0, PATH_POINTS, PATH_FEATURES), np.float32),
            np.zeros(0, np.int64),
        )
    return np.stack(images), np.stack(paths), np.asarray(labels, dtype=np.int64)


def make_negatives(seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitting half of ``train/negatives.py`` made with jitter seeds 1..``seeds`` (seed 0 is what the
    verdict rule is fitted on), preprocessed as the server would: the images and the pen's paths."""
    made = [negative.image for seed in range(1, seeds + 1) for negative in negatives.negatives("fit", seed=seed)]
    images, paths, empty = model_inputs(made)
    return images[~empty], paths[~empty]


ARCHITECTURES = ("separable", "cnn")


def build_model(  # type: ignore[no-untyped-def]
    arch: str = "separable",
    channels: tuple[int, int, int] = (32, 72, 144),
    name: str | None = None,
    path: bool = False,
    blocks: tuple[int, int] | None = None,
):
    """A small CNN: full resolution only for the cheap first layer; the capacity sits at 14x14 and 7x7.

    ``cnn`` uses full 3x3 convolutions there (14.8 M multiply-adds with 32, 64 and 128 channels, the
    network shipped before); ``separable`` replaces each with a 3x3 depthwise and a 1x1 pointwise
    convolution (3.1 M at those widths, 3.7 M at the default ones), the same receptive field at a fifth
    of the work, which is what a server running every live snapshot of every person pays for.
    ``channels`` sets the width at 28x28, 14x14 and 7x7 (docs/model.md says what each width was worth),
    ``blocks`` how many convolutions run at 14x14 and at 7x7 (default: two and two, or two and one for
    ``cnn``, whose 7x7 convolution is the dearest layer).
    With ``path``, a second input takes the pen's path (:func:`livedigit.preprocess.pen_path`) through two
    small dense layers whose output joins the image's features before the last two: the way a drawing
    was drawn tells digits apart that look alike, for 0.04 MFLOPs.
    """
    first, middle, last = channels
    middle_blocks, last_blocks = blocks or default_blocks(arch)
    import keras
    from keras import layers

    def conv(x, filters):  # type: ignore[no-untyped-def]
        if arch == "separable" and x.shape[-1] > 1:
            x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
            x = layers.Conv2D(filters, 1, use_bias=False)(x)
        else:
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x)

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = conv(inputs, first)
    x = layers.MaxPooling2D()(x)
    for _ in range(middle_blocks):
        x = conv(x, middle)
    x = layers.MaxPooling2D()(x)
    for _ in range(last_blocks):
        x = conv(x, last)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    sources = [inputs]
    if path:
        drawn = keras.Input((PATH_POINTS, PATH_FEATURES), name="path")
        sources.append(drawn)
        way = layers.Flatten()(drawn)
        way = layers.Dense(64, activation="relu")(way)
        way = layers.Dense(64, activation="relu")(way)
        x = layers.Concatenate()([x, way])
    x = layers.Dense(128, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(sources if path else inputs, outputs, name=name or f"livedigit_{arch}")


def default_blocks(arch: str) -> tuple[int, int]:
    """:func:`build_model`'s blocks at 14x14 and 7x7 when none are given."""
    return (2, 2) if arch == "separable" else (2, 1)


def flops_per_sample(model) -> int:  # type: ignore[no-untyped-def]
    """Multiply-adds of the convolution and dense layers, times two; a layer the network runs twice (the
    path's, in the blended form, ``train/blend.py``) counts twice."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        calls = len(layer._inbound_nodes)  # Keras keeps no public count of a layer's calls
        if kind in ("DepthwiseConv2D", "Conv2D"):
            _, height, width, _ = layer._inbound_nodes[0].outputs[0].shape
            kh, kw, inputs, outputs = layer.kernel.shape
            total += calls * height * width * kh * kw * inputs * outputs
        elif kind == "Dense":
            total += calls * layer.kernel.shape[0] * layer.kernel.shape[1]
    return 2 * int(total)


def describe(model) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The card's description of a network: its layers with their output shapes, parameters and FLOPs."""
    import keras

    built = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    shapes = [layer._inbound_nodes[0].outputs[0].shape[1:] for layer in built]
    return {
        "architecture": [f"{type(layer).__name__}{tuple(shape)}" for layer, shape in zip(built, shapes, strict=True)],
        "parameters": int(model.count_params()),
        "flops_per_sample": flops_per_sample(model),
    }


def export_tflite(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Write ``model`` as a float32 LiteRT model."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved_model:
        model.export(saved_model, format="tf_saved_model", verbose=False)
        path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(saved_model).convert())


def teacher_beliefs(base: Path, images: np.ndarray, paths: np.ndarray | None = None) -> np.ndarray:
    """A trained model's probabilities for ``images`` (and their pen's ``paths``, for a teacher that reads
    them), through the serving runtime: its ``.tflite`` with LiteRT where there is one, else its ``.keras``
    (what ``python -m train.teacher`` writes) with TensorFlow. A teacher that reads the path is asked about
    the drawing the student learns from, path and all, not about its image alone."""
    runtime: Runtime
    if base.with_suffix(".tflite").exists():
        runtime = LiteRTRuntime(base.with_suffix(".tflite"))
    else:  # TensorFlow's threads stay as the training set them.
        runtime = TensorFlowRuntime(base.with_suffix(".keras"))
    chunks = [slice(start, start + 1024) for start in range(0, len(images), 1024)]
    return np.concatenate([runtime.predict(images[at], None if paths is None else paths[at]) for at in chunks])


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    commit = git_commit()

    print("loading MNIST and the pen digits ...", flush=True)
    x_train, y_train, x_test, _ = load_mnist(args.data)
    mnist_validation = (x_train[-MNIST_VALIDATION:], y_train[-MNIST_VALIDATION:])
    x_train, y_train = x_train[:-MNIST_VALIDATION], y_train[:-MNIST_VALIDATION]
    pen_train, pen_validation = pendigits.split_writers(pendigits.load(args.pen_digits, "train"))
    limit = QUICK_LIMIT if args.quick else None
    if args.quick:
        x_train, y_train = x_train[:2000], y_train[:2000]
        pen_train = pen_train[:300]
        args.epochs, args.pen_copies = 1, 1
    extra_train: list[pendigits.PenDigit] = []
    extra_test: list[pendigits.PenDigit] = []
    for path in args.extra_pen:
        train_part, test_part = pendigits.load(path, "train"), pendigits.load(path, "test")
        rasters = sum(digit.pixels is not None for digit in train_part + test_part)
        print(
            f"{path}: {len(train_part)} digits for training, {len(test_part)} for testing "
            f"({rasters} drawn as pixels, used as rasters)",
            flush=True,
        )
        extra_train += train_part
        extra_test += test_part

    print(f"normalizing {len(x_train)} MNIST images ...", flush=True)
    mnist_images = normalize_all(x_train)
    count = len(pen_train) + len(extra_train)
    print(f"rendering {count} pen-digits train drawings x{args.pen_copies + 1} ...", flush=True)
    orders = np.random.default_rng([args.seed, 1])  # --reorder's own draws: the other streams stay as they were
    pen_images, pen_paths, pen_labels = render_pen(
        pen_train + extra_train,
        args.pen_copies,
        rng,
        args.loop_starts,
        np.random.default_rng([args.seed, 0]),
        args.reorder,
        orders,
        args.device,
        np.random.default_rng([args.seed, 2]),  # --device's own draws
    )
    whole_images = np.concatenate([mnist_images, pen_images])
    whole_paths = np.concatenate([np.zeros((len(mnist_images), PATH_POINTS, PATH_FEATURES), np.float32), pen_paths])
    whole_labels = np.concatenate([y_train.astype(np.int64), pen_labels])
    whole_targets = np.eye(10, dtype=np.float32)[whole_labels]
    if args.teacher:
        print(f"distilling {args.teacher} on {len(whole_images)} whole digits ...", flush=True)
        beliefs = teacher_beliefs(Path(args.teacher), whole_images, whole_paths)
        softened = np.exp(np.log(np.clip(beliefs, 1e-12, 1.0)) / args.teacher_temperature)
        softened /= softened.sum(axis=1, keepdims=True)
        whole_targets = (1 - args.teacher_share) * whole_targets + args.teacher_share * softened.astype(np.float32)
    cuts = [float(cut) for cut in args.prefix_cuts.split(",") if cut.strip()]
    print(f"rendering the pen-digits train drawings cut at {cuts} ...", flush=True)
    prefix_images, prefix_paths, prefix_labels = render_prefixes(
        pen_train + extra_train, cuts, rng, args.reorder, orders
    )
    print(f"making {args.negative_seeds} x the fitting negatives ...", flush=True)
    negative_images, negative_paths = make_negatives(0 if args.quick else args.negative_seeds)
    train_images = np.concatenate([whole_images, prefix_images, negative_images])
    train_paths = np.concatenate([whole_paths, prefix_paths, negative_paths])
    # Some drawings with strokes are trained without their path, so the image alone still reads them.
    train_paths[rng.random(len(train_paths)) < args.path_dropout] = 0.0
    train_targets = np.concatenate(
        [
            whole_targets,
            np.eye(10, dtype=np.float32)[prefix_labels],
            np.full((len(negative_images), 10), 0.1, dtype=np.float32),
        ]
    )
    train_weights = np.concatenate(
        [
            np.ones(len(whole_images), np.float32),
            np.full(len(prefix_images), args.prefix_weight, np.float32),
            np.full(len(negative_images), args.negative_weight, np.float32),
        ]
    )
    trained_at = time.time()

    steps = math.ceil(len(train_images) / args.batch_size)

    def augmented(i, batch):  # type: ignore[no-untyped-def]
        images = augment(batch[0], tf.cast(i, tf.int32) + args.seed * 100003, args.elastic)
        return ((images, batch[1]) if args.path else images), batch[2], batch[3]

    dataset = (
        tf.data.Dataset.from_tensor_slices((train_images[..., None], train_paths, train_targets, train_weights))
        .shuffle(len(train_images), seed=args.seed, reshuffle_each_iteration=True)
        .batch(args.batch_size)
        .enumerate()
        .map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    blocks = args.blocks or default_blocks(args.arch)
    model = build_model(args.arch, args.channels, path=args.path, blocks=blocks)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=steps * args.epochs - steps // 2 if args.epochs > 1 else steps,
        warmup_target=args.learning_rate,
        warmup_steps=steps // 2,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, use_ema=True, ema_momentum=0.999),
        loss="categorical_crossentropy",
    )
    print(
        f"training on {len(train_images)} images ({len(whole_images)} whole digits, {len(prefix_images)} cut, "
        f"{len(negative_images)} negatives) for {args.epochs} epochs",
        flush=True,
    )
    model.fit(dataset, epochs=args.epochs, verbose=2 if not sys.stdout.isatty() else 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras_path, tflite_path, card_path = (out / f"{args.name}{ext}" for ext in (".keras", ".tflite", ".json"))
    if args.path and args.blend:
        model = blend.blended(model)
    model.compile(loss="categorical_crossentropy")  # drops the optimizer state from the archive
    model.save(keras_path)
    export_tflite(model, tflite_path)
    runtime = load_runtime(tflite_path, "litert")
    parity_inputs = np.concatenate([normalize_all(x_test[:256]), pen_images[:256]])
    no_paths = np.zeros((len(parity_inputs) - len(pen_images[:256]), PATH_POINTS, PATH_FEATURES), np.float32)
    parity_paths = np.concatenate([no_paths, pen_paths[:256]])
    keras_inputs = [parity_inputs[..., None], parity_paths] if args.path else parity_inputs[..., None]
    keras_probabilities = model(keras_inputs, training=False).numpy()
    parity = float(np.abs(keras_probabilities - runtime.predict(parity_inputs, parity_paths)).max())

    print("fitting the verdict rule on the validation digits and the fitting negatives ...", flush=True)
    fitting_at = time.time()
    sets = evaluate.load_sets(args.data, args.pen_digits, limit, seed=0, extra_test=extra_test)
    validation = calibrate.validation_outputs(runtime, mnist_validation, pen_validation, limit)
    fitting_negatives = run(runtime, [negative.image for negative in sets.negatives["fit"]], "fitting negatives")
    rule, fitted = calibrate.fit(validation, fitting_negatives)
    evaluating_at = time.time()
    figures = evaluate.evaluate(runtime, rule, sets)
    figures["measured"] = {"command": "python -m train", "limit": limit}
    card = {
        "name": args.name,
        **describe(model),
        "input": "28x28 float32, ink = 1.0, MNIST-normalized by livedigit.preprocess"
        + (
            f"; the pen's path, {PATH_POINTS}x{PATH_FEATURES} float32 (livedigit.preprocess.pen_path)"
            if args.path
            else ""
        ),
        "training": {
            "data": [
                f"MNIST train ({len(x_train):,}; the last {MNIST_VALIDATION:,} held out for validation)",
                f"pen_digits train split minus its {pendigits.VALIDATION_WRITERS} validation writers "
                f"({len(pen_train)} digits, {len({d.writer for d in pen_train})} writers) "
                f"x{args.pen_copies + 1} renderings",
                f"the same pen digits cut at {cuts} of their points ({len(prefix_images)}, weight "
                f"{args.prefix_weight})",
                f"negatives: the fitting half of train/negatives.py with jitter seeds 1-{args.negative_seeds} "
                f"({len(negative_images)}, uniform target, weight {args.negative_weight})",
            ]
            + (
                [
                    f"extra pen digits ({len(extra_train)} digits, "
                    f"{len({d.writer for d in extra_train})} writers) x{args.pen_copies + 1}: "
                    + ", ".join(Path(path).name for path in args.extra_pen)
                ]
                if extra_train
                else []
            ),
            "samples": len(train_images),
            "cut_digits": len(prefix_images),
            "negatives": len(negative_images),
            "architecture": args.arch,
            "channels": list(args.channels),
            "blocks": list(blocks),
            "path": args.path,
            "path_dropout": args.path_dropout if args.path else None,
            "blend": args.path and args.blend,
            "loop_starts": args.loop_starts,
            "reorder": args.reorder,
            "device": args.device,
            "elastic": args.elastic,
            "teacher": (
                {"model": Path(args.teacher).name, "share": args.teacher_share, "temperature": args.teacher_temperature}
                if args.teacher
                else None
            ),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "quick": args.quick,
            "seconds": round(time.time() - started, 1),
            "step_seconds": {
                "data": round(trained_at - started, 1),
                "training": round(fitting_at - trained_at, 1),
                "verdict_rule": round(evaluating_at - fitting_at, 1),
                "evaluation": round(time.time() - evaluating_at, 1),
            },
            "tensorflow": tf.__version__,
        },
        "git_commit": commit,
        "tflite_vs_keras_max_abs_difference": parity,
        "verdict": {**rule.to_card(), "fitted": fitted},
    }
    evaluate.store(card_path, card, figures)
    print(evaluate.table({**figures, "cost": {k: card[k] for k in ("flops_per_sample", "parameters")}}))
    print(f"wrote {keras_path}, {tflite_path}, {card_path}", flush=True)
    return 0
