"""``livedigit predict``: the digit in each image file, from the shipped model here or from a server.

Arguments are files or folders (every ``.png`` and ``.npy`` below a folder, in path order). Local
prediction runs the files through the same preprocessing and runtime as the server, in batches; with
``--url`` the files go to a server through :meth:`livedigit.client.LiveDigitClient.predict_each`, in batch
messages that keep it busy, and each line is printed as soon as it is known. Both convert rasters with
:func:`livedigit.preprocess.pixels_uint8`, so they give the same answer for the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from livedigit.client import LiveDigitClient, LiveDigitError, ServerError, load_image
from livedigit.config import DEFAULT_MODEL, Settings
from livedigit.preprocess import Image, PreprocessError, preprocess
from livedigit.runtime import RUNTIMES, ModelLoadError, load_runtime
from livedigit.verdict import card_rule, ranked
from livedigit.wire import Empty, Prediction, Result

SUFFIXES = (".png", ".npy")
"""The files a folder argument stands for."""

LOCAL_BATCH = 256
"""Images per model call in local mode, so a large folder does not make one huge batch."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``livedigit predict``."""
    parser.add_argument(
        "files",
        nargs="+",
        metavar="PATH",
        help="PNG images or .npy arrays (2-D, ink high: uint8 0..255 or float 0..1), or folders of them",
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
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--url mode: a progress bar on stderr (default: on a terminal, for runs longer than a second)",
    )


def main(args: argparse.Namespace) -> int:
    """Predict the digit in each PNG or .npy file (or in every one below a folder), locally with the
    shipped model or through --url.

    Prints one line per file: the path, the digit, its confidence and the verdict (digit, unsure or
    not_a_digit), or "empty" when there is no digit; --json prints one JSON object per line instead. A
    file that cannot be read or is not a usable image gets an error on stderr, the other files are still
    predicted, and the exit status is 1.
    """
    paths = _expand(args.files)
    if not paths:
        print(f"livedigit predict: no .png or .npy files in {' '.join(args.files)}", file=sys.stderr)
        return 2
    failed = False

    def report(path: str, outcome: Result | ServerError) -> None:
        nonlocal failed
        if isinstance(outcome, ServerError):
            failed = True
            print(f"livedigit predict: {path}: {outcome.message}", file=sys.stderr)
        _print_outcome(path, outcome, args.json)

    if args.url:
        try:
            asyncio.run(_predict_remote(paths, args.url, args.timeout, args.progress, report))
        except (LiveDigitError, OSError) as exc:
            print(f"livedigit predict: {exc}", file=sys.stderr)
            return 2
    else:
        try:
            outcomes = _predict_local(paths, args.model, args.runtime)
        except (ModelLoadError, ValueError) as exc:
            print(f"livedigit predict: {exc}", file=sys.stderr)
            return 2
        for path, outcome in zip(paths, outcomes, strict=True):
            report(path, outcome)
    sys.stdout.flush()
    return 1 if failed else 0


def _expand(arguments: Sequence[str]) -> list[str]:
    """The files to predict: each argument that is not a folder as given (so a missing file is reported),
    and for a folder every ``.png`` and ``.npy`` file below it, sorted."""
    paths: list[str] = []
    for argument in arguments:
        folder = Path(argument)
        if folder.is_dir():
            found = (path for path in folder.rglob("*") if path.suffix.lower() in SUFFIXES and path.is_file())
            paths += sorted(str(path) for path in found)
        else:
            paths.append(argument)
    return paths


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
    """Run the files through the same preprocessing and model as the server, :data:`LOCAL_BATCH` at a time."""
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
        runtime = load_runtime(model, runtime_kind)
        for start in range(0, len(inputs), LOCAL_BATCH):
            batch = inputs[start : start + LOCAL_BATCH]
            probabilities, verdicts = rule.judge(runtime.predict(np.stack([tensor for _, tensor in batch])))
            for (index, _), row, verdict in zip(batch, probabilities, verdicts, strict=True):
                digit, candidates = ranked(row, verdict)
                outcomes[index] = Prediction(
                    None, True, digit, float(row[digit]), tuple(float(p) for p in row), None, None, verdict, candidates
                )
    return outcomes


async def _predict_remote(
    paths: Sequence[str],
    url: str,
    timeout: float,
    progress: bool | None,
    report: Callable[[str, Result | ServerError], None],
) -> None:
    """Send the files to the server in batches (files are read as they are sent), reporting each result
    in order as soon as it is known."""
    async with LiveDigitClient(url, timeout=timeout) as client:
        index = 0
        async for outcome in client.predict_each(paths, progress=progress):
            report(paths[index], outcome)
            index += 1
