"""The ``/ws`` endpoint: admission, then one connection's read and write loops.

A connection is two tasks. The **reader** takes frames as fast as they come, parses them and hands
snapshots and submits to the batcher without waiting for the model, so a newer snapshot can replace a
queued one (latest wins). For every frame it appends one pending reply to a bounded queue. The
**writer** sends those replies strictly in the order the frames arrived, each as soon as it is known:
replies never go back in time, and a client can match them to its frames one by one. A ``label``'s reply
is known once its row is committed, so a slow database holds back the later replies of the connection
that sent it (at most ``--label-timeout``), never those of another connection.

When a client has more than :data:`MAX_OUTSTANDING` replies not yet sent, the reader stops reading, so a
client that floods (or stops reading its replies) is slowed by TCP instead of growing server memory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from livedigit import pipeline, protocol
from livedigit.pipeline import Caller, Recent, Ticket
from livedigit.ratelimit import TokenBucket
from livedigit.security import origin_allowed
from livedigit.service import Service
from livedigit.wire import INVALID_INPUT, CloseCode, ReplyType

logger = logging.getLogger("livedigit.session")

MAX_OUTSTANDING = 256
"""Replies a connection may have pending before the server stops reading from it."""

RESETTING_REPLIES = frozenset({ReplyType.PREDICTION, ReplyType.EMPTY, ReplyType.PONG, ReplyType.STORED})
"""Replies that end a run of invalid messages (a batch does when one of its results is one of them; a
batch whose every item was invalid counts as one invalid message)."""


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Check the origin and the connection caps, then serve the connection until it ends."""
    service: Service = websocket.app.state.service
    headers = websocket.headers
    if not origin_allowed(
        headers.get("origin"), headers.get("host"), service.settings.origins(), service.settings.allow_no_origin
    ):
        service.metrics.connections_refused.labels("origin").inc()
        await _deny(websocket, 403, "this Origin may not open a WebSocket here")
        return
    client = websocket.client.host if websocket.client else "unknown"
    refusal = service.connections.acquire(client)
    await websocket.accept()
    try:
        if refusal is not None:
            service.metrics.connections_refused.labels("capacity").inc()
            await _close(websocket, service, CloseCode.TRY_AGAIN_LATER, refusal)
            return
        if service.draining:
            await _close(websocket, service, CloseCode.GOING_AWAY, CloseCode.GOING_AWAY_REASON)
            return
        await Session(websocket, service, client).run()
    finally:
        if refusal is None:
            service.connections.release(client)


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse the handshake with an HTTP status (403) where the server supports it."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(message, status_code=status))
    else:
        await websocket.close()


async def _close(websocket: WebSocket, service: Service, code: int, reason: str) -> None:
    service.metrics.closes.labels(str(code)).inc()
    try:
        await websocket.close(code, reason)
    except (WebSocketDisconnect, WebSocketDisconnected):
        pass


GOING_AWAY = object()
"""Queued after the last reply when the server shuts down: the writer then closes with 1001."""


class Session:
    """One accepted connection; :meth:`run` returns when it is closed, whichever side closed it."""

    def __init__(self, websocket: WebSocket, service: Service, client: str) -> None:
        settings = service.settings
        self.websocket = websocket
        self.service = service
        self.batcher = service.batcher
        self.metrics = service.metrics
        self.caller = Caller(
            owner=self,
            client=client,
            submits=TokenBucket(settings.submit_rate, settings.submit_burst),
            snapshots=TokenBucket(settings.snapshot_rate, settings.snapshot_burst),
            labels=TokenBucket(settings.label_rate, settings.label_burst),
            recent=Recent(),
        )
        self.frame_bucket = TokenBucket(settings.message_rate, max(1, round(settings.message_rate)))
        self.address_bytes = service.address_bytes.bucket(client)
        self.pending: asyncio.Queue[Ticket | object] = asyncio.Queue(MAX_OUTSTANDING)
        self.bad_in_a_row = 0
        self.closed = asyncio.Event()
        self._stopping = False
        self._receiving = False
        self._deadline = 0.0
        self._reader: asyncio.Task[None] | None = None

    async def run(self) -> None:
        service = self.service
        service.sessions.add(self)
        self.metrics.connections.inc()
        if service.draining:  # Shutdown began between admission and here: serve nothing, close with 1001.
            self.stop_reading(time.monotonic() + service.settings.graceful_shutdown_seconds)
        reader = writer = None
        try:
            if not await self._send(service.hello()):
                return
            reader = self._reader = asyncio.create_task(self._read())
            writer = asyncio.create_task(self._write())
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if self._stopping and not writer.done():
                await self._finish(writer)
        finally:
            for task in (reader, writer):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(*(task for task in (reader, writer) if task is not None), return_exceptions=True)
            if self.batcher is not None:
                self.batcher.forget(self)
            service.sessions.discard(self)
            self.metrics.connections.dec()
            self.closed.set()

    def stop_reading(self, deadline: float) -> None:
        """Shutdown: read no more frames; the replies already owed are sent, then the socket is closed."""
        self._stopping = True
        self._deadline = deadline
        if self._receiving and self._reader is not None:
            self._reader.cancel()

    async def _finish(self, writer: asyncio.Task[None]) -> None:
        """Let the writer send what is owed and close with 1001, within the shutdown deadline."""
        timeout = max(0.0, self._deadline - time.monotonic())
        try:
            await asyncio.wait_for(self.pending.put(GOING_AWAY), timeout)
            await asyncio.wait_for(asyncio.shield(writer), timeout=max(0.0, self._deadline - time.monotonic()))
        except TimeoutError:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await _close(self.websocket, self.service, CloseCode.GOING_AWAY, CloseCode.GOING_AWAY_REASON)

    async def _read(self) -> None:
        receive = self.websocket.receive
        reads = self.service.reads
        while not self._stopping:
            self._receiving = True
            try:
                # Once the event loop has no time to spare, connections take turns to read (readpacer.py).
                if (turn := reads.turn()) is not None:
                    await turn
                # Pacing: however fast a client sends, it costs the event loop (and so every other
                # connection) at most message_rate frames a second; the rest waits in TCP buffers.
                while not self.frame_bucket.take():
                    await asyncio.sleep(1.0 / self.frame_bucket.rate)
                # And all connections of one address together cost it at most address_byte_rate bytes
                # of frames a second to parse, however many connections they open.
                while (wait := self.address_bytes.retry_after()) > 0:
                    await asyncio.sleep(wait)
                message = await receive()
            finally:
                self._receiving = False
            if message["type"] == "websocket.disconnect":
                return
            self.address_bytes.spend(len(message.get("text") or message.get("bytes") or b""))
            await self.pending.put(self._handle(message))

    def _handle(self, message: Mapping[str, Any]) -> Ticket:
        """Turn one frame into the reply it is owed, queueing its drawing for the batcher when needed."""
        received = time.perf_counter()
        text = message.get("text")
        items = self.service.settings.max_batch_items
        if text is not None:
            parse = functools.partial(protocol.parse_text, text, max_items=items, live=True)
        else:
            parse = functools.partial(protocol.parse_binary, message.get("bytes") or b"", max_items=items)
        return pipeline.handle(self.service, self.caller, parse, received)

    async def _write(self) -> None:
        limit = self.service.settings.max_bad_messages
        while True:
            pending = await self.pending.get()
            if pending is GOING_AWAY:
                await _close(self.websocket, self.service, CloseCode.GOING_AWAY, CloseCode.GOING_AWAY_REASON)
                return
            assert isinstance(pending, Ticket)
            reply = await pending.resolve()
            if not await self._send(reply, pending.received):
                return
            invalid = _invalid(reply)
            if invalid:
                self.bad_in_a_row += 1
                if self.bad_in_a_row >= limit > 0:
                    await _close(
                        self.websocket, self.service, CloseCode.POLICY, f"{self.bad_in_a_row} invalid messages in a row"
                    )
                    return
            elif invalid is not None:
                self.bad_in_a_row = 0

    async def _send(self, reply: dict[str, Any], received: float | None = None) -> bool:
        """Send one reply; ``False`` when the client has gone."""
        try:
            await self.websocket.send_text(protocol.dumps(reply).decode())
        except (WebSocketDisconnect, WebSocketDisconnected):
            return False
        if received is not None:
            pipeline.sent(self.service, reply, received)
        return True


def _invalid(reply: dict[str, Any]) -> bool | None:
    """Whether ``reply`` answers invalid input (``True``), ends a run of invalid messages (``False``), or
    neither (``None``: a drop, or an error that is not the client's fault). A batch's reply is invalid when
    every result is, and ends a run when one result would."""
    kind = reply["type"]
    if kind != ReplyType.BATCH:
        if kind == ReplyType.ERROR and reply["code"] in INVALID_INPUT:
            return True
        return False if kind in RESETTING_REPLIES else None
    results = reply["results"]
    if all(result["type"] == ReplyType.ERROR and result["code"] in INVALID_INPUT for result in results):
        return True
    return False if any(result["type"] in RESETTING_REPLIES for result in results) else None
