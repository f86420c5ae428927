"""``livedigit bench``: how many people can draw at once before live predictions feel slow.

Each simulated person is one WebSocket client replaying a real pen trajectory from the pen-digits test
split as it was drawn: every ``1/rate`` seconds the pen advances ``--points`` points and the client sends
the drawing so far as a snapshot, then submits the finished digit and starts the next one. Clients are
open-loop (they keep their schedule whatever the replies do, as a person keeps drawing), so a slow server
shows up as latency and dropped snapshots rather than as a quietly reduced load.

The report gives offered and achieved rates, client-measured round-trip percentiles for snapshots and
submits, dropped snapshots by reason, errors, the batch sizes the server formed (from ``/metrics``), the
server's CPU and resident memory, and the accuracy of the submits. Reference points in the same run:
the model alone in this process (the ceiling), the server with batching disabled (``--max-batch 1``),
and one HTTP request per prediction (``POST /api/predict``, one at a time per client). ``--sweep`` adds
clients step by step to find the knee, the load at which p99 live latency passes ``--knee-ms``, with
batching on and off. Every target is a loopback address; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil

from livedigit import pendigits
from livedigit.client import (
    ConnectionClosed,
    Dropped,
    Empty,
    LiveDigitClient,
    LiveDigitError,
    Prediction,
    ServerError,
    websocket_url,
)
from livedigit.config import DEFAULT_MODEL, Settings
from livedigit.preprocess import Limits, preprocess
from livedigit.preprocess import Strokes as StrokesImage
from livedigit.runtime import load_runtime

Strokes = list[list[list[float]]]

SWEEP_CLIENTS = "25,50,100,150,200,300,400,600,800"
MAX_SERVER_START_S = 60.0
DISTURBED_PERCENT = 5.0
"""CPU (% of one core) used by processes other than the server and the bench above which a run is flagged."""
DRAIN_S = 5.0
"""How long a run waits after its end for replies still in flight, beyond which they count as lost."""


# --- what the clients draw ------------------------------------------------------------------------


@dataclass(frozen=True)
class Drawing:
    """One pen digit cut into the frames a page would send: growing prefixes, then the whole digit."""

    label: int
    frames: tuple[Strokes, ...]
    strokes: Strokes


def drawing(digit: pendigits.PenDigit, points: int) -> Drawing:
    """The prefixes of ``digit`` every ``points`` points, the last one being the full trajectory."""
    total = sum(len(stroke) for stroke in digit.strokes)
    cuts = [*list(range(points, total, points)), total]
    frames = []
    for cut in cuts:
        prefix, left = [], cut
        for stroke in digit.strokes:
            if left <= 0:
                break
            prefix.append(stroke[:left])
            left -= len(stroke)
        frames.append(prefix)
    return Drawing(digit.label, tuple(frames), digit.strokes)


def deal(digits: list[pendigits.PenDigit], clients: int, seed: int) -> list[list[pendigits.PenDigit]]:
    """Give each client its own shuffled order of the digits, starting at a different place."""
    order = list(digits)
    random.Random(seed).shuffle(order)
    step = max(1, len(order) // max(1, clients))
    return [order[i * step % len(order) :] + order[: i * step % len(order)] for i in range(clients)]


# --- counting ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    """The outcome of every message of one kind sent inside the measured window."""

    sent: int = 0
    predicted: int = 0
    empty: int = 0
    correct: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.predicted + self.empty

    def summary(self, window: float) -> dict[str, Any]:
        dropped = sum(self.dropped.values())
        return {
            "sent": self.sent,
            "predicted": self.predicted,
            "empty": self.empty,
            "dropped": dict(self.dropped),
            "errors": dict(self.errors),
            "lost": self.lost,
            "offered_per_s": round(self.sent / window, 2),
            "achieved_per_s": round(self.answered / window, 2),
            "dropped_share": round(dropped / self.sent, 5) if self.sent else 0.0,
            "latency_ms": percentiles(self.latencies_ms),
        }


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "count": len(values),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "max": round(float(array.max()), 2),
    }


@dataclass
class Recorder:
    """Counts outcomes; only messages sent between ``start`` and ``end`` (monotonic) are measured."""

    start: float
    end: float
    snapshots: Tally = field(default_factory=Tally)
    submits: Tally = field(default_factory=Tally)
    lag_ms: list[float] = field(default_factory=list)
    connection_errors: Counter[str] = field(default_factory=Counter)
    recent: list[tuple[str, float | None]] = field(default_factory=list)
    """(kind, latency or None when not answered) since the last progress line."""
    last_scheduled: float = 0.0

    def measured(self, sent_at: float) -> bool:
        return self.start <= sent_at < self.end

    def sent(self, kind: str, scheduled: float, lateness: float) -> None:
        self.last_scheduled = max(self.last_scheduled, scheduled)
        if self.measured(scheduled):
            self._tally(kind).sent += 1
            self.lag_ms.append(lateness * 1000.0)

    def reply(self, kind: str, scheduled: float, sent_at: float, outcome: Any, label: int | None = None) -> None:
        """Count the outcome of a message scheduled at ``scheduled`` and sent at ``sent_at``."""
        latency = (time.monotonic() - sent_at) * 1000.0
        answered = isinstance(outcome, (Prediction, Empty))
        self.recent.append((kind, latency if answered else None))
        if not self.measured(scheduled):
            return
        tally = self._tally(kind)
        if isinstance(outcome, Prediction):
            tally.predicted += 1
            tally.correct += int(label is not None and outcome.digit == label)
        elif isinstance(outcome, Empty):
            tally.empty += 1
        elif isinstance(outcome, Dropped):
            tally.dropped[outcome.reason] += 1
        elif isinstance(outcome, ServerError):
            tally.errors[outcome.code] += 1
        else:
            tally.lost += 1
        if answered:
            tally.latencies_ms.append(latency)

    def _tally(self, kind: str) -> Tally:
        return self.snapshots if kind == "snapshot" else self.submits


# --- the simulated people -------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    clients: int
    rate: float
    points: int
    duration: float
    warmup: float
    digits: int | None
    timeout: float
    seed: int


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _schedule(
    workload: Workload, digits: list[pendigits.PenDigit], quota: int | None, first: float, end: float
) -> Iterator[tuple[float, str, Strokes, int]]:
    """(when, kind, strokes, label) for one client: its frames at ``rate`` until ``end`` or its quota."""
    interval = 1.0 / workload.rate
    tick = 0
    done = 0
    for digit in (digits[i % len(digits)] for i in range(len(digits) * 1000)):
        if quota is not None and done >= quota:
            return
        item = drawing(digit, workload.points)
        for frame in item.frames:
            when = first + tick * interval
            if when >= end:
                return
            yield when, "snapshot", frame, item.label
            tick += 1
        when = first + tick * interval
        if when >= end and quota is None:
            return
        yield when, "submit", item.strokes, item.label
        tick += 1
        done += 1


async def _websocket_person(
    url: str,
    workload: Workload,
    digits: list[pendigits.PenDigit],
    quota: int | None,
    first: float,
    end: float,
    recorder: Recorder,
) -> None:
    tasks: list[asyncio.Task[Any]] = []
    try:
        client = LiveDigitClient(url, timeout=workload.timeout, open_timeout=workload.timeout)
        await client.connect()
    except LiveDigitError as exc:
        recorder.connection_errors[str(exc)] += 1
        return
    try:
        for when, kind, strokes, label in _schedule(workload, digits, quota, first, end):
            await _sleep_until(when)
            now = time.monotonic()
            recorder.sent(kind, when, now - when)
            request = (
                client.send_snapshot(strokes) if kind == "snapshot" else asyncio.ensure_future(client.submit(strokes))
            )
            request.add_done_callback(_recording(recorder, kind, when, now, label))
            tasks.append(request)
            if len(tasks) > 256:
                tasks = [task for task in tasks if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=workload.timeout + DRAIN_S)
    except ConnectionClosed as exc:
        recorder.connection_errors[str(exc)] += 1
    finally:
        for task in tasks:
            task.cancel()
        await client.close()


def _recording(
    recorder: Recorder, kind: str, scheduled: float, sent_at: float, label: int
) -> Callable[[asyncio.Future[Any]], None]:
    def record(request: asyncio.Future[Any]) -> None:
        if request.cancelled():
            outcome: Any = None
        elif request.exception() is not None:
            outcome = request.exception()
        else:
            outcome = request.result()
        recorder.reply(kind, scheduled, sent_at, outcome, label if kind == "submit" else None)

    return record


class HttpConnection:
    """One keep-alive HTTP/1.1 connection, enough for ``POST /api/predict`` and ``GET /metrics``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode("ascii") + body)
        status_line = await reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while (size := int((await reader.readline()).strip() or b"0", 16)) > 0:
                data += await reader.readexactly(size + 2)
                data = data[:-2]
            await reader.readline()
        else:
            data = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _http_person(
    http_url: str,
    workload: Workload,
    digits: list[pendigits.PenDigit],
    quota: int | None,
    first: float,
    end: float,
    recorder: Recorder,
) -> None:
    """The old design: a page that POSTs each frame and sends nothing while a request is in flight."""
    parts = urlsplit(http_url)
    connection = HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    in_flight: asyncio.Task[Any] | None = None

    async def post(kind: str, strokes: Strokes, scheduled: float, sent_at: float, label: int) -> None:
        try:
            status, body = await asyncio.wait_for(
                connection.request("POST", "/api/predict", json.dumps({"strokes": strokes}).encode()), workload.timeout
            )
            reply = json.loads(body)
            outcome: Any
            if status == 200 and reply.get("type") == "prediction":
                outcome = Prediction(None, True, int(reply["digit"]), float(reply["confidence"]), ())
            elif status == 200 and reply.get("type") == "empty":
                outcome = Empty(None, True)
            else:
                outcome = ServerError(str(reply.get("code", f"http_{status}")), str(reply.get("message", "")))
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await connection.close()
            outcome = ServerError(type(exc).__name__, str(exc))
        recorder.reply(kind, scheduled, sent_at, outcome, label if kind == "submit" else None)

    try:
        for when, kind, strokes, label in _schedule(workload, digits, quota, first, end):
            await _sleep_until(when)
            now = time.monotonic()
            if in_flight is not None and not in_flight.done():
                if kind == "snapshot":
                    recorder.sent(kind, when, now - when)
                    recorder.reply(kind, when, now, Dropped(None, "busy"))
                    continue
                await in_flight
                now = time.monotonic()
            recorder.sent(kind, when, now - when)
            in_flight = asyncio.ensure_future(post(kind, strokes, when, now, label))
        if in_flight is not None:
            await asyncio.wait({in_flight}, timeout=workload.timeout + DRAIN_S)
    finally:
        if in_flight is not None:
            in_flight.cancel()
        await connection.close()


# --- the server under test ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(process: subprocess.Popen, http_url: str, timeout: float) -> bool:  # type: ignore[type-arg]
    """Poll ``/readyz`` until it answers 200 (True), the process exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(http_url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


class ManagedServer:
    """``python -m livedigit serve`` started by the bench on a free loopback port, and its process.

    Every simulated person connects from 127.0.0.1, so the limits per client address are raised to what
    that many people would have from their own addresses: connections, and the HTTP prediction rate.
    """

    def __init__(self, flags: list[str], clients: int, rate: float) -> None:
        self.port = free_port()
        self.flags = [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--max-connections-per-client",
            str(clients + 16),
            "--max-connections",
            str(max(1000, clients + 16)),
            "--submit-rate",
            str(max(5.0, 2.0 * clients * rate)),
            "--submit-burst",
            str(max(10, 2 * clients)),
            *flags,
        ]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="livedigit-bench-", suffix=".log", delete=False)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ManagedServer:
        command = [sys.executable, "-m", "livedigit", "serve", *self.flags]
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        if wait_until_ready(self.process, self.http_url, MAX_SERVER_START_S):
            return self
        exited = self.process.poll()
        tail = self.tail()
        self.stop()
        if exited is not None:
            raise RuntimeError(f"the server exited with {exited}:\n{tail}")
        raise RuntimeError(f"the server was not ready within {MAX_SERVER_START_S:.0f} s:\n{tail}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ResourceWatch:
    """The server's CPU use and resident memory over the measured window.

    For a server the bench started, psutil reads its process directly (sampled every 0.5 s); for
    ``--url`` it reads the ``process_*`` gauges of ``/metrics`` when the server exports them.
    """

    def __init__(self, http_url: str, pid: int | None) -> None:
        self.http_url = http_url
        self.process = psutil.Process(pid) if pid is not None else None
        self.rss: list[float] = []
        self._cpu_start: tuple[float, float] | None = None
        self.cpu_percent: float | None = None
        self.loop_cpu_percent: float | None = None
        self._loop_start: float | None = None
        self.bench_cpu_percent: float | None = None
        self.machine: dict[str, float] = {}
        self._bench_start = (time.monotonic(), sum(psutil.Process().cpu_times()[:2]))
        self._machine_start = psutil.cpu_times()

    def _cpu_seconds(self) -> float | None:
        if self.process is not None:
            times = self.process.cpu_times()
            return times.user + times.system
        families = scrape(self.http_url)
        sample = _metric(families, "process_cpu_seconds_total")
        return sample

    def _rss_bytes(self) -> float | None:
        if self.process is not None:
            return float(self.process.memory_info().rss)
        return _metric(scrape(self.http_url), "process_resident_memory_bytes")

    def _main_thread_seconds(self) -> float | None:
        """CPU time of the server's main thread, the one running the event loop (its id is the pid)."""
        if self.process is None:
            return None
        for thread in self.process.threads():
            if thread.id == self.process.pid:
                return thread.user_time + thread.system_time
        return None

    def begin(self) -> None:
        cpu = self._cpu_seconds()
        self._cpu_start = (time.monotonic(), cpu) if cpu is not None else None
        self._loop_start = self._main_thread_seconds()
        self._bench_start = (time.monotonic(), sum(psutil.Process().cpu_times()[:2]))
        self._machine_start = psutil.cpu_times()

    def sample(self) -> None:
        rss = self._rss_bytes()
        if rss is not None:
            self.rss.append(rss)

    def finish(self) -> None:
        now = time.monotonic()
        cpu = self._cpu_seconds()
        if self._cpu_start is not None and cpu is not None and now > self._cpu_start[0]:
            self.cpu_percent = round(100.0 * (cpu - self._cpu_start[1]) / (now - self._cpu_start[0]), 1)
            loop = self._main_thread_seconds()
            if loop is not None and self._loop_start is not None:
                self.loop_cpu_percent = round(100.0 * (loop - self._loop_start) / (now - self._cpu_start[0]), 1)
        bench_cpu = sum(psutil.Process().cpu_times()[:2])
        self.bench_cpu_percent = round(100.0 * (bench_cpu - self._bench_start[1]) / (now - self._bench_start[0]), 1)
        self.machine = _machine_load(self._machine_start, psutil.cpu_times(), now - self._bench_start[0])
        if self.cpu_percent is not None and self.process is not None:
            others = self.machine["busy_percent"] - self.cpu_percent - self.bench_cpu_percent
            self.machine["others_percent"] = round(max(0.0, others), 1)

    def summary(self) -> dict[str, Any]:
        return {
            "source": "psutil" if self.process is not None else ("metrics" if self.rss else None),
            "cpu_percent": self.cpu_percent,
            "event_loop_cpu_percent": self.loop_cpu_percent,
            "rss_mb_max": round(max(self.rss) / 2**20, 1) if self.rss else None,
            "rss_mb_mean": round(sum(self.rss) / len(self.rss) / 2**20, 1) if self.rss else None,
            "bench_client_cpu_percent": self.bench_cpu_percent,
            "machine": self.machine,
        }


def _machine_load(before: Any, after: Any, seconds: float) -> dict[str, float]:
    """All cores' busy time and steal time (the hypervisor running someone else) over the window, in % of
    one core, so they add up with the per-process figures; ``others`` is what neither process used."""

    def delta(name: str) -> float:
        return getattr(after, name, 0.0) - getattr(before, name, 0.0)

    idle = delta("idle") + delta("iowait")
    total = sum(
        getattr(after, name) - getattr(before, name) for name in after._fields if name not in ("guest", "guest_nice")
    )
    busy = total - idle - delta("steal")
    scale = 100.0 / seconds if seconds > 0 else 0.0
    return {"busy_percent": round(busy * scale, 1), "steal_percent": round(delta("steal") * scale, 1)}


def scrape(http_url: str) -> list[Any] | None:
    """The server's ``/metrics`` as parsed families, or ``None`` when it cannot be read."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(http_url + "/metrics", timeout=5) as response:
            return list(text_string_to_metric_families(response.read().decode("utf-8")))
    except (OSError, ValueError):
        return None


def _metric(families: list[Any] | None, name: str) -> float | None:
    for family in families or ():
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def histogram(families: list[Any] | None, suffix: str, labels: dict[str, str] | None = None) -> dict[str, Any] | None:
    """A server histogram whose name ends with ``suffix`` (cumulative ``le`` buckets, sum, count), summed
    over the series matching ``labels``; ``None`` when the server does not export it."""
    for family in families or ():
        if family.type == "histogram" and family.name.endswith(suffix):
            buckets: Counter[float] = Counter()
            totals: Counter[str] = Counter()
            for sample in family.samples:
                if any(sample.labels.get(key) != value for key, value in (labels or {}).items()):
                    continue
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] += sample.value
                elif sample.name.endswith(("_sum", "_count")):
                    totals[sample.name.rsplit("_", 1)[1]] += sample.value
            return {"name": family.name, "buckets": dict(buckets), "sum": totals["sum"], "count": totals["count"]}
    return None


def _difference(before: dict[str, Any] | None, after: dict[str, Any]) -> tuple[list[tuple[float, float]], float, float]:
    """The run's own part of a histogram: cumulative (bound, count) pairs, sum and count."""
    before = before or {"buckets": {}, "sum": 0.0, "count": 0.0}
    cumulative = sorted((bound, count - before["buckets"].get(bound, 0.0)) for bound, count in after["buckets"].items())
    return cumulative, after["sum"] - before["sum"], after["count"] - before["count"]


def batch_sizes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The batches formed during the run: how many, their mean size, and how many fell in each bucket."""
    if after is None:
        return None
    cumulative, total, batches = _difference(before, after)
    buckets, previous = {}, 0.0
    for bound, count in cumulative:
        if count - previous:
            buckets["+Inf" if bound == float("inf") else f"<={bound:g}"] = int(count - previous)
        previous = count
    return {
        "metric": after["name"],
        "batches": int(batches),
        "buckets": buckets,
        "mean": round(total / batches, 2) if batches else None,
    }


def server_latency(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The server's own receive-to-send time for predictions during the run, in ms: quantiles estimated
    from the histogram buckets (linear within a bucket, as Prometheus does), so only as fine as they are."""
    if after is None:
        return None
    cumulative, _, count = _difference(before, after)
    if count <= 0:
        return None

    def quantile(q: float) -> float | None:
        rank, low, below = q * count, 0.0, 0.0
        for bound, seen in cumulative:
            if seen >= rank:
                if bound == float("inf"):
                    return None
                inside = seen - below
                return round(1000.0 * (low + (bound - low) * ((rank - below) / inside if inside else 1.0)), 1)
            low, below = bound, seen
        return None

    over = {
        f"over_{ms}ms": int(count - next((seen for bound, seen in cumulative if bound >= ms / 1000.0), count))
        for ms in (50, 100)
    }
    return {"count": int(count), "p50": quantile(0.5), "p99": quantile(0.99), **over}


# --- one measured run ----------------------------------------------------------------------------


@dataclass
class Target:
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
    quotas = _quotas(workload)
    start = loop_started + 0.5 + workload.warmup
    longest = workload.duration if workload.digits is None else 24 * 3600.0
    end = start + longest
    recorder = Recorder(start, end)
    interval = 1.0 / workload.rate
    phases = random.Random(workload.seed).random
    person = _websocket_person if transport == "websocket" else _http_person
    url = target.ws_url if transport == "websocket" else target.http_url
    with collector_paused():
        people = [
            asyncio.ensure_future(
                person(url, workload, hands[i], quotas[i], loop_started + 0.5 + phases() * interval, end, recorder)
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
    return {
        "name": label,
        "transport": transport,
        "clients": workload.clients,
        "rate_per_client": workload.rate,
        "points_per_snapshot": workload.points,
        "window_s": round(window, 2),
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
        "server": watch.summary(),
        "reference_digit_us": {"before": speed_before, "after": speed_after},
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


def _quotas(workload: Workload) -> list[int | None]:
    if workload.digits is None:
        return [None] * workload.clients
    share, extra = divmod(workload.digits, workload.clients)
    return [share + (1 if i < extra else 0) for i in range(workload.clients)]


def _progress(label: str, recorder: Recorder, elapsed: float, workload: Workload) -> None:
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


# --- the model alone -----------------------------------------------------------------------------


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
    settings = Settings()
    limits = Limits(settings.max_side, settings.max_png_bytes, settings.max_strokes, settings.max_points)
    frames = [frame for digit in digits[:400] for frame in drawing(digit, points).frames]
    tensors = []
    started = time.perf_counter()
    for frame in frames:
        tensor = preprocess(StrokesImage(frame), limits)
        if tensor is not None:
            tensors.append(tensor)
        if time.perf_counter() - started > budget_s:
            break
    preprocess_s = (time.perf_counter() - started) / len(tensors) if tensors else float("nan")
    runtime = load_runtime(model, runtime_kind, num_threads=threads)
    batch_size = max(1, max_batch)
    batch = np.stack((tensors * (batch_size // max(1, len(tensors)) + 1))[:batch_size])
    single = batch[:1]
    runtime.predict(batch)
    runtime.predict(single)
    model_s = _time_per_call(lambda: runtime.predict(batch), budget_s / 2) / batch_size
    model_single_s = _time_per_call(lambda: runtime.predict(single), budget_s / 2)
    return {
        "frames": len(tensors),
        "batch_size": batch_size,
        "preprocess_per_s": round(1.0 / preprocess_s, 1),
        "runtime_batched_per_s": round(1.0 / model_s, 1),
        "runtime_single_per_s": round(1.0 / model_single_s, 1),
        "ceiling_per_s": round(1.0 / (preprocess_s + model_s), 1),
        "ceiling_unbatched_per_s": round(1.0 / (preprocess_s + model_single_s), 1),
        "threads": threads,
        "runtime": runtime_kind,
    }


REFERENCE_FRAMES = 100
"""Frames of the pen-digit test split timed by :func:`reference_digit_us`, in each of its passes."""

REFERENCE_PASSES = 3
"""Passes over those frames; the fastest counts, as a preemption only ever slows one down."""

SPEED_CHANGE = 0.3
"""Relative change of :func:`reference_digit_us` across a run above which the run is flagged."""


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
            tensor = preprocess(StrokesImage(frame))
            if tensor is not None:
                runtime.predict(tensor[None])

    run(frames[:20])
    passes = []
    for _ in range(REFERENCE_PASSES):
        started = time.perf_counter()
        run(frames)
        passes.append((time.perf_counter() - started) / max(1, len(frames)))
    return round(min(passes) * 1e6, 1)


@functools.cache
def _reference_runtime() -> Any:
    """The shipped model on LiteRT, one thread: loaded once per process, whatever the server runs."""
    return load_runtime(DEFAULT_MODEL, "litert", num_threads=1)


def _time_per_call(call: Callable[[], Any], budget_s: float) -> float:
    calls = 0
    started = time.perf_counter()
    while calls < 100_000:
        call()
        calls += 1
        if time.perf_counter() - started > budget_s:
            break
    return (time.perf_counter() - started) / calls


# --- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``livedigit bench``."""
    load = parser.add_argument_group("load")
    load.add_argument(
        "--url",
        help="WebSocket URL of a running server (loopback, e.g. ws://127.0.0.1:8000/ws); "
        "without it the bench starts its own server",
    )
    load.add_argument("--clients", type=int, default=100, help="concurrent drawing clients (default 100)")
    load.add_argument("--rate", type=float, default=10.0, help="snapshots per second per client (default 10)")
    load.add_argument("--points", type=int, default=4, help="pen points added between snapshots (default 4)")
    load.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    load.add_argument("--digits", type=int, help="stop after this many submits in all, instead of --duration")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring starts (default 2)")
    load.add_argument("--timeout", type=float, default=10.0, help="seconds a reply may take before it counts as lost")
    load.add_argument(
        "--pen-digits",
        default=str(pendigits.DEFAULT_PATH),
        help="pen_digits.jsonl; the test split is replayed (default: ../shared/data/pen_digits.jsonl)",
    )
    load.add_argument("--seed", type=int, default=1, help="shuffles which digits each client draws")
    load.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    load.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    served = parser.add_argument_group("server started by the bench (ignored with --url)")
    served.add_argument("--max-batch", type=int, default=None, help="passed to livedigit serve")
    served.add_argument("--max-wait-ms", type=float, default=None, help="passed to livedigit serve")
    served.add_argument("--threads", type=int, default=None, help="passed to livedigit serve (and to --ceiling)")
    served.add_argument("--runtime", default=None, help="passed to livedigit serve (and to --ceiling)")
    served.add_argument("--model", default=None, help="passed to livedigit serve (and to --ceiling)")
    served.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="any other serve flag, e.g. --server-arg=--snapshot-rate=60 (repeatable)",
    )
    refs = parser.add_argument_group("reference points")
    refs.add_argument("--ceiling", action="store_true", help="(a) the model alone in this process, batched")
    refs.add_argument("--unbatched", action="store_true", help="(b) the same load on a server with --max-batch 1")
    refs.add_argument(
        "--http",
        action="store_true",
        help="(c) the same clients over POST /api/predict, one request at a time per client",
    )
    refs.add_argument("--references", action="store_true", help="all three reference points")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--sweep", action="store_true", help="find the knee: more clients per step, with batching on and off"
    )
    sweep.add_argument("--sweep-clients", default=SWEEP_CLIENTS, help=f"client counts (default {SWEEP_CLIENTS})")
    sweep.add_argument("--sweep-duration", type=float, default=8.0, help="measured seconds per step (default 8)")
    sweep.add_argument(
        "--sweep-modes",
        default="batched,unbatched",
        help="which servers to sweep: batched, unbatched (--max-batch 1), http (POST /api/predict, "
        "batched server); default batched,unbatched",
    )
    sweep.add_argument(
        "--knee-ms", type=float, default=100.0, help="p99 live latency that marks the knee (default 100)"
    )
    sweep.add_argument(
        "--knee-dropped",
        type=float,
        default=0.10,
        help="share of snapshots dropped that also marks the knee (default 0.10)",
    )


def main(args: argparse.Namespace) -> int:
    """Measure the server under many clients drawing real pen digits at once.

    Each client replays pen trajectories from the pen-digits test split over its own WebSocket: a snapshot
    of the drawing so far every 1/--rate seconds, then a submit. Prints throughput, latency percentiles,
    dropped snapshots, errors, batch sizes, server CPU and memory and the accuracy of the submits; --json
    writes them to a file. Without --url the bench starts a server on a free loopback port. --ceiling,
    --unbatched and --http add reference points; --sweep finds the number of clients at which p99 live
    latency passes --knee-ms, with batching on and off.
    """
    problem = _check(args)
    if problem:
        print(f"livedigit bench: {problem}", file=sys.stderr)
        return 2
    try:
        digits = pendigits.load(args.pen_digits, "test")
    except FileNotFoundError:
        print(
            f"livedigit bench: pen digits not found at {args.pen_digits}; pass --pen-digits "
            "PATH/pen_digits.jsonl (see shared/data/README.md)",
            file=sys.stderr,
        )
        return 2
    options = {name: value for name, value in vars(args).items() if not callable(value)}
    report: dict[str, Any] = {"machine": _machine(), "options": options, "runs": []}
    try:
        if args.ceiling or args.references or args.sweep:
            _say(args, "measuring the model alone in this process")
            report["ceiling"] = model_ceiling(
                digits,
                args.points,
                args.model or str(DEFAULT_MODEL),
                args.runtime or "litert",
                args.threads or 1,
                args.max_batch or 64,
            )
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            if args.sweep:
                report["sweep"] = runner.run(_sweep(args, digits))
            else:
                runner.run(_runs(args, digits, report))
    except RuntimeError as exc:
        print(f"livedigit bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("livedigit bench: interrupted", file=sys.stderr)
        return 130
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn's standard extra brings it): the clients then cost the CPU they share
    with the server about half as much."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _check(args: argparse.Namespace) -> str | None:
    if args.clients < 1 or args.rate <= 0 or args.points < 1 or args.duration <= 0:
        return "--clients, --rate, --points and --duration must be positive"
    if args.digits is not None and args.digits < 1:
        return "--digits must be positive"
    if args.url:
        host = urlsplit(websocket_url(args.url)).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            return f"--url must be a loopback address (127.0.0.1), not {host}"
        if args.unbatched or args.references or args.sweep:
            return "--unbatched, --references and --sweep start their own servers; drop --url"
    unknown = {part.strip() for part in args.sweep_modes.split(",") if part.strip()} - {"batched", "unbatched", "http"}
    if unknown:
        return f"unknown --sweep-modes {', '.join(sorted(unknown))}; use batched, unbatched, http"
    return None


def _server_flags(args: argparse.Namespace, max_batch: int | None = None) -> list[str]:
    flags: list[str] = []
    for name in ("max_batch", "max_wait_ms", "threads", "runtime", "model"):
        value = max_batch if name == "max_batch" and max_batch is not None else getattr(args, name)
        if value is not None:
            flags += ["--" + name.replace("_", "-"), str(value)]
    return flags + list(args.server_arg)


def _workload(args: argparse.Namespace, clients: int | None = None, duration: float | None = None) -> Workload:
    digits = args.digits if duration is None else None
    warmup = 0.0 if digits is not None else args.warmup
    return Workload(
        clients or args.clients,
        args.rate,
        args.points,
        duration or args.duration,
        warmup,
        digits,
        args.timeout,
        args.seed,
    )


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"livedigit bench: {text}", file=sys.stderr, flush=True)


async def _runs(args: argparse.Namespace, digits: list[pendigits.PenDigit], report: dict[str, Any]) -> None:
    workload = _workload(args)
    if args.url:
        ws_url = websocket_url(args.url)
        parts = urlsplit(ws_url)
        http_url = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
        target = Target(ws_url, http_url, None)
        report["runs"].append(await run_load(target, workload, digits, "websocket", "websocket", args.quiet))
        if args.http:
            report["runs"].append(await run_load(target, workload, digits, "http", "http", args.quiet))
        return
    with ManagedServer(_server_flags(args), workload.clients, workload.rate) as server:
        _say(args, f"server started on {server.http_url} with {' '.join(server.flags)}")
        target = Target(server.ws_url, server.http_url, server.process.pid)  # type: ignore[union-attr]
        report["runs"].append(await run_load(target, workload, digits, "websocket", "websocket", args.quiet))
        if args.http or args.references:
            report["runs"].append(await run_load(target, workload, digits, "http", "http", args.quiet))
    if args.unbatched or args.references:
        with ManagedServer(_server_flags(args, max_batch=1), workload.clients, workload.rate) as server:
            target = Target(server.ws_url, server.http_url, server.process.pid)  # type: ignore[union-attr]
            report["runs"].append(await run_load(target, workload, digits, "websocket", "unbatched", args.quiet))


async def _sweep(args: argparse.Namespace, digits: list[pendigits.PenDigit]) -> dict[str, Any]:
    counts = sorted({int(part) for part in args.sweep_clients.split(",") if part.strip()})
    result: dict[str, Any] = {"knee_ms": args.knee_ms, "knee_dropped": args.knee_dropped, "modes": {}}
    modes = {"batched": (args.max_batch, "websocket"), "unbatched": (1, "websocket"), "http": (args.max_batch, "http")}
    for mode in dict.fromkeys(part.strip() for part in args.sweep_modes.split(",") if part.strip()):
        max_batch, transport = modes[mode]
        steps: list[dict[str, Any]] = []
        knee: dict[str, Any] = {"last_good": None, "first_bad": None, "reason": None}
        with ManagedServer(_server_flags(args, max_batch=max_batch), max(counts), args.rate) as server:
            target = Target(server.ws_url, server.http_url, server.process.pid)  # type: ignore[union-attr]
            for clients in counts:
                run = await run_load(
                    target,
                    _workload(args, clients, args.sweep_duration),
                    digits,
                    transport,
                    f"{mode} {clients}",
                    args.quiet,
                )
                steps.append(run)
                reason = _over_knee(run, args.knee_ms, args.knee_dropped)
                if reason:
                    knee.update(first_bad=clients, reason=reason)
                    break
                knee["last_good"] = clients
                await asyncio.sleep(1.0)
        result["modes"][mode] = {
            "steps": steps,
            "knee": knee,
            "peak_predictions_per_s": max(run["predictions_per_s"] for run in steps),
        }
    knees = {mode: data["knee"] for mode, data in result["modes"].items()}
    good = [knees[mode]["last_good"] if mode in knees else None for mode in ("batched", "unbatched")]
    result["ratio"] = round(good[0] / good[1], 2) if all(good) else None
    result["ratio_is_lower_bound"] = "batched" in knees and knees["batched"]["first_bad"] is None
    return result


def _over_knee(run: dict[str, Any], knee_ms: float, knee_dropped: float) -> str | None:
    snapshots = run["snapshots"]
    p99 = snapshots["latency_ms"]["p99"]
    if p99 is None or p99 > knee_ms:
        return f"p99 live latency {p99} ms > {knee_ms:g} ms"
    if snapshots["dropped_share"] > knee_dropped:
        return f"{snapshots['dropped_share']:.1%} of snapshots dropped"
    errors = sum(snapshots["errors"].values()) + sum(run["submits"]["errors"].values()) + snapshots["lost"]
    if errors or run["connection_errors"]:
        return f"{errors} errors or lost replies, {sum(run['connection_errors'].values())} connection errors"
    return None


def _machine() -> dict[str, Any]:
    """Where the figures were measured: they only compare with figures from the same machine and code."""
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "git_commit": commit,
    }


# --- the printed report ---------------------------------------------------------------------------


def format_report(report: dict[str, Any]) -> str:
    """The figures as plain-text tables."""
    lines: list[str] = []
    ceiling = report.get("ceiling")
    if ceiling:
        lines += [
            "model alone (this process, one thread, same frames):",
            f"  preprocess          {ceiling['preprocess_per_s']:>9.0f} /s",
            f"  runtime batch {ceiling['batch_size']:<4d}  {ceiling['runtime_batched_per_s']:>9.0f} /s",
            f"  runtime batch 1     {ceiling['runtime_single_per_s']:>9.0f} /s",
            f"  preprocess+runtime  {ceiling['ceiling_per_s']:>9.0f} /s batched, "
            f"{ceiling['ceiling_unbatched_per_s']:.0f} /s unbatched",
            "",
        ]
    if report.get("runs"):
        lines += _runs_table(report["runs"], ceiling)
    sweep = report.get("sweep")
    if sweep:
        for mode, data in sweep["modes"].items():
            lines += ["", f"sweep, {mode}:", *_runs_table(data["steps"], ceiling)]
            knee = data["knee"]
            lines.append(
                f"  knee: last good {knee['last_good']} clients, first over {knee['first_bad']} "
                f"({knee['reason'] or 'never within the sweep'})"
            )
        if sweep["ratio"] is not None:
            bound = " (at least; batching never reached the knee)" if sweep["ratio_is_lower_bound"] else ""
            lines.append(f"knee ratio batched/unbatched: {sweep['ratio']}{bound}")
    return "\n".join(lines)


def _runs_table(runs: list[dict[str, Any]], ceiling: dict[str, Any] | None) -> list[str]:
    header = (
        f"{'run':<16}{'clients':>8}{'snap/s off':>11}{'snap/s ok':>10}{'sub/s':>7}"
        f"{'live p50':>9}{'p95':>7}{'p99':>7}{'max':>8}{'submit p99':>11}{'dropped':>9}{'errors':>7}"
        f"{'batch':>7}{'cpu%':>6}{'rss MB':>7}{'acc':>6}"
    )
    lines = [header]
    for run in runs:
        snap, sub, server = run["snapshots"], run["submits"], run["server"]
        live = snap["latency_ms"]
        errors = (
            sum(snap["errors"].values())
            + sum(sub["errors"].values())
            + snap["lost"]
            + sub["lost"]
            + sum(run["connection_errors"].values())
        )
        batches = run["batch_sizes"]
        lines.append(
            f"{run['name']:<16}{run['clients']:>8}{snap['offered_per_s']:>11.0f}{snap['achieved_per_s']:>10.0f}"
            f"{sub['achieved_per_s']:>7.1f}{_ms(live['p50']):>9}{_ms(live['p95']):>7}{_ms(live['p99']):>7}"
            f"{_ms(live['max']):>8}{_ms(sub['latency_ms']['p99']):>11}{snap['dropped_share']:>9.1%}{errors:>7}"
            f"{_num(batches and batches['mean'], '.1f'):>7}{_num(server['cpu_percent']):>6}"
            f"{_num(server['rss_mb_max']):>7}{_num(sub['accuracy'], '.3f'):>6}"
        )
    for run in runs:
        detail = []
        if run["snapshots"]["dropped"]:
            detail.append(f"dropped {run['snapshots']['dropped']}")
        if run["snapshots"]["errors"] or run["submits"]["errors"]:
            detail.append(f"errors {run['snapshots']['errors']} {run['submits']['errors']}")
        if run["connection_errors"]:
            detail.append(f"connections {run['connection_errors']}")
        if run["batch_sizes"]:
            detail.append(f"batches {run['batch_sizes']['buckets']}")
        if run.get("server_latency_ms"):
            inside = run["server_latency_ms"]
            detail.append(
                f"server-side prediction latency p50 {inside['p50']} ms, p99 {inside['p99']} ms, "
                f"{inside['over_50ms']} over 50 ms"
            )
        machine = run["server"].get("machine", {})
        detail.append(
            f"server event loop cpu {run['server'].get('event_loop_cpu_percent', '-')}%, "
            f"bench client cpu {run['server']['bench_client_cpu_percent']}%, "
            f"lag p99 {run['client_lag_ms']['p99']} ms, other processes {machine.get('others_percent', '-')}%"
            f", steal {machine.get('steal_percent', '-')}%"
        )
        if ceiling:
            detail.append(
                f"predictions/s {run['predictions_per_s']} = "
                f"{run['predictions_per_s'] / ceiling['ceiling_per_s']:.1%} of the model-alone ceiling"
            )
        speed = run.get("reference_digit_us")
        if speed:
            detail.append(f"reference digit {speed['before']} us before, {speed['after']} us after")
        lines.append(f"  {run['name']}: " + "; ".join(detail))
        if speed and abs(speed["after"] - speed["before"]) > SPEED_CHANGE * min(speed["before"], speed["after"]):
            lines.append(
                f"  warning: this machine's speed changed during {run['name']} (a reference digit took "
                f"{speed['before']} us before and {speed['after']} us after); compare its figures "
                f"with care"
            )
        disturbed = max(machine.get("others_percent", 0.0), machine.get("steal_percent", 0.0))
        if disturbed > DISTURBED_PERCENT:
            lines.append(
                f"  warning: other processes or the hypervisor took {disturbed}% of a core during "
                f"{run['name']}; its figures do not describe this server alone"
            )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)
