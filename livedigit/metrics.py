"""Prometheus metrics of one app, on the app's own registry.

A registry per app (not the process-wide default) lets tests and benchmarks run several apps in one
process without their numbers mixing. The histograms split a message's time into the parts that can be
tuned separately: waiting in the queue, preprocessing and inference. Those are
wall times, what a client waits; the two stages also export the CPU time of the thread that did the
work (``*_cpu_seconds``), what an image or a batch costs whatever else runs meanwhile.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = CONTENT_TYPE_LATEST

TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Count:
    """One series of a :class:`Tally`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Spread:
    """One series of a :class:`Distribution`: a count per bucket (the last one past every bound) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least ``value``, as Prometheus does."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class Tally(Collector):
    """A counter by one label, for what is counted on every message or image: plain numbers, read when
    scraped.

    A ``prometheus_client`` counter takes a lock and checks its state on every ``inc``, and a histogram
    does so twice per ``observe``: 7% of the event loop's CPU past the knee (docs/benchmarks.md). Everything
    counted with these classes is counted on the event loop, and scraped there too, so it needs no lock.
    """

    def __init__(self, name: str, documentation: str, label: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._series: dict[str, _Count] = {}
        registry.register(self)

    def __getitem__(self, value: str) -> _Count:
        series = self._series.get(value)
        if series is None:
            series = self._series[value] = _Count()
        return series

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, series in self._series.items():
            family.add_metric([value], series.value)
        yield family


class Distribution(Collector):
    """A histogram counted like a :class:`Tally`: unlabelled (:meth:`observe`), or by one label
    (``distribution[value].observe``)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
        label: str | None = None,
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = tuple(float(bound) for bound in buckets)
        self._series: dict[str, _Spread] = {}
        self._all = _Spread(self.bounds)
        registry.register(self)

    def observe(self, value: float) -> None:
        self._all.observe(value)

    def __getitem__(self, value: str) -> _Spread:
        series = self._series.get(value)
        if series is None:
            series = self._series[value] = _Spread(self.bounds)
        return series

    def collect(self) -> Iterator[Metric]:
        labels = [] if self.label is None else [self.label]
        family = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        series = {(): self._all} if self.label is None else {(value,): s for value, s in self._series.items()}
        bounds = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for key, spread in series.items():
            cumulative = itertools.accumulate(spread.counts)
            family.add_metric(list(key), list(zip(bounds, cumulative, strict=True)), spread.sum)
        yield family


class Metrics:
    """Every metric the server exports; attribute names match what the code observes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        self.connections = Gauge("livedigit_connections", "Open WebSocket connections", registry=registry)
        self.connections_refused = Counter(
            "livedigit_connections_refused",
            "WebSocket connections refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.messages = Tally(
            "livedigit_messages", "Client messages received, by type (invalid: not parseable)", "type", registry
        )
        self.replies = Tally("livedigit_replies", "Replies sent, by type", "type", registry)
        self.batch_items = Counter(
            "livedigit_batch_items", "Images received in batch messages (WebSocket, HTTP, /v2)", registry=registry
        )
        self.batch_results = Tally("livedigit_batch_results", "Results inside batch replies, by type", "type", registry)
        self.dropped = Tally("livedigit_dropped", "Snapshots answered 'dropped', by reason", "reason", registry)
        self.errors = Tally("livedigit_errors", "Replies of type 'error', by code", "code", registry)
        self.closes = Counter(
            "livedigit_closes", "Connections closed by the server, by close code", ["code"], registry=registry
        )
        self.queued_snapshots = Gauge(
            "livedigit_queued_snapshots", "Snapshots waiting for the batcher", registry=registry
        )
        self.queued_submits = Gauge("livedigit_queued_submits", "Submits waiting for the batcher", registry=registry)
        self.in_flight = Gauge(
            "livedigit_in_flight", "Images taken into a batch and not answered yet", registry=registry
        )
        self.client_addresses = Gauge(
            "livedigit_client_addresses", "Client addresses with an open WebSocket", registry=registry
        )
        self.tasks = Gauge(
            "livedigit_event_loop_tasks", "asyncio tasks alive in the server's event loop", registry=registry
        )
        self.ready = Gauge(
            "livedigit_ready", "1 when the model is loaded and the last batch succeeded", registry=registry
        )
        self.batch_size = Distribution("livedigit_batch_size", "Images per model call", BATCH_BUCKETS, registry)
        self.queue_wait = Distribution(
            "livedigit_queue_wait_seconds",
            "From enqueue to being taken into a batch, per message",
            TIME_BUCKETS,
            registry,
        )
        self.preprocess = Distribution(
            "livedigit_preprocess_seconds",
            "Preprocessing one image (decode, rasterise, normalize), wall time: its part of the reply's latency",
            TIME_BUCKETS,
            registry,
        )
        self.preprocess_cpu = Distribution(
            "livedigit_preprocess_cpu_seconds",
            "Preprocessing one image, CPU time of the worker's thread: what the image costs",
            TIME_BUCKETS,
            registry,
        )
        self.inference = Distribution(
            "livedigit_inference_seconds",
            "One model call (a whole batch) with its calibration and verdicts, wall time: its part of the "
            "replies' latency",
            TIME_BUCKETS,
            registry,
        )
        self.inference_cpu = Distribution(
            "livedigit_inference_cpu_seconds",
            "One model call (a whole batch), CPU time of the worker's thread: what the batch costs",
            TIME_BUCKETS,
            registry,
        )
        self.garbage_collections = Distribution(
            "livedigit_garbage_collection_seconds",
            "Full collections of cyclic garbage (livedigit.garbage), wall time: the event loop waits for each",
            TIME_BUCKETS,
            registry,
        )
        self.latency = Distribution(
            "livedigit_reply_latency_seconds",
            "From receiving a message to sending its reply, by reply type",
            TIME_BUCKETS,
            registry,
            label="type",
        )
        self.batch_failures = Counter("livedigit_batch_failures", "Model calls that raised", registry=registry)
        self.worker_restarts = Counter(
            "livedigit_worker_restarts",
            "Preprocessing workers that died and were replaced (their images were answered 'internal')",
            registry=registry,
        )
        self.scored_inline = Counter(
            "livedigit_scored_inline",
            "Batches the event loop scored itself, the server being lightly loaded (the rest went to the workers)",
            registry=registry,
        )
        self.submits_reused = Counter(
            "livedigit_submits_reused",
            "Submits answered with the result of their connection's last scored snapshot of the same drawing",
            registry=registry,
        )
        self.labels = Counter(
            "livedigit_labels",
            "Labels this process stored, by model name and version, and whether they confirmed the model's "
            "answer or corrected it",
            ["model", "version", "answer"],
            registry=registry,
        )

    def labelled(self, model: str, version: str, confirmed: bool) -> None:
        """Count one stored label: the person confirmed the model's answer, or corrected it."""
        self.labels.labels(model, version, "confirmed" if confirmed else "corrected").inc()

    def watch_labels(self, store: LabelStoreState) -> None:
        """Export the label store's own state (waiting rows, database up, commits) on every scrape."""
        self.registry.register(_LabelStoreCollector(store))

    def watch_reads(self, pacer: ReadPacingState) -> None:
        """Export whether connections take turns to read (:mod:`livedigit.readpacer`) on every scrape."""
        self.registry.register(_ReadPacingCollector(pacer))

    def reply(self, reply: dict[str, Any], seconds: float | None = None) -> None:
        """Count one reply as it is sent (WebSocket or HTTP)."""
        kind = reply["type"]
        self.replies[kind].inc()
        if kind == "dropped":
            self.dropped[reply["reason"]].inc()
        elif kind == "error":
            self.errors[reply["code"]].inc()
        elif kind == "batch":
            for result in reply["results"]:
                self.batch_results[result["type"]].inc()
                if result["type"] == "error":
                    self.errors[result["code"]].inc()
        if seconds is not None:
            self.latency[kind].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LabelStoreState(Protocol):
    """What the metrics read of a :class:`livedigit.labels.store.LabelStore`."""

    @property
    def pending(self) -> int: ...

    @property
    def available(self) -> bool: ...

    commits: int
    rows_committed: int


class ReadPacingState(Protocol):
    """What the metrics read of a :class:`livedigit.readpacer.ReadPacer`."""

    rate: float | None
    turns: int


class _ReadPacingCollector(Collector):
    """The read pacer's rate and turns, read when scraped."""

    def __init__(self, pacer: ReadPacingState) -> None:
        self.pacer = pacer

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "livedigit_read_rate",
            "Frames per second read from all WebSockets while connections take turns (event loop saturated); "
            "0 when they do not",
            value=self.pacer.rate or 0.0,
        )
        yield CounterMetricFamily(
            "livedigit_read_turns",
            "Frames read on a turn, while connections took turns to read",
            value=self.pacer.turns,
        )


class _LabelStoreCollector(Collector):
    """The store's counts, read when scraped: they live in the store's writer, not in this registry."""

    def __init__(self, store: LabelStoreState) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        yield GaugeMetricFamily("livedigit_labels_pending", "Labels waiting for the database", value=store.pending)
        yield GaugeMetricFamily(
            "livedigit_labels_database_available",
            "1 while the labels database answers; 0 while labels are refused as unavailable",
            value=float(store.available),
        )
        yield CounterMetricFamily(
            "livedigit_labels_commits", "Transactions the labels writer committed", value=store.commits
        )
        yield CounterMetricFamily(
            "livedigit_labels_rows_committed",
            "Rows those transactions stored (rows over commits: the labels sharing one commit)",
            value=store.rows_committed,
        )
