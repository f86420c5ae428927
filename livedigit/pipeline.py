"""The one request pipeline: what happens to a client message between its frame and its reply.

A WebSocket frame (:mod:`livedigit.session`) and a ``POST /api/predict`` body (:mod:`livedigit.app`) go
through the same steps here: parse, count, rate-limit, queue the drawing for the batcher, and turn the
batcher's outcome into the reply. The transports only differ in what surrounds it: the WebSocket keeps
replies in order and holds a flooding client back, HTTP maps the reply to a status code.
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
from livedigit.wire import DropReason, Outcome

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
    """A reply owed to a client: known already (``reply``), or awaiting the batcher (``outcome``).

    It keeps only what the reply needs (id, final, preview); the drawing went to the batcher, which lets
    go of it once used, so a ticket waiting behind slower ones pins no image.
    """

    request: Request | None
    received: float
    outcome: asyncio.Future[Outcome] | None = None
    reply: dict[str, Any] | None = None

    async def resolve(self) -> dict[str, Any]:
        if self.reply is not None:
            return self.reply
        assert self.outcome is not None and self.request is not None
        outcome = await self.outcome
        return protocol.reply(self.request, outcome, (time.perf_counter() - self.received) * 1000.0)


def handle(service: Service, caller: Caller, parse: Callable[[Limits], Request], received: float) -> Ticket:
    """Parse one message with ``parse`` and start serving it; the ticket resolves to its one reply."""
    metrics = service.metrics
    try:
        request = parse(service.limits)
    except ProtocolError as exc:
        metrics.messages.labels("invalid").inc()
        return Ticket(None, received, reply=protocol.error(exc.id, exc.code, exc.message))
    metrics.messages.labels(request.kind if caller.transport == "ws" else caller.transport).inc()
    image, request = request.image, dataclasses.replace(request, image=None)
    if request.kind == "ping":
        return Ticket(request, received, reply=protocol.pong(request.id))
    if request.kind == "snapshot" and caller.snapshots is not None and not caller.snapshots.take():
        return Ticket(request, received, reply=protocol.dropped(request.id, DropReason.RATE_LIMITED))
    if request.kind == "submit" and not caller.submits.take():
        rate, wait = caller.submits.rate, caller.submits.retry_after()
        return Ticket(request, received, reply=protocol.rate_limited(request.id, rate, wait))
    assert service.batcher is not None and image is not None
    future = service.batcher.enqueue(request.kind, image, owner=caller.owner, client=caller.client)
    return Ticket(request, received, outcome=future)


def sent(service: Service, reply: dict[str, Any], received: float) -> None:
    """Count a reply once it is on its way, with the time since its message arrived."""
    service.metrics.reply(reply, time.perf_counter() - received)
