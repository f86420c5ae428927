"""Measure the label store: the latency of one label at a time, and what many concurrent labels get.

    python bench/labels.py [--database-url postgresql://...] [--clients 50] [--labels 2000]

Without ``--database-url`` the store writes a SQLite file in a temporary folder (on the disk holding the
system's temporary folder, whose fsync is what a commit waits for). Each label is a pen-like drawing of
40 points, as the page sends it. Reported: one ``add`` at a time (each its own commit: the durable
write latency), then ``--clients`` tasks adding back to back (throughput, latency, and rows per commit,
the batching the writer thread gets from concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from livedigit.labels.store import Label, LabelStore
from livedigit.preprocess import Strokes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/labels.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="", help="PostgreSQL URL; default: a temporary SQLite file")
    parser.add_argument("--serial", type=int, default=200, help="labels added one at a time")
    parser.add_argument("--clients", type=int, default=50, help="concurrent tasks in the second phase")
    parser.add_argument("--labels", type=int, default=2000, help="labels added by the concurrent tasks in all")
    return parser.parse_args(argv)


def drawing(rng: np.random.Generator) -> Strokes:
    points = np.cumsum(rng.normal(0.0, 6.0, (40, 2)), axis=0) + 200.0
    return Strokes([np.round(points, 1).tolist()], (400.0, 400.0))


def label(rng: np.random.Generator, writer: str) -> Label:
    probabilities = rng.dirichlet(np.ones(10)).tolist()
    return Label(
        drawing(rng),
        int(rng.integers(10)),
        writer,
        "livedigit-cnn",
        "bench",
        int(np.argmax(probabilities)),
        probabilities,
    )


def summary(name: str, latencies: list[float], seconds: float, commits: int) -> str:
    milliseconds = sorted(1000.0 * value for value in latencies)
    p99 = milliseconds[min(len(milliseconds) - 1, int(0.99 * len(milliseconds)))]
    return (
        f"{name}: {len(latencies)} labels in {seconds:.2f} s = {len(latencies) / seconds:,.0f}/s; "
        f"latency p50 {statistics.median(milliseconds):.2f} ms, p99 {p99:.2f} ms, max {milliseconds[-1]:.2f} ms; "
        f"{len(latencies) / max(commits, 1):.1f} labels per commit"
    )


async def measure(args: argparse.Namespace, target: str) -> None:
    rng = np.random.default_rng(0)
    store = LabelStore.open(target, timeout=30.0, max_pending=max(1024, args.clients))
    await store.start()
    print(f"database: {store.description}")
    for _ in range(20):  # warm up: connections, page cache
        await store.add(label(rng, "warmup-writer"))

    latencies: list[float] = []
    commits, started = store.commits, time.perf_counter()
    for _ in range(args.serial):
        began = time.perf_counter()
        await store.add(label(rng, "serial-writer"))
        latencies.append(time.perf_counter() - began)
    print(summary("one at a time", latencies, time.perf_counter() - started, store.commits - commits))

    concurrent: list[float] = []
    per_client = args.labels // args.clients

    async def client(number: int) -> None:
        for _ in range(per_client):
            item = label(rng, f"bench-writer-{number:04d}")
            began = time.perf_counter()
            await store.add(item)
            concurrent.append(time.perf_counter() - began)

    commits, started = store.commits, time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(args.clients)))
    seconds = time.perf_counter() - started
    print(summary(f"{args.clients} clients", concurrent, seconds, store.commits - commits))
    await store.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.database_url:
        asyncio.run(measure(args, args.database_url))
        return 0
    with tempfile.TemporaryDirectory(prefix="livedigit-labels-bench-") as folder:
        asyncio.run(measure(args, str(Path(folder) / "labels.sqlite3")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
