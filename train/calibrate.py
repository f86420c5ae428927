"""Fit the verdict rule of a trained model (:mod:`livedigit.verdict`) and write it into its model card.

    python -m train.calibrate --model models/livedigit-cnn --data ../shared/data/mnist.npz \\
        --pen-digits ../shared/data/pen_digits.jsonl [--dry-run]

Minutes, not a training run: the model is only run on the validation digits and the fitting negatives,
through the serving preprocessing. Nothing here reads a test split.

* **Temperature**: the one that maximises the log-likelihood of the drawn validation digits (the six
  validation writers of the pen-digits ``train`` split, as strokes): the served confidence is for people
  drawing. ``--temperature`` fixes it instead, for a model that was trained on those writers (as the
  one shipped before the current model was): on drawings it has learned, every digit is right and the
  fit only ever sharpens.
* **not_a_digit**: for each temperature in :data:`REJECT_TEMPERATURES`, the threshold below which at most
  ``--digit-rejection`` of each validation set falls; of these, the pair that sends the most fitting
  negatives (:mod:`train.negatives`, ``fit`` half) to ``not_a_digit``.
* **unsure**: a fixed margin between the top two calibrated probabilities (``--unsure-margin``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from livedigit import pendigits
from livedigit.config import DEFAULT_MODEL
from livedigit.runtime import Runtime, load_runtime
from livedigit.verdict import VerdictRule, soften
from train import negatives
from train.data import MNIST_VALIDATION, Outputs, as_served, load_mnist, rasters, run, subset

REJECT_TEMPERATURES = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Rejection temperatures tried; 1 is the plain top probability, high ones rank by the top logit's lead."""

DIGIT_REJECTION = 0.0025
"""Default share of each validation set that may fall below the ``not_a_digit`` threshold: a quarter of
the 1% promised for people the fit never saw, whose digits are less confident than these."""

TEMPERATURE_SET = "pen_digits_validation"
"""The validation set the temperature is fitted on: the six validation writers' drawings, as strokes."""

UNSURE_MARGIN = 0.5
"""Default margin: ``unsure`` when the runner-up's calibrated probability is within 0.5 of the top one's,
i.e. for two digits sharing the belief, the top one holding less than three quarters of it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model base path (.tflite and .json)")
    parser.add_argument("--data", default=None, help="MNIST .npz in Keras layout (default: Keras's download)")
    parser.add_argument("--pen-digits", default=str(pendigits.DEFAULT_PATH), help="pen_digits.jsonl")
    parser.add_argument("--digit-rejection", type=float, default=DIGIT_REJECTION)
    parser.add_argument("--unsure-margin", type=float, default=UNSURE_MARGIN)
    parser.add_argument(
        "--temperature", type=temperature, default=None, help="use this calibration temperature instead of fitting one"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per set (a quick check)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated negatives")
    parser.add_argument("--dry-run", action="store_true", help="print the rule without writing the card")
    return parser.parse_args(argv)


def temperature(text: str) -> float:
    """``--temperature``: a positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def validation_outputs(
    runtime: Runtime, mnist_train: tuple[np.ndarray, np.ndarray], pen_train: list[pendigits.PenDigit], limit: int | None
) -> dict[str, tuple[Outputs, np.ndarray]]:
    """The model's probabilities and the labels of the two validation sets, as the server computes them."""
    images, labels = mnist_train
    images, labels = images[-MNIST_VALIDATION:], labels[-MNIST_VALIDATION:]
    keep = subset(images, limit)
    _, pen = pendigits.split_writers(pen_train)
    pen = [pen[i] for i in subset(pen, limit)]
    return {
        "mnist_validation": (run(runtime, rasters(images[keep]), "MNIST validation"), labels[keep].astype(np.int64)),
        "pen_digits_validation": (
            run(runtime, [as_served(digit) for digit in pen], "pen-digits validation"),
            np.array([digit.label for digit in pen], dtype=np.int64),
        ),
    }


def fit(
    validation: dict[str, tuple[Outputs, np.ndarray]],
    fitting_negatives: Outputs,
    digit_rejection: float = DIGIT_REJECTION,
    unsure_margin: float = UNSURE_MARGIN,
    temperature: float | None = None,
) -> tuple[VerdictRule, dict[str, Any]]:
    """The rule, and how it was fitted (for the card); a ``temperature`` given is kept, not fitted."""
    found = {
        name: (outputs.probabilities[~outputs.empty], labels[~outputs.empty])
        for name, (outputs, labels) in validation.items()
    }
    # The served confidence is read by people drawing: the temperature is fitted on the drawn validation
    # digits alone. Scanned MNIST digits, about as many again and more, would pull it towards their own.
    drawn, drawn_labels = found[TEMPERATURE_SET]

    def nll(temperature: float) -> float:
        chosen = soften(drawn, temperature)[np.arange(len(drawn_labels)), drawn_labels]
        return float(-np.mean(np.log(np.clip(chosen, 1e-300, 1.0))))

    fixed = temperature is not None
    if temperature is None:
        searched = minimize_scalar(
            lambda log_t: nll(math.exp(log_t)), bounds=(math.log(0.05), math.log(20.0)), method="bounded"
        )
        temperature = round(math.exp(float(searched.x)), 4)
    negative_rows = fitting_negatives.probabilities[~fitting_negatives.empty]
    tried = []
    for reject_temperature in REJECT_TEMPERATURES:
        probe = VerdictRule(reject_temperature=reject_temperature)
        threshold = min(
            highest_threshold(probe.rejection_score(probabilities), digit_rejection)
            for probabilities, _ in found.values()
        )
        rejected = float(np.mean(probe.rejection_score(negative_rows) < threshold)) if len(negative_rows) else 0.0
        tried.append(
            {"temperature": reject_temperature, "below": threshold, "fitting_negatives_rejected": round(rejected, 5)}
        )
    best = max(tried, key=lambda row: row["fitting_negatives_rejected"])
    rule = VerdictRule(temperature, best["temperature"], best["below"], unsure_margin)
    fitted = {
        "temperature": {
            "by": "fixed (--temperature)" if fixed else f"maximum log-likelihood of the {TEMPERATURE_SET} digits",
            "log_likelihood_per_digit": {"at_1": round(-nll(1.0), 6), "fitted": round(-nll(temperature), 6)},
        },
        "not_a_digit": {
            "by": f"at most {digit_rejection:.2%} of each validation set below the threshold; the rejection "
            "temperature sending the most fitting negatives to not_a_digit",
            "digit_rejection": digit_rejection,
            "tried": tried,
        },
        "unsure": {"by": "fixed margin between the top two calibrated probabilities"},
        "validation_digits": {name: len(labels) for name, (_, labels) in found.items()},
        "fitting_negatives": len(negative_rows),
    }
    return rule, fitted


def highest_threshold(scores: np.ndarray, share: float) -> float:
    """The highest threshold with at most ``share`` of ``scores`` strictly below it."""
    ordered = np.sort(scores)
    allowed = math.floor(share * len(ordered))
    # Rounded down to 6 decimals for the card, which never lets one more score below it.
    return math.floor(float(ordered[allowed]) * 1e6) / 1e6 if allowed < len(ordered) else 1.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    base = Path(args.model).with_suffix("") if Path(args.model).suffix else Path(args.model)
    runtime = load_runtime(base, "litert")
    print("loading the data ...", flush=True)
    x_train, y_train, _, _ = load_mnist(args.data)
    validation = validation_outputs(runtime, (x_train, y_train), pendigits.load(args.pen_digits, "train"), args.limit)
    made = negatives.negatives("fit", args.seed)
    made = [made[i] for i in subset(made, args.limit)]
    rule, fitted = fit(
        validation,
        run(runtime, [n.image for n in made], "fitting negatives"),
        args.digit_rejection,
        args.unsure_margin,
        args.temperature,
    )
    fitted["command"] = "python -m train.calibrate " + " ".join(argv if argv is not None else sys.argv[1:])
    fitted["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({**rule.to_card(), "fitted": fitted}, indent=2))
    if not args.dry_run:
        card_path = base.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        card["verdict"] = {**rule.to_card(), "fitted": fitted}
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"stored in {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
