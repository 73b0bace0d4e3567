"""``maitred top``: a live view of a running proxy, from ``/status``.

Each refresh shows in-flight against the cap, the queue, what was
admitted and shed per second since the last refresh, and latency
percentiles over that interval, estimated from the core's histogram
buckets (so they are as coarse as the buckets).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import click

from proxy.adminclient import AdminClient

_BAR = 30


def percentile(bounds: list[float], counts: list[int], q: float) -> float | None:
    """The q-th percentile of a bucketed distribution, by interpolation."""
    total = sum(counts)
    if total == 0:
        return None
    rank = total * q / 100
    seen = 0
    lower = 0.0
    for bound, count in zip([*bounds, bounds[-1]], counts, strict=True):
        if count and seen + count >= rank:
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound
    return bounds[-1]


def _delta(new: dict, old: dict | None, key: str) -> list[int]:
    counts = new["histograms"][key]["counts"]
    if old is None:
        return counts
    return [a - b for a, b in zip(counts, old["histograms"][key]["counts"],
                                  strict=True)]


def frame(now: dict, before: dict | None, elapsed: float) -> dict:
    """The figures of one refresh."""
    counters = now["counters"]
    admitted = counters["admitted"]
    shed = counters["requests"]["shed"]
    if before is not None:
        admitted -= before["counters"]["admitted"]
        shed -= before["counters"]["requests"]["shed"]
    seconds = max(elapsed, 1e-9)
    bounds = now["histograms"]["upstream_duration"]["bounds"]
    upstream = _delta(now, before, "upstream_duration")
    wait_bounds = now["histograms"]["queue_wait"]["bounds"]
    waits = _delta(now, before, "queue_wait")
    return {
        "inflight": now["inflight"],
        "max_concurrency": now["limits"]["max_concurrency"],
        "queued": now["queued"],
        "max_queue": now["limits"]["max_queue"],
        "connections": now["connections"],
        "admitted_per_s": admitted / seconds,
        "shed_per_s": shed / seconds,
        "upstream_p50": percentile(bounds, upstream, 50),
        "upstream_p99": percentile(bounds, upstream, 99),
        "queue_wait_p99": percentile(wait_bounds, waits, 99),
        "draining": now["draining"],
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def render(figures: dict) -> str:
    cap = max(figures["max_concurrency"], 1)
    filled = min(_BAR, round(_BAR * figures["inflight"] / cap))
    bar = "#" * filled + "." * (_BAR - filled)
    lines = [
        "maitred top" + ("   (draining)" if figures["draining"] else ""),
        f"in flight  [{bar}] {figures['inflight']} / "
        f"{figures['max_concurrency']}",
        f"queued     {figures['queued']} / {figures['max_queue']}",
        f"connections {figures['connections']}",
        f"admitted   {figures['admitted_per_s']:.1f}/s   "
        f"shed {figures['shed_per_s']:.1f}/s",
        f"upstream   p50 {_ms(figures['upstream_p50'])}   "
        f"p99 {_ms(figures['upstream_p99'])}",
        f"queue wait p99 {_ms(figures['queue_wait_p99'])}",
    ]
    return "\n".join(lines)


def run_top(client: AdminClient, interval: float, count: int | None,
            as_json: bool, echo: Callable[[str], None]) -> None:
    """Refresh every ``interval`` seconds, ``count`` times or forever."""
    # Rates need two snapshots: the first frame comes one interval in.
    before = client.get("/status")
    last = time.monotonic()
    shown = 0
    while count is None or shown < count:
        time.sleep(interval)
        now = client.get("/status")
        moment = time.monotonic()
        figures = frame(now, before, moment - last)
        if as_json:
            echo(json.dumps(figures, sort_keys=True))
        else:
            if count is None:
                click.clear()
            echo(render(figures))
        before, last = now, moment
        shown += 1
