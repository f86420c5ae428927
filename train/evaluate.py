"""Measure a model as the server runs it: every figure its model card records.

    python -m train.evaluate --model models/livedigit-cnn --data ../shared/data/mnist.npz \\
        --pen-digits ../shared/data/pen_digits.jsonl [--json figures.json] [--card] [--speed]

Every image goes through ``livedigit.preprocess`` as a request would (MNIST digits as 8-bit rasters, pen
digits as strokes with the tablet's ``surface``), then the model, then the verdict rule of the model's
card (:mod:`livedigit.verdict`), exactly as the batcher does. Figures:

* **accuracy**: MNIST test, pen-digits test (14 writers never trained on) and validation (6 writers),
  and the test rows of ``--extra-pen`` files (``extra_pen_test``); an ``empty`` answer counts as a miss.
  Also MNIST test as if scanned from paper (``mnist_test_on_paper``, :func:`train.data.on_paper`: grey,
  grainy paper and a speck of dust), and the pen-digits test with a stray tap in a corner of the tablet
  (``pen_digits_test_with_a_tap``, :func:`train.data.with_a_tap`).
* **redrawn**: the pen-digits validation and test splits with each digit's strokes in reverse order,
  each stroke from its other end, or both (:func:`train.data.redrawn`): the same images with the paths
  of writers taught otherwise.
* **early**: each pen-digits test digit cut after 50%, 75% and 90% of its points (the first
  ``ceil(fraction * points)`` points, strokes in order): top-1 against the final label at each cut, and
  *settled early*, the share right at 75% and still right at 90% and 100%.
* **calibration**: expected calibration error of the served confidence on the pen-digits test split
  (15 equal-width bins), with and without the card's temperature; and on MNIST test.
* **verdict**: the share of held-out negatives (:mod:`train.negatives`) answered ``not_a_digit`` and
  ``unsure``, by kind, and the share of real digits (pen-digits and MNIST test) answered each way; the
  share of the pen-digits test errors flagged (``unsure`` or ``not_a_digit``).
* **cost**: the card's FLOPs and parameters; with ``--speed``, LiteRT digits/s with one thread from
  ``bench/runtime.py`` (in a fresh process; ``--reference`` measures another model in the same run),
  with the CPU it ran on (``machine``: its model and which 8-bit dot-product instructions it has).

Writes the figures as JSON (``--json``) and prints a table; ``--card`` also stores them in the model's
card (``accuracy`` updated, the rest under ``evaluation``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livedigit import pendigits
from livedigit.config import DEFAULT_MODEL
from livedigit.runtime import Runtime, load_runtime
from livedigit.verdict import VerdictRule
from livedigit.wire import Verdict
from train import negatives
from train.data import REDRAWN, Outputs, as_served, load_mnist, on_paper, rasters, redrawn, run, subset, with_a_tap

REPO = Path(__file__).resolve().parent.parent
CUTS = (0.5, 0.75, 0.9)
"""Where the early-answer figures cut each pen digit, as fractions of its points."""
BINS = 15
"""Equal-width confidence bins of the expected calibration error."""
SPEED_BATCHES = ("1", "8", "64")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model base path (.tflite and .json)")
    parser.add_argument("--data", default=None, help="MNIST .npz in Keras layout (default: Keras's download)")
    parser.add_argument("--pen-digits", default=str(pendigits.DEFAULT_PATH), help="pen_digits.jsonl")
    parser.add_argument(
        "--extra-pen",
        action="append",
        default=[],
        metavar="JSONL",
        help="more digits in the pen-digits layout, e.g. from 'livedigit labels export'; test rows measured",
    )
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--card", action="store_true", help="store the figures in the model's card")
    parser.add_argument("--speed", action="store_true", help="also measure digits/s with bench/runtime.py")
    parser.add_argument("--reference", default=None, help="with --speed: a model to measure in the same run")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per set (a quick check)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated negatives")
    return parser.parse_args(argv)


@dataclass
class Sets:
    """What is measured, as the server receives it, with the labels."""

    mnist_test: tuple[list[Any], np.ndarray]
    mnist_on_paper: list[Any]
    pen_test: list[pendigits.PenDigit]
    pen_validation: list[pendigits.PenDigit]
    negatives: dict[negatives.Split, list[negatives.Negative]] = field(default_factory=dict)
    extra_test: list[pendigits.PenDigit] = field(default_factory=list)


def load_sets(
    mnist: str | None,
    pen_digits: str,
    limit: int | None,
    seed: int,
    extra_test: list[pendigits.PenDigit] | None = None,
) -> Sets:
    """The measured sets; ``limit`` keeps that many of each, spread over the set; ``extra_test`` are the
    test rows of extra pen-digits files, measured whole."""
    print("loading the data ...", flush=True)
    _, _, x_test, y_test = load_mnist(mnist)
    keep = subset(x_test, limit)
    pen_test = pendigits.load(pen_digits, "test")
    _, pen_validation = pendigits.split_writers(pendigits.load(pen_digits, "train"))
    sets = Sets(
        (rasters(x_test[keep]), y_test[keep].astype(np.int64)),
        on_paper(x_test[keep]),
        [pen_test[i] for i in subset(pen_test, limit)],
        [pen_validation[i] for i in subset(pen_validation, limit)],
        extra_test=extra_test or [],
    )
    for split in negatives.SPLITS:
        started = time.perf_counter()
        made = negatives.negatives(split, seed)
        sets.negatives[split] = [made[i] for i in subset(made, limit)]
        print(f"  {len(made)} {split} negatives made in {time.perf_counter() - started:.1f} s", flush=True)
    return sets


def accuracy(outputs: Outputs, labels: np.ndarray) -> float:
    return float(np.mean(outputs.predicted() == labels))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by the bin's share."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for index in range(bins):
        members = which == index
        if members.any():
            error += abs(float(correct[members].mean() - confidence[members].mean())) * float(members.mean())
    return error


def verdict_shares(verdicts: list[Verdict | None]) -> dict[str, float]:
    """The share of each verdict, and of ``empty`` answers (``None``: no digit found at all)."""
    counts = Counter(verdicts)
    total = max(1, len(verdicts))
    shares = {str(kind): round(counts[kind] / total, 5) for kind in Verdict}
    shares["empty"] = round(counts[None] / total, 5)
    return shares


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """10x10 counts, true class by row; an empty answer is in no column."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    for truth, guess in zip(labels, predicted, strict=True):
        if guess >= 0:
            matrix[truth, guess] += 1
    return matrix.tolist()


def most_confused(confusion: list[list[int]], count: int = 5) -> list[dict[str, int]]:
    pairs = [
        {"true": t, "predicted": p, "count": confusion[t][p]}
        for t in range(10)
        for p in range(10)
        if t != p and confusion[t][p]
    ]
    return sorted(pairs, key=lambda pair: -pair["count"])[:count]


def evaluate(runtime: Runtime, rule: VerdictRule, sets: Sets) -> dict[str, Any]:
    """Every figure but the speed (see the module docstring)."""
    print("measuring through the serving preprocessing ...", flush=True)
    images, mnist_labels = sets.mnist_test
    mnist = run(runtime, images, "MNIST test")
    paper = run(runtime, sets.mnist_on_paper, "MNIST test on paper")
    pen_labels = np.array([digit.label for digit in sets.pen_test])
    pen = run(runtime, [as_served(digit) for digit in sets.pen_test], "pen-digits test")
    tapped = run(runtime, with_a_tap(sets.pen_test), "pen-digits test with a tap")
    validation_labels = np.array([digit.label for digit in sets.pen_validation])
    validation = run(runtime, [as_served(digit) for digit in sets.pen_validation], "pen-digits validation")
    redrawn_accuracy = {
        split: {
            way: round(
                accuracy(run(runtime, [redrawn(d, way) for d in digits], f"pen-digits {split}, {way}"), labels), 5
            )
            for way in REDRAWN
        }
        for split, digits, labels in (
            ("validation", sets.pen_validation, validation_labels),
            ("test", sets.pen_test, pen_labels),
        )
    }
    cuts = {
        fraction: run(runtime, [as_served(d, fraction) for d in sets.pen_test], f"pen-digits test at {fraction:.0%}")
        for fraction in CUTS
    }
    held_out = sets.negatives.get("held_out", [])
    fit = sets.negatives.get("fit", [])
    rejected = run(runtime, [negative.image for negative in held_out], "held-out negatives")
    fitted = run(runtime, [negative.image for negative in fit], "fitting negatives")

    def judged(outputs: Outputs) -> tuple[np.ndarray, list[Verdict | None]]:
        """Served probabilities of the images that got a prediction, and every image's verdict (``None``
        for an empty one)."""
        served, found = rule.judge(outputs.probabilities[~outputs.empty])
        verdicts: list[Verdict | None] = [None] * len(outputs.empty)
        for index, verdict in zip(np.flatnonzero(~outputs.empty), found, strict=True):
            verdicts[index] = verdict
        return served, verdicts

    confusion = confusion_matrix(pen.predicted(), pen_labels)
    right = {fraction: outputs.predicted() == pen_labels for fraction, outputs in cuts.items()}
    right[1.0] = pen.predicted() == pen_labels
    settled = right[0.75] & right[0.9] & right[1.0]

    pen_served, pen_verdicts = judged(pen)
    mnist_served, mnist_verdicts = judged(mnist)
    flagged = np.array([verdict not in (Verdict.DIGIT, None) for verdict in pen_verdicts])
    wrong = ~right[1.0]
    negative_served, negative_verdicts = judged(rejected)
    letter_rows = np.array([n.kind != "shape" for n in held_out], dtype=bool)[~rejected.empty]
    by_kind: dict[str, list[Verdict | None]] = defaultdict(list)
    by_letter: dict[str, list[Verdict | None]] = defaultdict(list)
    for negative, verdict in zip(held_out, negative_verdicts, strict=True):
        by_kind[negative.kind].append(verdict)
        if negative.kind != "shape":
            by_letter[negative.name].append(verdict)
    accuracies: dict[str, Any] = {
        "mnist_test": round(accuracy(mnist, mnist_labels), 5),
        "mnist_test_on_paper": round(accuracy(paper, mnist_labels), 5),
        "pen_digits_test": round(accuracy(pen, pen_labels), 5),
        "pen_digits_test_with_a_tap": round(accuracy(tapped, pen_labels), 5),
        "pen_digits_validation": round(accuracy(validation, validation_labels), 5),
        "pen_digits_test_most_confused": most_confused(confusion),
        "pen_digits_test_confusion": confusion,
    }
    if sets.extra_test:
        extra = run(runtime, [digit.image() for digit in sets.extra_test], "extra pen digits, test rows")
        accuracies["extra_pen_test"] = round(accuracy(extra, np.array([d.label for d in sets.extra_test])), 5)
    return {
        "accuracy": accuracies,
        "early": {
            "pen_digits_test_top1": {f"{cut:g}": round(float(right[cut].mean()), 5) for cut in sorted(right)},
            "pen_digits_test_settled_early": round(float(settled.mean()), 5),
            "pen_digits_test_verdicts": {
                f"{fraction:g}": verdict_shares(judged(outputs)[1]) for fraction, outputs in cuts.items()
            },
        },
        "redrawn": redrawn_accuracy,
        "calibration": {
            "pen_digits_test_ece": round(expected_calibration_error(pen_served, pen_labels[~pen.empty]), 5),
            "pen_digits_test_ece_uncalibrated": round(
                expected_calibration_error(pen.probabilities[~pen.empty], pen_labels[~pen.empty]), 5
            ),
            "mnist_test_ece": round(expected_calibration_error(mnist_served, mnist_labels[~mnist.empty]), 5),
            "bins": BINS,
        },
        "verdict": {
            "held_out_negatives": verdict_shares(negative_verdicts),
            "held_out_negatives_by_kind": {kind: verdict_shares(found) for kind, found in sorted(by_kind.items())},
            "held_out_letters_by_letter": {name: verdict_shares(found) for name, found in sorted(by_letter.items())},
            "held_out_letters_confidence_at_least_0.9": round(
                float(np.mean(negative_served[letter_rows].max(axis=1) >= 0.9)) if letter_rows.any() else 0.0, 5
            ),
            "fitting_negatives": verdict_shares(judged(fitted)[1]),
            "pen_digits_test": verdict_shares(pen_verdicts),
            "mnist_test": verdict_shares(mnist_verdicts),
            "pen_digits_test_errors_flagged": round(float(flagged[wrong].mean()) if wrong.any() else 0.0, 5),
            "pen_digits_test_accuracy_of_digit_verdicts": round(
                float(right[1.0][~flagged].mean()) if (~flagged).any() else 0.0, 5
            ),
        },
        "data": {
            "mnist_test": len(mnist_labels),
            "pen_digits_test": len(pen_labels),
            "pen_digits_validation": len(validation_labels),
            "pen_digits_validation_writers": sorted({digit.writer for digit in sets.pen_validation}),
            "pen_digits_surface": list(pendigits.SURFACE),
            "held_out_negatives": len(held_out),
            "fitting_negatives": len(fit),
            "negatives_sources": {
                split: sorted({f"{n.kind}:{n.source}" for n in made}) for split, made in sets.negatives.items()
            },
            "missing_fonts": negatives.missing_fonts(),
        },
    }


MACHINE_KEYS = ("cpu", "cpus", "cpu_features", "cpu_features_lacking")
"""What ``bench/runtime.py`` says of the machine that a speed is kept with: the same network runs at
different multiples of another on CPUs with and without 8-bit dot products."""


def speed(model: str, reference: str | None) -> dict[str, Any]:
    """LiteRT digits/s with one thread, by batch size, from ``bench/runtime.py`` (a fresh process per model)."""
    results: dict[str, Any] = {}
    for name, path in [("model", model), ("reference", reference)]:
        if path is None:
            continue
        print(f"measuring the speed of {path} with bench/runtime.py ...", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "speed.json"
            command = [sys.executable, str(REPO / "bench" / "runtime.py"), "--configs", "litert:1", "--model", path]
            subprocess.run([*command, "--json", str(out)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            measured = json.loads(out.read_text())
        rates = measured["results"][0]["samples_per_s"]
        results[name] = {batch: round(rates[batch]) for batch in SPEED_BATCHES}
        results["load_average"] = measured["environment"]["load_average"]
        results["machine"] = {key: measured["environment"][key] for key in MACHINE_KEYS}
    if "reference" in results:
        results["ratio_batch_8"] = round(results["model"]["8"] / results["reference"]["8"], 3)
    return results


def table(figures: dict[str, Any]) -> str:
    """The figures a person reads first, one per line."""
    accuracy, early, calibration, verdict = (figures[key] for key in ("accuracy", "early", "calibration", "verdict"))
    redrawn = figures["redrawn"]
    top1 = early["pen_digits_test_top1"]
    rows = [
        ("MNIST test accuracy", f"{accuracy['mnist_test']:.2%}"),
        ("MNIST test on paper", f"{accuracy['mnist_test_on_paper']:.2%}"),
        ("pen-digits test accuracy", f"{accuracy['pen_digits_test']:.2%}"),
        ("pen-digits test with a tap", f"{accuracy['pen_digits_test_with_a_tap']:.2%}"),
        ("pen-digits validation accuracy", f"{accuracy['pen_digits_validation']:.2%}"),
        ("early top-1 at 50/75/90/100%", " / ".join(f"{top1[key]:.1%}" for key in top1)),
        ("settled early", f"{early['pen_digits_test_settled_early']:.1%}"),
        *(
            (f"pen-digits validation / test, {way.replace('_', ' ')}", f"{validation:.2%} / {redrawn['test'][way]:.2%}")
            for way, validation in redrawn["validation"].items()
        ),
        (
            "ECE pen-digits test (uncalibrated)",
            f"{calibration['pen_digits_test_ece']:.2%} ({calibration['pen_digits_test_ece_uncalibrated']:.2%})",
        ),
        ("held-out negatives not_a_digit / unsure", _pair(verdict["held_out_negatives"])),
        ("pen-digits test not_a_digit / unsure", _pair(verdict["pen_digits_test"])),
        ("MNIST test not_a_digit / unsure", _pair(verdict["mnist_test"])),
        ("pen-digits test errors flagged", f"{verdict['pen_digits_test_errors_flagged']:.0%}"),
        ("held-out letters with confidence >= 0.9", f"{verdict['held_out_letters_confidence_at_least_0.9']:.0%}"),
    ]
    for kind, shares in verdict["held_out_negatives_by_kind"].items():
        rows.append((f"  {kind} not_a_digit / unsure", _pair(shares)))
    cost = figures.get("cost", {})
    if "flops_per_sample" in cost:
        rows.append(("MFLOPs per digit, parameters", f"{cost['flops_per_sample'] / 1e6:.1f}, {cost['parameters']:,}"))
    if "speed" in cost:
        rows.append(("LiteRT 1 thread digits/s (b=1/8/64)", " / ".join(map(str, cost["speed"]["model"].values()))))
        if "machine" in cost["speed"]:  # cards measured before it was kept have none
            from livedigit.bench.resources import describe_cpu  # the bench extra, as bench/runtime.py needs

            rows.append(("  measured on", describe_cpu(cost["speed"]["machine"])))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def _pair(shares: dict[str, float]) -> str:
    return f"{shares['not_a_digit']:.2%} / {shares['unsure']:.2%}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    base = Path(args.model).with_suffix("") if Path(args.model).suffix else Path(args.model)
    card_path = base.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    rule = VerdictRule.from_card(card)
    extra_test = [digit for path in args.extra_pen for digit in pendigits.load(path, "test")]
    sets = load_sets(args.data, args.pen_digits, args.limit, args.seed, extra_test)
    figures = evaluate(load_runtime(base, "litert"), rule, sets)
    figures["cost"] = {key: card[key] for key in ("flops_per_sample", "parameters") if key in card}
    if args.speed:
        figures["cost"]["speed"] = speed(str(base), args.reference)
    figures["measured"] = {
        "command": "python -m train.evaluate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rule": rule.to_card(),
        "limit": args.limit,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(table(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if args.card:
        store(card_path, card, figures)
        print(f"stored in {card_path}")
    return 0


def store(card_path: Path, card: dict[str, Any], figures: dict[str, Any]) -> None:
    """Write ``figures`` into the card: ``accuracy`` updated (other keys kept), the rest as ``evaluation``."""
    card.setdefault("accuracy", {}).update(figures["accuracy"])
    card["evaluation"] = {key: value for key, value in figures.items() if key != "accuracy"}
    card_path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
