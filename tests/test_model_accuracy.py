"""The shipped model, measured the way the server runs it: preprocess, LiteRT, then the card's verdict rule.

MNIST test digits go in as raw pixels and pen-digits test drawings (14 writers training never saw) as
strokes with the tablet's surface, each through ``livedigit.preprocess`` exactly as a request would, and
the model's probabilities through the rule in its card (``livedigit.verdict``), as the batcher applies
it. A drawing the preprocessing calls empty counts as a miss, since the server would answer ``empty``
instead of a digit. Every figure the card records (written by ``python -m train.evaluate --card``) is
measured again here with code of its own, and the verdict's promise is checked on the test splits.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from livedigit import pendigits
from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import DEFAULT_LIMITS, Pixels
from livedigit.runtime import Runtime, load_runtime
from livedigit.verdict import VerdictRule
from livedigit.wire import NoDigit, Verdict
from livedigit.workers import Scorer
from train import negatives
from train.data import REDRAWN, as_served, on_paper, redrawn, with_a_tap

MNIST_TARGET = 0.993
"""A floor against a broken model or preprocessing; the card's exact figures are checked separately."""
PEN_TARGET = 0.985
MAX_DIGITS_REJECTED = 0.01
"""The verdict's promise: at most this share of real digits is answered ``not_a_digit``."""
EARLY_TARGET = 0.85
"""The goal for top-1 with 75% of each pen-digits test digit's points drawn."""
SETTLED_TARGET = 0.80
"""The goal for "settled early": right at 75% of the points and still right at 90% and 100%."""
MAX_CALIBRATION_ERROR = 0.01
"""The goal for the expected calibration error of the served confidence on the pen-digits test split."""
NEGATIVES_REJECTED_TARGET = 0.90
"""The goal for drawings that are not digits, measured here on the held-out generated negatives."""
MAX_FLOPS = 8_000_000
"""The cost goal: floating-point operations per digit (multiply-adds of the convolutions and dense layers, x2)."""
MAX_LOSS_ON_PAPER = 0.005
"""How much less accurate MNIST test digits on scanned paper may be than on MNIST's clean field."""
MAX_LOSS_WITH_A_TAP = 0.003
"""How much less accurate the pen-digits test split may be with a stray tap beside each digit (10 digits)."""
MAX_LOSS_REDRAWN = 0.01
"""How much less accurate a writers' digits may be with their strokes in another order or direction."""
CARD_TOLERANCE = 0.001
SHARE_TOLERANCE = 0.002
"""For shares measured on a few thousand drawings: one or two drawings either way."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return load_runtime(DEFAULT_MODEL, "litert")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def rule(card: dict) -> VerdictRule:
    return VerdictRule.from_card(card)


class Served:
    """What the server answers for each image: ``None`` for empty, else the served probabilities and verdict.

    The images go through the server worker's own :class:`~livedigit.workers.Scorer`: the same
    preprocessing, the pen's path where the model reads one, the same model call and verdict rule."""

    def __init__(self, runtime: Runtime, rule: VerdictRule, images: list) -> None:
        finished = Scorer(runtime, rule, DEFAULT_LIMITS)(images)
        assert all(outcome is None or isinstance(outcome, NoDigit) for outcome in finished.outcomes)
        self.empty = np.array([outcome is not None for outcome in finished.outcomes])
        self.probabilities = np.zeros((len(images), 10))
        self.probabilities[~self.empty] = finished.probabilities
        scored = iter(finished.verdicts)
        self.verdicts = [None if empty else next(scored) for empty in self.empty]

    def digits(self) -> np.ndarray:
        return np.where(self.empty, -1, self.probabilities.argmax(axis=1))

    def share(self, verdict: Verdict) -> float:
        return sum(v == verdict for v in self.verdicts) / len(self.verdicts)


@pytest.fixture(scope="module")
def mnist(runtime: Runtime, rule: VerdictRule, mnist_path: Path) -> tuple[Served, np.ndarray]:
    with np.load(mnist_path) as data:
        images, labels = data["x_test"], data["y_test"].astype(np.int64)
    return Served(runtime, rule, [Pixels(image) for image in images]), labels


@pytest.fixture(scope="module")
def pen(runtime: Runtime, rule: VerdictRule, pen_test: list[pendigits.PenDigit]) -> dict[float, Served]:
    """The pen-digits test split as served, whole (1.0) and cut short."""
    return {
        fraction: Served(runtime, rule, [as_served(d, fraction) for d in pen_test])
        for fraction in (0.5, 0.75, 0.9, 1.0)
    }


@pytest.fixture(scope="module")
def pen_validation(pen_digits_file: Path) -> list[pendigits.PenDigit]:
    """The six validation writers' 1,500 digits, held out of training."""
    return pendigits.split_writers(pendigits.load(pen_digits_file, "train"))[1]


@pytest.fixture(scope="module")
def validation_as_drawn(runtime: Runtime, rule: VerdictRule, pen_validation: list[pendigits.PenDigit]) -> Served:
    return Served(runtime, rule, [as_served(d) for d in pen_validation])


@pytest.fixture(scope="module")
def pen_labels(pen_test: list[pendigits.PenDigit]) -> np.ndarray:
    return np.array([digit.label for digit in pen_test])


def per_class(digits: np.ndarray, labels: np.ndarray) -> str:
    correct = digits == labels
    return ", ".join(f"{digit}: {correct[labels == digit].mean():.4f}" for digit in range(10))


def test_mnist_test_accuracy(mnist: tuple[Served, np.ndarray], card: dict) -> None:
    served, labels = mnist
    measured = float(np.mean(served.digits() == labels))
    assert measured >= MNIST_TARGET, (
        f"MNIST test accuracy {measured:.4f} < {MNIST_TARGET}: {per_class(served.digits(), labels)}"
    )
    assert card["accuracy"]["mnist_test"] == pytest.approx(measured, abs=CARD_TOLERANCE)


def test_digits_scanned_from_paper_read_as_well_as_clean_ones(
    runtime: Runtime, rule: VerdictRule, mnist: tuple[Served, np.ndarray], mnist_path: Path, card: dict
) -> None:
    """MNIST test digits as if scanned: grey, grainy paper and a speck of dust (``train.data.on_paper``).
    Without the background and the specks taken off, the paper sets the crop and 60% are misread."""
    served, labels = mnist
    with np.load(mnist_path) as data:
        paper = Served(runtime, rule, on_paper(data["x_test"]))
    measured = float(np.mean(paper.digits() == labels))
    assert measured >= float(np.mean(served.digits() == labels)) - MAX_LOSS_ON_PAPER
    assert card["accuracy"]["mnist_test_on_paper"] == pytest.approx(measured, abs=CARD_TOLERANCE)


def test_pen_digits_test_accuracy(pen: dict[float, Served], pen_labels: np.ndarray, card: dict) -> None:
    digits = pen[1.0].digits()
    measured = float(np.mean(digits == pen_labels))
    detail = f"{per_class(digits, pen_labels)}; {int(pen[1.0].empty.sum())} empty"
    assert measured >= PEN_TARGET, f"pen-digits test accuracy {measured:.4f} < {PEN_TARGET}: {detail}"
    assert card["accuracy"]["pen_digits_test"] == pytest.approx(measured, abs=CARD_TOLERANCE)
    confusion = np.zeros((10, 10), int)
    found = digits >= 0
    np.add.at(confusion, (pen_labels[found], digits[found]), 1)
    assert card["accuracy"]["pen_digits_test_confusion"] == confusion.tolist()


def test_a_stray_tap_does_not_change_the_answers(
    runtime: Runtime, rule: VerdictRule, pen: dict[float, Served], pen_test: list[pendigits.PenDigit], card: dict
) -> None:
    """The pen-digits test split with a tap in a corner of the tablet (``train.data.with_a_tap``) reads as
    without it. Without stray taps left out, the tap set the drawing's box and 64% were misread."""
    labels = np.array([digit.label for digit in pen_test])
    measured = float(np.mean(Served(runtime, rule, with_a_tap(pen_test)).digits() == labels))
    assert measured >= float(np.mean(pen[1.0].digits() == labels)) - MAX_LOSS_WITH_A_TAP
    assert card["accuracy"]["pen_digits_test_with_a_tap"] == pytest.approx(measured, abs=CARD_TOLERANCE)


@pytest.mark.parametrize("way", REDRAWN)
def test_card_reports_the_digits_drawn_another_way(
    runtime: Runtime,
    rule: VerdictRule,
    pen_test: list[pendigits.PenDigit],
    pen_validation: list[pendigits.PenDigit],
    pen: dict[float, Served],
    validation_as_drawn: Served,
    card: dict,
    way: str,
) -> None:
    """The validation and test writers' digits with their strokes in reverse order or from their other
    ends (``train.data.redrawn``): the same images, the paths of writers taught otherwise. They read
    almost as well as the digits as drawn: the network that read them at 90-93% answered from their path
    alone at full strength (``train/blend.py``)."""
    for split, digits, served in (("validation", pen_validation, validation_as_drawn), ("test", pen_test, pen[1.0])):
        labels = np.array([digit.label for digit in digits])
        measured = float(np.mean(Served(runtime, rule, [redrawn(d, way) for d in digits]).digits() == labels))
        assert card["evaluation"]["redrawn"][split][way] == pytest.approx(measured, abs=CARD_TOLERANCE)
        as_drawn = float(np.mean(served.digits() == labels))
        assert measured >= as_drawn - MAX_LOSS_REDRAWN, f"{split}: {measured:.2%} redrawn, {as_drawn:.2%} as drawn"


def test_card_reports_the_early_answers(pen: dict[float, Served], pen_labels: np.ndarray, card: dict) -> None:
    """Top-1 against the final label with 50, 75 and 90% of each digit's points drawn, and settled early."""
    early = card["evaluation"]["early"]
    right = {fraction: served.digits() == pen_labels for fraction, served in pen.items()}
    for fraction, correct in right.items():
        assert early["pen_digits_test_top1"][f"{fraction:g}"] == pytest.approx(correct.mean(), abs=CARD_TOLERANCE)
    settled = right[0.75] & right[0.9] & right[1.0]
    assert early["pen_digits_test_settled_early"] == pytest.approx(settled.mean(), abs=CARD_TOLERANCE)
    assert right[0.75].mean() >= EARLY_TARGET, f"top-1 at 75% of the points {right[0.75].mean():.4f}"
    assert settled.mean() >= SETTLED_TARGET, f"settled early {settled.mean():.4f}"
    for fraction in (0.5, 0.75, 0.9):
        recorded = early["pen_digits_test_verdicts"][f"{fraction:g}"]
        assert recorded["not_a_digit"] == pytest.approx(pen[fraction].share(Verdict.NOT_A_DIGIT), abs=SHARE_TOLERANCE)


def test_card_reports_the_calibration_error(pen: dict[float, Served], pen_labels: np.ndarray, card: dict) -> None:
    """Expected calibration error of the served confidence: 15 equal-width bins, on the pen-digits test split."""
    served = pen[1.0]
    confidence = served.probabilities.max(axis=1)[~served.empty]
    correct = (served.digits() == pen_labels)[~served.empty]
    edges = np.linspace(0.0, 1.0, 16)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        members = (confidence >= low) & ((confidence < high) | (high == 1.0))
        if members.any():
            error += abs(correct[members].mean() - confidence[members].mean()) * members.mean()
    assert error <= MAX_CALIBRATION_ERROR, f"expected calibration error {error:.4f}"
    assert card["evaluation"]["calibration"]["pen_digits_test_ece"] == pytest.approx(error, abs=CARD_TOLERANCE)


def test_at_most_one_real_digit_in_a_hundred_is_not_a_digit(
    pen: dict[float, Served], mnist: tuple[Served, np.ndarray], card: dict
) -> None:
    measured = {"pen_digits_test": pen[1.0], "mnist_test": mnist[0]}
    for name, served in measured.items():
        rejected = served.share(Verdict.NOT_A_DIGIT)
        assert rejected <= MAX_DIGITS_REJECTED, f"{name}: {rejected:.2%} of real digits answered not_a_digit"
        recorded = card["evaluation"]["verdict"][name]
        assert recorded["not_a_digit"] == pytest.approx(rejected, abs=SHARE_TOLERANCE)
        assert recorded["unsure"] == pytest.approx(served.share(Verdict.UNSURE), abs=SHARE_TOLERANCE)


def test_card_reports_how_many_held_out_negatives_are_not_a_digit(
    runtime: Runtime, rule: VerdictRule, card: dict
) -> None:
    missing = negatives.missing_fonts()
    if missing:
        pytest.skip(f"fonts not installed: {', '.join(missing)} (apt-get install {negatives.PACKAGES})")
    held_out = negatives.negatives("held_out")
    served = Served(runtime, rule, [negative.image for negative in held_out])
    recorded = card["evaluation"]["verdict"]["held_out_negatives"]
    assert len(held_out) == card["evaluation"]["data"]["held_out_negatives"]
    rejected = served.share(Verdict.NOT_A_DIGIT)
    assert rejected >= NEGATIVES_REJECTED_TARGET, f"{rejected:.2%} of the held-out negatives answered not_a_digit"
    assert recorded["not_a_digit"] == pytest.approx(rejected, abs=SHARE_TOLERANCE)
    assert recorded["unsure"] == pytest.approx(served.share(Verdict.UNSURE), abs=SHARE_TOLERANCE)


def test_cost_per_digit_is_within_the_goal(card: dict) -> None:
    """The card's FLOPs are those of the network shipped beside it, and within the cost goal."""
    keras = pytest.importorskip("keras", reason="the float network is read with Keras (pip install -e '.[train]')")
    from train.train import flops_per_sample

    model = keras.models.load_model(DEFAULT_MODEL.with_suffix(".keras"), compile=False)
    assert card["flops_per_sample"] == flops_per_sample(model) <= MAX_FLOPS
    assert card["parameters"] == model.count_params()


def test_card_is_of_a_full_training_run_without_test_data(card: dict, rule: VerdictRule) -> None:
    """The shipped model is not a --quick pipeline check, no test split went into its training, its 8-bit
    network names the same digit as its float original on at least 99.9% of MNIST test, and its verdict
    rule was fitted on validation data only."""
    assert card["training"]["quick"] is False
    assert all("test" not in item.lower() for item in card["training"]["data"])
    assert card["quantization"]["float_agreement_mnist_test"] >= 0.999
    assert card["tflite_vs_keras_max_abs_difference"] < 0.1
    assert rule != VerdictRule() and VerdictRule.from_card({"verdict": rule.to_card()}) == rule
    assert set(card["verdict"]["fitted"]["validation_digits"]) == {"mnist_validation", "pen_digits_validation"}
    assert card["evaluation"]["measured"]["rule"] == rule.to_card()
    assert card["evaluation"]["measured"]["limit"] is None
