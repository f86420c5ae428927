"""Train a teacher for ``python -m train --teacher``: several wider networks averaged into one model.

    python -m train.teacher --data ../shared/data/mnist.npz --pen-digits ../shared/data/pen_digits.jsonl \
        --out /tmp/teacher

The teacher learns from the student's whole digits (``train/train.py``: MNIST's training digits minus
the validation ones, the pen-digits train writers minus the validation writers, rendered from their
strokes with the same random slant, shear, aspect and pen width) with the same on-the-fly augmentation
(``train/augment.py``). Each member is ``build_model("cnn", --channels)``, full 3x3 convolutions at
about twice the student's widths, trained with its own seed; the members' probabilities are averaged. Its
only use is the targets it gives the student, so it may cost what the server cannot pay.

The script uses Keras alone, so it runs on any Keras backend: TensorFlow on a CPU (an epoch of one
member takes minutes on two cores), or JAX where a GPU is (``KERAS_BACKEND=jax``; seconds an epoch).
Validation and test accuracy of each member and of the average are measured through the serving
preprocessing (strokes as the page sends them) and printed; the test splits only measure.

Writes ``<out>/<name>.keras`` (the averaged members, one model) and ``<out>/<name>.json`` (accuracies,
members, data, seeds, seconds, backend, commit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livedigit import pendigits
from livedigit.preprocess import SIZE, Image
from train.augment import augmentation_layer
from train.data import MNIST_VALIDATION, as_served, load_mnist, model_inputs, rasters
from train.train import REPO, build_model, flops_per_sample, git_commit, normalize_all, render_pen, widths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="MNIST .npz in Keras layout (default: Keras's download)")
    parser.add_argument("--pen-digits", default=str(pendigits.DEFAULT_PATH), help="pen_digits.jsonl")
    parser.add_argument("--members", type=int, default=8, help="networks averaged")
    parser.add_argument("--channels", type=widths, default=(64, 128, 256), help="channels at 28x28, 14x14, 7x7")
    parser.add_argument("--pen-copies", type=int, default=6, help="augmented renderings per pen-digits train digit")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=1, help="member k is trained with seed + k")
    parser.add_argument(
        "--out", default=str(REPO / "build" / "teacher"), help="output directory (not models/: it is never served)"
    )
    parser.add_argument("--name", default="livedigit-teacher", help="base name of the output files")
    parser.add_argument("--quick", action="store_true", help="tiny subset, one epoch, two members: a pipeline check")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Served:
    """A measured set as the model sees it: each drawing through the serving preprocessing, once."""

    inputs: np.ndarray
    empty: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, drawings: Sequence[Image], labels: Sequence[int] | np.ndarray) -> Served:
        inputs, _, empty = model_inputs(drawings)
        return cls(inputs[..., None], empty, np.asarray(labels))

    def accuracy(self, model: Any) -> float:
        """Percent of the set the model names right; an empty drawing counts as wrong, as the server
        names no digit for it."""
        predicted = np.asarray(model.predict(self.inputs, batch_size=1024, verbose=0)).argmax(axis=1)
        return round(100.0 * float(np.mean(np.where(self.empty, -1, predicted) == self.labels)), 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    started = time.time()
    rng = np.random.default_rng(args.seed)
    print(f"Keras {keras.__version__} on {keras.backend.backend()}", flush=True)
    x_train, y_train, x_test, y_test = load_mnist(args.data)
    mnist_validation = (x_train[-MNIST_VALIDATION:], y_train[-MNIST_VALIDATION:])
    x_train, y_train = x_train[:-MNIST_VALIDATION], y_train[:-MNIST_VALIDATION]
    pen_train, pen_validation = pendigits.split_writers(pendigits.load(args.pen_digits, "train"))
    pen_test = pendigits.load(args.pen_digits, "test")
    if args.quick:
        x_train, y_train, pen_train = x_train[:2000], y_train[:2000], pen_train[:300]
        mnist_validation = (mnist_validation[0][:300], mnist_validation[1][:300])
        x_test, y_test, pen_validation, pen_test = x_test[:300], y_test[:300], pen_validation[:300], pen_test[:300]
        args.epochs, args.pen_copies, args.members = 1, 1, 2

    print(f"normalizing {len(x_train)} MNIST images, rendering {len(pen_train)} pen digits x{args.pen_copies + 1} ...")
    pen_images, _, pen_labels = render_pen(pen_train, args.pen_copies, rng)
    images = np.concatenate([normalize_all(x_train), pen_images])[..., None]
    labels = np.concatenate([y_train.astype(np.int64), pen_labels])
    measured = {
        "mnist_validation": Served.of(rasters(mnist_validation[0]), mnist_validation[1]),
        "pen_validation": Served.of([as_served(d) for d in pen_validation], [d.label for d in pen_validation]),
        "mnist_test": Served.of(rasters(x_test), y_test),
        "pen_test": Served.of([as_served(d) for d in pen_test], [d.label for d in pen_test]),
    }
    trained_at = time.time()
    steps = math.ceil(len(images) / args.batch_size)

    members, member_figures = [], []
    for index in range(args.members):
        seed = args.seed + index
        keras.utils.set_random_seed(seed)
        member = build_model("cnn", args.channels, name=f"member_{index}")
        trainer = keras.Sequential([keras.Input((SIZE, SIZE, 1)), augmentation_layer(seed), member])
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=steps * args.epochs - steps // 2, warmup_target=args.learning_rate, warmup_steps=steps // 2
        )
        trainer.compile(
            optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, use_ema=True, ema_momentum=0.999),
            loss="sparse_categorical_crossentropy",
            steps_per_execution=16,
        )
        print(f"member {index + 1}/{args.members} (seed {seed}): {len(images)} digits, {args.epochs} epochs")
        member_started = time.time()
        verbose = 1 if sys.stdout.isatty() else 2
        trainer.fit(images, labels, batch_size=args.batch_size, epochs=args.epochs, verbose=verbose)
        figures = measure(member, measured)
        figures["seconds"] = round(time.time() - member_started, 1)
        print(f"member {index + 1}: {figures}", flush=True)
        members.append(member)
        member_figures.append(figures)
        save(args, members, member_figures, measured, started, trained_at, len(x_train), len(pen_train))
    return 0


def save(
    args: argparse.Namespace,
    members: list[Any],
    member_figures: list[dict[str, float]],
    measured: dict[str, Served],
    started: float,
    trained_at: float,
    mnist_count: int,
    pen_count: int,
) -> None:
    """Write the average of the members trained so far and its card, each replaced whole (written beside
    it, then renamed), so a run stopped between members leaves a complete teacher of fewer members."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    average = keras.layers.Average(name="probabilities")([member(inputs) for member in members])
    teacher = keras.Model(inputs, average, name="livedigit_teacher")
    figures = measure(teacher, measured)
    print(f"average of {len(members)}: {figures}", flush=True)
    card = {
        "name": args.name,
        "members": len(members),
        "member_architecture": f"build_model('cnn', {list(args.channels)})",
        "parameters": int(teacher.count_params()),
        "flops_per_sample": sum(flops_per_sample(member) for member in members),
        "accuracy": figures,
        "member_accuracy": member_figures,
        "training": {
            "data": [
                f"MNIST train ({mnist_count:,}; the last {MNIST_VALIDATION:,} held out for validation)",
                f"pen_digits train split minus its validation writers ({pen_count} digits) "
                f"x{args.pen_copies + 1} renderings",
            ],
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "seeds": [args.seed + index for index in range(len(members))],
            "quick": args.quick,
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "step_seconds": {"data": round(trained_at - started, 1), "training": round(time.time() - trained_at, 1)},
        },
        "git_commit": git_commit(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for suffix, write in (
        (".keras", teacher.save),
        (".json", lambda path: Path(path).write_text(json.dumps(card, indent=2) + "\n")),
    ):
        partial = out / f"{args.name}.partial{suffix}"
        write(partial)
        partial.replace(out / f"{args.name}{suffix}")
    print(f"wrote {out / args.name}.keras and .json, {len(members)} members, at {time.time() - started:.0f} s")


def measure(model: Any, sets: dict[str, Served]) -> dict[str, float]:
    """Accuracy, in percent, on each measured set."""
    return {name: served.accuracy(model) for name, served in sets.items()}


if __name__ == "__main__":
    sys.exit(main())
