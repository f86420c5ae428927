"""When the server's process collects cyclic garbage: when some can have piled up, not every 700 objects.

Python frees most objects by reference counting; its cyclic collector exists for objects that refer to
each other. By default it runs a young collection every 700 container objects allocated and not yet
freed, and older and full collections every tenth of those, each walking every object of its generation.
A busy server allocates thousands of such objects a second (each frame's message, its future, its reply)
and frees nearly all of them by reference counting, so the collector walks the live connections over and
over and finds next to nothing: with 2,400 people drawing, a fifth of the event loop's CPU, and each full
collection stopped the loop for about 0.13 s (docs/benchmarks.md, "Garbage collected when
there is some").

What does leave cycles behind is a closed connection (about 90 objects of uvicorn's protocol, its
parser, the WebSocket and the session refer to each other). :class:`Collections` therefore switches the
automatic collector off and runs a full collection once the objects allocated and not freed since the last
one number ``after`` and a quarter of those the last one left (checked twice a second), and at least every
ten minutes: garbage stays bounded by the connections that come and go, and a process whose people keep
drawing pays for a collection every ten minutes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

CHECK_INTERVAL_S = 0.5
"""How often the count of objects allocated and not freed is read: a call of a few tens of nanoseconds."""

LIVE_SHARE = 0.25
"""A collection waits until that count also reaches this share of the objects the last one left (as Python
waits for its full collections): a process holding many connections walks them seldom."""

MAX_INTERVAL_S = 600.0
"""The longest between two collections. The count above is of objects allocated less those freed: a
connection counts what it allocated when it opened, less what was freed when it closed, so the garbage of
connections that close while none open shows only partly. A collection walks every live object (about
0.2 s with 2,400 people drawing), which a crowd that stays should not pay for often."""

logger = logging.getLogger("livedigit")


class Collections:
    """The process's cyclic garbage collection, on the schedule in the module docstring; ``after`` 0 leaves
    Python's own schedule. The event loop owns it: :meth:`run` is its clock, started with the server."""

    def __init__(
        self,
        after: int,
        observe: Callable[[float], None] = lambda seconds: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``observe``: called with the wall time of each collection (a pause of the event loop)."""
        self.after = max(0, after)
        self._observe = observe
        self._clock = clock
        self._left = 0
        self._last = clock()

    def due(self) -> bool:
        """Whether enough objects were allocated and not freed since the last collection, or it was long ago."""
        pending = gc.get_count()[0]  # allocated less freed since the last collection (Python's own young count)
        return (pending >= self.after and pending >= LIVE_SHARE * self._left) or (
            self._clock() - self._last >= MAX_INTERVAL_S
        )

    def collect(self) -> float:
        """Collect now; the seconds it took."""
        started = time.perf_counter()
        gc.collect()
        seconds = time.perf_counter() - started
        self._left = len(gc.get_objects())
        self._last = self._clock()
        self._observe(seconds)
        return seconds

    async def run(self) -> None:
        """Until cancelled: collect when :meth:`due`; then Python's own schedule again."""
        if self.after == 0:
            return
        gc.disable()
        self._left = len(gc.get_objects())
        self._last = self._clock()
        try:
            while True:
                await asyncio.sleep(CHECK_INTERVAL_S)
                if self.due():
                    seconds = self.collect()
                    logger.debug("collected garbage in %.1f ms; %d objects left", 1000 * seconds, self._left)
        finally:
            gc.enable()
