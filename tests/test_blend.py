"""The served form of a path-reading network (``train/blend.py``): the same weights, its logits with the
pen's path and without averaged, and a raster's answer unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livedigit.preprocess import PATH_FEATURES, PATH_POINTS, SIZE
from livedigit.runtime import load_runtime

keras = pytest.importorskip("keras", reason="blending builds a Keras model (pip install -e '.[train]')")

from train.blend import blended  # noqa: E402
from train.train import build_model, flops_per_sample  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained() -> keras.Model:
    """A narrow path-reading network with random weights, batch norm statistics included, so that every
    layer the blend copies matters."""
    keras.utils.set_random_seed(7)
    model = build_model(channels=(4, 6, 8), path=True)
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma * 1.5, beta + 0.1, mean + rng.normal(0, 0.1, mean.shape), variance * 2.0])
    return model


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.random((16, SIZE, SIZE, 1)).astype(np.float32)
    paths = rng.normal(0, 0.5, (16, PATH_POINTS, PATH_FEATURES)).astype(np.float32)
    return images, paths


def logits(model: keras.Model, images: np.ndarray, paths: np.ndarray) -> np.ndarray:
    return np.log(model([images, paths], training=False).numpy())


def test_answers_with_the_mean_of_its_logits_with_and_without_the_path(
    trained: keras.Model, inputs: tuple[np.ndarray, np.ndarray]
) -> None:
    images, paths = inputs
    mean = (logits(trained, images, paths) + logits(trained, images, np.zeros_like(paths))) / 2.0
    expected = np.exp(mean) / np.exp(mean).sum(axis=1, keepdims=True)
    served = blended(trained)([images, paths], training=False).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)


def test_a_drawing_without_a_path_is_answered_as_before(
    trained: keras.Model, inputs: tuple[np.ndarray, np.ndarray]
) -> None:
    images, paths = inputs
    before = trained([images, np.zeros_like(paths)], training=False).numpy()
    np.testing.assert_allclose(
        blended(trained)([images, np.zeros_like(paths)], training=False).numpy(), before, atol=1e-5
    )


def test_leaves_the_trained_network_as_it_was_and_is_not_blended_twice(
    trained: keras.Model, inputs: tuple[np.ndarray, np.ndarray]
) -> None:
    images, paths = inputs
    before = trained([images, paths], training=False).numpy()
    served = blended(trained)
    np.testing.assert_allclose(trained([images, paths], training=False).numpy(), before, atol=1e-6)
    assert served.count_params() == trained.count_params()
    with pytest.raises(ValueError, match="already blended"):
        blended(served)
    with pytest.raises(ValueError, match="does not read the pen's path"):
        blended(build_model(channels=(4, 6, 8)))


def test_costs_the_path_layers_and_the_last_two_once_more(trained: keras.Model) -> None:
    """The image's features are computed once: the blend adds the path's two dense layers (128x64 and
    64x64) and the last two layers (the path's share of 128 units, then 128x10) a second time."""
    added = 2 * (PATH_POINTS * PATH_FEATURES * 64 + 64 * 64 + 64 * 128 + 128 * 10)
    assert flops_per_sample(blended(trained)) == flops_per_sample(trained) + added


def test_script_writes_a_served_network_and_its_card(
    trained: keras.Model,
    inputs: tuple[np.ndarray, np.ndarray],
    mnist_path: Path,
    pen_digits_file: Path,
    tmp_path: Path,
) -> None:
    """``python -m train.blend`` writes the blended ``.keras``, a float ``.tflite`` that answers as it does,
    and the card with the new cost, a verdict rule fitted again and every figure measured again."""
    source = tmp_path / "trained" / "tiny"
    source.parent.mkdir()
    trained.save(source.with_suffix(".keras"))
    stale = {"name": "tiny", "training": {"seed": 7}, "verdict": {"stale": True}, "evaluation": {"stale": True}}
    source.with_suffix(".json").write_text(json.dumps(stale))
    out = tmp_path / "served" / "tiny"
    command = [sys.executable, "-m", "train.blend", "--model", str(source), "--out", str(out), "--limit", "60"]
    command += ["--data", str(mnist_path), "--pen-digits", str(pen_digits_file)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    served = keras.models.load_model(out.with_suffix(".keras"), compile=False)
    images, paths = inputs
    expected = served([images, paths], training=False).numpy()
    np.testing.assert_allclose(load_runtime(out, "litert").predict(images[..., 0], paths), expected, atol=1e-5)
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"] == {"seed": 7, "blend": True}
    assert card["flops_per_sample"] == flops_per_sample(served) > flops_per_sample(trained)
    assert card["architecture"][-1] == "Softmax(10,)"
    assert "stale" not in card["verdict"] and "stale" not in card["evaluation"]
    assert set(card["evaluation"]["redrawn"]) == {"validation", "test"}
