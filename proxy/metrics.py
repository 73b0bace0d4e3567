"""Prometheus metrics: every name maitred exports is defined here.

The hot path never calls prometheus-client. The core keeps its counters and
histogram buckets as C integers; ``CoreCollector`` reads them when
Prometheus scrapes, so a scrape costs one snapshot of the core, not a
lock or an update per request. Labels are low-cardinality words only
(outcomes, shed reasons, limit names), never a path or an address.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from proxy.server import Proxy

PREFIX = "maitred"


def _histogram(name: str, doc: str, snapshot) -> HistogramMetricFamily:
    bounds, counts, total = snapshot
    buckets = []
    cumulative = 0
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))
    cumulative += counts[-1]
    buckets.append(("+Inf", cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


class CoreCollector:
    """Reads the proxy's core at scrape time."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        core = self.proxy.core
        stats = core.stats()

        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Requests by how they ended.",
            labels=["outcome"],
        )
        for outcome, count in stats["requests"].items():
            requests.add_metric([outcome], count)
        yield requests

        shed = CounterMetricFamily(
            f"{PREFIX}_shed",
            "Requests answered 503 without reaching the backend, by reason.",
            labels=["reason"],
        )
        for reason, count in stats["shed"].items():
            shed.add_metric([reason], count)
        yield shed

        yield CounterMetricFamily(
            f"{PREFIX}_admitted",
            "Tokens granted: requests sent to the backend.",
            value=stats["admitted"],
        )
        yield CounterMetricFamily(
            f"{PREFIX}_queued",
            "Requests that waited in the queue for a token.",
            value=stats["enqueued"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_inflight", "Requests holding a token now.",
            value=stats["inflight"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Requests waiting for a token now.",
            value=stats["queued"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_connections", "Open client connections.",
            value=stats["connections"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_draining", "1 while draining, else 0.",
            value=1 if stats["draining"] else 0,
        )

        limit = GaugeMetricFamily(
            f"{PREFIX}_limit",
            "Limits and timeouts in force (timeouts in seconds).",
            labels=["name"],
        )
        for name, value in self.proxy.limits().items():
            limit.add_metric([name], value)
        yield limit

        yield _histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time admitted requests waited in the queue.",
            core.histogram("queue_wait"),
        )
        yield _histogram(
            f"{PREFIX}_upstream_duration_seconds",
            "Time a token was held: from admission to the end of the "
            "backend's side of the exchange.",
            core.histogram("upstream_duration"),
        )


def make_registry(proxy: Proxy) -> CollectorRegistry:
    """A registry of the core's metrics plus the standard process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoreCollector(proxy))
    registry.register(ProcessCollector(registry=None))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format, as ``GET /metrics`` serves it."""
    return generate_latest(registry)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
