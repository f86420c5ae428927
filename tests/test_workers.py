"""The worker processes (preprocessing and the model): named, each batch whole in one of them, replaced
when one dies without losing a reply, gone with the server.

Each test runs a real ``livedigit serve`` and finds its worker the way an operator would, in ``/proc``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from pathlib import Path

import pytest
from hardutil import expensive_png, scrape
from wsutil import ONE, SEVEN, closed, open_ws, replies

from livedigit.config import Settings
from livedigit.workers import _frame, _Worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)"),
]

HEAVY = [[[x, (x * 37) % 500] for x in range(0, 1000, 1)]]
"""One drawing of 1,000 points: half a millisecond of preprocessing with the compiled ink (2 ms in numpy), so a
batch of 64 keeps a worker busy for about 30 ms."""

ROUND = 6
"""Batches of 64 such drawings sent at once where a test kills a busy worker: about 200 ms of work, so the
kill lands while it holds some."""

DEFAULT_WORKERS = Settings().model_workers

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


def workers_of(pid: int, count: int = 1, timeout: float = 30.0) -> list[int]:
    """The ``count`` workers of the server ``pid`` (waiting for them to start), by process id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = sorted(child for child, name in children(pid).items() if name == "livedigit-work")
        if len(workers) >= count:
            assert len(workers) == count, children(pid)
            return workers
        time.sleep(0.05)
    raise AssertionError(f"not {count} livedigit-work children of {pid}: {children(pid)}")


def cpu_ticks(*pids: int) -> int:
    """User and system CPU time of ``pids`` so far, in clock ticks."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def cpu_ns(pid: int) -> int:
    """CPU time of ``pid`` so far, in nanoseconds, as the scheduler counts it: for work of a few clock
    ticks, which :func:`cpu_ticks` rounds to whole ticks (a worker's 9 ms reads as none)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def busy(*pids: int, ticks: int = 3, since: int | None = None, timeout: float = 30.0) -> None:
    """Wait until ``pids`` have spent ``ticks`` more of CPU than ``since`` (their :func:`cpu_ticks` before
    the work was sent; else now): they are working on what they were sent."""
    start, deadline = cpu_ticks(*pids) if since is None else since, time.monotonic() + timeout
    while cpu_ticks(*pids) < start + ticks:
        assert time.monotonic() < deadline, "the workers never started on the batch"
        await asyncio.sleep(0.005)


def batch_sizes(http_url: str) -> tuple[float, float]:
    """How many batches the model has scored, and how many images they held."""
    samples = scrape(http_url)
    return samples["livedigit_batch_size_count"], samples["livedigit_batch_size_sum"]


def restarts(http_url: str) -> float:
    return scrape(http_url)["livedigit_worker_restarts_total"]


async def test_the_workers_are_named_children_of_the_server(start_server) -> None:  # type: ignore[no-untyped-def]
    """They score every image, and batches far larger than a socket's buffer either way (64 drawings of
    1,000 points out, 64 predictions with their previews back) go through them whole, by the same workers."""
    server = start_server(*BIG_MESSAGES, "--max-pending-submits", "1024")
    workers = workers_of(server.pid, DEFAULT_WORKERS)
    for worker in workers:
        assert Path(f"/proc/{worker}/comm").read_text().strip() == "livedigit-work"
    ws, _ = await open_ws(server.ws_url)
    await ws.send(json.dumps({"type": "submit", "id": 1, "strokes": SEVEN}))
    assert (await replies(ws, 1))[0]["digit"] == 7
    for message_id in range(2, 7):
        await ws.send(json.dumps({"type": "batch", "id": message_id, "items": [{"strokes": HEAVY} for _ in range(64)]}))
    for answer in await replies(ws, 5):
        assert [result["type"] for result in answer["results"]] == ["prediction"] * 64, answer["results"][:8]
    assert workers_of(server.pid, DEFAULT_WORKERS) == workers and restarts(server.http_url) == 0


async def test_two_workers_take_a_batch_each_and_never_split_one(start_server) -> None:  # type: ignore[no-untyped-def]
    """A batch goes whole to one worker (split, a light load's batches would each cost two round trips):
    four drawings of 1,000 points, one batch's worth of work, are scored as one batch of four. Many
    batches at once go to both workers, so both cores work."""
    server = start_server(*BIG_MESSAGES, "--model-workers", "2")
    workers = workers_of(server.pid, 2)
    ws, _ = await open_ws(server.ws_url)
    batches, images = batch_sizes(server.http_url)
    await ws.send(json.dumps({"type": "batch", "id": 1, "items": [{"strokes": HEAVY} for _ in range(4)]}))
    assert {r["type"] for r in (await replies(ws, 1))[0]["results"]} == {"prediction"}
    assert batch_sizes(server.http_url) == (batches + 1, images + 4)
    before = [cpu_ns(worker) for worker in workers]
    for message_id in (2, 3):
        await ws.send(json.dumps({"type": "batch", "id": message_id, "items": [{"strokes": HEAVY} for _ in range(64)]}))
    assert [answer["id"] for answer in await replies(ws, 2)] == [2, 3]
    spent = [cpu_ns(worker) - start for worker, start in zip(workers, before, strict=True)]
    # Both worked, each on a share of the work; one that took both batches leaves the other none.
    assert sum(spent) >= 20_000_000 and min(spent) >= sum(spent) / 4, spent


@pytest.mark.parametrize("count", [1, 2])
async def test_expensive_images_go_to_the_workers_one_at_a_time(start_server, count: int) -> None:  # type: ignore[no-untyped-def]
    """While a 1024x1024 PNG is at a worker, the next ones stay in the batcher's fair queue, where a
    submit from another address goes before them; sent on behind the first, it would have waited for two,
    and with two workers both cores would be on them. ``livedigit_in_flight`` (images at the workers)
    never counts two of them."""
    server = start_server("--model-workers", str(count))
    png = base64.b64encode(expensive_png()).decode()
    attacker, _ = await open_ws(server.ws_url)
    for message_id in range(6):
        await attacker.send(json.dumps({"type": "submit", "id": message_id, "png": png}))
    answered = asyncio.ensure_future(replies(attacker, 6))
    seen = set()
    while not answered.done():
        seen.add(scrape(server.http_url)["livedigit_in_flight"])
        await asyncio.sleep(0.002)
    assert [answer["type"] for answer in answered.result()] == ["prediction"] * 6
    assert 1 in seen and max(seen) == 1, seen


async def test_the_worker_beside_an_expensive_image_answers_a_drawing_meanwhile(start_server) -> None:  # type: ignore[no-untyped-def]
    """With two workers, a drawing submitted while 2048x2048 PNGs wait, one of them at a worker, goes to
    the other worker: it is answered before that PNG (about a tenth of a second of work). Had the other
    worker been given the next PNG, the drawing would have waited for one of them."""
    server = start_server("--model-workers", "2", "--max-side", "2048")
    workers_of(server.pid, 2)
    png = base64.b64encode(expensive_png(2048)).decode()
    attacker, _ = await open_ws(server.ws_url)
    bystander, _ = await open_ws(server.ws_url)
    for message_id in range(6):
        await attacker.send(json.dumps({"type": "submit", "id": message_id, "png": png}))
    attacked: list[dict[str, object]] = []

    async def read_attacker() -> None:
        for _ in range(6):
            attacked.extend(await replies(attacker, 1))

    reading = asyncio.ensure_future(read_attacker())
    deadline = time.monotonic() + 30
    while (samples := scrape(server.http_url))["livedigit_in_flight"] + samples["livedigit_queued_submits"] < 6:
        assert time.monotonic() < deadline, samples  # every PNG read, one at least taken
        await asyncio.sleep(0.002)
    await bystander.send(json.dumps({"type": "submit", "id": "seven", "strokes": SEVEN}))
    answer = (await replies(bystander, 1))[0]
    assert answer["digit"] == 7 and attacked == []
    await reading
    assert [reply["type"] for reply in attacked] == ["prediction"] * 6


@pytest.mark.parametrize("count", [1, 2])
async def test_a_worker_killed_while_busy_costs_only_its_images_and_is_replaced(start_server, count: int) -> None:  # type: ignore[no-untyped-def]
    """Every message still gets exactly one reply, in order: a prediction, or ``internal`` for the images
    the dead worker held; the server then predicts with a new worker (beside the other one, with two).

    A kill can land in the moment between two batches, when the worker holds nothing and nothing is lost;
    the test then kills the next worker the same way, until one dies holding images."""
    server = start_server(*BIG_MESSAGES, "--model-workers", str(count), "--max-pending-submits", "1024")
    ws, _ = await open_ws(server.ws_url)
    heavy = [{"strokes": HEAVY} for _ in range(64)]
    for kills in range(1, 6):
        workers = workers_of(server.pid, count)
        worker = workers[0]
        first = 10 * kills
        # Counted from before the batches go out: a worker may do its share of them while the last ones
        # are still being sent (4 MB), and none would be left to count after that.
        before = cpu_ticks(worker)
        for message_id in range(first, first + ROUND):
            await ws.send(json.dumps({"type": "batch", "id": message_id, "items": heavy}))
        await busy(worker, since=before)
        os.kill(worker, signal.SIGKILL)
        await ws.send(json.dumps({"type": "submit", "id": first + ROUND, "strokes": ONE}))
        answers = await replies(ws, ROUND + 1)
        assert [answer["id"] for answer in answers] == list(range(first, first + ROUND + 1))
        results = [(r["type"], r.get("code")) for answer in answers[:ROUND] for r in answer["results"]]
        assert len(results) == 64 * ROUND
        assert set(results) <= {("prediction", None), ("error", "internal")}, set(results)
        assert answers[ROUND]["type"] == "prediction" and answers[ROUND]["digit"] == 1
        replaced = workers_of(server.pid, count)
        assert worker not in replaced and set(workers) - {worker} <= set(replaced) and not alive(worker)
        assert restarts(server.http_url) == kills
        if ("error", "internal") in results:
            break
    else:
        raise AssertionError("five workers were killed while busy, and none held an image")
    assert ("prediction", None) in results
    await ws.send(json.dumps({"type": "submit", "id": 1, "strokes": SEVEN}))
    assert (await replies(ws, 1))[0]["digit"] == 7


async def test_sigterm_with_work_in_flight_answers_it_and_leaves_no_process(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        *BIG_MESSAGES, "--model-workers", "2", "--max-pending-submits", "1024", "--address-byte-rate", "0"
    )
    workers = workers_of(server.pid, 2)
    ws, _ = await open_ws(server.ws_url)
    # ROUND batches, about 200 ms of work: once every message has been read (a frame still unread at
    # SIGTERM is never answered), most of it is still to do.
    for message_id in range(ROUND):
        await ws.send(json.dumps({"type": "batch", "id": message_id, "items": [{"strokes": HEAVY} for _ in range(64)]}))
    await ws.send(json.dumps({"type": "submit", "id": ROUND, "strokes": ONE}))
    deadline = time.monotonic() + 30
    while scrape(server.http_url).get('livedigit_messages_total{type="submit"}', 0) < 1:
        assert time.monotonic() < deadline, "the server never read the messages"
        await asyncio.sleep(0.002)
    await busy(*workers, ticks=1)
    assert scrape(server.http_url)["livedigit_in_flight"] > 0
    server.process.send_signal(signal.SIGTERM)
    answers = await replies(ws, ROUND + 1)
    assert [answer["id"] for answer in answers] == list(range(ROUND + 1))
    kinds = {(r["type"], r.get("code")) for answer in answers[:ROUND] for r in answer["results"]}
    kinds.add((answers[ROUND]["type"], answers[ROUND].get("code")))
    assert kinds <= {("prediction", None), ("error", "overloaded")}, kinds
    assert await closed(ws) == (1001, "server restarting")
    assert await asyncio.to_thread(server.process.wait, 30) in (0, -signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(alive(worker) for worker in workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(alive(worker) for worker in workers)
    assert "Traceback" not in server.log()


def test_a_server_killed_outright_takes_its_workers_with_it(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    workers = workers_of(server.pid, DEFAULT_WORKERS)
    server.process.kill()
    server.process.wait(30)
    deadline = time.monotonic() + 10
    while any(alive(worker) for worker in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(worker) for worker in workers)


async def test_with_no_workers_a_named_thread_of_the_server_scores(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--model-workers", "0")
    ws, _ = await open_ws(server.ws_url)
    await ws.send(json.dumps({"type": "submit", "id": 1, "strokes": SEVEN}))
    assert (await replies(ws, 1))[0]["digit"] == 7
    assert not children(server.pid)
    threads = {Path(task, "comm").read_text().strip() for task in Path(f"/proc/{server.pid}/task").iterdir()}
    assert "livedigit-work" in threads


def scored(http_url: str) -> tuple[float, float]:
    """Batches scored so far: all of them, and those the event loop scored itself."""
    samples = scrape(http_url)
    return samples["livedigit_batch_size_count"], samples["livedigit_scored_inline_total"]


async def submit_sevens(ws, first: int, count: int) -> None:  # type: ignore[no-untyped-def]
    for message_id in range(first, first + count):
        await ws.send(json.dumps({"type": "submit", "id": message_id, "strokes": SEVEN}))
    assert [answer["digit"] for answer in await replies(ws, count)] == [7] * count


@pytest.mark.parametrize("inline_below", ["0.8", "0"])
async def test_a_lightly_loaded_server_scores_cheap_batches_on_its_event_loop(start_server, inline_below: str) -> None:  # type: ignore[no-untyped-def]
    """By default an idle server scores a drawing in its own process, where the event loop is awake
    already, and no worker is woken for it; an expensive image still goes to a worker. With
    ``--score-inline-below 0`` the workers score everything."""
    server = start_server("--score-inline-below", inline_below)
    workers_of(server.pid, DEFAULT_WORKERS)
    ws, _ = await open_ws(server.ws_url)
    batches, inline = scored(server.http_url)
    await submit_sevens(ws, 1, 5)
    now, now_inline = scored(server.http_url)
    assert now > batches
    assert now_inline - inline == (now - batches if inline_below != "0" else 0)
    await ws.send(json.dumps({"type": "submit", "id": "png", "png": base64.b64encode(expensive_png()).decode()}))
    assert (await replies(ws, 1))[0]["type"] == "prediction"
    assert scored(server.http_url) == (now + 1, now_inline)


async def test_the_workers_take_over_once_the_event_loop_is_busy_and_hand_back_when_it_is_not(start_server) -> None:  # type: ignore[no-untyped-def]
    """Past ``--score-inline-below`` (here 2% of a core, which a client that sends as fast as it is
    answered passes) the batches go to the workers from the next half second on; once a half second
    has been quiet the event loop scores them again (the first drawing after the load still ends a
    window that held some of it). Every answer is right either way."""
    server = start_server("--score-inline-below", "0.02")
    workers_of(server.pid, DEFAULT_WORKERS)
    ws, _ = await open_ws(server.ws_url)
    message_id, deadline = 0, time.monotonic() + 30
    while True:
        batches, inline = scored(server.http_url)
        await submit_sevens(ws, message_id, 10)
        message_id += 10
        now, now_inline = scored(server.http_url)
        if now_inline == inline and now > batches:  # all ten went to the workers
            break
        assert time.monotonic() < deadline, "the workers never took over"
    for quiet in range(3):
        await asyncio.sleep(0.6)
        await submit_sevens(ws, message_id + quiet, 1)
        if scored(server.http_url)[1] > now_inline:
            break
    assert quiet <= 1 and scored(server.http_url)[1] == now_inline + 1


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
