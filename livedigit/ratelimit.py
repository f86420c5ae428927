"""Token buckets: how often one connection (or one HTTP client) may ask for model time.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; each request takes one.
A person drawing sends snapshots in short bursts with pauses between strokes, which a bucket allows,
while a script that sends as fast as it can is held to ``rate`` on average. A ``rate`` of 0 or less
turns a bucket off (every request passes).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

Clock = Callable[[], float]


class TokenBucket:
    """One bucket; not thread-safe (the event loop owns it)."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._tokens = float(self.burst)
        self._updated = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, count: int = 1) -> bool:
        """Take ``count`` tokens if there are that many (none otherwise); ``False`` means the caller is
        over its rate. A request for more than the bucket holds needs it full, and empties it."""
        if not self.enabled:
            return True
        count = min(count, self.burst)
        self._refill()
        if self._tokens >= count:
            self._tokens -= count
            return True
        return False

    def spend(self, amount: float) -> None:
        """Take ``amount`` tokens after the fact (the size of what was just read); the balance may go
        below zero, and :meth:`retry_after` then says how long until it is positive again."""
        if self.enabled:
            self._refill()
            self._tokens -= amount

    def retry_after(self, count: int = 1) -> float:
        """Seconds until :meth:`take` of ``count`` would succeed: when a refused caller may try again."""
        if not self.enabled:
            return 0.0
        self._refill()
        return max(0.0, (min(count, self.burst) - self._tokens) / self.rate)

    def full(self) -> bool:
        """Whether the bucket has refilled completely: a client idle that long can be forgotten."""
        if not self.enabled:
            return True
        self._refill()
        return self._tokens >= self.burst

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now


class KeyedBuckets:
    """One bucket per key (a client address for ``POST /api/predict``), in bounded memory.

    A full bucket behaves exactly like a new one, so buckets that have refilled are forgotten whenever
    more than ``max_keys`` are held; if that is not enough, the least recently used go too (down to three
    quarters, so the sweep runs rarely).
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self._unlimited = TokenBucket(0.0, 1, clock)

    def take(self, key: Hashable) -> bool:
        return self.bucket(key).take()

    def bucket(self, key: Hashable) -> TokenBucket:
        """The bucket of ``key``, made full when it has none (a bucket with rate 0 lets all through)."""
        if self.rate <= 0:
            return self._unlimited
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
            if len(self._buckets) > self.max_keys:
                self._prune()
        else:
            self._buckets.move_to_end(key)
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self) -> None:
        for key in [key for key, bucket in self._buckets.items() if bucket.full()]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys * 3 // 4:
            self._buckets.popitem(last=False)
