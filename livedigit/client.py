"""Talk to a livedigit server from Python.

The protocol (``docs/protocol.md``) answers every message with exactly one reply carrying its ``id``, so
the client numbers its messages, sends them on one WebSocket and matches each reply to the request that
is waiting for it; many requests can be in flight at once (that is how live snapshots stream while
earlier replies are still on their way).

.. code-block:: python

    async with LiveDigitClient("ws://127.0.0.1:8000/ws") as client:
        result = await client.predict("digit.png")        # a submit: Prediction or Empty
        async for reply in client.stream(frames, rate=10):  # snapshots while the pen moves
            ...

        results = await client.predict_many(paths)          # many images: batches, pipelined

    with LiveDigit("ws://127.0.0.1:8000/ws") as client:   # the same without asyncio
        print(client.predict(numpy_array))

Images may be numpy arrays (uint8 0..255 or float 0..1, ink high), PNG bytes, paths of ``.png`` or
``.npy`` files, strokes (``[[[x, y], ...], ...]`` in screen coordinates) or the forms of
:mod:`livedigit.preprocess`. Server ``error`` replies raise :class:`ServerError` (with its ``code``); a
connection that closes raises :class:`ConnectionClosed` (with the close code and reason). With
``reconnect=True`` the client reconnects with exponential backoff and resends the requests that were
waiting: every request is idempotent, a prediction depends only on the image.

:meth:`LiveDigitClient.predict_many` is for scripts: it packs the images into ``batch`` messages within
the limits the server announced in its ``hello`` (items per message, message size), keeps as many images
unanswered as the server lets one client queue (``max_pending_submits_per_client``) so that the model
never waits for the network, sends refused images again after the ``retry_after_ms`` the server asked
for, and returns the results in the images' order.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Origin

from livedigit.preprocess import Image, Pixels, Png, PreprocessError, Strokes, pixels_uint8
from livedigit.wire import (
    BINARY_BATCH,
    BINARY_HEADER,
    BINARY_TYPES,
    NON_RETRYABLE_CLOSE_CODES,
    PNG_SIGNATURE,
    RETRYABLE,
    VERSION,
    Dropped,
    Empty,
    Prediction,
    Reply,
    ReplyType,
    Result,
    Work,
)

__all__ = [
    "ConnectionClosed",
    "Dropped",
    "Empty",
    "LiveDigit",
    "LiveDigitClient",
    "LiveDigitError",
    "Prediction",
    "Reply",
    "Result",
    "ServerError",
    "as_image",
    "load_image",
]

T = TypeVar("T")


class LiveDigitError(Exception):
    """Base class of the errors this client raises."""


class ServerError(LiveDigitError):
    """The server answered a request with an ``error`` reply; ``code`` is one of the protocol's codes."""

    def __init__(
        self, code: str, message: str, request_id: int | str | None = None, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_ms = retry_after_ms
        """For ``rate_limited``: how long the server asks the client to wait before trying again."""


class ConnectionClosed(LiveDigitError):
    """The WebSocket closed (or could not be opened); ``code`` and ``reason`` come from the close frame.

    ``code`` is ``None`` when the connection broke without a close frame (the server died, the network
    dropped) or could not be established at all.
    """

    def __init__(self, code: int | None, reason: str = "") -> None:
        what = f"connection closed with code {code}" if code is not None else "connection lost"
        super().__init__(f"{what}: {reason}" if reason else what)
        self.code = code
        self.reason = reason

    @property
    def retryable(self) -> bool:
        """True when reconnecting may help: the server restarted, was busy, or the link broke."""
        return self.code not in NON_RETRYABLE_CLOSE_CODES


ImageLike = Image | np.ndarray | bytes | bytearray | str | os.PathLike[str] | Sequence[Any]

REFUSALS = 30
"""How many times :meth:`LiveDigitClient.predict_many` sends an image the server refused for a passing
reason (``rate_limited``, ``overloaded``) before it reports the refusal as that image's result."""

MAX_WINDOW = 256
"""The most images :meth:`LiveDigitClient.predict_many` keeps unanswered, whatever the server allows: four
full batches keep its model busy, and more would only wait in the socket (the server reads no further
than 256 replies ahead, and its keepalive pings would queue behind them)."""

PROGRESS_DELAY = 1.0
"""Seconds a :meth:`LiveDigitClient.predict_many` run on a terminal lasts before its progress bar shows."""

BATCH_ENVELOPE = 64
"""Bytes a JSON batch message adds around its items (type, id, brackets), rounded up."""


# --- images -------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike[str]) -> Pixels | Png:
    """Read a ``.png`` file or a 2-D ``.npy`` array (ink high) into an image form."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise PreprocessError(f"unsupported file type {suffix or '(none)'!r}; use .png or .npy")
    data = path.read_bytes()
    if suffix == ".png":
        return Png(data)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise PreprocessError(f"not a readable .npy array: {exc}") from None
    return Pixels(pixels_uint8(array))


def as_image(image: ImageLike) -> Image:
    """Turn whatever the caller holds into one of :mod:`livedigit.preprocess`'s image forms."""
    if isinstance(image, Pixels):
        return Pixels(pixels_uint8(image.array))
    if isinstance(image, (Png, Strokes)):
        return image
    if isinstance(image, np.ndarray):
        return Pixels(pixels_uint8(image))
    if isinstance(image, (bytes, bytearray)):
        if not bytes(image[:8]) == PNG_SIGNATURE:
            raise PreprocessError("bytes must be a PNG file; pass rasters as numpy arrays")
        return Png(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, (list, tuple)):
        return Strokes([stroke.tolist() if isinstance(stroke, np.ndarray) else stroke for stroke in image])
    raise PreprocessError(
        f"cannot send {type(image).__name__}; use a numpy array, PNG bytes, a .png/.npy path or strokes"
    )


def image_fields(image: Image) -> dict[str, Any]:
    """The message fields that carry ``image`` in a JSON frame."""
    if isinstance(image, Pixels):
        height, width = image.array.shape
        data = base64.b64encode(np.ascontiguousarray(image.array).tobytes()).decode("ascii")
        return {"pixels": {"width": width, "height": height, "data": data}}
    if isinstance(image, Png):
        return {"png": base64.b64encode(image.data).decode("ascii")}
    fields: dict[str, Any] = {"strokes": image.strokes}
    if image.surface is not None:
        fields["surface"] = list(image.surface)
    return fields


def request_tail(kind: Work, image: Image, preview: bool = False) -> str:
    """A JSON snapshot or submit of ``image`` without its id: what follows ``{"id": N, `` in the message.

    The message is encoded once however often it is sent (a resend, or the bench's simulated pages, which
    send the same prefixes of the same digits many times); :func:`with_id` completes it.
    """
    body = {"type": kind, **image_fields(image)}
    if preview:
        body["preview"] = True
    return json.dumps(body)[1:]


def with_id(request_id: int, tail: str) -> str:
    """The JSON message of :func:`request_tail` with its ``id``, which the reply will carry."""
    return f'{{"id": {request_id}, {tail}'


def binary_frame(kind: Work, request_id: int, pixels: np.ndarray, preview: bool = False) -> bytes:
    """A snapshot or submit of a uint8 raster as the protocol's binary frame (12-byte header + pixels)."""
    height, width = pixels.shape
    header = BINARY_HEADER.pack(VERSION, BINARY_TYPES[kind], int(preview), 0, request_id, width, height)
    return header + np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()


def batch_results(reply: dict[str, Any], count: int) -> list[Result | ServerError]:
    """The results of a ``batch`` reply, in order: a prediction, an empty or the item's error. A reply
    that refused the whole message is that error for each of the ``count`` images."""
    if reply.get("type") != ReplyType.BATCH:
        try:
            parse_reply(reply)
        except ServerError as refusal:
            return [refusal] * count
        raise LiveDigitError(f"expected a batch reply, got {reply!r}")
    results: list[Result | ServerError] = []
    for item in reply["results"]:
        try:
            result = parse_reply(item)
        except ServerError as error:
            results.append(error)
            continue
        if isinstance(result, Dropped):
            raise LiveDigitError(f"the server dropped a batch item ({result.reason}); submits are never dropped")
        results.append(result)
    if len(results) != count:
        raise LiveDigitError(f"a batch of {count} images was answered with {len(results)} results")
    return results


@dataclass
class _Item:
    """One image of a :meth:`LiveDigitClient.predict_many` run, encoded once however often it is sent."""

    index: int
    form: Image
    preview: bool
    refusals: int = 0
    _json: str | None = None

    @property
    def raster(self) -> np.ndarray | None:
        """The uint8 raster, when the image is one a binary batch frame can carry."""
        form = self.form
        return form.array if isinstance(form, Pixels) and max(form.array.shape) <= 0xFFFF else None

    @property
    def json(self) -> str:
        """The item as a JSON object, for JSON batch messages (encoded on first use)."""
        if self._json is None:
            fields = image_fields(self.form)
            if self.preview:
                fields["preview"] = True
            self._json = json.dumps(fields)
        return self._json


class _Queue:
    """The images of a :meth:`LiveDigitClient.predict_many` run still to send: those the server refused
    first (in order), then the rest, encoded as they are read."""

    def __init__(self, images: Iterator[tuple[int, ImageLike]], preview: bool) -> None:
        self.images = images
        self.preview = preview
        self.waiting: deque[_Item] = deque()
        self.done: dict[int, Result | ServerError] = {}
        """Results not yet handed out, by index; images that cannot be sent get their error here."""

    def empty(self) -> bool:
        return self._peek() is None

    def put_back(self, items: list[_Item]) -> None:
        if items:
            self.waiting = deque(sorted([*self.waiting, *items], key=lambda item: item.index))

    def chunk(self, most: int, largest: int, binary: bool) -> list[_Item]:
        """The next batch: up to ``most`` images that fit one message of ``largest`` bytes, either uint8
        rasters of one size (one binary frame) or any forms (JSON)."""
        chunk: list[_Item] = []
        size = 0
        while len(chunk) < most and (item := self._peek()) is not None:
            first, raster = (chunk[0] if chunk else item).raster, item.raster
            raw = binary and first is not None
            if raw and first is not None and (raster is None or raster.shape != first.shape):
                break
            size = size or (BINARY_HEADER.size if raw else BATCH_ENVELOPE)
            cost = raster.size if raw and raster is not None else len(item.json) + 1
            if size + cost > largest:
                if chunk:
                    break
                self.waiting.popleft()
                self.done[item.index] = ServerError(
                    "bad_image", f"the image takes {cost} bytes; the server accepts messages of {largest}"
                )
                size = 0
                continue
            chunk.append(self.waiting.popleft())
            size += cost
        return chunk

    def _peek(self) -> _Item | None:
        while not self.waiting:
            entry = next(self.images, None)
            if entry is None:
                return None
            index, image = entry
            try:
                form = as_image(image)
            except OSError as exc:
                self.done[index] = ServerError("unreadable", f"cannot read: {exc.strerror or exc}")
                continue
            except PreprocessError as exc:
                self.done[index] = ServerError("bad_image", str(exc))
                continue
            self.waiting.append(_Item(index, form, self.preview))
        return self.waiting[0]


class _Window:
    """How many images a :meth:`LiveDigitClient.predict_many` run keeps unanswered: the share of the
    queue the server announced at first; halved when the server refuses images (other connections from
    the same address share that queue, or the server is busy), and grown back by one image for each batch
    answered in full: additive increase, multiplicative decrease, as TCP does."""

    def __init__(self, limit: int) -> None:
        self.limit = self.size = max(1, limit)
        self._cut = -math.inf

    def refused(self, sent: float) -> None:
        """A refusal for a batch sent at ``sent``: one cut for all the batches already on their way."""
        if sent > self._cut:
            self.size = max(1, self.size // 2)
            self._cut = time.monotonic()

    def served(self) -> None:
        self.size = min(self.limit, self.size + 1)


def _frame(items: list[_Item], preview: bool, binary: bool) -> Callable[[int], str | bytes]:
    """The batch message of ``items`` for a given id: one binary frame when they are all rasters."""
    first = items[0].raster
    if binary and first is not None and all(item.raster is not None for item in items):
        height, width = first.shape
        payload = b"".join(np.ascontiguousarray(item.raster).tobytes() for item in items)
        return lambda rid: BINARY_HEADER.pack(VERSION, BINARY_BATCH, int(preview), 0, rid, width, height) + payload
    body = ",".join(item.json for item in items)
    return lambda rid: f'{{"type": "batch", "id": {rid}, "items": [{body}]}}'


def _progress_bar(total: int | None, shown: bool | None) -> Any:
    """A tqdm bar on stderr: always when ``shown``, never when ``False``, and for ``None`` only on a
    terminal and only once the run has lasted :data:`PROGRESS_DELAY`."""
    if shown is False or (shown is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="image", file=sys.stderr, delay=0.0 if shown else PROGRESS_DELAY)


def parse_reply(reply: dict[str, Any]) -> Reply:
    """Turn a reply object into a result; an ``error`` reply raises :class:`ServerError`."""
    kind = reply.get("type")
    if kind == ReplyType.PREDICTION:
        return Prediction.from_wire(reply)
    if kind == ReplyType.EMPTY:
        return Empty.from_wire(reply)
    if kind == ReplyType.DROPPED:
        return Dropped.from_wire(reply)
    if kind == ReplyType.ERROR:
        raise ServerError(
            str(reply.get("code")), str(reply.get("message")), reply.get("id"), reply.get("retry_after_ms")
        )
    raise LiveDigitError(f"unexpected reply {reply!r}")


def websocket_url(url: str) -> str:
    """Accept ``ws://host:port/ws`` as well as ``http://host:port`` (the page's address)."""
    parts = urlsplit(url if "://" in url else "ws://" + url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


# --- the asynchronous client ---------------------------------------------------------------------


@dataclass
class _Link:
    """One open WebSocket and the requests waiting on it; a reconnect replaces the whole link."""

    socket: ClientConnection
    hello: dict[str, Any]
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    closed: ConnectionClosed | None = None
    reader: asyncio.Task[None] | None = None


class LiveDigitClient:
    """An asynchronous client for one WebSocket connection (``async with``).

    ``timeout`` bounds each request's wait for its reply. With ``reconnect=True`` a dropped connection is
    reopened (up to ``retries`` attempts per request, ``backoff`` seconds doubling to ``max_backoff``,
    with jitter) and the requests that were waiting are sent again. ``binary=True`` sends numpy rasters as
    binary frames (12 bytes of header instead of base64 JSON).
    """

    def __init__(
        self,
        url: str,
        *,
        reconnect: bool = False,
        retries: int = 6,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        timeout: float = 30.0,
        open_timeout: float = 10.0,
        binary: bool = True,
        origin: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = websocket_url(url)
        self.reconnect = reconnect
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.open_timeout = open_timeout
        self.binary = binary
        self.origin = origin
        self.headers = dict(headers or {})
        """Extra HTTP headers of the WebSocket handshake (for a proxy or a gateway in front of the server)."""
        self.connects = 0
        """How many times a connection was opened (1 + the reconnects)."""
        self._ids = itertools.count(1)
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> LiveDigitClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def hello(self) -> dict[str, Any]:
        """The server's hello: protocol version, model and limits."""
        if self._link is None:
            raise LiveDigitError("not connected")
        return self._link.hello

    @property
    def limits(self) -> dict[str, Any]:
        """The limits the server announced (rates, sizes); see ``docs/protocol.md``."""
        return dict(self.hello.get("limits", {}))

    async def connect(self) -> None:
        """Open the connection and read the hello (retrying with backoff when ``reconnect`` is set)."""
        self._closed = False
        await self._connected(retry=self.reconnect)

    async def close(self) -> None:
        """Close the connection; requests still waiting raise :class:`ConnectionClosed` (code 1000)."""
        self._closed = True
        link, self._link = self._link, None
        if link is None:
            return
        await link.socket.close()
        if link.reader is not None:
            await link.reader
        _fail(link, ConnectionClosed(1000, "closed by the client"))

    async def predict(self, image: ImageLike, *, preview: bool = False) -> Result:
        """Ask for the final answer for ``image`` (a ``submit``): a :class:`Prediction` or :class:`Empty`."""
        return await self.submit(image, preview=preview)

    async def submit(self, image: ImageLike, *, preview: bool = False) -> Result:
        """Send a ``submit``; submits are never dropped, so the reply is a prediction, empty or an error."""
        reply = await self._request("submit", as_image(image), preview)
        if isinstance(reply, Dropped):
            raise LiveDigitError(f"the server dropped a submit ({reply.reason}); submits are never dropped")
        return reply

    async def snapshot(self, image: ImageLike, *, preview: bool = False) -> Reply:
        """Send one live ``snapshot`` and wait for its reply (a :class:`Dropped` when it was overtaken)."""
        return await self._request("snapshot", as_image(image), preview)

    async def predict_many(
        self, images: Iterable[ImageLike], *, preview: bool = False, progress: bool | None = None
    ) -> list[Result | ServerError]:
        """The final answer for every image, in order: a :class:`Prediction`, an :class:`Empty`, or the
        :class:`ServerError` that image alone got (``bad_image``...; an image this client cannot read or
        encode gets one too, code ``bad_image`` or ``unreadable``), so one bad image fails only itself.

        The images go in ``batch`` messages, pipelined within the server's announced limits; images the
        server refused for a passing reason are sent again after the wait it asked for (at most
        :data:`REFUSALS` times). ``progress``: a progress bar on stderr; ``None`` shows one on a terminal
        once the run has lasted :data:`PROGRESS_DELAY`.
        """
        return [result async for result in self.predict_each(images, preview=preview, progress=progress)]

    async def predict_each(
        self, images: Iterable[ImageLike], *, preview: bool = False, progress: bool | None = None
    ) -> AsyncGenerator[Result | ServerError, None]:
        """:meth:`predict_many` one result at a time, in order, each as soon as it and those before it are
        known. ``images`` is read as it is needed, so it may be a generator of any length."""
        limits = self.limits
        try:
            window = _Window(min(MAX_WINDOW, int(limits["max_pending_submits_per_client"])))
            most_items = max(1, int(limits["max_batch_items"]))
            largest = int(limits["max_message_bytes"])
        except (KeyError, TypeError, ValueError):
            raise LiveDigitError("this server does not announce batch limits; use predict()") from None
        queue = _Queue(enumerate(images), preview)
        sending: dict[asyncio.Future[dict[str, Any]], tuple[list[_Item], float]] = {}
        in_flight = next_index = 0
        resume = 0.0
        bar = _progress_bar(len(images) if isinstance(images, Sequence) else None, progress)
        try:
            while True:
                while in_flight < window.size and time.monotonic() >= resume:
                    most = min(most_items, (window.size + 1) // 2, window.size - in_flight)
                    chunk = queue.chunk(most, largest, self.binary)
                    if not chunk:
                        break
                    task = asyncio.ensure_future(self._exchange(_frame(chunk, preview, self.binary)))
                    sending[task] = (chunk, time.monotonic())
                    in_flight += len(chunk)
                while next_index in queue.done:
                    yield queue.done.pop(next_index)
                    next_index += 1
                    if bar is not None:
                        bar.update()
                if not sending and queue.empty():
                    return
                pause = resume - time.monotonic()
                if not sending:  # only refused images are left: wait as the server asked
                    await asyncio.sleep(pause)
                    continue
                finished, _ = await asyncio.wait(
                    sending, timeout=pause if pause > 0 else None, return_when=asyncio.FIRST_COMPLETED
                )
                refused: list[_Item] = []
                for answered in finished:
                    chunk, sent = sending.pop(answered)
                    in_flight -= len(chunk)
                    before = len(refused)
                    for item, result in zip(chunk, batch_results(answered.result(), len(chunk)), strict=True):
                        if isinstance(result, ServerError) and result.code in RETRYABLE and item.refusals < REFUSALS:
                            item.refusals += 1
                            refused.append(item)
                            wait = (result.retry_after_ms or 100) / 1000.0 * random.uniform(1.0, 1.2)
                            resume = max(resume, time.monotonic() + wait)
                        else:
                            queue.done[item.index] = result
                    if len(refused) > before:
                        window.refused(sent)
                    else:
                        window.served()
                queue.put_back(refused)
        finally:
            for unanswered in sending:
                unanswered.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
            if bar is not None:
                bar.close()

    def send_snapshot(self, image: ImageLike, *, preview: bool = False) -> asyncio.Task[Reply]:
        """Send a snapshot without waiting: the returned task completes with its reply.

        This is how a drawing streams: frames go out at the pen's pace while earlier replies are in flight.
        """
        return asyncio.ensure_future(self._request("snapshot", as_image(image), preview))

    async def stream(
        self,
        frames: Iterable[ImageLike] | AsyncIterable[ImageLike],
        *,
        rate: float | None = None,
        preview: bool = False,
    ) -> AsyncIterator[Reply]:
        """Send each frame as a snapshot, at most ``rate`` per second, and yield the replies as they arrive.

        Replies come in the server's order, which never goes back in time; a frame overtaken by a newer
        one yields :class:`Dropped`. An ``error`` reply raises :class:`ServerError` here.
        """
        arrived: asyncio.Queue[asyncio.Task[Reply] | int | Exception] = asyncio.Queue()
        interval = 1.0 / rate if rate else 0.0

        async def send_all() -> None:
            started = time.monotonic()
            count = 0
            try:
                async for frame in _aiter(frames):
                    delay = started + count * interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self.send_snapshot(frame, preview=preview).add_done_callback(arrived.put_nowait)
                    count += 1
            except Exception as exc:
                arrived.put_nowait(exc)
                return
            arrived.put_nowait(count)

        sender = asyncio.ensure_future(send_all())
        received, total = 0, None
        try:
            while total is None or received < total:
                item = await arrived.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, int):
                    total = item
                    continue
                received += 1
                yield item.result()
        finally:
            sender.cancel()

    async def ping(self) -> float:
        """Send an application ``ping``; return the round trip in seconds."""
        started = time.perf_counter()
        reply = await self._exchange(lambda request_id: json.dumps({"type": "ping", "id": request_id}))
        if reply.get("type") != "pong":
            parse_reply(reply)
            raise LiveDigitError(f"expected a pong, got {reply!r}")
        elapsed: float = time.perf_counter() - started
        return elapsed

    async def _request(self, kind: Work, image: Image, preview: bool) -> Reply:
        if self.binary and isinstance(image, Pixels) and max(image.array.shape) <= 0xFFFF:
            return parse_reply(await self._exchange(lambda rid: binary_frame(kind, rid, image.array, preview)))
        tail = request_tail(kind, image, preview)
        return parse_reply(await self._exchange(lambda rid: with_id(rid, tail)))

    async def _exchange(self, frame_for: Any) -> dict[str, Any]:
        """Send one frame and return its raw reply, reconnecting and resending as configured."""
        attempt = 0
        while True:
            link = await self._connected(retry=self.reconnect)
            request_id = next(self._ids)
            frame = frame_for(request_id)
            largest = link.hello.get("limits", {}).get("max_message_bytes")
            size = len(frame)  # JSON is ASCII (json.dumps escapes the rest): characters are bytes
            if largest is not None and size > largest:
                raise LiveDigitError(f"message is {size} bytes; the server accepts at most {largest} (send less)")
            waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            link.pending[request_id] = waiter
            try:
                try:
                    await link.socket.send(frame)
                except websockets.ConnectionClosed as exc:
                    raise _closed(exc) from None
                return await asyncio.wait_for(waiter, self.timeout)
            except ConnectionClosed as exc:
                attempt += 1
                if self._closed or not (self.reconnect and exc.retryable and attempt <= self.retries):
                    raise
                await asyncio.sleep(self._delay(attempt - 1))
            finally:
                link.pending.pop(request_id, None)
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()  # failed with the connection while this frame was still being sent

    async def _connected(self, retry: bool) -> _Link:
        link = self._link
        if link is not None and link.closed is None:
            return link
        async with self._lock:
            link = self._link
            if link is not None and link.closed is None:
                return link
            if self._closed:
                raise ConnectionClosed(1000, "closed by the client")
            if link is not None and not retry:
                raise link.closed  # type: ignore[misc]
            attempt = 0
            while True:
                try:
                    self._link = await self._open()
                    return self._link
                except ConnectionClosed as exc:
                    attempt += 1
                    if not (retry and exc.retryable and attempt <= self.retries):
                        raise
                    await asyncio.sleep(self._delay(attempt - 1))

    async def _open(self) -> _Link:
        try:
            socket = await websockets.connect(
                self.url,
                origin=None if self.origin is None else Origin(self.origin),
                additional_headers=self.headers,
                open_timeout=self.open_timeout,
                max_size=None,
                compression=None,
            )
        except websockets.InvalidStatus as exc:
            raise ConnectionClosed(None, f"handshake refused with HTTP {exc.response.status_code}") from None
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise ConnectionClosed(None, f"cannot connect to {self.url}: {exc}") from None
        try:
            hello = json.loads(await asyncio.wait_for(socket.recv(), self.open_timeout))
        except websockets.ConnectionClosed as exc:
            raise _closed(exc) from None
        except (TimeoutError, ValueError) as exc:
            await socket.close()
            raise LiveDigitError(f"{self.url} sent no valid hello: {exc!r}") from None
        if not isinstance(hello, dict) or hello.get("type") != "hello" or hello.get("protocol") != VERSION:
            await socket.close()
            raise LiveDigitError(f"{self.url} does not speak livedigit protocol {VERSION}: {hello!r}")
        link = _Link(socket, hello)
        link.reader = asyncio.ensure_future(self._read(link))
        self.connects += 1
        return link

    async def _read(self, link: _Link) -> None:
        """Deliver each reply to the request waiting for its id, until the connection ends."""
        try:
            async for message in link.socket:
                reply = json.loads(message)
                request_id = reply.get("id") if isinstance(reply, dict) else None
                waiter = link.pending.pop(request_id, None) if isinstance(request_id, int) else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
            closed = _closed_from(link.socket)
        except websockets.ConnectionClosed as exc:
            closed = _closed(exc)
        except ValueError:
            closed = ConnectionClosed(None, "the server sent a frame that is not JSON")
            await link.socket.close(1002, "invalid JSON")
        _fail(link, closed)

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2.0**attempt) * random.uniform(0.5, 1.0)


def _fail(link: _Link, closed: ConnectionClosed) -> None:
    if link.closed is None:
        link.closed = closed
    for waiter in link.pending.values():
        if not waiter.done():
            waiter.set_exception(link.closed)
    link.pending.clear()


def _closed(exc: websockets.ConnectionClosed) -> ConnectionClosed:
    if exc.rcvd is not None:
        return ConnectionClosed(exc.rcvd.code, exc.rcvd.reason)
    return ConnectionClosed(None, "the connection broke without a close frame")


def _closed_from(socket: ClientConnection) -> ConnectionClosed:
    if socket.close_code is None or socket.close_code == 1006:
        return ConnectionClosed(None, "the connection broke without a close frame")
    return ConnectionClosed(socket.close_code, socket.close_reason or "")


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


# --- the synchronous wrapper --------------------------------------------------------------------


class LiveDigit:
    """The client for code without asyncio: ``with LiveDigit(url) as client: client.predict(image)``.

    It runs a :class:`LiveDigitClient` on an event loop in a background thread, so one connection serves
    every call; the options are :class:`LiveDigitClient`'s.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="livedigit-client", daemon=True)
        self._client = LiveDigitClient(url, **options)

    def __enter__(self) -> LiveDigit:
        self._thread.start()
        try:
            self._call(self._client.connect())
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def hello(self) -> dict[str, Any]:
        return self._client.hello

    def predict(self, image: ImageLike, *, preview: bool = False) -> Result:
        """See :meth:`LiveDigitClient.predict`."""
        return self._call(self._client.predict(image, preview=preview))

    def submit(self, image: ImageLike, *, preview: bool = False) -> Result:
        """See :meth:`LiveDigitClient.submit`."""
        return self._call(self._client.submit(image, preview=preview))

    def snapshot(self, image: ImageLike, *, preview: bool = False) -> Reply:
        """See :meth:`LiveDigitClient.snapshot`."""
        return self._call(self._client.snapshot(image, preview=preview))

    def predict_many(
        self, images: Iterable[ImageLike], *, preview: bool = False, progress: bool | None = None
    ) -> list[Result | ServerError]:
        """See :meth:`LiveDigitClient.predict_many`."""
        return self._call(self._client.predict_many(images, preview=preview, progress=progress))

    def ping(self) -> float:
        """See :meth:`LiveDigitClient.ping`."""
        return self._call(self._client.ping())

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._thread.is_alive():
            try:
                self._call(self._client.close())
            finally:
                self._stop()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coroutine.close()
            raise ConnectionClosed(1000, "closed by the client")
        future: ThreadFuture[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
