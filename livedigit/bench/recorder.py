"""Counting what happened to every message a run sent, and the latency percentiles of the answered ones."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livedigit.client import ServerError
from livedigit.wire import Dropped, Empty, Prediction, ReplyType


@dataclass
class Tally:
    """The outcome of every message of one kind sent inside the measured window."""

    sent: int = 0
    predicted: int = 0
    empty: int = 0
    correct: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.predicted + self.empty

    def summary(self, window: float) -> dict[str, Any]:
        """The figures of the report for this kind of message over a window of ``window`` seconds."""
        dropped = sum(self.dropped.values())
        return {
            "sent": self.sent,
            "predicted": self.predicted,
            "empty": self.empty,
            "dropped": dict(self.dropped),
            "errors": dict(self.errors),
            "lost": self.lost,
            "offered_per_s": round(self.sent / window, 2),
            "achieved_per_s": round(self.answered / window, 2),
            "dropped_share": round(dropped / self.sent, 5) if self.sent else 0.0,
            "latency_ms": percentiles(self.latencies_ms),
        }


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """Count, p50, p95, p99 and maximum of ``values`` (``None`` each when there are none), rounded to 0.01."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "count": len(values),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "max": round(float(array.max()), 2),
    }


@dataclass
class Recorder:
    """Counts outcomes; only messages sent between ``start`` and ``end`` (monotonic) are measured."""

    start: float
    end: float
    snapshots: Tally = field(default_factory=Tally)
    submits: Tally = field(default_factory=Tally)
    lag_ms: list[float] = field(default_factory=list)
    connection_errors: Counter[str] = field(default_factory=Counter)
    recent: list[tuple[str, float | None]] = field(default_factory=list)
    """(kind, latency or None when not answered) since the last progress line."""
    last_scheduled: float = 0.0

    def measured(self, sent_at: float) -> bool:
        return self.start <= sent_at < self.end

    def sent(self, kind: str, scheduled: float, lateness: float) -> None:
        """Count a message due at ``scheduled`` that went out ``lateness`` seconds late."""
        self.last_scheduled = max(self.last_scheduled, scheduled)
        if self.measured(scheduled):
            self._tally(kind).sent += 1
            self.lag_ms.append(lateness * 1000.0)

    def reply(self, kind: str, scheduled: float, sent_at: float, outcome: object, label: int | None = None) -> None:
        """Count the outcome of a message scheduled at ``scheduled`` and sent at ``sent_at``.

        ``outcome`` is a reply (:class:`Prediction`, :class:`Empty`, :class:`Dropped`), a
        :class:`ServerError`, or anything else (``None``, another exception) for a reply that never came.
        """
        if isinstance(outcome, Prediction):
            self.count(kind, scheduled, sent_at, ReplyType.PREDICTION, outcome.digit, label)
        elif isinstance(outcome, Empty):
            self.count(kind, scheduled, sent_at, ReplyType.EMPTY)
        elif isinstance(outcome, Dropped):
            self.count(kind, scheduled, sent_at, ReplyType.DROPPED, outcome.reason)
        elif isinstance(outcome, ServerError):
            self.count(kind, scheduled, sent_at, ReplyType.ERROR, outcome.code)
        else:
            self.count(kind, scheduled, sent_at, None)

    def count(
        self,
        kind: str,
        scheduled: float,
        sent_at: float,
        answer: str | None,
        detail: object = None,
        label: int | None = None,
    ) -> None:
        """Count one reply by its ``type`` alone, as :meth:`reply` does for a parsed one: ``answer`` is
        ``prediction`` (``detail`` its digit, right if it is ``label``), ``empty``, ``dropped`` (``detail``
        the reason), ``error`` (``detail`` the code), or ``None`` for a reply that never came. The bench's
        pages count this way, without building a reply object per message."""
        latency = (time.monotonic() - sent_at) * 1000.0
        answered = answer == ReplyType.PREDICTION or answer == ReplyType.EMPTY
        self.recent.append((kind, latency if answered else None))
        if not self.measured(scheduled):
            return
        tally = self._tally(kind)
        if answer == ReplyType.PREDICTION:
            tally.predicted += 1
            tally.correct += int(label is not None and detail == label)
        elif answer == ReplyType.EMPTY:
            tally.empty += 1
        elif answer == ReplyType.DROPPED:
            tally.dropped[str(detail)] += 1
        elif answer == ReplyType.ERROR:
            tally.errors[str(detail)] += 1
        else:
            tally.lost += 1
        if answered:
            tally.latencies_ms.append(latency)

    def _tally(self, kind: str) -> Tally:
        return self.snapshots if kind == "snapshot" else self.submits
