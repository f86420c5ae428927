"""CPU and memory over a run: the server's, the bench's own, and the rest of the machine's; and which
machine the figures were measured on."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

from livedigit.bench.scrape import metric, scrape


class ResourceWatch:
    """The server's CPU use and resident memory over the measured window, its worker processes included.

    For a server the bench started, psutil reads its process directly (sampled every second); for
    ``--url`` it reads the ``process_*`` gauges of ``/metrics`` when the server exports them.

    Resident memory is given two ways. ``rss`` adds up each process's resident set, so a page that several
    processes share (the interpreter, numpy and LiteRT's libraries, mapped by the server and each worker)
    counts once for each of them: an upper bound of what the dyno holds. ``pss`` (Linux, a server the
    bench started) shares each such page out among the processes that map it, so that it counts once in
    all, as the kernel charges a dyno's memory; the bench's own process maps the same libraries and takes
    its share of them, so ``pss`` reads low by that share (about 10 MB on 2026-12-06).
    """

    def __init__(self, http_url: str, pid: int | None) -> None:
        self.http_url = http_url
        self.process = psutil.Process(pid) if pid is not None else None
        self.rss: list[float] = []
        self.pss: list[float] = []
        self._cpu_start: tuple[float, float] | None = None
        self.cpu_percent: float | None = None
        self.loop_cpu_percent: float | None = None
        self._loop_start: float | None = None
        self.cpu_seconds: float | None = None
        self.thread_cpu_seconds: dict[str, float] | None = None
        """The server's CPU over the window by thread name (``livedigit``, ``livedigit-work``, ...)."""
        self._threads_start: dict[str, float] | None = None
        self.bench_cpu_percent: float | None = None
        self.machine: dict[str, float] = {}
        self._bench_start = (time.monotonic(), _own_cpu_seconds())
        self._machine_start = psutil.cpu_times()

    def _tree(self) -> list[psutil.Process]:
        """The server's process and its children (its preprocessing worker): everything the dyno runs."""
        if self.process is None:
            return []
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self.process]

    def _cpu_seconds(self) -> float | None:
        if self.process is not None:
            total = 0.0
            for process in self._tree():
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = process.cpu_times()
                    total += times.user + times.system
            return total
        return metric(scrape(self.http_url), "process_cpu_seconds_total")

    def _memory_bytes(self) -> tuple[float | None, float | None]:
        """The server's resident memory now, all its processes: (rss, pss); ``None`` where unknown."""
        if self.process is None:
            return metric(scrape(self.http_url), "process_resident_memory_bytes"), None
        rss, pss = 0.0, 0.0
        for process in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                memory = process.memory_full_info()
                rss += memory.rss
                pss += getattr(memory, "pss", math.nan)  # Linux only
        return rss, None if math.isnan(pss) else pss

    def _thread_cpu_seconds(self) -> dict[str, float] | None:
        """:func:`thread_cpu_seconds` over the server's processes, summed by thread name."""
        if self.process is None:
            return None
        totals: defaultdict[str, float] = defaultdict(float)
        for process in self._tree():
            for name, seconds in (thread_cpu_seconds(process.pid) or {}).items():
                totals[name] += seconds
        return dict(totals)

    def _main_thread_seconds(self) -> float | None:
        """CPU time of the server's main thread, the one running the event loop (its id is the pid)."""
        if self.process is None:
            return None
        for thread in self.process.threads():
            if thread.id == self.process.pid:
                return thread.user_time + thread.system_time
        return None

    def begin(self) -> None:
        """Start the window: every figure counts from here."""
        cpu = self._cpu_seconds()
        self._cpu_start = (time.monotonic(), cpu) if cpu is not None else None
        self._loop_start = self._main_thread_seconds()
        self._threads_start = self._thread_cpu_seconds()
        self._bench_start = (time.monotonic(), _own_cpu_seconds())
        self._machine_start = psutil.cpu_times()

    def sample(self) -> None:
        """Read the server's resident memory once (blocking: call it from a thread)."""
        rss, pss = self._memory_bytes()
        if rss is not None:
            self.rss.append(rss)
        if pss is not None:
            self.pss.append(pss)

    def finish(self) -> None:
        """End the window and work out the CPU shares over it."""
        now = time.monotonic()
        cpu = self._cpu_seconds()
        if self._cpu_start is not None and cpu is not None and now > self._cpu_start[0]:
            self.cpu_seconds = round(cpu - self._cpu_start[1], 3)
            self.cpu_percent = round(100.0 * (cpu - self._cpu_start[1]) / (now - self._cpu_start[0]), 1)
            loop = self._main_thread_seconds()
            if loop is not None and self._loop_start is not None:
                self.loop_cpu_percent = round(100.0 * (loop - self._loop_start) / (now - self._cpu_start[0]), 1)
        threads = self._thread_cpu_seconds()
        if threads is not None and self._threads_start is not None:
            start = self._threads_start
            self.thread_cpu_seconds = {name: round(spent - start.get(name, 0.0), 3) for name, spent in threads.items()}
        bench_cpu = _own_cpu_seconds()
        self.bench_cpu_percent = round(100.0 * (bench_cpu - self._bench_start[1]) / (now - self._bench_start[0]), 1)
        self.machine = _machine_load(self._machine_start, psutil.cpu_times(), now - self._bench_start[0])
        if self.cpu_percent is not None and self.process is not None:
            others = self.machine["busy_percent"] - self.cpu_percent - self.bench_cpu_percent
            self.machine["others_percent"] = round(max(0.0, others), 1)

    def summary(self) -> dict[str, Any]:
        """The ``server`` figures of a run."""
        return {
            "source": "psutil" if self.process is not None else ("metrics" if self.rss else None),
            "cpu_percent": self.cpu_percent,
            "cpu_seconds": self.cpu_seconds,
            "event_loop_cpu_percent": self.loop_cpu_percent,
            "thread_cpu_seconds": self.thread_cpu_seconds,
            "rss_mb_max": round(max(self.rss) / 2**20, 1) if self.rss else None,
            "rss_mb_mean": round(sum(self.rss) / len(self.rss) / 2**20, 1) if self.rss else None,
            "pss_mb_max": round(max(self.pss) / 2**20, 1) if self.pss else None,
            "pss_mb_mean": round(sum(self.pss) / len(self.pss) / 2**20, 1) if self.pss else None,
            "bench_client_cpu_percent": self.bench_cpu_percent,
            "machine": self.machine,
        }


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Units of the CPU times in ``/proc`` per second."""


def thread_cpu_seconds(pid: int) -> dict[str, float] | None:
    """User and system CPU time of each thread of process ``pid`` so far, summed by the thread's name as
    the system shows it (the server names its threads: :mod:`livedigit.threadnames`); ``None`` without
    Linux's ``/proc``. A thread that ended is not counted, and a thread's time is only as fine as a
    clock tick (10 ms), so this is for windows of seconds."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    totals: defaultdict[str, float] = defaultdict(float)
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        # "TID (name) state ...": the name may hold spaces and parentheses; utime and stime are the
        # 14th and 15th fields, the 12th and 13th after the name.
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        totals[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return dict(totals)


def _own_cpu_seconds() -> float:
    """User and system CPU time of the bench's own process."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def _machine_load(before: Any, after: Any, seconds: float) -> dict[str, float]:
    """All cores' busy time and steal time (the hypervisor running someone else) over the window, in % of
    one core, so they add up with the per-process figures; ``others`` is what neither process used."""

    def delta(name: str) -> float:
        value: float = getattr(after, name, 0.0) - getattr(before, name, 0.0)
        return value

    idle = delta("idle") + delta("iowait")
    total = sum(delta(name) for name in after._fields if name not in ("guest", "guest_nice"))
    busy = total - idle - delta("steal")
    scale = 100.0 / seconds if seconds > 0 else 0.0
    return {"busy_percent": round(busy * scale, 1), "steal_percent": round(delta("steal") * scale, 1)}


SPEED_FEATURES = {
    "flags": ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"),
    "Features": ("asimddp", "i8mm"),
}
"""The instruction sets that decide how fast the model runs, as ``/proc/cpuinfo`` names them on x86
(``flags``) and on Arm (``Features``): LiteRT's 8-bit kernels (XNNPACK) gain most from 8-bit dot
products (VNNI, AMX, Arm's ``asimddp`` and ``i8mm``). The shipped network's weights, every layer in
8 bits, ran at 4.6-4.8x the float network before it on an Intel CPU with AVX-512 VNNI and at 1.84x on
an AMD one with AVX2 only, so a speed means little without them."""


def cpu_description(cpuinfo: str) -> dict[str, Any]:
    """The CPU's model name, and which of :data:`SPEED_FEATURES` it has and lacks, from the text of
    ``/proc/cpuinfo`` (the first processor's lines: a machine's cores are alike)."""
    name = ""
    have: list[str] = []
    lacking: list[str] = []
    for line in cpuinfo.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not name:
            name = value
        elif key in SPEED_FEATURES and not have and not lacking:
            flags = set(value.split())
            have = [feature for feature in SPEED_FEATURES[key] if feature in flags]
            lacking = [feature for feature in SPEED_FEATURES[key] if feature not in flags]
    return {"cpu": name, "cpu_features": have, "cpu_features_lacking": lacking}


def describe_cpu(machine: dict[str, Any]) -> str:
    """The machine in one line, e.g. "AMD EPYC, 2 CPUs, avx2 fma, no avx512f avx512_vnni avx_vnni amx_int8"."""
    parts = [machine.get("cpu") or "unknown CPU", f"{machine.get('cpus')} CPUs"]
    if machine.get("cpu_features"):
        parts.append(" ".join(machine["cpu_features"]))
    if machine.get("cpu_features_lacking"):
        parts.append("no " + " ".join(machine["cpu_features_lacking"]))
    return ", ".join(parts)


def this_cpu() -> dict[str, Any]:
    """:func:`cpu_description` of this machine (nothing known where ``/proc/cpuinfo`` is absent)."""
    try:
        return cpu_description(Path("/proc/cpuinfo").read_text())
    except OSError:
        return cpu_description("")


def machine() -> dict[str, Any]:
    """Where the figures were measured: they only compare with figures from the same machine and code."""
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
        **this_cpu(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "git_commit": commit,
    }
