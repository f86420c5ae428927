"""What a prediction means: probabilities whose confidence is calibrated, and a verdict on each drawing.

The network's softmax spreads all of its belief over the ten digits, so it names a digit for anything,
and its top probability is not exactly the chance of being right. Two steps on its ten probabilities,
run once per batch where the model runs, address both; the model card's ``verdict`` object holds their
parameters (:meth:`VerdictRule.from_card`) and ``train/calibrate.py`` fits them:

* **Calibration** (temperature scaling): the served probabilities are ``softmax(log(p) / temperature)``.
  The ranking of the digits never changes; the temperature is fitted by log-likelihood on validation
  digits, so that the confidence matches how often the top digit is right.
* **The verdict**, in this order:

  - ``not_a_digit`` when the *rejection score* is below ``not_a_digit.below``. The score is the top
    probability of ``softmax(log(p) / not_a_digit.temperature)``: at a temperature above 1 it measures
    how far the top digit's evidence stands above all the others' rather than above the runner-up's,
    which tells a scribble from a digit better. The threshold is chosen so that only a small share of
    real validation digits fall below it.
  - ``unsure`` when the top two calibrated probabilities are less than ``unsure.margin`` apart: two
    digits fit (a 4 or a 9); the reply names both.
  - ``digit`` otherwise.

A card without a ``verdict`` object gives the identity calibration and the verdict ``digit`` for every
prediction: the server then answers exactly as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livedigit.wire import Verdict

TINY = 1e-30
"""Probabilities are clipped to this before their logarithm: a float32 softmax rounds the far-off
classes of a confident digit to zero."""


@dataclass(frozen=True, slots=True)
class VerdictRule:
    """The calibration temperature and the verdict's thresholds (see the module docstring)."""

    temperature: float = 1.0
    reject_temperature: float = 1.0
    reject_below: float = 0.0
    """0 never rejects."""
    unsure_margin: float = 0.0
    """0 is never unsure."""

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> VerdictRule:
        """The rule of a model card; the default rule when the card has none.

        Raises ``ValueError`` for a ``verdict`` object that is malformed or out of range.
        """
        section = card.get("verdict")
        if section is None:
            return cls()
        try:
            rule = cls(
                temperature=float(section["temperature"]),
                reject_temperature=float(section["not_a_digit"]["temperature"]),
                reject_below=float(section["not_a_digit"]["below"]),
                unsure_margin=float(section["unsure"]["margin"]),
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"the model card's verdict is malformed ({type(exc).__name__}: {exc})") from None
        values = (rule.temperature, rule.reject_temperature, rule.reject_below, rule.unsure_margin)
        if not all(math.isfinite(value) for value in values):
            raise ValueError("the model card's verdict holds a value that is not finite")
        if rule.temperature <= 0 or rule.reject_temperature <= 0:
            raise ValueError("the model card's verdict temperatures must be above 0")
        if not (0.0 <= rule.reject_below <= 1.0 and 0.0 <= rule.unsure_margin <= 1.0):
            raise ValueError("the model card's verdict thresholds must lie in 0..1")
        return rule

    def to_card(self) -> dict[str, Any]:
        """The ``verdict`` object of a model card (without how it was fitted)."""
        return {
            "temperature": self.temperature,
            "not_a_digit": {"temperature": self.reject_temperature, "below": self.reject_below},
            "unsure": {"margin": self.unsure_margin},
        }

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """The served probabilities of a (n, 10) batch of the model's probabilities (float64)."""
        return soften(probabilities, self.temperature)

    def rejection_score(self, probabilities: np.ndarray) -> np.ndarray:
        """The score compared with ``reject_below``, for a (n, 10) batch of the model's probabilities."""
        scores: np.ndarray = soften(probabilities, self.reject_temperature).max(axis=1)
        return scores

    def judge(self, probabilities: np.ndarray) -> tuple[np.ndarray, list[Verdict]]:
        """Calibrated probabilities and the verdict of each row of the model's (n, 10) probabilities."""
        calibrated = self.calibrate(probabilities)
        top_two = np.sort(calibrated, axis=1)[:, -2:]
        unsure = top_two[:, 1] - top_two[:, 0] < self.unsure_margin
        rejected = self.rejection_score(probabilities) < self.reject_below
        verdicts = [
            Verdict.NOT_A_DIGIT if reject else Verdict.UNSURE if close else Verdict.DIGIT
            for reject, close in zip(rejected.tolist(), unsure.tolist(), strict=True)
        ]
        return calibrated, verdicts


def ranked(probabilities: Sequence[float] | np.ndarray, verdict: Verdict) -> tuple[int, tuple[int, int] | None]:
    """The most probable digit of one row, and with ``unsure`` the two candidates, the more probable first;
    of equal probabilities the lower digit first, as ``argmax`` picks (the batcher finds a whole batch's
    digits with it). In Python, not ``argsort``: it runs on the event loop for each ``unsure`` reply, and
    ten floats are compared faster than numpy is called."""
    values = probabilities.tolist() if isinstance(probabilities, np.ndarray) else list(probabilities)
    digit = max(range(len(values)), key=values.__getitem__)
    if verdict != Verdict.UNSURE:
        return digit, None
    return digit, (digit, max((i for i in range(len(values)) if i != digit), key=values.__getitem__))


def card_rule(model: str | Path) -> VerdictRule:
    """The rule in the model card next to ``model`` (its base path or either model file); the default
    rule when there is no card. Raises ``ValueError`` for a card that is not JSON or a malformed rule."""
    base = Path(model)
    if base.suffix in (".tflite", ".keras", ".json"):
        base = base.with_suffix("")
    try:
        text = base.with_suffix(".json").read_text(encoding="utf-8")
    except OSError:
        return VerdictRule()
    try:
        card = json.loads(text)
    except ValueError:
        raise ValueError(f"the model card {base.with_suffix('.json')} is not JSON") from None
    return VerdictRule.from_card(card) if isinstance(card, dict) else VerdictRule()


def soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / temperature)`` row by row, in float64; the identity at temperature 1."""
    values = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0:
        return values
    logits = np.log(np.clip(values, TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    scaled: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return scaled
