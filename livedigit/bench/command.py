"""The ``livedigit bench`` command line: its options, read before anything heavy is imported.

``livedigit --help`` and every other subcommand import only this module of the bench; the load generator
and its dependencies (the ``bench`` extra: psutil, httpx) load when ``livedigit bench`` runs.
"""

from __future__ import annotations

import argparse
import sys

from livedigit import pendigits

SWEEP_CLIENTS = "25,50,100,150,200,300,400,600,800"

DESCRIPTION = """Measure the server under many clients drawing real pen digits at once.

Each client replays pen trajectories from the pen-digits test split over its own WebSocket: a snapshot
of the drawing so far every 1/--rate seconds, then a submit. Prints throughput, latency percentiles,
dropped snapshots, errors, batch sizes, server CPU and memory and the accuracy of the submits; --json
writes them to a file. Without --url the bench starts a server on a free loopback port. --ceiling,
--unbatched, --http and --floor add reference points; --sweep finds the number of clients at which p99 live
latency passes --knee-ms, with batching on and off; --script measures a script classifying images at
full speed, alone and beside the drawing clients.
"""


def run(args: argparse.Namespace) -> int:
    """Run the bench with parsed ``args``; without the ``bench`` extra, say how to install it."""
    try:
        from livedigit.bench.main import main
    except ModuleNotFoundError as exc:
        if exc.name not in ("psutil", "httpx"):
            raise
        print(
            f"livedigit bench: {exc.name} is not installed; the bench needs the bench extra: "
            "pip install 'livedigit[bench]'",
            file=sys.stderr,
        )
        return 2
    return main(args)


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
        "--paced",
        action="store_true",
        help="each person keeps at most one snapshot unanswered, as the page does: a snapshot falling due "
        "meanwhile waits (a newer one replaces it, counted dropped/held) and goes out when the reply comes; "
        "without it people are open-loop and send every frame when it falls due",
    )
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
    served.add_argument(
        "--server-program",
        metavar="COMMAND",
        help="run the server as COMMAND serve ... instead of this interpreter's livedigit, to measure another "
        "version with the same load, e.g. 'env -C /tmp/old python -m livedigit' (python -m imports from "
        "its directory first)",
    )
    refs = parser.add_argument_group("reference points")
    refs.add_argument("--ceiling", action="store_true", help="(a) the model alone in this process, batched")
    refs.add_argument("--unbatched", action="store_true", help="(b) the same load on a server with --max-batch 1")
    refs.add_argument(
        "--http",
        action="store_true",
        help="(c) the same clients over POST /api/predict, one request at a time per client",
    )
    refs.add_argument(
        "--floor",
        action="store_true",
        help="(d) the same load on a server of the same stack that answers every frame with a fixed "
        "prediction (python -m livedigit.bench.floor): what the stack alone costs per frame",
    )
    refs.add_argument("--references", action="store_true", help="all four reference points")
    script = parser.add_argument_group("a script at full speed (--script)")
    script.add_argument(
        "--script",
        action="store_true",
        help="instead of the runs above: (a) one script classifying images as fast as it can (pipelined "
        "batches) on a server with the default settings, on one with every per-client limit lifted, and "
        "the model alone on the same images; (b) --clients people drawing at --rate, alone and with the "
        "script beside them. Each for --duration seconds",
    )
    script.add_argument(
        "--script-images", type=int, default=2000, help="MNIST test digits the script cycles through (default 2000)"
    )
    script.add_argument(
        "--mnist",
        default=str(pendigits.DEFAULT_PATH.parent / "mnist.npz"),
        help="mnist.npz for the script (default: ../shared/data/mnist.npz; without it the script sends the "
        "pen digits' finished drawings)",
    )
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
