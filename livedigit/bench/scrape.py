"""The server's ``GET /metrics``: scraped before and after a run, and the run's own part of its histograms.

The batch sizes the server formed, its own receive-to-send time and the CPU time of its two batcher
stages come from the difference of two scrapes, so a server that has run before (``--url``, a sweep's
earlier steps) reports this run alone.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from typing import Any, TypedDict

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


class Histogram(TypedDict):
    """A Prometheus histogram summed over some of its series: cumulative ``le`` buckets, sum and count."""

    name: str
    buckets: dict[float, float]
    sum: float
    count: float


def scrape(http_url: str) -> list[Metric] | None:
    """The server's ``/metrics`` as parsed families, or ``None`` when it cannot be read."""
    try:
        with urllib.request.urlopen(http_url + "/metrics", timeout=5) as response:
            return list(text_string_to_metric_families(response.read().decode("utf-8")))
    except (OSError, ValueError):
        return None


def metric(families: list[Metric] | None, name: str) -> float | None:
    """The value of the first sample called ``name`` (a gauge or counter), ``None`` when there is none."""
    for family in families or ():
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def histogram(families: list[Metric] | None, suffix: str, labels: dict[str, str] | None = None) -> Histogram | None:
    """A server histogram whose name ends with ``suffix``, summed over the series matching ``labels``;
    ``None`` when the server does not export it."""
    for family in families or ():
        if family.type == "histogram" and family.name.endswith(suffix):
            buckets: defaultdict[float, float] = defaultdict(float)
            totals: defaultdict[str, float] = defaultdict(float)
            for sample in family.samples:
                if any(sample.labels.get(key) != value for key, value in (labels or {}).items()):
                    continue
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] += sample.value
                elif sample.name.endswith(("_sum", "_count")):
                    totals[sample.name.rsplit("_", 1)[1]] += sample.value
            return {"name": family.name, "buckets": dict(buckets), "sum": totals["sum"], "count": totals["count"]}
    return None


def _difference(before: Histogram | None, after: Histogram) -> tuple[list[tuple[float, float]], float, float]:
    """The run's own part of a histogram: cumulative (bound, count) pairs, sum and count."""
    start = before or {"name": after["name"], "buckets": {}, "sum": 0.0, "count": 0.0}
    cumulative = sorted((bound, count - start["buckets"].get(bound, 0.0)) for bound, count in after["buckets"].items())
    return cumulative, after["sum"] - start["sum"], after["count"] - start["count"]


def batch_sizes(before: list[Metric] | None, after: list[Metric] | None) -> dict[str, Any] | None:
    """The batches formed during the run: how many, their mean size, how many fell in each bucket, and how
    many of them the server's event loop scored itself (``inline``; ``None`` from a server that does not say)."""
    sizes = histogram(after, "batch_size")
    if sizes is None:
        return None
    inline_after = metric(after, "livedigit_scored_inline_total")
    inline = (
        None if inline_after is None else int(inline_after - (metric(before, "livedigit_scored_inline_total") or 0))
    )
    cumulative, total, batches = _difference(histogram(before, "batch_size"), sizes)
    buckets, previous = {}, 0.0
    for bound, count in cumulative:
        if count - previous:
            buckets["+Inf" if bound == float("inf") else f"<={bound:g}"] = int(count - previous)
        previous = count
    return {
        "metric": sizes["name"],
        "batches": int(batches),
        "buckets": buckets,
        "mean": round(total / batches, 2) if batches else None,
        "inline": inline,
    }


def server_latency(before: Histogram | None, after: Histogram | None) -> dict[str, Any] | None:
    """The server's own receive-to-send time for predictions during the run, in ms: quantiles estimated
    from the histogram buckets (linear within a bucket, as Prometheus does), so only as fine as they are."""
    if after is None:
        return None
    cumulative, _, count = _difference(before, after)
    if count <= 0:
        return None

    def quantile(q: float) -> float | None:
        rank, low, below = q * count, 0.0, 0.0
        for bound, seen in cumulative:
            if seen >= rank:
                if bound == float("inf"):
                    return None
                inside = seen - below
                return round(1000.0 * (low + (bound - low) * ((rank - below) / inside if inside else 1.0)), 1)
            low, below = bound, seen
        return None

    over = {
        f"over_{ms}ms": int(count - next((seen for bound, seen in cumulative if bound >= ms / 1000.0), count))
        for ms in (50, 100)
    }
    return {"count": int(count), "p50": quantile(0.5), "p99": quantile(0.99), **over}


STAGES = {"preprocess": "preprocess_cpu_seconds", "model": "inference_cpu_seconds"}
"""Each stage of the batcher and the histogram of its CPU time (of the thread doing the work)."""


def stage_cpu(
    before: list[Metric] | None, after: list[Metric] | None, answered: int
) -> dict[str, dict[str, float | None]] | None:
    """The CPU time each stage spent during the run: in all, per image it handled and per answered frame
    (``answered``), in ms; ``None`` when the server does not export the histograms."""
    images = histogram(after, "batch_size")
    if images is None:
        return None
    _, model_images, _ = _difference(histogram(before, "batch_size"), images)
    stages: dict[str, dict[str, float | None]] = {}
    for stage, suffix in STAGES.items():
        spent = histogram(after, suffix)
        if spent is None:
            return None
        _, seconds, count = _difference(histogram(before, suffix), spent)
        handled = count if stage == "preprocess" else model_images
        stages[stage] = {
            "seconds": round(seconds, 3),
            "ms_per_image": round(1000.0 * seconds / handled, 3) if handled else None,
            "ms_per_answer": round(1000.0 * seconds / answered, 3) if answered else None,
        }
    return stages
