"""The verdict rule: calibrated probabilities that still sum to 1, and digit / unsure / not_a_digit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hardutil import VERDICTS

from livedigit.verdict import VerdictRule, card_rule, ranked, soften
from livedigit.wire import Verdict

CLEAR = [0.001, 0.002, 0.001, 0.98, 0.004, 0.004, 0.002, 0.002, 0.002, 0.002]
TORN = [0.0, 0.0, 0.0, 0.0, 0.47, 0.0, 0.0, 0.0, 0.0, 0.53]
SPREAD = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.15, 0.05]
CARD = {"verdict": {"temperature": 1.5, "not_a_digit": {"temperature": 3.0, "below": 0.4}, "unsure": {"margin": 0.5}}}


def test_without_a_rule_the_probabilities_are_served_as_the_model_gave_them() -> None:
    rule = VerdictRule.from_card({"name": "a card from before verdicts"})
    probabilities = np.array([CLEAR, TORN, SPREAD])
    served, verdicts = rule.judge(probabilities)
    np.testing.assert_array_equal(served, probabilities)
    assert verdicts == [Verdict.DIGIT] * 3


def test_a_card_rule_judges_each_row() -> None:
    rule = VerdictRule.from_card(CARD)
    assert rule == VerdictRule(1.5, 3.0, 0.4, 0.5)
    served, verdicts = rule.judge(np.array([CLEAR, TORN, SPREAD]))
    assert verdicts == [Verdict.DIGIT, Verdict.UNSURE, Verdict.NOT_A_DIGIT]
    np.testing.assert_allclose(served.sum(axis=1), 1.0)
    assert served.argmax(axis=1).tolist() == [3, 9, 8]
    assert served[0, 3] < CLEAR[3]  # a temperature above 1 tempers an overconfident top probability


def test_not_a_digit_comes_before_unsure() -> None:
    """Two digits close together but both unlikely: nothing fits, rather than two things."""
    rule = VerdictRule(unsure_margin=0.5, reject_below=0.9)
    assert rule.judge(np.array([TORN]))[1] == [Verdict.NOT_A_DIGIT]


def test_softening_keeps_the_ranking_and_survives_zero_probabilities() -> None:
    probabilities = np.array([[1.0] + [0.0] * 9, CLEAR])
    for temperature in (0.5, 1.0, 3.0, 100.0):
        softened = soften(probabilities, temperature)
        assert np.isfinite(softened).all()
        np.testing.assert_allclose(softened.sum(axis=1), 1.0)
        assert softened.argmax(axis=1).tolist() == [0, 3]


def test_ranked_names_the_two_candidates_only_when_unsure() -> None:
    assert ranked(np.array(TORN), Verdict.UNSURE) == (9, (9, 4))
    assert ranked(np.array(TORN), Verdict.DIGIT) == (9, None)
    assert ranked(np.array(SPREAD), Verdict.NOT_A_DIGIT) == (8, None)


def test_ranked_orders_as_a_stable_sort_and_equal_probabilities_go_lower_digit_first() -> None:
    """The digit and the candidates are the first two of the probabilities sorted from the highest, the
    lower digit first among equals, whether the row is a numpy array or a list."""
    rng = np.random.default_rng(0)
    rows = [rng.dirichlet(np.ones(10)) for _ in range(2000)]
    rows += [np.round(row, 1) for row in rows]  # many ties
    rows += [np.full(10, 0.1), np.array([0.0, 0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])]
    for row in rows:
        order = np.argsort(-row, kind="stable")
        expected = (int(order[0]), (int(order[0]), int(order[1])))
        assert ranked(row, Verdict.UNSURE) == expected == ranked(row.tolist(), Verdict.UNSURE)
        assert ranked(row, Verdict.DIGIT) == (expected[0], None)
    assert ranked([0.0, 0.5, 0.0, 0.5] + [0.0] * 6, Verdict.UNSURE) == (1, (1, 3))


@pytest.mark.parametrize(
    "verdict",
    [
        {"temperature": 1.0},
        {"temperature": "warm", "not_a_digit": {"temperature": 1, "below": 0.1}, "unsure": {"margin": 0.1}},
        {"temperature": 0.0, "not_a_digit": {"temperature": 1, "below": 0.1}, "unsure": {"margin": 0.1}},
        {"temperature": 1.0, "not_a_digit": {"temperature": 1, "below": 1.5}, "unsure": {"margin": 0.1}},
        {"temperature": 1.0, "not_a_digit": {"temperature": 1, "below": 0.1}, "unsure": {"margin": float("nan")}},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_rule_is_refused_with_a_reason(verdict: object) -> None:
    with pytest.raises(ValueError, match="verdict"):
        VerdictRule.from_card({"verdict": verdict})


def test_docs_name_every_verdict() -> None:
    assert {str(verdict) for verdict in Verdict} == VERDICTS


def test_card_rule_reads_the_card_next_to_the_model(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps(CARD))
    assert card_rule(tmp_path / "m") == card_rule(tmp_path / "m.tflite") == VerdictRule(1.5, 3.0, 0.4, 0.5)
    assert card_rule(tmp_path / "no-card") == VerdictRule()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        card_rule(tmp_path / "broken")
