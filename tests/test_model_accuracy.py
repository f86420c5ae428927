"""The shipped model, measured the way the server runs it: preprocess, then LiteRT.

MNIST test digits go in as raw pixels and pen-digits test drawings (14 writers training never saw) as
strokes, each through ``livedigit.preprocess`` exactly as a request would. A drawing the preprocessing
calls empty counts as a miss, since the server would answer ``empty`` instead of a digit. The model card
shipped next to the model must report the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from livedigit import pendigits
from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import SIZE, Pixels, Strokes, preprocess
from livedigit.runtime import Runtime, load_runtime

MNIST_TARGET = 0.995
PEN_TARGET = 0.97
CARD_TOLERANCE = 0.001

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return load_runtime(DEFAULT_MODEL, "litert")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())


def accuracy(runtime: Runtime, inputs: list[np.ndarray | None], labels: np.ndarray) -> tuple[float, str]:
    """Accuracy (an empty result is a miss) and a per-class breakdown for the failure message."""
    batch = np.stack([np.zeros((SIZE, SIZE), np.float32) if image is None else image for image in inputs])
    predicted = runtime.predict(batch).argmax(axis=1)
    empty = np.array([image is None for image in inputs])
    correct = (predicted == labels) & ~empty
    per_class = ", ".join(f"{digit}: {correct[labels == digit].mean():.4f}" for digit in range(10))
    return float(correct.mean()), f"per class {per_class}; {int(empty.sum())} empty"


@pytest.fixture(scope="module")
def mnist_accuracy(runtime: Runtime, mnist_path: Path) -> tuple[float, str]:
    with np.load(mnist_path) as data:
        images, labels = data["x_test"], data["y_test"].astype(np.int64)
    return accuracy(runtime, [preprocess(Pixels(image)) for image in images], labels)


@pytest.fixture(scope="module")
def pen_accuracy(runtime: Runtime, pen_test: list[pendigits.PenDigit]) -> tuple[float, str]:
    labels = np.array([digit.label for digit in pen_test])
    return accuracy(runtime, [preprocess(Strokes(digit.strokes)) for digit in pen_test], labels)


def test_mnist_test_accuracy(mnist_accuracy: tuple[float, str]) -> None:
    measured, detail = mnist_accuracy
    assert measured >= MNIST_TARGET, f"MNIST test accuracy {measured:.4f} < {MNIST_TARGET}: {detail}"


def test_pen_digits_test_accuracy(pen_accuracy: tuple[float, str]) -> None:
    measured, detail = pen_accuracy
    assert measured >= PEN_TARGET, f"pen-digits test accuracy {measured:.4f} < {PEN_TARGET}: {detail}"


def test_card_reports_the_measured_accuracies(
    card: dict, mnist_accuracy: tuple[float, str], pen_accuracy: tuple[float, str]
) -> None:
    recorded = card["accuracy"]
    assert recorded["mnist_test"] == pytest.approx(mnist_accuracy[0], abs=CARD_TOLERANCE)
    assert recorded["pen_digits_test"] == pytest.approx(pen_accuracy[0], abs=CARD_TOLERANCE)


def test_card_is_of_a_full_training_run_without_test_data(card: dict) -> None:
    """The shipped model is not a --quick pipeline check, and no test split went into its training."""
    assert card["training"]["quick"] is False
    assert all("test" not in item.lower() for item in card["training"]["data"])
    assert card["tflite_vs_keras_max_abs_difference"] < 1e-4
