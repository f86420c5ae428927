"""The simulated people: each replays its own schedule of frames over a WebSocket, or over HTTP.

A person is open-loop: it sends every frame when it falls due, whatever the replies do, as a person keeps
drawing; each outcome goes to the :class:`~livedigit.bench.recorder.Recorder` when it arrives. With
``--paced`` a WebSocket person keeps at most one snapshot unanswered, as the page does: the person still
draws on schedule, but a snapshot that falls due meanwhile waits for that reply, and a newer one replaces
it (counted ``dropped``/``held``). Its latency counts from when it fell due, as a person waits from then. The
WebSocket people are :class:`Page` protocols sent to by one scheduler (:func:`websocket_people`), so that
the bench, which shares the server's cores, costs it as little CPU per message as it can; the HTTP
people are a task each.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import ssl
import struct
import time
from typing import cast

import httpx
import msgspec
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode, apply_mask
from websockets.protocol import State
from websockets.uri import WebSocketURI, parse_uri

from livedigit import pendigits
from livedigit.bench.recorder import Recorder
from livedigit.bench.workload import Drawing, Strokes, Workload, schedule
from livedigit.client import ConnectionClosed, LiveDigitError, ServerError, as_image, request_tail, with_id
from livedigit.wire import VERSION, Dropped, Empty, Prediction, ReplyType

HELD = "held"
"""The drop reason of a paced person's snapshot replaced by a newer one before it could be sent."""

DRAIN_S = 5.0
"""How long a run waits after its end for replies still in flight, beyond which they count as lost."""

TICK_S = 0.002
"""The WebSocket scheduler's shortest sleep: once awake, it sends every frame due by then, so a frame goes
out up to this late (the report's client lag shows by how much). Each wake of an idle process costs the
bench CPU (70-110 us on the 2-vCPU machine of 2026-12-03, 32 us on that of 2026-12-06), more than sending
a frame, and uvloop rounds a sleep under 1 ms down to none at all, so waking for each frame would either
cost that per frame or spin."""


class Answer(msgspec.Struct):
    """The fields of a reply that the bench counts; decoding skips the rest (the ten probabilities, a
    preview) without building them: 0.3 µs a prediction, hot, where decoding it whole and parsing it into
    a :class:`~livedigit.wire.Prediction` took 3.2 µs (``timeit``, 2026-12-06)."""

    type: str = ""
    id: int | None = None
    """The bench sends integer ids; a reply with another is none of its own."""
    digit: int | None = None
    reason: str | None = None
    code: str | None = None
    protocol: int | str | None = None

    def detail(self) -> object:
        """What :meth:`Recorder.count <livedigit.bench.recorder.Recorder.count>` counts beside the type."""
        if self.type == ReplyType.PREDICTION:
            return self.digit
        return self.reason if self.type == ReplyType.DROPPED else self.code


_answer = msgspec.json.Decoder(Answer).decode

_SHORT, _MEDIUM, _LONG = struct.Struct("!BB"), struct.Struct("!BBH"), struct.Struct("!BBQ")
_TEXT = 0x81
"""The first byte of a whole (FIN) text frame."""
_masks = random.Random().randbytes
"""A client's frame masks (RFC 6455, 5.3): they keep a proxy from reading a client's frames as its own
requests; a load generator on a loopback needs them only because the server insists on a mask."""


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one masked text frame, the frame ``websockets`` sends for it, without its objects."""
    mask = _masks(4)
    size = len(payload)
    if size < 126:
        head = _SHORT.pack(_TEXT, 0x80 | size)
    elif size < 1 << 16:
        head = _MEDIUM.pack(_TEXT, 0x80 | 126, size)
    else:
        head = _LONG.pack(_TEXT, 0x80 | 127, size)
    return head + mask + apply_mask(payload, mask)


async def sleep_until(when: float) -> None:
    """Sleep until the monotonic time ``when`` (not at all when it has passed)."""
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class Page(asyncio.Protocol):
    """One simulated page's WebSocket, spoken through the sans-I/O protocol of ``websockets``.

    It costs the bench no task and no future per message: a frame goes out from the scheduler's call to
    :meth:`send`, and each reply is parsed and counted in the transport's callback that brings it. The
    messages are those of :class:`~livedigit.client.LiveDigitClient` (ids counting from 1, the JSON of
    :func:`~livedigit.client.request_tail`), so the server does the same work for them. The server never
    fragments its messages, so each text frame is one whole reply.

    Once the hello is in, the page frames its requests and reads the server's whole text frames itself
    (:func:`text_frame`, :meth:`_read`), and hands every other frame (a ping, a close) to the protocol,
    which answers it: the same bytes on the wire for a quarter to a third less of the bench's CPU per
    message (docs/benchmarks.md).
    """

    def __init__(self, uri: WebSocketURI, recorder: Recorder, timeout: float, paced: bool = False) -> None:
        self.protocol = ClientProtocol(uri, max_size=None)
        self.recorder = recorder
        self.timeout = timeout
        self.paced = paced
        self.live: int | None = None
        """Paced: the id of the snapshot whose reply is awaited."""
        self.held: tuple[str, float, int] | None = None
        """Paced: the snapshot (message without its id, when due, label) to send when that reply comes."""
        self.hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, tuple[str, float, float, int]] = {}
        """(kind, scheduled, sent at, label) of each request not yet answered, by id."""
        self.ids = itertools.count(1)
        self.closed: str | None = None
        self.transport: asyncio.Transport | None = None
        self.reading = False
        """Whether :meth:`_read` reads the frames (from the hello on, when the protocol holds no partial one)."""
        self.unread = b""
        """The start of a frame whose end has not arrived."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.reading:
            self._read(data)
            return
        self._receive(data)
        if self.protocol.handshake_exc is not None and not self.hello.done():
            self.hello.set_exception(ConnectionClosed(None, f"handshake refused: {self.protocol.handshake_exc}"))
        self.reading = (
            self.hello.done()
            and not self.hello.exception()
            and self.protocol.state is State.OPEN
            and not self.protocol.reader.buffer
        )

    def _receive(self, data: bytes) -> None:
        """Bytes read by the protocol: the handshake, and any frame but a whole text frame after it."""
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self._message(bytes(event.data))
        self._flush()  # pongs and the answer to a close frame

    def _read(self, data: bytes) -> None:
        """Every whole frame in what has arrived: a text frame is a reply, any other goes to the protocol."""
        buffer = self.unread + data if self.unread else data
        end, at = len(buffer), 0
        while end - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            size, head = second & 0x7F, 2
            if size == 126:
                size, head = int.from_bytes(buffer[at + 2 : at + 4]), 4
            elif size == 127:
                size, head = int.from_bytes(buffer[at + 2 : at + 10]), 10
            if second & 0x80:  # a masked frame: the protocol refuses it from a server
                head += 4
            if end - at < head + size:
                break
            if first == _TEXT and not second & 0x80:
                self._message(buffer[at + head : at + head + size])
            else:
                self._receive(buffer[at : at + head + size])
            at += head + size
        self.unread = buffer[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        close = self.protocol.close_rcvd
        self.closed = (
            str(ConnectionClosed(close.code, close.reason))
            if close is not None
            else str(ConnectionClosed(None, "the connection broke without a close frame"))
        )
        if not self.hello.done():
            self.hello.set_exception(ConnectionClosed(None, self.closed))

    def gone(self) -> str | None:
        """Why the connection can take no more messages (the server closed it, or it broke); else ``None``."""
        if self.closed is None and self.protocol.state is not State.OPEN:
            close = self.protocol.close_rcvd
            return str(ConnectionClosed(close.code if close else None, close.reason if close else "closing"))
        return self.closed

    def send(self, kind: str, tail: str, scheduled: float, label: int) -> None:
        """Send one request due at ``scheduled`` and remember it until its reply comes."""
        now = time.monotonic()
        self.recorder.sent(kind, scheduled, now - scheduled)
        if self.paced:
            # A newer snapshot, or the submit of the finished drawing, replaces the held one.
            self._drop_held(now, Dropped(None, HELD))
            if kind == "snapshot" and self.live is not None:
                self.held = (tail, scheduled, label)
                return
        self._send(kind, tail, scheduled, now, label)

    def _send(self, kind: str, tail: str, scheduled: float, sent_at: float, label: int) -> None:
        request_id = next(self.ids)
        self.pending[request_id] = (kind, scheduled, sent_at, label)
        if self.paced and kind == "snapshot":
            self.live = request_id
        message = with_id(request_id, tail).encode()
        if not self.reading:
            self.protocol.send_text(message)
            self._flush()
        elif self.transport is not None and self.protocol.state is State.OPEN and not self.transport.is_closing():
            self.transport.write(text_frame(message))

    def _drop_held(self, now: float, outcome: object) -> None:
        """Count the held snapshot, if any, with ``outcome``: it will not be sent."""
        if self.held is not None:
            _, scheduled, _ = self.held
            self.held = None
            self.recorder.reply("snapshot", scheduled, now, outcome)

    def lose_pending(self) -> None:
        """Count every request still unanswered as lost (the run is over)."""
        pending, self.pending = self.pending, {}
        for kind, scheduled, sent_at, _ in pending.values():
            self.recorder.reply(kind, scheduled, sent_at, None)
        self._drop_held(time.monotonic(), None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.protocol.state is State.OPEN:
                self.protocol.send_close(1000)
                self._flush()
            self.transport.close()

    def _message(self, data: bytes) -> None:
        try:
            reply = _answer(data)
        except msgspec.DecodeError:  # not JSON, or not a reply: nothing to count it as
            reply = None
        if not self.hello.done():
            if reply is not None and reply.type == ReplyType.HELLO and reply.protocol == VERSION:
                self.hello.set_result(None)
            else:
                self.hello.set_exception(LiveDigitError(f"no livedigit protocol {VERSION} hello: {data[:200]!r}"))
            return
        if reply is None or reply.id is None:
            return
        entry = self.pending.pop(reply.id, None)
        if entry is None:
            return
        if self.live is not None and reply.id == self.live:
            self.live = None
            if self.held is not None:
                (tail, scheduled, label), self.held = self.held, None
                self._send("snapshot", tail, scheduled, scheduled, label)
        kind, scheduled, sent_at, label = entry
        if time.monotonic() - sent_at > self.timeout:  # as late as a reply the client has stopped waiting for
            self.recorder.count(kind, scheduled, sent_at, None)
        else:
            label_if_submit = label if kind == "submit" else None
            self.recorder.count(kind, scheduled, sent_at, reply.type, reply.detail(), label_if_submit)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for data in self.protocol.data_to_send():
                if data:
                    self.transport.write(data)


def timeline(
    workload: Workload,
    hands: list[list[pendigits.PenDigit]],
    quotas: list[int | None],
    phases: list[float],
    end: float,
) -> list[tuple[float, int, str, str, int]]:
    """Every page's frames in the order they fall due, each message encoded already, and each frame once
    for all the pages that send it: (when, page, kind, the message without its id, label), with times
    from the moment the run begins. Built before the run, so that none of it is the bench's cost per
    frame, nor delays the first frames; page ``i`` draws ``hands[i]`` from ``phases[i]`` until ``end``.
    """
    drawings: dict[int, Drawing] = {}
    tails: dict[int, str] = {}
    frames = []
    for page, (hand, quota, phase) in enumerate(zip(hands, quotas, phases, strict=True)):
        for when, kind, strokes, label in schedule(workload, hand, quota, phase, end, drawings):
            key = id(strokes) * 2 + (kind == "submit")
            tail = tails.get(key)
            if tail is None:
                tail = tails[key] = request_tail("submit" if kind == "submit" else "snapshot", as_image(strokes))
            frames.append((when, page, kind, tail, label))
    frames.sort()
    return frames


async def websocket_people(
    url: str,
    workload: Workload,
    frames: list[tuple[float, int, str, str, int]],
    origin: float,
    recorder: Recorder,
) -> None:
    """The page's design: each person on a WebSocket of its own, snapshots sent without waiting for the
    replies to earlier ones (paced: with at most one unanswered); ``frames`` is the :func:`timeline` of
    ``workload.clients`` pages, its times counted from the monotonic time ``origin``.

    One scheduler sends every page's frames: it sleeps until the next frame is due, then sends all the
    frames due by then, from every page, rather than waking a task per page and frame.
    """
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()

    async def open_page() -> Page | None:
        page: Page | None = None
        try:
            async with asyncio.timeout(workload.timeout):
                _, page = await loop.create_connection(
                    lambda: Page(uri, recorder, workload.timeout, workload.paced),
                    uri.host,
                    uri.port,
                    ssl=_tls() if uri.secure else None,
                )
                await page.hello
            return page
        except (OSError, TimeoutError, LiveDigitError) as exc:
            if page is not None:
                page.close()
            if not isinstance(exc, LiveDigitError):  # worded as LiveDigitClient words it
                exc = ConnectionClosed(None, f"cannot connect to {url}: {exc or 'no hello in time'}")
            recorder.connection_errors[str(exc)] += 1
            return None

    pages = await asyncio.gather(*(open_page() for _ in range(workload.clients)))
    lost: set[int] = set()
    try:
        for when, index, kind, tail, label in frames:
            page = pages[index]
            if page is None:  # it never connected: the connection error is counted
                continue
            due = origin + when
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(max(delay, TICK_S))
            gone = page.gone()
            if gone is not None:
                if index not in lost:
                    lost.add(index)
                    recorder.connection_errors[gone] += 1
                continue
            page.send(kind, tail, due, label)
        drain = time.monotonic() + workload.timeout + DRAIN_S
        while time.monotonic() < drain and any(page is not None and page.pending for page in pages):
            await asyncio.sleep(0.05)
    finally:
        for page in pages:
            if page is not None:
                page.lose_pending()
                page.close()


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
