"""How fast the server reads WebSocket frames once its event loop has no time left for the batches.

Every frame costs the event loop its reading, parsing and reply, whether its snapshot is then scored or
answered ``stale``. The page never offers more than the server answers (it keeps one snapshot
unanswered at a time), but clients that send on a clock of their own can: past what the event loop can
read, it spends all of its time on their frames, and the batches, each of which needs a few turns of the
loop to be taken, sent to a worker and answered, get too few turns. Predictions per second then collapse
instead of levelling off (docs/benchmarks.md, "Reading in turns").

:class:`ReadPacer` watches how much of a core the event loop's thread uses, over half a second at a
time. While it stays under ``busy``, every connection reads as soon as a frame arrives. Once it passes
``busy``, connections take turns to read one frame each, in the order they asked, at a rate below what
was read in that half second; the rate grows again in proportion to the time the loop has to spare. The
frames not read yet wait in the kernel's buffers, and TCP holds their senders back, as the
per-connection and per-address limits do. Once nobody waits for a turn, the pacing ends.

A paced loop answers the frames it reads promptly, but a client that sends faster than its frames are
read finds its later frames, a submit among them, behind its own unread ones.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 0.5
"""How often the event loop's CPU is read and the rate adjusted: long enough that the bursts of a busy
but healthy loop (a batch's replies going out at once) average out, so only a loop that stays saturated
is paced."""

TICK_S = 0.005
"""While paced, how often waiting readers are let go."""

SLOWER = 0.8
"""The rate after a window in which the loop was too busy, as a share of what was read in it."""

FASTEST = 2.0
"""After a window in which the loop had time to spare, the rate grows in proportion to it (a loop busy
half of the time that may be busy 95% of it: 1.9 times), at most this many times."""

MIN_RATE = 100.0
"""Frames per second the pacer always lets through, however busy the loop; and at least one a second for
each connection waiting for its turn, so that each still reads (a submit, a ping's answer) now and then."""


class ReadPacer:
    """Turns to read frames, shared by every connection of one event loop; see the module docstring.

    Not thread-safe: the event loop owns it. :meth:`run` is its clock, started with the server.
    """

    def __init__(self, busy: float, cpu_clock: Callable[[], float] = time.thread_time) -> None:
        """``busy``: the share of a core the event loop's thread may use before reading is paced; 0
        never paces. ``cpu_clock``: that thread's CPU time, in seconds."""
        self.busy = max(0.0, busy)
        self.rate: float | None = None
        """Frames per second let through while paced; ``None`` while every reader reads at once."""
        self._cpu_clock = cpu_clock
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._credit = 0.0
        self._read = 0
        self.turns = 0
        """Turns given since the server started: frames read while reading was paced."""

    @property
    def waiting(self) -> int:
        """Readers waiting for their turn."""
        return len(self._waiting)

    def turn(self) -> asyncio.Future[None] | None:
        """``None`` when the caller may read its next frame now; else a future that resolves at its turn
        (cancelling it gives the turn up)."""
        if self.rate is None:
            self._read += 1
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        return future

    async def run(self) -> None:
        """Every :data:`WINDOW_S`, adjust the rate to the event loop's CPU; while paced, let waiting readers
        go every :data:`TICK_S`. Runs until cancelled; with ``busy`` 0 it returns at once."""
        if not self.busy:
            return
        loop = asyncio.get_running_loop()
        last = window = loop.time()
        cpu = self._cpu_clock()
        while True:
            await asyncio.sleep(TICK_S if self.rate is not None else WINDOW_S)
            now = loop.time()
            self.release(now - last)
            last = now
            if now - window >= WINDOW_S:
                used = self._cpu_clock()
                self.adjust((used - cpu) / (now - window), self._read / (now - window))
                self._read, window, cpu = 0, now, used

    def adjust(self, busy: float, read_rate: float) -> None:
        """Set the rate after a window in which the event loop used ``busy`` of a core and ``read_rate``
        frames per second were read."""
        if self.busy and busy > self.busy:
            read = read_rate if self.rate is None else min(self.rate, read_rate)
            self.rate = max(MIN_RATE, len(self._waiting), SLOWER * read)
        elif self.rate is not None:
            faster = min(FASTEST, self.busy / max(busy, self.busy / FASTEST))
            self.rate = max(MIN_RATE, len(self._waiting), self.rate * faster) if self._waiting else None

    def release(self, seconds: float) -> None:
        """Let the readers go whose turns came in the last ``seconds``, first come first served; all of
        them when not paced."""
        if self.rate is None:
            allowed = math.inf
        else:  # at most two ticks' worth at once: a stall of the loop is no reason for a burst
            self._credit = min(self._credit + self.rate * seconds, 2.0 * self.rate * TICK_S + 1.0)
            allowed = self._credit
        while self._waiting and allowed >= 1.0:
            future = self._waiting.popleft()
            if future.done():  # its reader stopped waiting (it disconnected, or the server is stopping)
                continue
            future.set_result(None)
            allowed -= 1.0
            self._read += 1
            self.turns += 1
        if self.rate is not None:
            self._credit = allowed
