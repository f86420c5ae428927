"""``livedigit predict``: the digit in each image file, from the shipped model here or from a server.

Local prediction runs the files through the same preprocessing and runtime as the server, in one batch;
with ``--url`` the files go to a server through :class:`livedigit.client.LiveDigitClient`. Both convert
rasters with :func:`livedigit.preprocess.pixels_uint8`, so they give the same answer for the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

import numpy as np

from livedigit.client import LiveDigitClient, LiveDigitError, ServerError, load_image
from livedigit.config import DEFAULT_MODEL, Settings
from livedigit.preprocess import Image, PreprocessError, preprocess
from livedigit.runtime import RUNTIMES, ModelLoadError, load_runtime
from livedigit.verdict import card_rule, ranked
from livedigit.wire import Empty, Prediction, Result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``livedigit predict``."""
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="PNG images or .npy arrays (2-D, ink high: uint8 0..255 or float 0..1)"
    )
    parser.add_argument("--url", help="server to ask, e.g. ws://127.0.0.1:8000/ws; without it the model runs here")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per file (with the ten probabilities) instead of text",
    )
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="local mode: model base path or file")
    parser.add_argument("--runtime", default="litert", choices=RUNTIMES, help="local mode: inference runtime")
    parser.add_argument("--timeout", type=float, default=30.0, help="--url mode: seconds to wait for each reply")


def main(args: argparse.Namespace) -> int:
    """Predict the digit in each PNG or .npy file, locally with the shipped model or through --url.

    Prints one line per file: the path, the digit, its confidence and the verdict (digit, unsure or
    not_a_digit), or "empty" when there is no digit; --json prints one JSON object per line instead. A
    file that cannot be read or is not a usable image gets an error on stderr, the other files are still
    predicted, and the exit status is 1.
    """
    if args.url:
        try:
            outcomes = asyncio.run(_predict_remote(args.files, args.url, args.timeout))
        except (LiveDigitError, OSError) as exc:
            print(f"livedigit predict: {exc}", file=sys.stderr)
            return 2
    else:
        try:
            outcomes = _predict_local(args.files, args.model, args.runtime)
        except (ModelLoadError, ValueError) as exc:
            print(f"livedigit predict: {exc}", file=sys.stderr)
            return 2
    failed = False
    for path, outcome in zip(args.files, outcomes, strict=True):
        if isinstance(outcome, ServerError):
            failed = True
            print(f"livedigit predict: {path}: {outcome.message}", file=sys.stderr)
        _print_outcome(path, outcome, args.json)
    sys.stdout.flush()
    return 1 if failed else 0


def _print_outcome(path: str, outcome: Result | ServerError, as_json: bool) -> None:
    if isinstance(outcome, ServerError):
        if as_json:
            print(json.dumps({"file": path, "type": "error", "code": outcome.code, "message": outcome.message}))
        return
    if isinstance(outcome, Empty):
        print(json.dumps({"file": path, "type": "empty"}) if as_json else f"{path}\tempty")
        return
    if as_json:
        line = {
            "file": path,
            "type": "prediction",
            "digit": outcome.digit,
            "confidence": round(outcome.confidence, 6),
            "probabilities": [round(p, 6) for p in outcome.probabilities],
            "verdict": outcome.verdict,
        }
        if outcome.candidates is not None:
            line["candidates"] = list(outcome.candidates)
        print(json.dumps(line))
    else:
        print(f"{path}\t{outcome.digit}\t{outcome.confidence:.3f}\t{outcome.verdict}")


def _read_file(path: str) -> Image | ServerError:
    try:
        return load_image(path)
    except OSError as exc:
        return ServerError("unreadable", f"cannot read: {exc.strerror or exc}")
    except PreprocessError as exc:
        return ServerError("bad_image", str(exc))


def _predict_local(paths: Sequence[str], model: str, runtime_kind: str) -> list[Result | ServerError]:
    """Run the files through the same preprocessing and model as the server, in one batch."""
    limits = Settings().limits
    outcomes: list[Result | ServerError] = []
    inputs: list[tuple[int, np.ndarray]] = []
    for index, path in enumerate(paths):
        image = _read_file(path)
        if isinstance(image, ServerError):
            outcomes.append(image)
            continue
        try:
            tensor = preprocess(image, limits)
        except PreprocessError as exc:
            outcomes.append(ServerError("bad_image", str(exc)))
            continue
        outcomes.append(Empty(id=None, final=True))
        if tensor is not None:
            inputs.append((index, tensor))
    if inputs:
        rule = card_rule(model)
        raw = load_runtime(model, runtime_kind).predict(np.stack([tensor for _, tensor in inputs]))
        probabilities, verdicts = rule.judge(raw)
        for (index, _), row, verdict in zip(inputs, probabilities, verdicts, strict=True):
            digit, candidates = ranked(row, verdict)
            outcomes[index] = Prediction(
                None, True, digit, float(row[digit]), tuple(float(p) for p in row), None, None, verdict, candidates
            )
    return outcomes


async def _predict_remote(paths: Sequence[str], url: str, timeout: float) -> list[Result | ServerError]:
    """Submit the files one at a time, waiting as long as each ``rate_limited`` reply asks (30 tries)."""
    outcomes: list[Result | ServerError] = []
    async with LiveDigitClient(url, timeout=timeout) as client:
        for path in paths:
            image = _read_file(path)
            if isinstance(image, ServerError):
                outcomes.append(image)
                continue
            for attempt in range(1, 31):
                try:
                    outcomes.append(await client.submit(image))
                    break
                except ServerError as exc:
                    if exc.code != "rate_limited" or attempt == 30:
                        outcomes.append(exc)
                        break
                    await asyncio.sleep((exc.retry_after_ms or 200) / 1000.0)
    return outcomes
