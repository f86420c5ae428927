"""The pen's path, the model's second input: the way a drawing was drawn, whatever its size or sampling.

Two drawings can make the same image and be different digits (one writer's one-stroke 4 is their 5
without its bar); the path tells them apart only if it says which way the pen went, in which order, and
where it jumped, and says it the same way for the same drawing sent at any scale or point density.
"""

from __future__ import annotations

import numpy as np
import pytest

from livedigit import pendigits
from livedigit.preprocess import (
    PATH_FEATURES,
    PATH_POINTS,
    Limits,
    Pixels,
    PreprocessError,
    Strokes,
    model_input,
    pen_path,
    preprocess,
)


def test_rasters_carry_no_path() -> None:
    ink = np.zeros((50, 50), np.uint8)
    ink[10:40, 24:27] = 255
    path = pen_path(Pixels(ink))
    assert path.shape == (PATH_POINTS, PATH_FEATURES) and path.dtype == np.float32
    assert not path.any()


def test_the_path_follows_the_pen_in_order() -> None:
    rightwards = pen_path(Strokes([[[0, 5], [10, 5]]]))
    np.testing.assert_allclose(rightwards[:, 0], np.linspace(-0.5, 0.5, PATH_POINTS), atol=1e-6)
    np.testing.assert_allclose(rightwards[:, 1], 0.0, atol=1e-6)
    assert (rightwards[:, 2:] == 1.0).all()  # pen down all along; a path is present
    leftwards = pen_path(Strokes([[[10, 5], [0, 5]]]))
    np.testing.assert_allclose(leftwards, rightwards[::-1], atol=1e-6)


def test_the_jump_between_strokes_is_marked() -> None:
    """Down the left side, a jump across the bottom, up the right side: 10 + 10 + 10 units of travel."""
    path = pen_path(Strokes([[[0, 0], [0, 10]], [[10, 10], [10, 0]]]))
    np.testing.assert_allclose(path[0, :2], [-0.5, -0.5], atol=1e-6)
    np.testing.assert_allclose(path[-1, :2], [0.5, -0.5], atol=1e-6)
    travel = np.linspace(0.0, 30.0, PATH_POINTS)
    on_the_jump = (travel > 10.0) & (travel < 20.0)
    np.testing.assert_array_equal(path[:, 2], np.where(on_the_jump, 0.0, 1.0))
    jumped = path[on_the_jump]
    np.testing.assert_allclose(jumped[:, 0], (travel[on_the_jump] - 10.0) / 10.0 - 0.5, atol=1e-6)
    np.testing.assert_allclose(jumped[:, 1], 0.5, atol=1e-6)


def test_scale_position_and_point_density_do_not_matter(pen_test: list[pendigits.PenDigit]) -> None:
    for digit in pen_test[:50]:
        strokes = [np.asarray(stroke, np.float64) for stroke in digit.strokes]
        moved = [stroke * 3.5 + (1000.0, -40.0) for stroke in strokes]
        # Every segment split in two: twice the points, the same drawing.
        denser = [np.repeat(stroke, 2, axis=0)[1:] for stroke in strokes]
        for stroke, dense in zip(strokes, denser, strict=True):
            dense[1::2] = (stroke[:-1] + stroke[1:]) / 2.0 if len(stroke) > 1 else dense[1::2]
        expected = pen_path(Strokes(strokes))
        np.testing.assert_allclose(pen_path(Strokes(moved)), expected, atol=1e-5)
        np.testing.assert_allclose(pen_path(Strokes(denser)), expected, atol=1e-5)


@pytest.mark.parametrize("strokes", [[], [[]], [[[3, 3]]], [[[3, 3], [3, 3]], [[3, 3]]]])
def test_a_drawing_without_travel_has_no_path(strokes: list) -> None:
    assert not pen_path(Strokes(strokes)).any()


def test_bad_strokes_are_refused_as_preprocess_refuses_them() -> None:
    with pytest.raises(PreprocessError, match="stroke 0"):
        pen_path(Strokes([[[0, 0], [float("nan"), 1]]]))
    with pytest.raises(PreprocessError, match="the limit is 2"):
        pen_path(Strokes([[[0, 0]], [[1, 1]], [[2, 2]]]), Limits(max_strokes=2))


def test_model_input_is_the_image_and_the_path_at_once(pen_test: list[pendigits.PenDigit]) -> None:
    """The worker's one call gives exactly what preprocess and pen_path give one after the other."""
    ink = np.zeros((50, 50), np.uint8)
    ink[10:40, 24:27] = 255
    drawings = [Strokes(digit.strokes, pendigits.SURFACE) for digit in pen_test[:30]] + [Pixels(ink)]
    for drawing in drawings:
        found = model_input(drawing)
        assert found is not None
        np.testing.assert_array_equal(found[0], preprocess(drawing))
        np.testing.assert_array_equal(found[1], pen_path(drawing))
        without = model_input(drawing, path=False)
        assert without is not None and without[1].size == 0
        np.testing.assert_array_equal(without[0], found[0])
    assert model_input(Strokes([[[3, 3], [3, 3]]])) is None
    assert model_input(Pixels(np.zeros((20, 20), np.uint8))) is None
    with pytest.raises(PreprocessError, match="stroke 0"):
        model_input(Strokes([[[0, 0], [float("nan"), 1]]]))


# --- stray taps ---------------------------------------------------------------------------------------------

TAPS = {
    "a tap before": lambda strokes: [[[480.0, 15.0]], *strokes],
    "a tap after": lambda strokes: [*strokes, [[15.0, 480.0]]],
    "a flick after": lambda strokes: [*strokes, [[470.0, 470.0], [474.0, 472.0], [477.0, 475.0]]],
}


@pytest.mark.parametrize("tap", list(TAPS))
def test_a_stray_tap_away_from_the_digit_is_left_out(tap: str, pen_test: list[pendigits.PenDigit]) -> None:
    """A palm or a second finger touching the screen away from the digit changes neither its image nor
    its path."""
    for digit in pen_test[:60]:
        drawn = model_input(Strokes(digit.strokes, pendigits.SURFACE))
        tapped = model_input(Strokes(TAPS[tap](digit.strokes), pendigits.SURFACE))
        assert drawn is not None and tapped is not None
        assert np.array_equal(tapped[0], drawn[0]) and np.array_equal(tapped[1], drawn[1])


def test_a_short_stroke_next_to_the_digit_is_the_digits() -> None:
    """A short stroke beside the rest (a 5's bar, a stroke just begun) is drawn; the same far away is not."""
    body = [[100.0, 100.0], [100.0, 200.0], [150.0, 220.0], [180.0, 260.0], [150.0, 300.0], [100.0, 300.0]]
    bar = [[102.0, 96.0], [112.0, 96.0]]  # 10 units long, a twentieth of the body, 4 units above it
    alone = model_input(Strokes([body]))
    near = model_input(Strokes([body, bar]))
    far = model_input(Strokes([body, [[x + 300.0, y] for x, y in bar]]))
    assert alone is not None and near is not None and far is not None
    assert not np.array_equal(near[0], alone[0]) and not np.array_equal(near[1], alone[1])
    assert np.array_equal(far[0], alone[0]) and np.array_equal(far[1], alone[1])


def test_taps_alone_are_still_a_drawing() -> None:
    """Two taps far apart are no digit's strokes with a stray beside them: both are drawn, as before."""
    found = model_input(Strokes([[[10.0, 10.0]], [[90.0, 90.0]]]))
    assert found is not None
    assert found[0][:14, :14].sum() > 1.0 and found[0][14:, 14:].sum() > 1.0
