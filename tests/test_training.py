"""The training script end to end, on a tiny subset: it must export exactly what the server loads.

``python -m train --quick`` trains one epoch on 2,000 MNIST digits and 300 pen-digits drawings; the point
is not accuracy but that the exported ``.tflite``, ``.keras`` and model card are consistent with each
other and with the serving code (the card's accuracies are re-measured here through the serving path).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livedigit import pendigits
from livedigit.preprocess import SIZE, Pixels, Strokes, preprocess
from livedigit.runtime import load_runtime

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(mnist_path: Path, pen_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Base path of a model trained by ``python -m train --quick`` with seed 3."""
    out = tmp_path_factory.mktemp("trained")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--quick",
            "--seed",
            "3",
            "--data",
            str(mnist_path),
            "--pen-digits",
            str(pen_path),
            "--out",
            str(out),
            "--name",
            "quick",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "quick"


@pytest.fixture(scope="module")
def card(exported: Path) -> dict:
    return json.loads(exported.with_suffix(".json").read_text())


def as_inputs(images: list[np.ndarray | None]) -> np.ndarray:
    return np.stack([np.zeros((SIZE, SIZE), np.float32) if image is None else image for image in images])


def test_exports_the_three_files(exported: Path) -> None:
    for suffix in (".keras", ".tflite", ".json"):
        path = exported.with_suffix(suffix)
        assert path.is_file() and path.stat().st_size > 0, path


def test_card_describes_the_model(exported: Path, card: dict) -> None:
    import keras

    model = keras.models.load_model(exported.with_suffix(".keras"), compile=False)
    assert card["name"] == "quick"
    assert card["architecture"] and all(isinstance(layer, str) for layer in card["architecture"])
    assert card["architecture"][-1] == "Dense(10,)"
    assert card["parameters"] == model.count_params()
    assert isinstance(card["flops_per_sample"], int) and card["flops_per_sample"] > 2 * card["parameters"]
    assert card["training"]["seed"] == 3
    assert card["training"]["quick"] is True
    assert any("MNIST" in item for item in card["training"]["data"])
    assert any("pen_digits" in item for item in card["training"]["data"])
    assert card["training"]["samples"] > 2000


def test_card_records_the_commit(card: dict) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        assert card["git_commit"] == "unknown"
    else:
        assert re.fullmatch(r"[0-9a-f]{40}", card["git_commit"])
        assert card["git_commit"] == head.stdout.strip()


def test_card_accuracies_are_what_the_serving_path_measures(
    exported: Path, card: dict, mnist_path: Path, pen_path: Path
) -> None:
    """The quick run measures the first 500 MNIST and 300 pen-digits test digits; so do we, as served."""
    runtime = load_runtime(exported, "litert")
    with np.load(mnist_path) as data:
        images, labels = data["x_test"][:500], data["y_test"][:500]
    mnist = runtime.predict(as_inputs([preprocess(Pixels(image)) for image in images])).argmax(axis=1)
    assert card["accuracy"]["mnist_test"] == pytest.approx(float((mnist == labels).mean()), abs=1e-4)
    pen = pendigits.load(pen_path, "test")[:300]
    guesses = runtime.predict(as_inputs([preprocess(Strokes(digit.strokes)) for digit in pen])).argmax(axis=1)
    measured = float(np.mean(guesses == [digit.label for digit in pen]))
    assert card["accuracy"]["pen_digits_test"] == pytest.approx(measured, abs=1e-4)
    confusion = np.array(card["accuracy"]["pen_digits_test_confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 300


def test_exported_tflite_agrees_with_the_keras_model(exported: Path, card: dict, mnist_path: Path) -> None:
    with np.load(mnist_path) as data:
        images = as_inputs([preprocess(Pixels(image)) for image in data["x_test"][:64]])
    from_litert = load_runtime(exported, "litert").predict(images)
    from_keras = load_runtime(exported, "tensorflow").predict(images)
    assert np.abs(from_litert - from_keras).max() < 1e-4
    assert card["tflite_vs_keras_max_abs_difference"] < 1e-4
