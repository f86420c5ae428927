"""One measured run: the people started on their schedules, the server watched, and every figure
gathered into one summary."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from livedigit import pendigits
from livedigit.bench.ceiling import reference_digit_us
from livedigit.bench.people import DRAIN_S, http_person, timeline, websocket_people
from livedigit.bench.recorder import Recorder, percentiles
from livedigit.bench.resources import ResourceWatch
from livedigit.bench.scrape import batch_sizes, histogram, scrape, server_latency, stage_cpu
from livedigit.bench.workload import Workload, deal, quotas

BENCH_BUSY_PERCENT = 90.0
"""CPU of the bench's own process over the window (% of one core) from which the bench, not the server,
may have been what limited a run: its event loop is one thread, so it cannot use more than one core."""

BENCH_LATE_MS = 10.0
"""p99 of how late the bench sent its frames (after they fell due) above which it did not keep the load's
schedule: a tenth of the interval between a page's frames at 10/s."""


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
    hands = deal(digits, workload.clients, workload.seed)
    shares = quotas(workload)
    longest = workload.duration if workload.digits is None else 24 * 3600.0
    interval = 1.0 / workload.rate
    phase = random.Random(workload.seed).random
    phases = [phase() * interval for _ in range(workload.clients)]
    frames = timeline(workload, hands, shares, phases, workload.warmup + longest) if transport == "websocket" else []
    loop_started = time.monotonic()
    watch = ResourceWatch(target.http_url, target.pid)
    metrics_before = scrape(target.http_url)
    origin = loop_started + 0.5
    start = origin + workload.warmup
    end = start + longest
    recorder = Recorder(start, end)
    own: dict[str, os.times_result] = {}
    loop = asyncio.get_running_loop()
    loop.call_later(start - time.monotonic(), lambda: own.setdefault("start", os.times()))
    if workload.digits is None:
        loop.call_later(end - time.monotonic(), lambda: own.setdefault("end", os.times()))
    with collector_paused():
        if transport == "websocket":
            people = [asyncio.ensure_future(websocket_people(target.ws_url, workload, frames, origin, recorder))]
        else:
            people = [
                asyncio.ensure_future(
                    http_person(target.http_url, workload, hands[i], shares[i], origin + phases[i], end, recorder)
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
        own.setdefault("end", os.times())  # a run of --digits ends with its last reply
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
    answered_frames = recorder.snapshots.answered + recorder.submits.answered
    return {
        "name": label,
        "transport": transport,
        "clients": workload.clients,
        "rate_per_client": workload.rate,
        "points_per_snapshot": workload.points,
        "paced": workload.paced and transport == "websocket",
        "window_s": round(window, 2),
        "window_monotonic": [start, start + window],
        "snapshots": snapshots,
        "submits": submits,
        "predictions_per_s": round((recorder.snapshots.answered + recorder.submits.answered) / max(window, 1e-9), 1),
        "connection_errors": dict(recorder.connection_errors),
        "client_lag_ms": percentiles(recorder.lag_ms),
        # An HTTP person's submit waits for its request in flight: that lateness is the design's, not the bench's.
        "bench": bench_cost(own, recorder, percentiles(recorder.lag_ms)["p99"] if transport == "websocket" else None),
        "batch_sizes": batch_sizes(metrics_before, metrics_after),
        "server_latency_ms": server_latency(
            histogram(metrics_before, "reply_latency_seconds", {"type": "prediction"}),
            histogram(metrics_after, "reply_latency_seconds", {"type": "prediction"}),
        ),
        "server": server,
        "cpu_per_answer_ms": cpu_per_answer(
            server, answered_frames, stage_cpu(metrics_before, metrics_after, answered_frames)
        ),
        "reference_digit_us": {"before": speed_before, "after": speed_after},
    }


def bench_cost(own: dict[str, os.times_result], recorder: Recorder, late_p99_ms: float | None) -> dict[str, Any]:
    """The bench's own CPU over the window (``own``: its process times at the window's start and end), per
    message it sent, and ``bottleneck``: why the bench itself may have limited the run, or ``None``."""
    sent = recorder.snapshots.sent + recorder.submits.sent
    start, end = own.get("start"), own.get("end")
    if start is None or end is None or end.elapsed <= start.elapsed:
        return {"cpu_percent": None, "cpu_us_per_message": None, "system_us_per_message": None, "bottleneck": None}
    user, system = end.user - start.user, end.system - start.system
    cpu_percent = round(100.0 * (user + system) / (end.elapsed - start.elapsed), 1)
    reasons = []
    if cpu_percent >= BENCH_BUSY_PERCENT:
        reasons.append(f"its process used {cpu_percent}% of a core (its event loop has one)")
    if late_p99_ms is not None and late_p99_ms > BENCH_LATE_MS:
        reasons.append(f"it sent its frames late, p99 {late_p99_ms} ms after they fell due")
    return {
        "cpu_percent": cpu_percent,
        "cpu_us_per_message": round(1e6 * (user + system) / sent, 1) if sent else None,
        "system_us_per_message": round(1e6 * system / sent, 1) if sent else None,
        "bottleneck": " and ".join(reasons) or None,
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
