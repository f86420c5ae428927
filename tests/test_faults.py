"""Faults: clients vanishing mid-flight, a model that fails, and SIGTERM with clients connected.

What must hold through each: no exception escapes into the log, nothing leaks (connections, per-address
counts, queued and in-flight images, event-loop tasks all return to their idle values, and the process
does not keep growing), and the clients that behave get their answers.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import signal
import time
from typing import Any

import numpy as np
import pytest
from conftest import AppServer, PausableRuntime, free_port
from hardutil import Bystander, LogWatch, log_problems, rss_mb, scrape, settle, zlib_bomb
from websockets.asyncio.client import connect
from wsutil import ONE, SEVEN, ask, binary_frame, closed, drawing, http_json, open_ws, pixels_field, replies, sample

from livedigit.config import Settings

pytestmark = pytest.mark.slow

STORM_CLIENTS = 300
STORM_ROUNDS = 5
LEAK_MARGIN_MB = 40.0
"""RSS may grow this much from the first storm to the last: a leak of what 1,200 departed connections
held (sessions, sockets, queued drawings) would exceed it, allocator noise does not."""


def storm_frames() -> list[str | bytes]:
    raster = drawing(140)
    return [
        *(json.dumps({"type": "snapshot", "id": index, "pixels": pixels_field(raster)}) for index in range(3)),
        binary_frame(1, 3, raster),
        json.dumps({"type": "submit", "id": 4, "strokes": SEVEN}),
        json.dumps({"type": "submit", "id": 5, "strokes": ONE}),
    ]


async def vanish(url: str, index: int, frames: list[str | bytes]) -> None:
    """Connect, send snapshots and submits, then leave without waiting for the answers, five ways."""
    ws = await connect(url, open_timeout=60, max_size=None)
    await ws.recv()
    for frame in frames:
        await ws.send(frame)
    way = index % 5
    if way == 0:
        ws.transport.abort()  # reset: no close frame, no FIN
    elif way == 1:
        ws.transport.close()  # FIN without a close frame
    elif way == 2:
        await ws.close()  # a clean close, the replies unread
    elif way == 3:
        await ws.recv()
        ws.transport.abort()  # gone after the first reply
    else:
        ws.transport.write(b"\x82\xfe\x40\x00\x00\x00\x00\x00" + b"x" * 100)  # a frame cut short
        ws.transport.abort()


async def test_a_disconnect_storm_leaks_nothing_and_spares_the_other_clients(start_server) -> None:  # type: ignore[no-untyped-def]
    """300 clients drop mid-batch, five times over: every gauge returns to idle, RSS stays flat, and a
    bystander gets the same answer throughout."""
    server = start_server("--max-connections-per-client", "1000", "--submit-rate", "0", "--max-pending-submits", "1024")
    bystander = await Bystander.open(server.ws_url)
    idle = {
        "livedigit_connections": 1.0,
        "livedigit_client_addresses": 1.0,
        "livedigit_queued_snapshots": 0.0,
        "livedigit_queued_submits": 0.0,
        "livedigit_in_flight": 0.0,
    }
    baseline = await settle(server.http_url, idle)
    # At most as many tasks as then: one still finishing then (the label store's start, which waits for its
    # database's first answer) may have ended since.
    tasks = {"livedigit_event_loop_tasks": baseline["livedigit_event_loop_tasks"]}
    frames = storm_frames()
    resident = []
    checks = 0
    for _ in range(STORM_ROUNDS):
        storm = asyncio.gather(*(vanish(server.ws_url, index, frames) for index in range(STORM_CLIENTS)))
        while not storm.done():
            await bystander.check()
            checks += 1
        await storm
        after = await settle(server.http_url, idle, at_most=tasks)
        resident.append(rss_mb(after))
    await bystander.check()
    await bystander.close()
    samples = await asyncio.to_thread(scrape, server.http_url)
    assert samples['livedigit_messages_total{type="snapshot"}'] >= STORM_ROUNDS * STORM_CLIENTS
    assert checks >= STORM_ROUNDS
    assert resident[-1] - resident[0] < LEAK_MARGIN_MB, resident
    assert not log_problems(server.log()), "\n".join(log_problems(server.log())[:20])


async def test_clients_leaving_while_their_images_are_in_the_model_cost_nothing(app_server) -> None:  # type: ignore[no-untyped-def]
    """Forty clients leave while their 80 drawings are queued or sent to the busy worker: of them only the
    batch already sent behind the busy one (at most ``max_batch``) is computed, every job and task is
    released, the one remaining client is answered."""
    live = app_server(max_batch=8, max_connections_per_client=1000)
    with LogWatch() as log:
        await _leave_mid_flight(live)
    assert not log.problems(), log.problems()


async def _leave_mid_flight(live: AppServer) -> None:
    model, service = live.runtime, live.service
    bystander = await Bystander.open(live.ws_url)
    tasks_idle = sample(service, "livedigit_event_loop_tasks")
    leavers = [(await open_ws(live.ws_url))[0] for _ in range(40)]
    model.pause()
    await bystander.ws.send(json.dumps({"type": "submit", "id": "held", "strokes": SEVEN}))
    assert await asyncio.to_thread(model.blocked.wait, 10)
    calls_before = len(model.batch_sizes)
    for index, ws in enumerate(leavers):
        await ws.send(json.dumps({"type": "snapshot", "id": index, "strokes": ONE}))
        await ws.send(json.dumps({"type": "submit", "id": index, "pixels": pixels_field(drawing(56))}))
    while sample(service, "livedigit_messages_total", {"type": "submit"}) < 40 + 2:
        await asyncio.sleep(0.01)
    assert service.batcher.in_flight + sum(service.batcher.queued) > 40
    for ws in leavers:
        ws.transport.abort()
    while len(service.sessions) > 1:
        await asyncio.sleep(0.01)
    model.resume()
    held = json.loads(await asyncio.wait_for(bystander.ws.recv(), 20))
    assert held["id"] == "held" and held["type"] == "prediction"
    for _ in range(1000):
        if service.batcher.in_flight == 0 and service.batcher.queued == (0, 0):
            break
        await asyncio.sleep(0.01)
    assert service.batcher.in_flight == 0 and service.batcher.queued == (0, 0)
    held_batch, *sent_before = model.batch_sizes[calls_before:]
    assert held_batch == 1 and len(sent_before) <= 1 and sum(sent_before) <= 8, model.batch_sizes[calls_before:]
    await bystander.check()
    assert sample(service, "livedigit_connections") == 1 and sample(service, "livedigit_client_addresses") == 1
    # At most the idle server's tasks: one still finishing then (the label store's start, which waits for
    # its database's first answer) may have ended since.
    for _ in range(500):
        if sample(service, "livedigit_event_loop_tasks") <= tasks_idle:
            break
        await asyncio.sleep(0.01)
    assert sample(service, "livedigit_event_loop_tasks") <= tasks_idle
    await bystander.close()


class FaultyRuntime(PausableRuntime):
    """The real model, and a plan of faults for its next calls: ``raise``, ``nan`` (a NaN in the output),
    ``shape`` (too few classes) or ``None`` (works). The plan repeats when ``cycle`` is set."""

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.plan: Any = iter(())

    def plan_faults(self, faults: list[str | None], cycle: bool = False) -> None:
        self.plan = itertools.cycle(faults) if cycle else iter(faults)

    def predict(self, batch: Any, paths: Any = None) -> Any:
        if not self._gate.is_set():
            self.blocked.set()
            self._gate.wait(timeout=60)
        fault = next(self.plan, None)
        self.batch_sizes.append(len(batch))
        if fault == "raise":
            raise RuntimeError("injected model failure")
        probabilities = np.array(self.runtime.predict(batch, paths), copy=True)
        if fault == "nan":
            probabilities[0, 0] = np.nan
        elif fault == "shape":
            probabilities = probabilities[:, :5]
        return probabilities


@pytest.fixture
def faulty_server(model_runtime, tmp_path):  # type: ignore[no-untyped-def]
    """Factory like ``app_server``, with the model wrapped in a :class:`FaultyRuntime`."""
    servers: list[AppServer] = []

    def start(**overrides: Any) -> AppServer:
        defaults = {"port": free_port(), "log_level": "warning", "data_dir": str(tmp_path / "data")}
        settings = Settings(**{**defaults, **overrides})
        server = AppServer(settings, FaultyRuntime(model_runtime))  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("fault", ["raise", "nan", "shape"])
async def test_a_failed_batch_answers_internal_only_to_its_own_messages(faulty_server, fault) -> None:  # type: ignore[no-untyped-def]
    """The batch the model fails on is answered ``internal``; the next batch, queued behind it, is
    answered normally, and readiness comes back with it."""
    live = faulty_server()
    with LogWatch() as log:
        await _fail_one_batch(live, fault)
    assert not log.problems(expected=("the model failed on a batch of 1",)), log.problems()
    assert len(log.records) == 1


async def _fail_one_batch(live: AppServer, fault: str) -> None:
    model, service = live.runtime, live.service
    victim, _ = await open_ws(live.ws_url)
    others = [(await open_ws(live.ws_url))[0] for _ in range(5)]
    model.pause()
    await victim.send(json.dumps({"type": "submit", "id": "v", "strokes": SEVEN}))
    assert await asyncio.to_thread(model.blocked.wait, 10)
    for index, ws in enumerate(others):
        await ws.send(json.dumps({"type": "submit", "id": index, "strokes": ONE}))
    while service.batcher.in_flight + service.batcher.queued[1] < 6:
        await asyncio.sleep(0.01)
    model.plan_faults([fault])
    model.resume()
    failed = json.loads(await asyncio.wait_for(victim.recv(), 20))
    answers = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for ws in others]
    assert failed["type"] == "error" and failed["code"] == "internal" and failed["id"] == "v", failed
    assert [(a["type"], a["id"]) for a in answers] == [("prediction", index) for index in range(5)]
    assert service.ready and http_json(live.http_url + "/readyz")[0] == 200
    assert sample(service, "livedigit_batch_failures_total") == 1
    again = json.loads(await asyncio.wait_for(_ask(victim, {"type": "submit", "id": "again", "strokes": SEVEN}), 20))
    assert again["type"] == "prediction"
    for ws in (victim, *others):
        await ws.close()


async def _ask(ws: Any, message: dict[str, Any]) -> str:
    await ws.send(json.dumps(message))
    return await ws.recv()  # type: ignore[no-any-return]


async def test_a_model_failing_every_other_batch_never_stops_the_batcher(faulty_server) -> None:  # type: ignore[no-untyped-def]
    """Eight clients stream snapshots and submits while every other model call raises: each frame still
    gets exactly one reply, in order, each a prediction, a drop or ``internal``; readiness follows the
    last call; once the model recovers everything is answered normally."""
    live = faulty_server(snapshot_burst=1000, submit_burst=1000, max_batch=4)
    with LogWatch() as log:
        await _stream_through_failures(live)
    assert not log.problems(expected=("the model failed on a batch of",)), log.problems()


async def _stream_through_failures(live: AppServer) -> None:
    model, service = live.runtime, live.service
    model.plan_faults(["raise", None], cycle=True)

    async def stream(client: int) -> list[dict[str, Any]]:
        ws, _ = await open_ws(live.ws_url)
        async with ws:
            for index in range(30):
                kind = "submit" if index % 5 == 4 else "snapshot"
                stroke = [[[10 + client, 10], [50, 60 + index], [20, 100]]]
                await ws.send(json.dumps({"type": kind, "id": index, "strokes": stroke}))
            return await replies(ws, 30)

    results = await asyncio.gather(*(stream(client) for client in range(8)))
    for answers in results:
        assert [a["id"] for a in answers] == list(range(30))
        for answer in answers:
            kind = answer["type"] if answer["type"] != "error" else answer["code"]
            assert kind in {"prediction", "dropped", "internal"}, answer
    outcomes = [a["type"] for answers in results for a in answers]
    assert "error" in outcomes and "prediction" in outcomes
    assert sample(service, "livedigit_batch_failures_total") >= 1
    model.plan_faults([])
    bystander = await Bystander.open(live.ws_url)
    await bystander.check()
    await bystander.close()
    assert http_json(live.http_url + "/readyz")[0] == 200


async def test_readiness_comes_back_without_traffic_once_the_model_recovers(faulty_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A model that keeps failing leaves the server unready; once it answers again, the batcher's own
    test batches make it ready again, with no client having to send anything."""
    monkeypatch.setattr("livedigit.batcher.PROBE_INTERVAL", 0.2)
    live = faulty_server()
    live.runtime.plan_faults(["raise", "raise", "raise"])
    with LogWatch():
        ws, _ = await open_ws(live.ws_url)
        failed = json.loads(await asyncio.wait_for(_ask(ws, {"type": "submit", "id": 1, "strokes": SEVEN}), 20))
        assert failed["type"] == "error" and failed["code"] == "internal"
        assert http_json(live.http_url + "/readyz")[0] == 503
        deadline = time.monotonic() + 20
        while http_json(live.http_url + "/readyz")[0] != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert http_json(live.http_url + "/readyz")[0] == 200
        assert live.runtime.batch_sizes[-1] == 1 and len(live.runtime.batch_sizes) >= 4
        await ws.close()


async def test_sigterm_answers_what_was_sent_closes_every_socket_with_1001_and_exits_0(start_server) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM while 20 heavy submits, one sent just before the signal and an HTTP prediction are in
    flight, with 30 more clients connected: every submit is answered, every socket gets 1001 "server
    restarting", nothing new is accepted, and the process exits 0 well within Heroku's 30 s."""
    server = start_server("--submit-burst", "100", "--submit-rate", "100")
    idle = [(await open_ws(server.ws_url))[0] for _ in range(30)]
    busy, _ = await open_ws(server.ws_url)
    heavy = base64.b64encode(zlib_bomb(1024)).decode()  # 1024 x 1024 pixels to decode: slow to preprocess
    for index in range(20):
        await busy.send(json.dumps({"type": "submit", "id": index, "png": heavy}))
    rest = asyncio.create_task(asyncio.to_thread(http_json, server.http_url + "/api/predict", {"strokes": ONE}))
    while (await asyncio.to_thread(scrape, server.http_url)).get('livedigit_messages_total{type="http"}', 0) < 1:
        await asyncio.sleep(0.05)
    await busy.send(json.dumps({"type": "submit", "id": "last", "strokes": SEVEN}))
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    answers = await replies(busy, 21)
    assert [(a["id"], a["type"]) for a in answers] == [(index, "prediction") for index in range(20)] + [
        ("last", "prediction")
    ]
    status, _, body = await rest
    assert status == 200 and body["type"] == "prediction"
    codes = await asyncio.gather(closed(busy), *(closed(ws) for ws in idle))
    assert codes == [(1001, "server restarting")] * 31
    with pytest.raises(OSError):
        await open_ws(server.ws_url)
    returncode = await asyncio.to_thread(server.process.wait, 30)
    assert returncode == 0
    assert time.monotonic() - signalled < 30
    log = server.log()
    assert "closed 31 WebSocket connection(s)" in log
    assert not log_problems(log), "\n".join(log_problems(log))


async def test_shutdown_closes_a_connection_whose_reading_is_paced(app_server) -> None:  # type: ignore[no-untyped-def]
    """A connection held back by ``--message-rate`` (its reader waiting for the next token) is closed
    with 1001 at shutdown like any other, not left for uvicorn to drop after the grace period."""
    live = app_server(message_rate=0.5)
    ws, _ = await open_ws(live.ws_url)
    assert (await ask(ws, {"type": "ping", "id": 1})) == {"type": "pong", "id": 1}
    live.server.should_exit = True
    assert await closed(ws) == (1001, "server restarting")
    await asyncio.to_thread(live.thread.join, 30)
    assert not live.thread.is_alive()
