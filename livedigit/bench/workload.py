"""What the simulated people draw and when: pen digits cut into frames, dealt out, and put on a schedule.

Nothing here imports more than the standard library and :mod:`livedigit.pendigits`, so tests that only
need pen-digit prefixes can use :func:`drawing` without the bench's dependencies.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from livedigit import pendigits

Strokes = list[list[list[float]]]


@dataclass(frozen=True)
class Drawing:
    """One pen digit cut into the frames a page would send: growing prefixes, then the whole digit."""

    label: int
    frames: tuple[Strokes, ...]
    strokes: Strokes


def drawing(digit: pendigits.PenDigit, points: int) -> Drawing:
    """The prefixes of ``digit`` every ``points`` points, the last one being the full trajectory."""
    total = sum(len(stroke) for stroke in digit.strokes)
    cuts = [*list(range(points, total, points)), total]
    return Drawing(digit.label, tuple(pendigits.prefix(digit.strokes, cut) for cut in cuts), digit.strokes)


def deal(digits: list[pendigits.PenDigit], clients: int, seed: int) -> list[list[pendigits.PenDigit]]:
    """Give each client its own shuffled order of the digits, starting at a different place."""
    order = list(digits)
    random.Random(seed).shuffle(order)
    step = max(1, len(order) // max(1, clients))
    return [order[i * step % len(order) :] + order[: i * step % len(order)] for i in range(clients)]


@dataclass(frozen=True)
class Workload:
    """The load of one run: how many people draw, how fast, and for how long (or how many digits)."""

    clients: int
    rate: float
    points: int
    duration: float
    warmup: float
    digits: int | None
    timeout: float
    seed: int
    paced: bool = False
    """Each WebSocket person keeps at most one snapshot unanswered, as the page does; otherwise it sends
    every frame when it falls due (open loop, as a script may)."""


def quotas(workload: Workload) -> list[int | None]:
    """How many digits each client submits: ``--digits`` shared out, or no limit for a timed run."""
    if workload.digits is None:
        return [None] * workload.clients
    share, extra = divmod(workload.digits, workload.clients)
    return [share + (1 if i < extra else 0) for i in range(workload.clients)]


def schedule(
    workload: Workload,
    digits: list[pendigits.PenDigit],
    quota: int | None,
    first: float,
    end: float,
    drawings: dict[int, Drawing] | None = None,
) -> Iterator[tuple[float, str, Strokes, int]]:
    """(when, kind, strokes, label) for one client: its frames at ``rate`` until ``end`` or its quota.

    ``drawings`` (by ``id`` of the digit) shares the cut digits between clients: every client that draws
    a digit then yields the very same frame objects, which lets a caller encode each frame once.
    """
    drawings = {} if drawings is None else drawings
    interval = 1.0 / workload.rate
    tick = 0
    done = 0
    for digit in (digits[i % len(digits)] for i in range(len(digits) * 1000)):
        if quota is not None and done >= quota:
            return
        item = drawings.get(id(digit)) or drawings.setdefault(id(digit), drawing(digit, workload.points))
        for frame in item.frames:
            when = first + tick * interval
            if when >= end:
                return
            yield when, "snapshot", frame, item.label
            tick += 1
        when = first + tick * interval
        if when >= end and quota is None:
            return
        yield when, "submit", item.strokes, item.label
        tick += 1
        done += 1
