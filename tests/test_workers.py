"""The worker process (preprocessing and the model): named, replaced when it dies without losing a reply,
gone with the server.

Each test runs a real ``livedigit serve`` and finds its worker the way an operator would, in ``/proc``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from wsutil import ONE, SEVEN, closed, http_json, open_ws, replies

from livedigit.workers import _frame, _Worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)"),
]

HEAVY = [[[x, (x * 37) % 500] for x in range(0, 1000, 1)]]
"""One drawing of 1,000 points: a few milliseconds of preprocessing, so a batch of them keeps a worker busy."""

BIG_MESSAGES = ("--max-message-bytes", str(1 << 20))
"""Room for a batch of 64 such drawings in one message."""


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` and their OS names."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = name
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_of(pid: int, timeout: float = 30.0) -> int:
    """The one worker of the server ``pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [child for child, name in children(pid).items() if name == "livedigit-work"]
        if workers:
            assert len(workers) == 1, children(pid)
            return workers[0]
        time.sleep(0.05)
    raise AssertionError(f"no livedigit-work child of {pid}: {children(pid)}")


def cpu_ticks(pid: int) -> int:
    """User and system CPU time of ``pid`` so far, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def busy(pid: int, ticks: int = 3, timeout: float = 30.0) -> None:
    """Wait until ``pid`` has spent ``ticks`` more of CPU: it is working on what it was sent."""
    start, deadline = cpu_ticks(pid), time.monotonic() + timeout
    while cpu_ticks(pid) < start + ticks:
        assert time.monotonic() < deadline, "the worker never started on the batch"
        await asyncio.sleep(0.005)


def restarts(http_url: str) -> float:
    _, _, text = http_json(f"{http_url}/metrics")
    for line in text.splitlines():
        if line.startswith("livedigit_worker_restarts_total "):
            return float(line.split()[1])
    raise AssertionError("livedigit_worker_restarts_total not exported")


async def test_the_worker_is_a_named_child_of_the_server(start_server) -> None:  # type: ignore[no-untyped-def]
    """It scores every image, and batches far larger than a socket's buffer either way (64 drawings of
    1,000 points out, 64 predictions with their previews back) go through it whole, by the same worker."""
    server = start_server(*BIG_MESSAGES, "--max-pending-submits", "1024")
    worker = worker_of(server.pid)
    assert Path(f"/proc/{worker}/comm").read_text().strip() == "livedigit-work"
    ws, _ = await open_ws(server.ws_url)
    await ws.send(json.dumps({"type": "submit", "id": 1, "strokes": SEVEN}))
    assert (await replies(ws, 1))[0]["digit"] == 7
    for message_id in range(2, 7):
        await ws.send(json.dumps({"type": "batch", "id": message_id, "items": [{"strokes": HEAVY} for _ in range(64)]}))
    for answer in await replies(ws, 5):
        assert [result["type"] for result in answer["results"]] == ["prediction"] * 64, answer["results"][:8]
    assert worker_of(server.pid) == worker and restarts(server.http_url) == 0


async def test_a_worker_killed_while_busy_costs_only_its_images_and_is_replaced(start_server) -> None:  # type: ignore[no-untyped-def]
    """Every message still gets exactly one reply, in order: a prediction, or ``internal`` for the images
    the dead worker held; the server then predicts with a new worker.

    A kill can land in the moment between two batches, when the worker holds nothing and nothing is lost;
    the test then kills the next worker the same way, until one dies holding images."""
    server = start_server(*BIG_MESSAGES)
    ws, _ = await open_ws(server.ws_url)
    heavy = [{"strokes": HEAVY} for _ in range(64)]
    for kills in range(1, 6):
        worker = worker_of(server.pid)
        first = 10 * kills
        for message_id in range(first, first + 3):
            await ws.send(json.dumps({"type": "batch", "id": message_id, "items": heavy}))
        await busy(worker)
        os.kill(worker, signal.SIGKILL)
        await ws.send(json.dumps({"type": "submit", "id": first + 3, "strokes": ONE}))
        answers = await replies(ws, 4)
        assert [answer["id"] for answer in answers] == list(range(first, first + 4))
        results = [(r["type"], r.get("code")) for answer in answers[:3] for r in answer["results"]]
        assert len(results) == 192
        assert set(results) <= {("prediction", None), ("error", "internal")}, set(results)
        assert answers[3]["type"] == "prediction" and answers[3]["digit"] == 1
        replacement = worker_of(server.pid)
        assert replacement != worker and not alive(worker)
        assert restarts(server.http_url) == kills
        if ("error", "internal") in results:
            break
    else:
        raise AssertionError("five workers were killed while busy, and none held an image")
    assert ("prediction", None) in results
    await ws.send(json.dumps({"type": "submit", "id": 1, "strokes": SEVEN}))
    assert (await replies(ws, 1))[0]["digit"] == 7


async def test_sigterm_with_work_in_flight_answers_it_and_leaves_no_process(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(*BIG_MESSAGES)
    worker = worker_of(server.pid)
    ws, _ = await open_ws(server.ws_url)
    await ws.send(json.dumps({"type": "batch", "id": 1, "items": [{"strokes": HEAVY} for _ in range(64)]}))
    await ws.send(json.dumps({"type": "submit", "id": 2, "strokes": ONE}))
    await busy(worker)
    server.process.send_signal(signal.SIGTERM)
    answers = await replies(ws, 2)
    assert [answer["id"] for answer in answers] == [1, 2]
    kinds = {(r["type"], r.get("code")) for r in [*answers[0]["results"], answers[1]]}
    assert kinds <= {("prediction", None), ("error", "overloaded")}, kinds
    assert await closed(ws) == (1001, "server restarting")
    assert await asyncio.to_thread(server.process.wait, 30) in (0, -signal.SIGTERM)
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not alive(worker)
    assert "Traceback" not in server.log()


def test_a_server_killed_outright_takes_its_worker_with_it(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    worker = worker_of(server.pid)
    server.process.kill()
    server.process.wait(30)
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker)


async def test_with_no_workers_a_named_thread_of_the_server_scores(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--model-workers", "0")
    ws, _ = await open_ws(server.ws_url)
    await ws.send(json.dumps({"type": "submit", "id": 1, "strokes": SEVEN}))
    assert (await replies(ws, 1))[0]["digit"] == 7
    assert not children(server.pid)
    threads = {Path(task, "comm").read_text().strip() for task in Path(f"/proc/{server.pid}/task").iterdir()}
    assert "livedigit-work" in threads


async def test_results_arriving_in_pieces_are_read_whole_and_in_order() -> None:
    """The server reads a worker's results as its socket delivers them: a frame cut anywhere, or two in
    one read, still gives each batch its own results, in the order the batches were sent."""
    worker = _Worker(on_death=lambda _: None)
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    worker.waiting.extend([first, second])
    stream = _frame(["first"]) + _frame(["second", "batch"])
    for start in range(0, len(stream), 3):
        worker.data_received(stream[start : start + 3])
    assert first.result() == ["first"] and second.result() == ["second", "batch"]
    assert not worker.waiting and not worker._received
