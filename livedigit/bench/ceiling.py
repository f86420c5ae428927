"""The model alone in the bench's process: the ceiling no server can pass, and the reference digit that
says how fast this machine is right now."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from livedigit import pendigits
from livedigit.bench.workload import Strokes, drawing
from livedigit.config import DEFAULT_MODEL, Settings
from livedigit.preprocess import Image, Limits, model_input
from livedigit.preprocess import Strokes as StrokesImage
from livedigit.runtime import Runtime, load_runtime

REFERENCE_FRAMES = 100
"""Frames of the pen-digit test split timed by :func:`reference_digit_us`, in each of its passes."""

REFERENCE_PASSES = 3
"""Passes over those frames; the fastest counts, as a preemption only ever slows one down."""

IDLE_BATCH = 3
IDLE_PAUSE_S = 0.003
"""What a server's worker sees at 100 people drawing 10 snapshots a second: batches of about three
frames, about every 3 ms, with the core idle in between. A core that was idle, on a virtual machine,
runs the next frames more slowly than it runs frames back to back; :func:`model_ceiling` measures both,
so a server's CPU per frame at light load can be read against the right one."""


def model_ceiling(
    digits: list[pendigits.PenDigit],
    points: int,
    model: str,
    runtime_kind: str,
    threads: int,
    max_batch: int,
    budget_s: float = 4.0,
) -> dict[str, Any]:
    """Samples/s of preprocess + runtime (and of the runtime alone) in this process, on the same frames.

    This is the most any server could deliver on one core with the same model: no sockets, no JSON, no
    scheduling, and batches always full.
    """
    images: list[Image] = [StrokesImage(frame) for digit in digits[:400] for frame in drawing(digit, points).frames]
    ceiling = image_ceiling(images, model, runtime_kind, threads, max_batch, budget_s)
    limits = Settings().limits
    frames = images[:600]
    with_path = bool(ceiling["reads_path"])
    ceiling["preprocess_cpu_us"] = _preprocess_cpu_us(frames, limits, with_path, len(frames), 0.0)
    ceiling["preprocess_cpu_us_paused"] = _preprocess_cpu_us(frames, limits, with_path, IDLE_BATCH, IDLE_PAUSE_S)
    return ceiling


def _preprocess_cpu_us(images: list[Image], limits: Limits, with_path: bool, batch: int, pause_s: float) -> float:
    """CPU microseconds per image of preprocessing ``images`` (and taking the pen's path ``with_path``),
    ``batch`` at a time with ``pause_s`` of sleep after each batch."""
    cpu = 0.0
    for start in range(0, len(images), batch):
        started = time.thread_time()
        for image in images[start : start + batch]:
            model_input(image, limits, with_path)
        cpu += time.thread_time() - started
        if pause_s:
            time.sleep(pause_s)
    return round(cpu / max(1, len(images)) * 1e6, 1)


def image_ceiling(
    images: list[Image], model: str, runtime_kind: str, threads: int, max_batch: int, budget_s: float = 4.0
) -> dict[str, Any]:
    """Samples/s of preprocess + runtime (and of the runtime alone) on ``images`` in this process: see
    :func:`model_ceiling`, of which this is the part that does not depend on what the images are."""
    limits = Settings().limits
    runtime = load_runtime(model, runtime_kind, num_threads=threads)
    inputs = []
    started = time.perf_counter()
    for frame in images:
        found = model_input(frame, limits, runtime.reads_path)
        if found is not None:
            inputs.append(found)
        if time.perf_counter() - started > budget_s:
            break
    preprocess_s = (time.perf_counter() - started) / len(inputs) if inputs else float("nan")
    batch_size = max(1, max_batch)
    chosen = (inputs * (batch_size // max(1, len(inputs)) + 1))[:batch_size]
    batch = np.stack([tensor for tensor, _ in chosen])
    paths = np.stack([path for _, path in chosen]) if runtime.reads_path else None
    single, single_path = batch[:1], None if paths is None else paths[:1]
    runtime.predict(batch, paths)
    runtime.predict(single, single_path)
    model_s = _time_per_call(lambda: runtime.predict(batch, paths), budget_s / 2) / batch_size
    model_single_s = _time_per_call(lambda: runtime.predict(single, single_path), budget_s / 2)
    return {
        "frames": len(inputs),
        "batch_size": batch_size,
        "preprocess_per_s": round(1.0 / preprocess_s, 1),
        "runtime_batched_per_s": round(1.0 / model_s, 1),
        "runtime_single_per_s": round(1.0 / model_single_s, 1),
        "ceiling_per_s": round(1.0 / (preprocess_s + model_s), 1),
        "ceiling_unbatched_per_s": round(1.0 / (preprocess_s + model_single_s), 1),
        "threads": threads,
        "runtime": runtime_kind,
        "reads_path": runtime.reads_path,
    }


def reference_digit_us(digits: list[pendigits.PenDigit]) -> float:
    """Microseconds this machine takes, right now, for one frame through preprocess and the shipped model.

    A shared or virtual machine's speed drifts (this one ran at half speed for over an hour), and
    latency figures mean little without it: measured before and after every run, it says how fast the
    machine was, and a change across a run flags the run.
    """
    runtime = _reference_runtime()
    frames = [frame for digit in digits[:40] for frame in drawing(digit, 4).frames][:REFERENCE_FRAMES]

    def run(frames: list[Strokes]) -> None:
        for frame in frames:
            found = model_input(StrokesImage(frame), path=runtime.reads_path)
            if found is not None:
                runtime.predict(found[0][None], found[1][None] if runtime.reads_path else None)

    run(frames[:20])
    passes = []
    for _ in range(REFERENCE_PASSES):
        started = time.perf_counter()
        run(frames)
        passes.append((time.perf_counter() - started) / max(1, len(frames)))
    return round(min(passes) * 1e6, 1)


@functools.cache
def _reference_runtime() -> Runtime:
    """The shipped model on LiteRT, one thread: loaded once per process, whatever the server runs."""
    return load_runtime(DEFAULT_MODEL, "litert", num_threads=1)


def _time_per_call(call: Callable[[], object], budget_s: float) -> float:
    """Seconds per call of ``call``, repeated until ``budget_s`` has passed (at most 100,000 times)."""
    calls = 0
    started = time.perf_counter()
    while calls < 100_000:
        call()
        calls += 1
        if time.perf_counter() - started > budget_s:
            break
    return (time.perf_counter() - started) / calls
