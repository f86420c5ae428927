"""One measured run: the people started on their schedules, the server watched, and every figure
gathered into one summary."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from livedigit import pendigits
from livedigit.bench.ceiling import reference_digit_us
from livedigit.bench.people import DRAIN_S, http_person, websocket_person
from livedigit.bench.recorder import Recorder, percentiles
from livedigit.bench.resources import ResourceWatch
from livedigit.bench.scrape import batch_sizes, histogram, scrape, server_latency, stage_cpu
from livedigit.bench.workload import Workload, deal, quotas


@dataclass
class Target:
    """The server under load: its WebSocket and HTTP addresses, and its process when the bench started it."""

    ws_url: str
    http_url: str
    pid: int | None


async def run_load(
    target: Target,
    workload: Workload,
    digits: list[pendigits.PenDigit],
    transport: str,
    label: str,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``workload`` against ``target`` over ``transport`` ("websocket" or "http") and summarize it."""
    speed_before = await asyncio.to_thread(reference_digit_us, digits)
    loop_started = time.monotonic()
    watch = ResourceWatch(target.http_url, target.pid)
    metrics_before = scrape(target.http_url)
    hands = deal(digits, workload.clients, workload.seed)
    shares = quotas(workload)
    start = loop_started + 0.5 + workload.warmup
    longest = workload.duration if workload.digits is None else 24 * 3600.0
    end = start + longest
    recorder = Recorder(start, end)
    interval = 1.0 / workload.rate
    phases = random.Random(workload.seed).random
    person = websocket_person if transport == "websocket" else http_person
    url = target.ws_url if transport == "websocket" else target.http_url
    with collector_paused():
        people = [
            asyncio.ensure_future(
                person(url, workload, hands[i], shares[i], loop_started + 0.5 + phases() * interval, end, recorder)
            )
            for i in range(workload.clients)
        ]
        watch.begin()
        measuring = False
        limit = time.monotonic() + workload.warmup + longest + workload.timeout + 2 * DRAIN_S + 5.0
        while not all(p.done() for p in people) and time.monotonic() < limit:
            await asyncio.wait(people, timeout=1.0)
            if not measuring and time.monotonic() >= start:
                measuring = True
                watch.begin()
            await asyncio.to_thread(watch.sample)
            if quiet or time.monotonic() >= end:
                recorder.recent.clear()
            else:
                _progress(label, recorder, time.monotonic() - start, workload)
        watch.finish()
        for p in people:
            p.cancel()
        await asyncio.gather(*people, return_exceptions=True)
    window = workload.duration if workload.digits is None else recorder.last_scheduled + interval - start
    metrics_after = scrape(target.http_url)
    speed_after = await asyncio.to_thread(reference_digit_us, digits)
    snapshots = recorder.snapshots.summary(max(window, 1e-9))
    submits = recorder.submits.summary(max(window, 1e-9))
    answered = recorder.submits.predicted + recorder.submits.empty
    submits["accuracy"] = round(recorder.submits.correct / answered, 4) if answered else None
    server = watch.summary()
    frames = recorder.snapshots.answered + recorder.submits.answered
    return {
        "name": label,
        "transport": transport,
        "clients": workload.clients,
        "rate_per_client": workload.rate,
        "points_per_snapshot": workload.points,
        "window_s": round(window, 2),
        "window_monotonic": [start, start + window],
        "snapshots": snapshots,
        "submits": submits,
        "predictions_per_s": round((recorder.snapshots.answered + recorder.submits.answered) / max(window, 1e-9), 1),
        "connection_errors": dict(recorder.connection_errors),
        "client_lag_ms": percentiles(recorder.lag_ms),
        "batch_sizes": batch_sizes(histogram(metrics_before, "batch_size"), histogram(metrics_after, "batch_size")),
        "server_latency_ms": server_latency(
            histogram(metrics_before, "reply_latency_seconds", {"type": "prediction"}),
            histogram(metrics_after, "reply_latency_seconds", {"type": "prediction"}),
        ),
        "server": server,
        "cpu_per_answer_ms": cpu_per_answer(server, frames, stage_cpu(metrics_before, metrics_after, frames)),
        "reference_digit_us": {"before": speed_before, "after": speed_after},
    }


def cpu_per_answer(
    server: dict[str, Any], answered: int, stages: dict[str, dict[str, float | None]] | None
) -> dict[str, Any] | None:
    """The server's CPU per answered frame (a prediction or ``empty``), in ms: in all, by thread (where
    the bench reads the server's process) and by batcher stage (from its metrics)."""
    if not answered:
        return None
    seconds, threads = server.get("cpu_seconds"), server.get("thread_cpu_seconds")
    return {
        "answered": answered,
        "total": None if seconds is None else round(1000.0 * seconds / answered, 3),
        "threads": None if threads is None else {name: round(1000.0 * t / answered, 3) for name, t in threads.items()},
        "stages": stages,
    }


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Run without the cyclic garbage collector, as ``timeit`` does, and collect once afterwards.

    The bench's own pauses would be reported as server latency: while a full collection runs, every
    simulated client stops at once, the replies that arrive meanwhile are read late, and the frames that
    fell due are then sent in one burst. With 100 clients such collections took 78 and 93 ms within
    one 20 s run. Reference counting still frees almost everything a run allocates.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _progress(label: str, recorder: Recorder, elapsed: float, workload: Workload) -> None:
    """One progress line on stderr: the last second's snapshots, replies and p99 live latency."""
    recent, recorder.recent = recorder.recent, []
    snapshots = [latency for kind, latency in recent if kind == "snapshot" and latency is not None]
    unanswered = sum(1 for kind, latency in recent if kind == "snapshot" and latency is None)
    submits = sum(1 for kind, _ in recent if kind == "submit")
    p99 = f"{np.percentile(snapshots, 99):6.1f}" if snapshots else "     -"
    phase = "warmup" if elapsed < 0 else f"{elapsed:5.0f}s"
    errors = sum(recorder.snapshots.errors.values()) + sum(recorder.submits.errors.values())
    print(
        f"[{label}] {phase} clients {workload.clients}  snapshots/s {len(snapshots):5d}  "
        f"not predicted {unanswered:4d}  submits/s {submits:4d}  p99 live {p99} ms  errors {errors}",
        file=sys.stderr,
        flush=True,
    )
