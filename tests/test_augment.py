"""The on-the-fly augmentation of both training scripts (``train/augment.py``)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from livedigit.preprocess import SIZE, Pixels, preprocess
from train.augment import augment, augmentation_layer, warp


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
