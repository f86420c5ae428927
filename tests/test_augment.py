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
from train.augment import augment, augmentation_layer, bend, warp
from train.train import DEVICE_JITTER, as_recorded, redraw, render_pen, render_prefixes, restart_loop


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


def test_bending_by_a_whole_pixel_moves_the_ink_and_by_nothing_leaves_it(digits: np.ndarray) -> None:
    n = len(digits)
    still = bend(tf.constant(digits), tf.zeros([n, SIZE, SIZE, 2])).numpy()
    np.testing.assert_array_equal(still, digits)
    # Each output pixel takes the ink one row below and two columns to its right: the digit moves up-left.
    rows_columns = tf.constant([1.0, 2.0])[None, None, None, :] * tf.ones([n, SIZE, SIZE, 1])
    moved = bend(tf.constant(digits), rows_columns).numpy()
    np.testing.assert_array_equal(moved[:, :-1, :-2], digits[:, 1:, 2:])
    assert not moved[:, -1, :].any() and not moved[:, :, -2:].any()  # nothing comes from beyond the edge
    # Half a pixel blends two neighbours, so the ink's total is kept away from the edge.
    half = bend(tf.constant(digits), tf.fill([n, SIZE, SIZE, 2], 0.5)).numpy()
    np.testing.assert_allclose(half.sum(axis=(1, 2, 3)), digits.sum(axis=(1, 2, 3)), rtol=0.01)


def test_the_elastic_distortion_bends_each_digit_its_own_way_and_repeats_for_a_seed(digits: np.ndarray) -> None:
    plain = augment(tf.constant(digits), tf.constant(7)).numpy()
    bent, again = (augment(tf.constant(digits), tf.constant(7), elastic=0.7).numpy() for _ in range(2))
    np.testing.assert_array_equal(bent, again)
    changed = np.abs(bent - plain).sum(axis=(1, 2, 3)) / plain.sum(axis=(1, 2, 3))
    assert np.all(changed > 0.05), changed  # every digit is bent...
    # ...and stays the same digit: most of its ink remains where the affine warp put it, give or take a pixel.
    near = keras.ops.convert_to_numpy(keras.ops.max_pool(plain, 3, 1, "same"))
    assert np.all((np.minimum(bent, near).sum(axis=(1, 2, 3)) / bent.sum(axis=(1, 2, 3))) > 0.8)


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


def four() -> pendigits.PenDigit:
    """A 4 in two strokes: the open angle, then the stem."""
    return pendigits.PenDigit(4, "writer", [[[40, 20], [20, 60], [70, 60]], [[55, 30], [55, 60], [55, 95]]])


def test_redrawn_strokes_are_the_same_strokes_in_another_order_and_direction() -> None:
    strokes = [np.asarray(stroke, dtype=np.float64) for stroke in four().strokes]
    rng = np.random.default_rng(2)
    ways = set()
    for _ in range(40):
        redrawn = redraw(strokes, rng)
        assert len(redrawn) == len(strokes)
        found = []
        for stroke in redrawn:
            index = next(
                i for i, s in enumerate(strokes) if np.array_equal(s, stroke) or np.array_equal(s[::-1], stroke)
            )
            found.append(index)
            ways.add("reversed" if not np.array_equal(strokes[index], stroke) else "as drawn")
        assert sorted(found) == [0, 1]
        ways.add("reordered" if found == [1, 0] else "in order")
    assert ways == {"reversed", "as drawn", "reordered", "in order"}


def test_redrawn_copies_keep_their_images_and_change_only_their_paths() -> None:
    digits = [four()]
    kept = render_pen(digits, 3, np.random.default_rng(4))
    varied = render_pen(digits, 3, np.random.default_rng(4), reorder=1.0, orders=np.random.default_rng(5))
    np.testing.assert_array_equal(varied[0], kept[0])  # the images
    np.testing.assert_array_equal(varied[2], kept[2])  # the labels
    np.testing.assert_array_equal(varied[1][0], kept[1][0])  # the first rendering is as drawn
    assert any(not np.allclose(varied[1][copy], kept[1][copy]) for copy in range(1, 4))


def test_redrawn_cut_digits_are_other_partial_drawings() -> None:
    digits = [four()] * 8
    kept = render_prefixes(digits, [0.5], np.random.default_rng(4))
    varied = render_prefixes(digits, [0.5], np.random.default_rng(4), reorder=1.0, orders=np.random.default_rng(5))
    assert len(varied[0]) == len(kept[0]) == 8
    np.testing.assert_array_equal(varied[2], kept[2])
    changed = [not np.allclose(varied[0][i], kept[0][i]) for i in range(8)]
    assert any(changed) and not all(changed)  # half the cuts begin with the stem, or end the angle first


def nine() -> pendigits.PenDigit:
    """A 9 in two strokes recorded as densely as the pen-digits tablet records: a loop of 40 points, then a
    stem of 12."""
    stem = [[80.0, 50.0 + 5.0 * step] for step in range(12)]
    return pendigits.PenDigit(9, "writer", [loop(9).strokes[0], stem])


def test_a_recorded_drawing_keeps_every_stroke_its_ends_and_fewer_of_its_points_near_where_they_were() -> None:
    strokes = [np.asarray(stroke, dtype=np.float64) for stroke in nine().strokes]
    size = float(np.ptp(np.concatenate(strokes), axis=0).max())
    rng = np.random.default_rng(3)
    counts = set()
    for _ in range(30):
        recorded = as_recorded(strokes, rng)
        assert len(recorded) == len(strokes)
        for stroke, kept in zip(strokes, recorded, strict=True):
            assert 2 <= len(kept) < len(stroke)
            # Each recorded point lies near one of the stroke's, its ends near the stroke's ends.
            off = np.hypot(*(kept[:, None, :] - stroke[None, :, :]).transpose(2, 0, 1)).min(axis=1)
            assert off.max() < 6 * DEVICE_JITTER * size
            assert np.hypot(*(kept[0] - stroke[0])) < 6 * DEVICE_JITTER * size
            assert np.hypot(*(kept[-1] - stroke[-1])) < 6 * DEVICE_JITTER * size
            counts.add(len(kept))
    assert len(counts) > 2  # one point in two, three or four


def test_recorded_copies_change_image_and_path_and_leave_the_first_rendering_as_drawn() -> None:
    digits = [nine()]
    kept = render_pen(digits, 3, np.random.default_rng(4))
    varied = render_pen(digits, 3, np.random.default_rng(4), device=1.0, devices=np.random.default_rng(5))
    np.testing.assert_array_equal(varied[2], kept[2])
    np.testing.assert_array_equal(varied[0][0], kept[0][0])
    np.testing.assert_array_equal(varied[1][0], kept[1][0])
    for copy in range(1, 4):
        assert not np.allclose(varied[0][copy], kept[0][copy]) and not np.allclose(varied[1][copy], kept[1][copy])
