"""Starting and stopping: a model that cannot load, and SIGTERM closing every WebSocket with 1001."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port
from wsutil import ONE, SEVEN, closed, http_json, open_ws, replies, sample


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "livedigit", "serve", "--port", str(free_port()), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_a_model_that_cannot_load_stops_start_up_with_one_clear_line(tmp_path: Path, problem: str) -> None:
    model = tmp_path / "broken"
    if problem == "corrupt":
        model.with_suffix(".tflite").write_bytes(b"this is not a flatbuffer" * 10)
    result = serve("--model", str(model))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if str(model) in line]
    assert len(lines) == 1, output
    reason = "No such file" if problem == "missing" else "not a valid .tflite file"
    assert reason in lines[0] and lines[0].startswith("ERROR")


@pytest.mark.parametrize("entry", ["digits.example.com:8000", "digits*.example.com", "https://digits.example.com"])
def test_an_allowed_host_that_can_never_match_stops_start_up_with_one_clear_line(entry: str) -> None:
    """A port, a misplaced wildcard or a URL in ``--allowed-hosts`` would refuse every request with 400."""
    result = serve("--allowed-hosts", f"localhost,{entry}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert output.strip() == f"livedigit: allowed host {entry!r} is not a host name without a port, '*.domain' or '*'"


@pytest.mark.parametrize("in_turns", [False, True], ids=["reading-freely", "reading-in-turns"])
async def test_shutdown_answers_pending_submits_then_closes_with_1001(  # type: ignore[no-untyped-def]
    app_server, in_turns
) -> None:
    """Also while connections take turns to read (``pace_reads_above`` so low that the server is always
    busy): a reader waiting for its turn stops waiting, and what was read is still answered."""
    live = app_server(pace_reads_above=1e-6 if in_turns else 0.95)
    model = live.runtime
    busy, _ = await open_ws(live.ws_url)
    idle, _ = await open_ws(live.ws_url)
    while in_turns and sample(live.service, "livedigit_read_rate") == 0:
        await asyncio.sleep(0.05)
    model.pause()
    await busy.send(json.dumps({"type": "submit", "id": 1, "strokes": ONE}))
    assert await asyncio.to_thread(model.blocked.wait, 10)
    await busy.send(json.dumps({"type": "submit", "id": 2, "strokes": SEVEN}))
    await busy.send(json.dumps({"type": "snapshot", "id": 3, "strokes": SEVEN}))
    while sample(live.service, "livedigit_messages_total", {"type": "snapshot"}) < 1:
        await asyncio.sleep(0.01)
    live.server.should_exit = True
    while not live.service.draining:
        await asyncio.sleep(0.01)
    model.resume()
    answers = await replies(busy, 3)
    assert [(a["id"], a["type"]) for a in answers] == [(1, "prediction"), (2, "prediction"), (3, "prediction")]
    assert await closed(busy) == (1001, "server restarting")
    assert await closed(idle) == (1001, "server restarting")
    await asyncio.to_thread(live.thread.join, 30)
    assert not live.thread.is_alive()


async def test_sigterm_closes_every_websocket_with_1001_and_exits(start_server) -> None:  # type: ignore[no-untyped-def]
    process = start_server()
    sockets = [(await open_ws(process.ws_url))[0] for _ in range(3)]
    await sockets[0].send(json.dumps({"type": "submit", "id": 1, "strokes": ONE}))
    assert (await replies(sockets[0], 1))[0]["type"] == "prediction"
    process.process.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(closed(ws) for ws in sockets))
    assert codes == [(1001, "server restarting")] * 3
    returncode = await asyncio.to_thread(process.process.wait, 30)
    assert returncode in (0, -signal.SIGTERM)
    log = process.log()
    assert "closed 3 WebSocket connection(s)" in log and "Traceback" not in log


def test_the_app_factory_runs_under_plain_uvicorn(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "livedigit.app:create_app", "--port", str(port)]
    command += ["--ws", "websockets-sansio"]
    environment = {**os.environ, "LIVEDIGIT_DATA_DIR": str(tmp_path / "data")}  # labels: not in the checkout
    process = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, env=environment)
    try:
        deadline = time.monotonic() + 60
        while not (_listening(port) and http_json(f"http://127.0.0.1:{port}/readyz")[0] == 200):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        status, _, reply = http_json(f"http://127.0.0.1:{port}/api/predict", {"strokes": ONE})
        assert status == 200 and reply["type"] == "prediction"
    finally:
        process.terminate()
        process.wait(30)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_start_up_ends_with_the_address_to_open(start_server) -> None:  # type: ignore[no-untyped-def]
    """The README tells a user to open the address printed at start: it comes right after uvicorn's own
    start-up lines, and no start-up line follows it (what the server logs while serving may)."""
    server = start_server()
    lines = server.log().splitlines()
    running = next(i for i, line in enumerate(lines) if "Uvicorn running on" in line)
    assert lines[running + 1].endswith(f"open http://127.0.0.1:{server.port}/ in a browser"), lines
    later = lines[running + 2 :]
    assert not any("startup" in line or "Uvicorn running" in line or "loaded with" in line for line in later), lines


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
def test_the_server_threads_carry_their_names_for_top(server) -> None:  # type: ignore[no-untyped-def]
    """``top -H`` shows the event loop as ``livedigit``, and nothing else of the batcher in the server's
    process: preprocessing and the model run in a worker process, ``livedigit-work`` (tests/test_workers.py)."""
    status, _, answer = http_json(server.http_url + "/api/predict", {"strokes": SEVEN})
    assert status == 200 and answer["type"] == "prediction"
    names = [(task / "comm").read_text().strip() for task in Path(f"/proc/{server.pid}/task").iterdir()]
    assert (Path(f"/proc/{server.pid}/comm").read_text().strip(), names.count("livedigit-work")) == ("livedigit", 0)
