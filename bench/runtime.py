"""Compare the model runtimes: throughput by batch size, import and load time, and process memory.

    python bench/runtime.py [--model models/livedigit-cnn] [--json results.json]

Each configuration (runtime and thread count) runs in a fresh Python process, so one runtime's imports and
allocations do not inflate another's memory or warm its caches. A worker reports: the time to import the
runtime's library and to load the model, the resident memory (RSS) of a process that has only Python,
numpy and ``livedigit`` loaded, then after loading the model, then after running every batch size once
(LiteRT allocates one interpreter per batch bucket), and samples per second at batch 1, 8, 32 and 64 as
the median of several timed rounds. Ratios are taken against the first configuration of the same run, as
figures from different machines or different moments of a busy machine do not compare. It needs psutil
(the ``bench`` extra), and tensorflow-cpu (the ``train`` extra) for the ``tensorflow`` configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BATCHES = (1, 8, 32, 64)
DEFAULT_CONFIGS = "litert:1,litert:2,tensorflow:1,tensorflow:2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from livedigit.config import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python bench/runtime.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model base path (.tflite and .keras)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated runtime:threads pairs")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per batch size (median reported)")
    parser.add_argument("--round-seconds", type=float, default=0.15, help="length of one timed round")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def sample_batch(size: int):  # type: ignore[no-untyped-def]
    """Realistic model inputs: random pen scribbles through the serving preprocessing, and their paths."""
    import numpy as np

    from livedigit.preprocess import Strokes, model_input

    rng = np.random.default_rng(0)
    images: list[np.ndarray] = []
    paths: list[np.ndarray] = []
    while len(images) < size:
        found = model_input(Strokes([rng.uniform(0, 300, (rng.integers(3, 15), 2)).tolist()]))
        if found is not None:
            images.append(found[0])
            paths.append(found[1])
    return np.stack(images), np.stack(paths)


def worker(config: str, model: str, rounds: int, round_seconds: float) -> dict:
    """Measure one configuration in this (fresh) process."""
    kind, threads = config.split(":")
    import numpy  # noqa: F401  (part of the baseline every server process has)

    from livedigit.runtime import load_runtime

    inputs, paths = sample_batch(max(BATCHES))
    baseline = rss_mb()
    started = time.perf_counter()
    if kind == "litert":
        import ai_edge_litert.interpreter  # noqa: F401
    else:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    import_s = time.perf_counter() - started
    started = time.perf_counter()
    runtime = load_runtime(model, kind, num_threads=int(threads))
    load_s = time.perf_counter() - started
    loaded = rss_mb()
    started = time.perf_counter()
    runtime.predict(inputs[:1], paths[:1])
    first_call_s = time.perf_counter() - started
    for size in BATCHES:
        for _ in range(3):
            runtime.predict(inputs[:size], paths[:size])
    warm = rss_mb()
    throughput = {}
    for size in BATCHES:
        batch, batch_paths = inputs[:size], paths[:size]
        rates = []
        for _ in range(rounds):
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < round_seconds:
                runtime.predict(batch, batch_paths)
                calls += 1
            rates.append(calls * size / elapsed)
        throughput[str(size)] = statistics.median(rates)
    return {
        "config": config,
        "runtime": kind,
        "threads": int(threads),
        "import_s": import_s,
        "load_s": load_s,
        "first_call_s": first_call_s,
        "rss_baseline_mb": baseline,
        "rss_loaded_mb": loaded,
        "rss_warm_mb": warm,
        "samples_per_s": throughput,
    }


def run_worker(config: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        config,
        "--model",
        args.model,
        "--rounds",
        str(args.rounds),
        "--round-seconds",
        str(args.round_seconds),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"worker {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def environment(model: str) -> dict:
    import importlib.metadata as metadata

    from livedigit.bench.resources import this_cpu

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "absent"

    base = Path(model).with_suffix("") if Path(model).suffix in (".tflite", ".keras") else Path(model)
    tflite = base.with_suffix(".tflite")
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        **this_cpu(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "ai_edge_litert": version("ai-edge-litert"),
        "tensorflow": version("tensorflow-cpu"),
        "model": str(base),
        "tflite_bytes": tflite.stat().st_size if tflite.exists() else None,
    }


def table(results: list[dict]) -> str:
    """Absolute figures, then each configuration as a multiple of the first one's."""
    header = ["config", "import s", "load s", "RSS base", "RSS +model", "RSS warm"]
    header += [f"b={size}/s" for size in BATCHES]
    rows = [header]
    for result in results:
        rows.append(
            [
                result["config"],
                f"{result['import_s']:.3f}",
                f"{result['load_s']:.3f}",
                f"{result['rss_baseline_mb']:.0f} MB",
                f"{added_mb(result):.0f} MB",
                f"{result['rss_warm_mb']:.0f} MB",
                *(f"{result['samples_per_s'][str(size)]:.0f}" for size in BATCHES),
            ]
        )
    reference = results[0]
    for result in results[1:]:
        rows.append(
            [
                f"{result['config']} / {reference['config']}",
                ratio(result["import_s"], reference["import_s"]),
                ratio(result["load_s"], reference["load_s"]),
                "",
                ratio(added_mb(result), max(added_mb(reference), 1.0)),
                ratio(result["rss_warm_mb"], reference["rss_warm_mb"]),
                *(ratio(result["samples_per_s"][str(s)], reference["samples_per_s"][str(s)]) for s in BATCHES),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(len(results) + 1, "-" * len(lines[0]))
    return "\n".join(lines)


def ratio(value: float, reference: float) -> str:
    multiple = value / reference
    return f"x{multiple:.2f}" if multiple < 10 else f"x{multiple:.0f}"


def added_mb(result: dict) -> float:
    """Memory the runtime's library and the model added to the baseline process."""
    return result["rss_loaded_mb"] - result["rss_baseline_mb"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.rounds, args.round_seconds)))
        return 0
    started = time.perf_counter()
    info = environment(args.model)
    results = [run_worker(config, args) for config in args.configs.split(",")]
    info["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    from livedigit.bench.resources import describe_cpu

    print(f"machine: {describe_cpu(info)}")
    print(
        f"model {info['model']} ({info['tflite_bytes']} bytes tflite); python {info['python']}, "
        f"load average {info['load_average']} -> {info['load_average_after']}; "
        f"ai-edge-litert {info['ai_edge_litert']}, tensorflow {info['tensorflow']}"
    )
    print(f"samples/s: median of {args.rounds} rounds of {args.round_seconds} s; each config in a fresh process")
    print(table(results))
    print(f"total {time.perf_counter() - started:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": info, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
