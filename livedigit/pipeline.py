"""The one request pipeline: what happens to a client message between its frame and its reply.

A WebSocket frame (:mod:`livedigit.session`), a ``POST /api/predict`` body (:mod:`livedigit.app`) and a
``/v2`` infer request (:mod:`livedigit.openinference`) go through the same steps here: parse, count,
rate-limit, queue each drawing for the batcher, and turn the batcher's outcomes into the reply. The
transports only differ in what surrounds it: the WebSocket keeps replies in order and holds a flooding
client back, HTTP maps the reply to a status code, ``/v2`` to a tensor.

The submit rate limit is an abuse guard, not a pace: it applies only while the server is busy
(``busy_submits`` queued in all). A server with spare capacity accepts every submit, so a lone script
gets all of it; fairness between clients is the batcher's job (:mod:`livedigit.fairness`).

A ``label`` (``POST /api/labels``) takes the same steps to the point of queueing: its drawing goes to the
label store's writer thread instead of the batcher, and its reply, ``stored``, comes once the row is
committed. Its ticket waits in the connection's reply queue like any other, so that connection's later
replies wait for it; other connections never do, and the model never waits for the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from livedigit import protocol
from livedigit.labels.store import InvalidLabel, Label, StorageError, StorageUnavailable
from livedigit.preprocess import Image, Limits, Pixels, Png, PreprocessError, Strokes, ink_from_png
from livedigit.protocol import Correction, ProtocolError, Request
from livedigit.ratelimit import TokenBucket
from livedigit.wire import DropReason, ErrorCode, Failed, Failure, MessageId, Outcome, Scored, Work

if TYPE_CHECKING:
    from livedigit.service import Service

UNAVAILABLE_RETRY_AFTER = 2.0
"""Seconds an ``unavailable`` label asks its client to wait: about the pace at which the store tries a
database that failed again (``livedigit.labels.store.MAX_BACKOFF``)."""

DRAWING_FIELDS = ("strokes", "pixels", "surface", "drawing")
"""Fields of a refused label that make it ``bad_image`` rather than ``bad_message``."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a message: the key of its latest-wins snapshot slot, and the buckets it draws from.

    A WebSocket connection is one caller with its own buckets; over HTTP every request of one client
    address shares that address's submit bucket and has no snapshot slot.
    """

    owner: Hashable | None
    client: str
    """The client's address: the unit of fairness between submits, and of the HTTP rate limit."""
    submits: TokenBucket
    snapshots: TokenBucket | None = None
    transport: str = "ws"
    """``ws`` or ``http``: HTTP messages are counted under their transport, WebSocket ones by type."""
    labels: TokenBucket | None = None
    """The connection's own label bucket; every label also draws from its address's (``Service.label_clients``)."""
    recent: Recent | None = None
    """A WebSocket connection's last scored snapshot, to answer a submit of the same drawing with it."""


@dataclass(slots=True)
class Recent:
    """The digest of the drawing of a connection's last scored snapshot (:attr:`Request.drawing`) and
    what the model answered for it. A person submits the drawing the last snapshot showed, so that
    submit's answer is already known: it is given without preprocessing or running the model again."""

    drawing: bytes | None = None
    outcome: Scored | None = None

    def note(self, drawing: bytes, future: asyncio.Future[Outcome]) -> None:
        """Remember a snapshot's drawing once its outcome is known, if the model scored it."""
        if not future.cancelled() and isinstance(outcome := future.result(), Scored):
            self.drawing, self.outcome = drawing, outcome


@dataclass(slots=True)
class Ticket:
    """A reply owed to a client: known already (``reply``), awaiting the batcher (``outcome``, or for a
    batch one ``items`` entry per item: its request and outcome, or its reply when already known) or the
    label store (``storing``, which resolves to the reply itself).

    It keeps only what the reply needs (id, final, preview); the drawing went to the batcher, which lets
    go of it once used, so a ticket waiting behind slower ones pins no image. A label's drawing is held
    by its store until committed, within the store's bounds.
    """

    request: Request | None
    received: float
    outcome: asyncio.Future[Outcome] | None = None
    reply: dict[str, Any] | None = None
    storing: asyncio.Future[dict[str, Any]] | None = None
    items: list[tuple[Request, asyncio.Future[Outcome]] | dict[str, Any]] | None = None

    async def resolve(self) -> dict[str, Any]:
        if self.reply is not None:
            return self.reply
        if self.storing is not None:
            return await self.storing
        assert self.request is not None
        if self.items is not None:
            results = []
            for item in self.items:
                if isinstance(item, dict):
                    results.append(item)
                else:
                    item_request, item_outcome = item
                    results.append(protocol.reply(item_request, await item_outcome, self._elapsed_ms()))
            return protocol.batch(self.request.id, results, self._elapsed_ms())
        assert self.outcome is not None
        outcome = await self.outcome
        return protocol.reply(self.request, outcome, self._elapsed_ms())

    def _elapsed_ms(self) -> float:
        return (time.perf_counter() - self.received) * 1000.0


def handle(service: Service, caller: Caller, parse: Callable[[Limits], Request], received: float) -> Ticket:
    """Parse one message with ``parse`` and start serving it; the ticket resolves to its one reply."""
    metrics = service.metrics
    try:
        request = parse(service.limits)
    except ProtocolError as exc:
        metrics.messages["invalid"].inc()
        return Ticket(None, received, reply=protocol.error(exc.id, exc.code, exc.message))
    metrics.messages[request.kind if caller.transport == "ws" else caller.transport].inc()
    if request.kind == "batch":
        return _batch(service, caller, request, received)
    image, request = request.image, request.without_image()
    if request.kind == "ping":
        return Ticket(request, received, reply=protocol.pong(request.id))
    if request.kind == "snapshot" and caller.snapshots is not None and not caller.snapshots.take():
        return Ticket(request, received, reply=protocol.dropped(request.id, DropReason.RATE_LIMITED))
    if request.kind == "submit":
        refusal = _over_rate(service, caller, request.id)
        if refusal is not None:
            return Ticket(request, received, reply=refusal)
        recent = caller.recent
        if recent is not None and recent.outcome is not None and request.drawing == recent.drawing:
            assert service.batcher is not None
            service.batcher.supersede(caller.owner)  # as a computed submit would overtake it
            metrics.submits_reused.inc()
            known: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            known.set_result(recent.outcome)
            return Ticket(request, received, outcome=known)
    if request.kind == "label":
        for bucket in (caller.labels, service.label_clients.bucket(caller.client)):
            if bucket is not None and not bucket.take():
                reply = protocol.rate_limited(request.id, bucket.rate, bucket.retry_after(), "labels")
                return Ticket(request, received, reply=reply)
        assert isinstance(image, Pixels | Png | Strokes) and request.correction is not None
        return Ticket(request, received, storing=service.spawn(_store(service, request.id, image, request.correction)))
    assert service.batcher is not None and image is not None
    kind: Work = "snapshot" if request.kind == "snapshot" else "submit"
    final = kind == "submit" and caller.transport == "ws"  # a WebSocket submit, maybe a person's Submit
    future = service.batcher.enqueue(kind, image, owner=caller.owner, client=caller.client, final=final)
    if kind == "snapshot" and caller.recent is not None and request.drawing is not None:
        future.add_done_callback(functools.partial(caller.recent.note, request.drawing))
    return Ticket(request, received, outcome=future)


def _batch(service: Service, caller: Caller, request: Request, received: float) -> Ticket:
    """Queue a batch's items one by one, each counted like a submit of its own (for the rate limit and
    the queue's fairness and bounds); a malformed item gets its error and the others go on. A
    ``whole`` batch is admitted entirely or refused with one error."""
    batcher = service.batcher
    assert batcher is not None
    metrics = service.metrics
    metrics.batch_items.inc(len(request.items))
    if request.whole:
        if batcher.room(caller.client) < len(request.items):
            busy = Failed(Failure.BUSY, retry_after=batcher.retry_after(caller.client))
            return Ticket(request, received, reply=protocol.failed(request.id, busy))
        refusal = _over_rate(service, caller, request.id, len(request.items))
        if refusal is not None:
            return Ticket(request, received, reply=refusal)
    items: list[tuple[Request, asyncio.Future[Outcome]] | dict[str, Any]] = []
    for item in request.items:
        if isinstance(item, ProtocolError):
            items.append(protocol.error(None, item.code, item.message))
            continue
        refusal = None if request.whole else _over_rate(service, caller, None)
        if refusal is not None:
            items.append(refusal)
            continue
        assert item.image is not None
        future = batcher.enqueue("submit", item.image, owner=caller.owner, client=caller.client)
        items.append((item.without_image(), future))
    return Ticket(dataclasses.replace(request, items=()), received, items=items)


def _over_rate(service: Service, caller: Caller, message_id: MessageId, images: int = 1) -> dict[str, Any] | None:
    """The ``rate_limited`` reply for ``images`` submits over the caller's bucket while the server is
    busy (``busy_submits`` queued), or ``None``: a server with spare capacity accepts every submit."""
    batcher = service.batcher
    busy = service.settings.busy_submits
    if batcher is None or batcher.queued[1] < busy or caller.submits.take(images):
        return None
    wait = caller.submits.retry_after(images)
    if busy > 0:  # or sooner, if the queue is expected to fall below the threshold before then
        wait = min(wait, batcher.drain_seconds(busy))
    return protocol.rate_limited(message_id, caller.submits.rate, wait)


def sent(service: Service, reply: dict[str, Any], received: float) -> None:
    """Count a reply once it is on its way, with the time since its message arrived."""
    service.metrics.reply(reply, time.perf_counter() - received)


async def _store(service: Service, message_id: MessageId, image: Image, correction: Correction) -> dict[str, Any]:
    """Store one label and word the outcome: ``stored`` once its row is committed, else the error.

    The model's name and version are the server's own; what the model answered is what the client says
    it showed (see ``docs/protocol.md``).
    """
    try:
        label = Label(
            await _drawing(image, service.limits),
            correction.digit,
            correction.writer,
            service.stored_model_name,
            service.model_version,
            correction.predicted,
            correction.probabilities,
            correction.verdict,
            correction.submit_id,
            correction.key,
        )
        store = service.labels
        if store is None:
            label.row()  # a bad label is told what is wrong with it even when nothing can be stored
            raise StorageUnavailable("labels are not stored by this server")
        label_id = await store.add(label)
    except PreprocessError as exc:
        return protocol.error(message_id, ErrorCode.BAD_IMAGE, str(exc))
    except InvalidLabel as exc:
        code = ErrorCode.BAD_IMAGE if str(exc).startswith(DRAWING_FIELDS) else ErrorCode.BAD_MESSAGE
        return protocol.error(message_id, code, str(exc))
    except StorageUnavailable:
        return protocol.error(
            message_id,
            ErrorCode.UNAVAILABLE,
            "labels cannot be stored right now; send it again later",
            retry_after=UNAVAILABLE_RETRY_AFTER,
        )
    except StorageError:
        return protocol.error(message_id, ErrorCode.INTERNAL, "this label could not be stored")
    service.metrics.labelled(label.model_name, label.model_version, confirmed=label.predicted == label.digit)
    return protocol.stored(message_id, label_id)


async def _drawing(image: Image, limits: Limits) -> Strokes | Pixels:
    """The drawing as a label keeps it: strokes as sent, a raster as uint8, a PNG decoded to its raster
    (in a thread: decoding may take milliseconds, which the event loop owes to every connection)."""
    if isinstance(image, Png):
        ink = await asyncio.to_thread(ink_from_png, image.data, limits)
        return Pixels(np.rint(ink * 255.0).astype(np.uint8))
    if isinstance(image, Strokes):
        return Strokes([np.asarray(stroke).tolist() for stroke in image.strokes], image.surface)
    return image
