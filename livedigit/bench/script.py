"""``livedigit bench --script``: a script classifying a data set at the server's full speed, alone and
beside people drawing.

The script is :meth:`livedigit.client.LiveDigitClient.predict_each` over MNIST test digits (or, without
the MNIST file, finished pen digits), cycled for as long as it is measured: batch messages, pipelined
within the limits the server announces, refused images sent again after the wait asked for. It runs in
a process of its own (``python -m livedigit.bench.script``), as a script would, so that its client work
does not delay the simulated people's, and it connects from its own client address
(``X-Forwarded-For``, which a server trusts from loopback by default), so the server's per-address
fairness sees it apart from the drawers. Its process reports when each result arrived (the monotonic
clock is the machine's, shared by both processes). The figures of one run:

a. one script on a server with the default settings against one with every per-connection and
   per-address limit lifted, and against the model alone on the same images (the ceiling);
b. ``--clients`` people drawing at ``--rate``, alone and with the script beside them: their p99, and the
   script's throughput against the capacity they leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livedigit.client import LiveDigitClient
from livedigit.wire import Empty, Prediction

SCRIPT_ADDRESS = "198.51.100.7"
"""The script's client address as the server sees it (a documentation address, RFC 5737)."""

LIFTED = [
    "--submit-rate", "0",
    "--snapshot-rate", "0",
    "--message-rate", "0",
    "--address-byte-rate", "0",
    "--client-queue-share", "1",
    "--max-pending-submits", "100000",
    "--max-connections-per-client", "100000",
]  # fmt: skip
"""Serve flags that lift every limit a server puts on one connection or one client address."""


def script_images(mnist: str | Path, count: int, pen_strokes: Sequence[Any]) -> tuple[str, list[Any]]:
    """What the script classifies: the first ``count`` MNIST test digits (uint8 rasters), or the pen
    digits' finished drawings when the MNIST file is not there; and which of the two."""
    try:
        with np.load(mnist) as data:
            return "mnist", list(data["x_test"][:count])
    except OSError:
        return "pen-digits", list(itertools.islice(itertools.cycle(pen_strokes), count))


async def script_process(
    url: str, mnist: str, count: int, pen_digits: str, timeout: float, stop: asyncio.Event
) -> list[tuple[float, str, float]]:
    """Run the script in a process of its own until ``stop`` is set; when each result arrived, what it was,
    and the script process's CPU seconds by then."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livedigit.bench.script", url, mnist, str(count), pen_digits, str(timeout),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    await stop.wait()
    output, _ = await process.communicate(b"stop\n")
    if process.returncode != 0:
        raise RuntimeError(f"the script process exited with {process.returncode}")
    return [(float(when), str(kind), float(cpu)) for when, kind, cpu in json.loads(output)]


async def run_script(
    url: str, images: list[Any], stop: asyncio.Event, timeout: float
) -> list[tuple[float, str, float]]:
    """Classify ``images`` over and over until ``stop`` is set; when each result arrived (monotonic), what
    it was, and this process's CPU seconds by then (what the script itself costs the machine)."""
    arrivals: list[tuple[float, str, float]] = []
    async with (
        LiveDigitClient(url, timeout=timeout, headers={"X-Forwarded-For": SCRIPT_ADDRESS}) as client,
        contextlib.aclosing(client.predict_each(itertools.cycle(images), progress=False)) as results,
    ):
        async for result in results:
            if isinstance(result, Prediction):
                kind = "predicted"
            elif isinstance(result, Empty):
                kind = "empty"
            else:
                kind = f"error {result.code}"
            arrivals.append((time.monotonic(), kind, time.process_time()))
            if stop.is_set():
                break
    return arrivals


def summary(arrivals: list[tuple[float, str, float]], start: float, end: float) -> dict[str, Any]:
    """The script's results that arrived between ``start`` and ``end``: how many of each, the rate, and
    the script process's own CPU per result over that time (a share of the machine the server lacks)."""
    inside = [(when, kind, cpu) for when, kind, cpu in arrivals if start <= when < end]
    outcomes = Counter(kind for _, kind, _ in inside)
    answered = outcomes["predicted"] + outcomes["empty"]
    elapsed = inside[-1][0] - inside[0][0] if inside else 0.0
    cpu = inside[-1][2] - inside[0][2] if elapsed > 0 else None
    return {
        "window_s": round(end - start, 2),
        "answered": answered,
        "images_per_s": round(answered / (end - start), 1),
        "outcomes": dict(outcomes),
        "client_cpu_percent": round(100 * cpu / elapsed, 1) if cpu is not None else None,
        "client_cpu_us_per_image": round(1e6 * cpu / (len(inside) - 1), 1) if cpu is not None else None,
    }


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    """The issue's figures as ratios of figures measured in the same run."""
    lone, lifted = report["lone_default"]["images_per_s"], report["lone_lifted"]["images_per_s"]
    alone, beside = report["drawers_alone"], report["drawers_with_script"]
    drawn = alone["predictions_per_s"]
    left = lone - drawn
    with_script = report["script_beside_drawers"]["images_per_s"]
    ceiling = report.get("ceiling", {}).get("ceiling_per_s")
    p99_alone, p99_beside = alone["snapshots"]["latency_ms"]["p99"], beside["snapshots"]["latency_ms"]["p99"]
    return {
        "default_over_lifted": round(lone / lifted, 3) if lifted else None,
        "default_over_ceiling": round(lone / ceiling, 3) if ceiling else None,
        "drawers_p99_alone_ms": p99_alone,
        "drawers_p99_with_script_ms": p99_beside,
        "drawers_p99_added_ms": round(p99_beside - p99_alone, 2) if p99_alone and p99_beside else None,
        "script_over_capacity_left": round(with_script / left, 3) if left > 0 else None,
        "script_over_lone": round(with_script / lone, 3) if lone else None,
    }


async def _main(url: str, mnist: str, count: int, pen_digits: str, timeout: float) -> None:
    """The script process: classify until a line (or the end) arrives on stdin; print the arrivals."""
    from livedigit import pendigits

    strokes = [digit.strokes for digit in pendigits.load(pen_digits, "test")] if pen_digits else []
    _, images = script_images(mnist, count, strokes)
    stop = asyncio.Event()
    waiting = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))
    waiting.add_done_callback(lambda _: stop.set())
    arrivals = await run_script(url, images, stop, timeout)
    await waiting
    print(json.dumps(arrivals))


if __name__ == "__main__":
    url, mnist, count, pen_digits, timeout = sys.argv[1:6]
    asyncio.run(_main(url, mnist, int(count), pen_digits, float(timeout)))
