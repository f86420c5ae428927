"""``livedigit bench``: a short run checks the report accounts for every message (not the speed)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import subprocess
import sys
import time

import pytest
import websockets
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from livedigit import cli
from livedigit.bench.ceiling import model_ceiling
from livedigit.bench.measure import BENCH_LATE_MS, Target, run_load
from livedigit.bench.people import timeline, websocket_people
from livedigit.bench.recorder import Recorder
from livedigit.bench.report import format_report
from livedigit.bench.resources import CLOCK_TICKS, SPEED_FEATURES, cpu_description, describe_cpu
from livedigit.bench.workload import Workload, drawing, schedule
from livedigit.client import LiveDigitClient
from livedigit.wire import VERSION, Empty

pytestmark = pytest.mark.slow


def test_drawing_replays_the_pen_in_growing_prefixes(pen_test):
    digit = max(pen_test[:50], key=lambda d: len(d.strokes))
    total = sum(len(stroke) for stroke in digit.strokes)
    frames = drawing(digit, points=5).frames
    assert len(frames) == -(-total // 5)
    counts = [sum(len(stroke) for stroke in frame) for frame in frames]
    assert counts == sorted(counts) and counts[0] == min(5, total) and counts[-1] == total
    assert frames[-1] == digit.strokes
    for frame in frames:
        flat = [point for stroke in frame for point in stroke]
        assert flat == [point for stroke in digit.strokes for point in stroke][: len(flat)]


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2 avx512f
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes crc32 atomics asimddp sha512
CPU implementer\t: 0x41
"""


def test_the_machine_is_described_with_the_instruction_sets_that_set_the_models_speed():
    x86 = cpu_description(X86_CPUINFO)
    assert x86 == {
        "cpu": "AMD EPYC",
        "cpu_features": ["avx2", "fma"],
        "cpu_features_lacking": ["avx512f", "avx512_vnni", "avx_vnni", "amx_int8"],
    }
    assert describe_cpu({**x86, "cpus": 2}) == "AMD EPYC, 2 CPUs, avx2 fma, no avx512f avx512_vnni avx_vnni amx_int8"
    arm = cpu_description(ARM_CPUINFO)
    assert arm == {"cpu": "", "cpu_features": ["asimddp"], "cpu_features_lacking": ["i8mm"]}
    assert describe_cpu({**arm, "cpus": 4}) == "unknown CPU, 4 CPUs, asimddp, no i8mm"
    assert cpu_description("") == {"cpu": "", "cpu_features": [], "cpu_features_lacking": []}


def check_run(run: dict, clients: int) -> None:
    """Every message sent in the window is accounted for exactly once, and the figures are consistent."""
    assert run["clients"] == clients
    for kind in ("snapshots", "submits"):
        tally = run[kind]
        outcomes = (
            tally["predicted"]
            + tally["empty"]
            + sum(tally["dropped"].values())
            + sum(tally["errors"].values())
            + tally["lost"]
        )
        assert tally["sent"] > 0
        assert outcomes == tally["sent"], tally
        latency = tally["latency_ms"]
        assert latency["count"] == tally["predicted"] + tally["empty"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert tally["offered_per_s"] == pytest.approx(tally["sent"] / run["window_s"], rel=0.02)
    assert run["snapshots"]["offered_per_s"] <= clients * run["rate_per_client"] * 1.05
    assert 0.0 <= run["submits"]["accuracy"] <= 1.0
    speed = run["reference_digit_us"]
    assert 10.0 < speed["before"] < 1e5 and 10.0 < speed["after"] < 1e5


def test_bench_starts_a_server_and_reports_every_figure(pen_digits_file, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(
        [
            "bench",
            "--clients",
            "3",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--rate",
            "10",
            "--pen-digits",
            str(pen_digits_file),
            "--max-batch",
            "8",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "p99 live" in captured.err
    report = json.loads(out.read_text())
    assert report["options"]["clients"] == 3
    [run] = report["runs"]
    check_run(run, 3)
    assert run["snapshots"]["errors"] == {} and run["connection_errors"] == {}
    batches = run["batch_sizes"]
    assert batches["batches"] > 0 and 1.0 <= batches["mean"] <= 8.0
    # Three people drawing are a light load: the server's event loop scores their batches itself.
    assert 0 < batches["inline"] <= batches["batches"]
    assert f"{batches['inline'] / batches['batches']:.0%} of them scored on the event loop" in captured.out
    assert sum(batches["buckets"].values()) == batches["batches"]
    server = run["server"]
    assert server["source"] == "psutil" and server["rss_mb_max"] > 10 and server["cpu_percent"] > 0
    # Shared libraries count once for each process in the first, once in all in the second.
    assert 10 < server["pss_mb_max"] < server["rss_mb_max"]
    assert 0 < server["ready_s"] < 60
    assert f"server ready {server['ready_s']} s after its process started" in captured.out
    machine = report["machine"]
    assert captured.out.startswith(f"machine: {describe_cpu(machine)}\n")
    if sys.platform.startswith("linux"):  # every speed-related instruction set is either had or lacked
        found = {*machine["cpu_features"], *machine["cpu_features_lacking"]}
        assert found in [set(features) for features in SPEED_FEATURES.values()]
    cpu = run["cpu_per_answer_ms"]
    assert cpu["answered"] > 0 and cpu["total"] > 0
    assert {"livedigit", "livedigit-work"} <= set(cpu["threads"])  # the worker process too
    # The threads' CPU adds up to the processes': /proc counts each in clock ticks, rounded on its own, so
    # they agree within about a tick per thread.
    threads, ticks = server["thread_cpu_seconds"], len(server["thread_cpu_seconds"]) / CLOCK_TICKS
    assert sum(threads.values()) == pytest.approx(server["cpu_seconds"], rel=0.2, abs=ticks), threads
    assert all(figures["ms_per_image"] > 0 and figures["ms_per_answer"] > 0 for figures in cpu["stages"].values())
    assert "server cpu per answered frame" in captured.out and "by thread livedigit " in captured.out
    assert "websocket" in captured.out and "clients" in captured.out
    assert f"reference digit {run['reference_digit_us']['before']} us before" in captured.out


def test_the_floor_answers_every_frame_with_the_same_stack_and_no_work(pen_digits_file, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--clients", "3", "--duration", "3", "--warmup", "1", "--floor", "--quiet"]
    assert cli.main([*argv, "--pen-digits", str(pen_digits_file), "--json", str(out)]) == 0
    served, floor = json.loads(out.read_text())["runs"]
    assert (served["name"], floor["name"]) == ("websocket", "floor")
    check_run(floor, 3)
    for kind in ("snapshots", "submits"):
        assert floor[kind]["predicted"] == floor[kind]["sent"] > 0  # one prediction per frame, by its id
    assert floor["server"]["source"] == "psutil" and floor["server"]["ready_s"] > 0
    cpu = floor["cpu_per_answer_ms"]
    # Measured, though it may be 0: three clients for three seconds cost the floor a few milliseconds of
    # CPU, which /proc counts in 10 ms clock ticks.
    assert isinstance(cpu["total"], float) and cpu["total"] >= 0 and cpu["stages"] is None  # no batcher, no stages
    # The event loop alone works; /proc counts a thread's CPU in 10 ms ticks, and three clients for three
    # seconds cost the floor about one, which may fall to no thread at all.
    assert {name for name, ms in cpu["threads"].items() if ms > 0} <= {"livedigit"}
    beyond = served["cpu_per_answer_ms"]["total"] - cpu["total"]
    assert f"{beyond:.3f} ms of it beyond the stack's floor ({cpu['total']:.3f} ms)" in capsys.readouterr().out


def test_bench_against_a_running_server_and_the_http_reference(server, pen_digits_file, tmp_path):
    out = tmp_path / "bench.json"
    code = cli.main(
        [
            "bench",
            "--url",
            server.ws_url,
            "--clients",
            "2",
            "--digits",
            "6",
            "--rate",
            "20",
            "--http",
            "--quiet",
            "--pen-digits",
            str(pen_digits_file),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    websocket, http = json.loads(out.read_text())["runs"]
    assert (websocket["transport"], http["transport"]) == ("websocket", "http")
    for run in (websocket, http):
        check_run(run, 2)
        assert run["submits"]["sent"] == 6
    assert websocket["server"]["source"] == "metrics" and websocket["server"]["rss_mb_max"] > 10
    assert websocket["server"]["pss_mb_max"] is None  # a server the bench did not start: its gauges only
    assert set(http["snapshots"]["dropped"]) <= {"busy"}


def test_model_ceiling_measures_preprocess_and_runtime(pen_test):
    from livedigit.config import DEFAULT_MODEL

    ceiling = model_ceiling(
        pen_test[:20], points=4, model=str(DEFAULT_MODEL), runtime_kind="litert", threads=1, max_batch=16, budget_s=0.3
    )
    assert ceiling["frames"] > 20 and ceiling["batch_size"] == 16
    assert 0 < ceiling["ceiling_per_s"] < min(ceiling["preprocess_per_s"], ceiling["runtime_batched_per_s"])
    # The same frames' preprocessing CPU back to back and as a lightly loaded worker gets them.
    assert ceiling["preprocess_cpu_us"] > 0 and ceiling["preprocess_cpu_us_paused"] > 0
    assert "us/frame back to back" in format_report({"ceiling": ceiling})


def test_bench_explains_missing_pen_digits(tmp_path, capsys):
    assert cli.main(["bench", "--pen-digits", str(tmp_path / "nowhere.jsonl")]) == 2
    assert "pen digits not found" in capsys.readouterr().err


def test_bench_refuses_other_hosts(capsys):
    assert cli.main(["bench", "--url", "ws://192.0.2.1:8000/ws"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_the_server_needs_no_bench_extra_and_the_bench_names_it():
    """A server installed from requirements.txt has neither psutil nor httpx: the server and the test
    helpers import without them, and ``livedigit bench`` says which extra to install."""
    program = (
        "import sys\n"
        "sys.modules['psutil'] = sys.modules['httpx'] = None\n"
        "import livedigit.app, livedigit.server, livedigit.bench.served, livedigit.bench.workload\n"
        "from livedigit import cli\n"
        "sys.exit(cli.main(['bench', '--clients', '1']))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'livedigit[bench]'" in done.stderr


def test_bench_script_mode_reports_the_ratios_of_one_run(pen_digits_file, mnist_path, tmp_path):
    """``--script``: the lone script on a default server and on one with the limits lifted, the drawers
    alone and beside it, the model alone on the script's images, and the ratios of those figures."""
    out = tmp_path / "bench.json"
    code = cli.main(
        [
            "bench", "--script", "--clients", "3", "--duration", "2", "--warmup", "0.5", "--quiet",
            "--script-images", "300", "--mnist", str(mnist_path), "--pen-digits", str(pen_digits_file),
            "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    script = json.loads(out.read_text())["script"]
    assert script["images"] == "mnist" and script["count"] == 300
    for name in ("lone_default", "lone_lifted", "script_beside_drawers"):
        run = script[name]
        assert run["answered"] > 0 and set(run["outcomes"]) <= {"predicted", "empty"}, run
        assert run["images_per_s"] == pytest.approx(run["answered"] / run["window_s"], rel=0.01)
        assert run["client_cpu_us_per_image"] > 0 and 0 < run["client_cpu_percent"] <= 100, run
    for name in ("drawers_alone", "drawers_with_script"):
        check_run(script[name], 3)
    ratios = script["ratios"]
    lone = script["lone_default"]["images_per_s"]
    assert ratios["default_over_lifted"] == pytest.approx(lone / script["lone_lifted"]["images_per_s"], abs=1e-3)
    assert ratios["default_over_ceiling"] == pytest.approx(lone / script["ceiling"]["ceiling_per_s"], abs=1e-3)
    assert ratios["drawers_p99_alone_ms"] == script["drawers_alone"]["snapshots"]["latency_ms"]["p99"]


async def test_the_bench_sends_what_the_client_sends(pen_test):
    """The bench's pages send, byte for byte, the messages LiveDigitClient sends for the same frames (so
    the server's work per frame is the same), and count each reply once."""
    received: list[list[str]] = []

    async def page(socket: ServerConnection) -> None:
        messages: list[str] = []
        received.append(messages)
        await socket.send(json.dumps({"type": "hello", "protocol": VERSION}))
        async for message in socket:
            messages.append(str(message))
            await socket.send(json.dumps(Empty(json.loads(message)["id"], False).to_wire()))

    digits = pen_test[:3]
    workload = Workload(1, 200.0, 8, 3600.0, 0.0, 3, 5.0, 0)
    async with websockets.serve(page, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        recorder = Recorder(0.0, math.inf)
        await websocket_people(url, workload, timeline(workload, [digits], [3], [0.0], 3600.0), 0.0, recorder)
        async with LiveDigitClient(url) as client:
            for _, kind, strokes, _ in schedule(workload, digits, 3, 0.0, 3600.0):
                await (client.submit(strokes) if kind == "submit" else client.snapshot(strokes))
    bench, reference = received
    assert bench == reference and len(bench) > 6
    assert recorder.submits.sent == recorder.submits.empty == 3
    assert recorder.snapshots.sent == recorder.snapshots.empty == len(bench) - 3


async def test_the_bench_reads_replies_split_and_joined_and_answers_pings(pen_test):
    """The pages read the server's frames themselves: a reply cut into single bytes, several replies in one
    read, replies longer than 125 and 65,535 bytes, and a ping between them are all read as the protocol
    reads them; each reply is counted once and the ping is answered with its pong."""
    pongs: list[bytes] = []
    requests: list[dict] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = ServerProtocol()
        answered, held = 0, b""
        while not reader.at_eof():
            protocol.receive_data(await reader.read(65536) or b"")
            for event in protocol.events_received():
                if isinstance(event, Request):
                    protocol.send_response(protocol.accept(event))
                    protocol.send_text(json.dumps({"type": "hello", "protocol": VERSION}).encode())
                elif isinstance(event, Frame) and event.opcode is Opcode.PONG:
                    pongs.append(bytes(event.data))
                elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    request = json.loads(event.data)
                    requests.append(request)
                    reply = Empty(request["id"], request["type"] == "submit").to_wire()
                    reply["padding"] = "x" * (0 if answered % 3 == 0 else 200 if answered % 3 == 1 else 70000)
                    if answered == 1:
                        protocol.send_ping(b"ping")
                    protocol.send_text(json.dumps(reply).encode())
                    answered += 1
            data, held = held + b"".join(protocol.data_to_send()), b""
            if answered % 4 == 2:  # sent with the next reply: two replies in one read
                held = data
            elif answered % 2:  # a byte at a time
                for byte in range(len(data)):
                    writer.write(data[byte : byte + 1])
                    await writer.drain()
            else:  # with an empty text frame after it, which is no reply of the bench's
                protocol.send_text(b"")
                writer.write(data + b"".join(protocol.data_to_send()))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    server.sockets[0].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    async with server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        workload = Workload(1, 100.0, 8, 3600.0, 0.0, 2, 5.0, 0)
        recorder = Recorder(0.0, math.inf)
        await websocket_people(url, workload, timeline(workload, [pen_test[:2]], [2], [0.0], 3600.0), 0.0, recorder)
    assert len(requests) > 6 and pongs == [b"ping"]
    assert recorder.submits.empty == recorder.submits.sent == 2
    assert recorder.snapshots.empty == recorder.snapshots.sent == len(requests) - 2
    assert recorder.snapshots.lost == recorder.submits.lost == 0


async def test_a_paced_person_keeps_one_snapshot_unanswered(pen_test):
    """With ``--paced``, as the page does: no snapshot goes out before the reply to the one before it; those
    falling due meanwhile wait, the newest replacing the others (counted ``dropped``/``held``); every frame
    is counted once, and submits never wait."""
    arrived: list[tuple[float, dict]] = []
    answered: dict[int, float] = {}

    async def page(socket: ServerConnection) -> None:
        async def answer(request_id: int, delay: float) -> None:
            await asyncio.sleep(delay)
            answered[request_id] = time.monotonic()
            await socket.send(json.dumps(Empty(request_id, False).to_wire()))

        await socket.send(json.dumps({"type": "hello", "protocol": VERSION}))
        tasks = []
        async for message in socket:
            request = json.loads(message)
            arrived.append((time.monotonic(), request))
            tasks.append(asyncio.ensure_future(answer(request["id"], 0.03 if request["type"] == "snapshot" else 0.0)))
        await asyncio.gather(*tasks)

    workload = Workload(1, 200.0, 2, 3600.0, 0.0, 3, 5.0, 0, paced=True)
    frames = timeline(workload, [pen_test[:3]], [3], [0.0], 3600.0)
    async with websockets.serve(page, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        recorder = Recorder(0.0, math.inf)
        await websocket_people(url, workload, frames, time.monotonic(), recorder)
    snapshots = [(when, request) for when, request in arrived if request["type"] == "snapshot"]
    for (_, earlier), (when, later) in itertools.pairwise(snapshots):
        assert when >= answered[earlier["id"]], f"snapshot {later['id']} went out before {earlier['id']} was answered"
    due = sum(kind == "snapshot" for _, _, kind, _, _ in frames)
    held = recorder.snapshots.dropped["held"]
    assert held > 0 and len(snapshots) + held == due == recorder.snapshots.sent
    assert recorder.snapshots.empty == len(snapshots) and recorder.submits.empty == recorder.submits.sent == 3


async def test_the_report_warns_when_the_bench_itself_falls_behind(server, pen_test):
    """A bench whose event loop is held up sends its frames late: the run says the bench was the
    bottleneck, and the report prints a warning."""

    async def hog() -> None:
        while True:
            time.sleep(0.04)  # the loop is held, as by a bench short of CPU
            await asyncio.sleep(0.02)

    workload = Workload(2, 10.0, 8, 2.0, 0.5, None, 10.0, 0)
    holding = asyncio.ensure_future(hog())
    try:
        run = await run_load(
            Target(server.ws_url, server.http_url, server.pid), workload, pen_test, "websocket", "late", True
        )
    finally:
        holding.cancel()
    check_run(run, 2)
    bench = run["bench"]
    assert run["client_lag_ms"]["p99"] > BENCH_LATE_MS
    assert "late" in bench["bottleneck"] and bench["cpu_us_per_message"] > 0
    assert "warning: the bench itself may have been the bottleneck of late" in format_report({"runs": [run]})
