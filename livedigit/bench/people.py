"""The simulated people: each replays its own schedule of frames over a WebSocket, or over HTTP.

A person is open-loop: it sends every frame when it falls due, whatever the replies do, as a person keeps
drawing; each outcome goes to the :class:`~livedigit.bench.recorder.Recorder` when it arrives.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable

import httpx

from livedigit import pendigits
from livedigit.bench.recorder import Recorder
from livedigit.bench.workload import Strokes, Workload, schedule
from livedigit.client import ConnectionClosed, LiveDigitClient, LiveDigitError, ServerError
from livedigit.wire import Dropped, Empty, Prediction, ReplyType

DRAIN_S = 5.0
"""How long a run waits after its end for replies still in flight, beyond which they count as lost."""

KEPT_TASKS = 256
"""Requests a WebSocket person keeps before it forgets those already answered."""


async def sleep_until(when: float) -> None:
    """Sleep until the monotonic time ``when`` (not at all when it has passed)."""
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def websocket_person(
    url: str,
    workload: Workload,
    digits: list[pendigits.PenDigit],
    quota: int | None,
    first: float,
    end: float,
    recorder: Recorder,
) -> None:
    """The page's design: one WebSocket, snapshots sent without waiting for earlier replies."""
    tasks: list[asyncio.Future[object]] = []
    try:
        client = LiveDigitClient(url, timeout=workload.timeout, open_timeout=workload.timeout)
        await client.connect()
    except LiveDigitError as exc:
        recorder.connection_errors[str(exc)] += 1
        return
    try:
        for when, kind, strokes, label in schedule(workload, digits, quota, first, end):
            await sleep_until(when)
            now = time.monotonic()
            recorder.sent(kind, when, now - when)
            request: asyncio.Future[object] = (
                client.send_snapshot(strokes) if kind == "snapshot" else asyncio.ensure_future(client.submit(strokes))
            )
            request.add_done_callback(_recording(recorder, kind, when, now, label))
            tasks.append(request)
            if len(tasks) > KEPT_TASKS:
                tasks = [task for task in tasks if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=workload.timeout + DRAIN_S)
    except ConnectionClosed as exc:
        recorder.connection_errors[str(exc)] += 1
    finally:
        for task in tasks:
            task.cancel()
        await client.close()


def _recording(
    recorder: Recorder, kind: str, scheduled: float, sent_at: float, label: int
) -> Callable[[asyncio.Future[object]], None]:
    def record(request: asyncio.Future[object]) -> None:
        outcome: object
        if request.cancelled():
            outcome = None
        elif request.exception() is not None:
            outcome = request.exception()
        else:
            outcome = request.result()
        recorder.reply(kind, scheduled, sent_at, outcome, label if kind == "submit" else None)

    return record


@functools.cache
def _tls() -> ssl.SSLContext:
    """One certificate store for every person: httpx would otherwise load it again for each client, 20 ms
    of the event loop apiece, while the first frames fall due."""
    return ssl.create_default_context()


async def http_person(
    http_url: str,
    workload: Workload,
    digits: list[pendigits.PenDigit],
    quota: int | None,
    first: float,
    end: float,
    recorder: Recorder,
) -> None:
    """The old design: a page that POSTs each frame and sends nothing while a request is in flight.

    Each person has its own keep-alive connection (an httpx client that pools one), as a browser tab would.
    """
    in_flight: asyncio.Task[None] | None = None
    http = httpx.AsyncClient(
        base_url=http_url,
        timeout=workload.timeout,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        verify=_tls(),
        trust_env=False,
    )

    async def post(kind: str, strokes: Strokes, scheduled: float, sent_at: float, label: int) -> None:
        outcome: object
        try:
            response = await asyncio.wait_for(http.post("/api/predict", json={"strokes": strokes}), workload.timeout)
            reply = response.json()
            status = response.status_code
            if status == 200 and reply.get("type") == ReplyType.PREDICTION:
                outcome = Prediction.from_wire(reply)
            elif status == 200 and reply.get("type") == ReplyType.EMPTY:
                outcome = Empty.from_wire(reply)
            else:
                outcome = ServerError(str(reply.get("code", f"http_{status}")), str(reply.get("message", "")))
        except (httpx.HTTPError, OSError, ValueError, TimeoutError) as exc:
            outcome = ServerError(type(exc).__name__, str(exc))
        recorder.reply(kind, scheduled, sent_at, outcome, label if kind == "submit" else None)

    try:
        for when, kind, strokes, label in schedule(workload, digits, quota, first, end):
            await sleep_until(when)
            now = time.monotonic()
            if in_flight is not None and not in_flight.done():
                if kind == "snapshot":
                    recorder.sent(kind, when, now - when)
                    recorder.reply(kind, when, now, Dropped(None, "busy"))
                    continue
                await in_flight
                now = time.monotonic()
            recorder.sent(kind, when, now - when)
            in_flight = asyncio.ensure_future(post(kind, strokes, when, now, label))
        if in_flight is not None:
            await asyncio.wait({in_flight}, timeout=workload.timeout + DRAIN_S)
    finally:
        if in_flight is not None:
            in_flight.cancel()
            await asyncio.gather(in_flight, return_exceptions=True)
        await http.aclose()
