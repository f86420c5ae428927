"""The one request pipeline: what happens to a client message between its frame and its reply.

A WebSocket frame (:mod:`livedigit.session`), a ``POST /api/predict`` body (:mod:`livedigit.app`) and a
``/v2`` infer request (:mod:`livedigit.openinference`) go through the same steps here: parse, count,
rate-limit, queue each drawing for the batcher, and turn the batcher's outcomes into the reply. The
transports only differ in what surrounds it: the WebSocket keeps replies in order and holds a flooding
client back, HTTP maps the reply to a status code, ``/v2`` to a tensor.

The submit rate limit is an abuse guard, not a pace: it applies only while the server is busy
(``busy_submits`` queued in all). A server with spare capacity accepts every submit, so a lone script
gets all of it; fairness between clients is the batcher's job (:mod:`livedigit.fairness`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livedigit import protocol
from livedigit.preprocess import Limits
from livedigit.protocol import ProtocolError, Request
from livedigit.ratelimit import TokenBucket
from livedigit.wire import DropReason, Failed, Failure, MessageId, Outcome, Work

if TYPE_CHECKING:
    import asyncio

    from livedigit.service import Service


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


@dataclass(slots=True)
class Ticket:
    """A reply owed to a client: known already (``reply``), or awaiting the batcher (``outcome``, or for
    a batch one ``items`` entry per item: its request and outcome, or its reply when already known).

    It keeps only what the reply needs (id, final, preview); the drawing went to the batcher, which lets
    go of it once used, so a ticket waiting behind slower ones pins no image.
    """

    request: Request | None
    received: float
    outcome: asyncio.Future[Outcome] | None = None
    reply: dict[str, Any] | None = None
    items: list[tuple[Request, asyncio.Future[Outcome]] | dict[str, Any]] | None = None

    async def resolve(self) -> dict[str, Any]:
        if self.reply is not None:
            return self.reply
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
        metrics.messages.labels("invalid").inc()
        return Ticket(None, received, reply=protocol.error(exc.id, exc.code, exc.message))
    metrics.messages.labels(request.kind if caller.transport == "ws" else caller.transport).inc()
    if request.kind == "batch":
        return _batch(service, caller, request, received)
    image, request = request.image, dataclasses.replace(request, image=None)
    if request.kind == "ping":
        return Ticket(request, received, reply=protocol.pong(request.id))
    if request.kind == "snapshot" and caller.snapshots is not None and not caller.snapshots.take():
        return Ticket(request, received, reply=protocol.dropped(request.id, DropReason.RATE_LIMITED))
    if request.kind == "submit":
        refusal = _over_rate(service, caller, request.id)
        if refusal is not None:
            return Ticket(request, received, reply=refusal)
    assert service.batcher is not None and image is not None
    kind: Work = "snapshot" if request.kind == "snapshot" else "submit"
    future = service.batcher.enqueue(kind, image, owner=caller.owner, client=caller.client)
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
        items.append((dataclasses.replace(item, image=None), future))
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
