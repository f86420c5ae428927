"""The augmentation of both training scripts: on the fly (``train/augment.py``) and of the pen drawings
(``train/train.py``'s ``render_pen``)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from livedigit import pendigits
from livedigit.preprocess import SIZE, Pixels, preprocess
from train.augment import augment, augmentation_layer, warp
from train.train import render_pen, restart_loop


@pytest.fixture(scope="module")
def digits(mnist_path: Path) -> np.ndarray:
    with np.load(mnist_path) as data:
        images = [preprocess(Pixels(image)) for image in data["x_test"][:16]]
    return np.stack([image for image in images if image is not None])[..., None].astype(np.float32)


def test_no_warp_leaves_images_as_they_are(digits: np.ndarray) -> None:
    n = len(digits)
    zero = np.zeros(n, np.float32)
    out = keras.ops.convert_to_numpy(warp(digits, zero, zero, zero, np.zeros((n, 2), np.float32), zero))
    np.testing.assert_allclose(out, digits, atol=1e-6)


def test_a_shift_moves_the_ink_and_thickness_adds_ink(digits: np.ndarray) -> None:
    n = len(digits)
    zero = np.zeros(n, np.float32)
    shift = np.tile(np.array([[2.0, 0.0]], np.float32), (n, 1))
    moved = keras.ops.convert_to_numpy(warp(digits, zero, zero, zero, shift, zero))
    columns = np.arange(SIZE, dtype=np.float32)[None, None, :, None]
    centre = (moved * columns).sum(axis=(1, 2, 3)) / moved.sum(axis=(1, 2, 3))
    before = (digits * columns).sum(axis=(1, 2, 3)) / digits.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(centre - before, -2.0, atol=0.3)  # the transform maps output to input
    thicker = keras.ops.convert_to_numpy(warp(digits, zero, zero, zero, np.zeros((n, 2), np.float32), zero + 0.4))
    thinner = keras.ops.convert_to_numpy(warp(digits, zero, zero, zero, np.zeros((n, 2), np.float32), zero - 0.4))
    assert np.all(thicker.sum(axis=(1, 2, 3)) > digits.sum(axis=(1, 2, 3)))
    assert np.all(thinner.sum(axis=(1, 2, 3)) < digits.sum(axis=(1, 2, 3)))


def test_the_students_augmentation_repeats_for_a_seed_and_varies_between_seeds(digits: np.ndarray) -> None:
    first, again, other = (augment(tf.constant(digits), tf.constant(seed)).numpy() for seed in (7, 7, 8))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.1
    assert np.abs(first - digits).max() > 0.1


def test_the_teachers_layer_warps_only_while_training(digits: np.ndarray) -> None:
    layer = augmentation_layer(seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(digits, training=False)), digits)
    warped = keras.ops.convert_to_numpy(layer(digits, training=True))
    assert warped.shape == digits.shape and np.abs(warped - digits).max() > 0.1


def loop(label: int) -> pendigits.PenDigit:
    """A loop drawn as most training writers draw a 0: one stroke from the top, anticlockwise on the screen."""
    angles = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False) + np.pi / 2
    return pendigits.PenDigit(label, "writer", [[[50 + 30 * np.cos(a), 50 - 40 * np.sin(a)] for a in angles]])


def test_restarted_zeros_keep_their_images_and_change_only_their_paths() -> None:
    digits = [loop(0), loop(6)]
    kept = render_pen(digits, 3, np.random.default_rng(4))
    varied = render_pen(digits, 3, np.random.default_rng(4), loop_starts=1.0, loops=np.random.default_rng(9))
    np.testing.assert_array_equal(varied[0], kept[0])  # the images
    np.testing.assert_array_equal(varied[2], kept[2])  # the labels
    as_drawn = slice(0, 1)  # the first rendering of each digit is as drawn
    np.testing.assert_array_equal(varied[1][as_drawn], kept[1][as_drawn])
    np.testing.assert_array_equal(varied[1][4:], kept[1][4:])  # the loop labelled 6 is not a 0
    starts = varied[1][1:4, 0, :2]
    assert not np.allclose(starts, kept[1][1:4, 0, :2])  # the copies of the 0 begin elsewhere


def test_a_restarted_loop_is_the_same_points_from_another_one_either_way_round() -> None:
    stroke = np.asarray(loop(0).strokes[0])
    rng = np.random.default_rng(1)
    ways = set()
    for _ in range(20):
        restarted = restart_loop(stroke, rng)
        start = int(np.flatnonzero((stroke == restarted[0]).all(axis=1))[0])
        forward = np.concatenate([stroke[start:], stroke[:start]])
        if np.array_equal(restarted, forward):
            ways.add("forward")
        else:
            np.testing.assert_array_equal(restarted[::-1], np.concatenate([stroke[start + 1 :], stroke[: start + 1]]))
            ways.add("backward")
    assert ways == {"forward", "backward"}
