"""``livedigit bench`` once its options are parsed: the checks, the servers it starts, the runs and the
sweep, and the report at the end."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from livedigit import pendigits
from livedigit.bench.ceiling import image_ceiling, model_ceiling
from livedigit.bench.measure import Target, run_load
from livedigit.bench.report import FLOOR_RUN, format_report
from livedigit.bench.resources import machine
from livedigit.bench.script import LIFTED, ratios, script_images, script_process, summary
from livedigit.bench.served import DEFAULT_PROGRAM, ServerProcess, server_for
from livedigit.bench.workload import Workload
from livedigit.client import as_image, websocket_url
from livedigit.config import DEFAULT_MODEL, Settings

LOOPBACK = ("127.0.0.1", "localhost", "::1")
FLOOR_PROGRAM = [sys.executable, "-m", "livedigit.bench.floor"]
"""How ``--floor`` runs its server (:mod:`livedigit.bench.floor`), with the flags a server would get."""
SWEEP_MODES = ("batched", "unbatched", "http")


def main(args: argparse.Namespace) -> int:
    """Run the bench with the options of :func:`livedigit.bench.command.add_arguments`; the exit status."""
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
    report: dict[str, Any] = {"machine": machine(), "options": options, "runs": []}
    try:
        if args.ceiling or args.references or args.sweep:
            _say(args, "measuring the model alone in this process")
            report["ceiling"] = model_ceiling(
                digits,
                args.points,
                args.model or str(DEFAULT_MODEL),
                args.runtime or "litert",
                args.threads or 1,
                args.max_batch or Settings.max_batch,
            )
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            if args.sweep:
                report["sweep"] = runner.run(_sweep(args, digits))
            elif args.script:
                report["script"] = runner.run(_script(args, digits))
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
        if host not in LOOPBACK:
            return f"--url must be a loopback address (127.0.0.1), not {host}"
        if args.unbatched or args.floor or args.references or args.sweep or args.script:
            return "--unbatched, --floor, --references, --sweep and --script start their own servers; drop --url"
    if args.script and args.sweep:
        return "--script and --sweep are separate measurements; pick one"
    if args.script_images < 1:
        return "--script-images must be positive"
    unknown = {part.strip() for part in args.sweep_modes.split(",") if part.strip()} - set(SWEEP_MODES)
    if unknown:
        return f"unknown --sweep-modes {', '.join(sorted(unknown))}; use {', '.join(SWEEP_MODES)}"
    return None


def _server_flags(args: argparse.Namespace, max_batch: int | None = None) -> list[str]:
    flags: list[str] = []
    for name in ("max_batch", "max_wait_ms", "threads", "runtime", "model"):
        value = max_batch if name == "max_batch" and max_batch is not None else getattr(args, name)
        if value is not None:
            flags += ["--" + name.replace("_", "-"), str(value)]
    return flags + list(args.server_arg)


def _program(args: argparse.Namespace) -> list[str]:
    """How the bench runs ``livedigit``: ``--server-program``, or this interpreter's package."""
    return shlex.split(args.server_program) if args.server_program else list(DEFAULT_PROGRAM)


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
        args.paced,
    )


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"livedigit bench: {text}", file=sys.stderr, flush=True)


def _target(server: ServerProcess) -> Target:
    return Target(server.ws_url, server.http_url, server.pid)


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
    with server_for(workload.clients, workload.rate, _server_flags(args), _program(args)) as server:
        _say(args, f"server started on {server.http_url} with {' '.join(server.args)}")
        run = await run_load(_target(server), workload, digits, "websocket", "websocket", args.quiet)
        report["runs"].append(_started(run, server))
        if args.http or args.references:
            run = await run_load(_target(server), workload, digits, "http", "http", args.quiet)
            report["runs"].append(_started(run, server))
    if args.unbatched or args.references:
        with server_for(workload.clients, workload.rate, _server_flags(args, max_batch=1), _program(args)) as server:
            run = await run_load(_target(server), workload, digits, "websocket", "unbatched", args.quiet)
            report["runs"].append(_started(run, server))
    if args.floor or args.references:
        with server_for(workload.clients, workload.rate, _server_flags(args), FLOOR_PROGRAM) as server:
            run = await run_load(_target(server), workload, digits, "websocket", FLOOR_RUN, args.quiet)
            report["runs"].append(_started(run, server))


def _started(run: dict[str, Any], server: ServerProcess) -> dict[str, Any]:
    """``run`` with how long its server took from process start to ready (``server.ready_s``)."""
    run["server"]["ready_s"] = server.ready_seconds
    return run


async def _script(args: argparse.Namespace, digits: list[pendigits.PenDigit]) -> dict[str, Any]:
    """The figures of ``--script`` (see :mod:`livedigit.bench.script`): the lone script on a server with
    the default settings, the drawers alone and with the script beside them on the same server, the lone
    script on a server with every per-client limit lifted, and the model alone on the script's images."""
    kind, images = script_images(args.mnist, args.script_images, [digit.strokes for digit in digits])
    _say(args, f"the script classifies {len(images)} {kind} images; measuring the model alone on them")
    result: dict[str, Any] = {
        "images": kind,
        "count": len(images),
        "ceiling": image_ceiling(
            [as_image(image) for image in images],
            args.model or str(DEFAULT_MODEL),
            args.runtime or "litert",
            args.threads or 1,
            args.max_batch or Settings.max_batch,
        ),
    }
    workload = _workload(args)
    # Default settings, but for the cap on connections per address: the bench's people share one.
    shared = ["--log-level", "warning", "--max-connections-per-client", str(workload.clients + 16)]
    with tempfile.TemporaryDirectory(prefix="livedigit-bench-") as logs:
        with ServerProcess([*shared, *_server_flags(args)], program=_program(args)).start(Path(logs)) as server:
            _say(args, f"(a) the script alone on {server.http_url} with the default settings")
            result["lone_default"] = await _lone_script(server, args)
            _say(args, f"(b) {workload.clients} people drawing, alone")
            result["drawers_alone"] = await run_load(
                _target(server), workload, digits, "websocket", "drawers", args.quiet
            )
            _say(args, f"(b) {workload.clients} people drawing, with the script beside them")
            stop = asyncio.Event()
            script = asyncio.ensure_future(_script_process(server, args, stop))
            result["drawers_with_script"] = await run_load(
                _target(server), workload, digits, "websocket", "drawers+script", args.quiet
            )
            stop.set()
            result["script_beside_drawers"] = summary(await script, *result["drawers_with_script"]["window_monotonic"])
        with ServerProcess([*shared, *LIFTED, *_server_flags(args)], program=_program(args)).start(
            Path(logs)
        ) as server:
            _say(args, "(a) the script alone with every per-client limit lifted")
            result["lone_lifted"] = await _lone_script(server, args)
    result["ratios"] = ratios(result)
    return result


async def _lone_script(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    """The script alone for --duration seconds, after --warmup (and the second its process takes to start)."""
    start = time.monotonic() + 1.0 + args.warmup
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(start + args.duration - time.monotonic(), stop.set)
    return summary(await _script_process(server, args, stop), start, start + args.duration)


async def _script_process(
    server: ServerProcess, args: argparse.Namespace, stop: asyncio.Event
) -> list[tuple[float, str, float]]:
    return await script_process(server.ws_url, args.mnist, args.script_images, args.pen_digits, args.timeout, stop)


async def _sweep(args: argparse.Namespace, digits: list[pendigits.PenDigit]) -> dict[str, Any]:
    counts = sorted({int(part) for part in args.sweep_clients.split(",") if part.strip()})
    result: dict[str, Any] = {"knee_ms": args.knee_ms, "knee_dropped": args.knee_dropped, "modes": {}}
    modes = {"batched": (args.max_batch, "websocket"), "unbatched": (1, "websocket"), "http": (args.max_batch, "http")}
    for mode in dict.fromkeys(part.strip() for part in args.sweep_modes.split(",") if part.strip()):
        max_batch, transport = modes[mode]
        steps: list[dict[str, Any]] = []
        knee: dict[str, Any] = {"last_good": None, "first_bad": None, "reason": None}
        with server_for(max(counts), args.rate, _server_flags(args, max_batch=max_batch), _program(args)) as server:
            for clients in counts:
                run = await run_load(
                    _target(server),
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
    batched, unbatched = (knees[mode]["last_good"] if mode in knees else None for mode in ("batched", "unbatched"))
    result["ratio"] = round(batched / unbatched, 2) if batched and unbatched else None
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
