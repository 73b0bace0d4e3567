"""From raw per-request outcomes to the figures the bench reports.

Vocabulary used in every result:

- *offered*: requests scheduled in the measured window, and their rate.
- *success*: a 2xx response. *good*: a success that completed within the
  SLO. *goodput*: good responses per second, also as a fraction of the
  backend's capacity.
- *shed*: a 503 or 429 answer, the proxy turning the request away.
- *timeout*: no complete response within the client timeout.
- *errors*: everything else -- connection refused, reset or closed before
  the response, unparsable responses, and any other status.

Latency percentiles are in milliseconds; a percentile of nothing is None.
Across rounds each figure is the median of the valid rounds, with its
spread as [min, max].
"""

from __future__ import annotations

import math
import statistics

from .loadgen import NOT_SENT, OUTCOME_NAMES, PENDING, TIMEOUT, LoadResult

SHED_STATUSES = (503, 429)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) of ``values``, linearly interpolated."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def lag_check(result: LoadResult, max_lag_ms: float, start: float = 0.0,
              end: float = math.inf) -> dict:
    """The generator's lag behind schedule over the requests scheduled in
    [start, end), and whether the run is valid."""
    chosen = [i for i, t in enumerate(result.sched) if start <= t < end]
    lags = [result.lag[i] for i in chosen if not math.isnan(result.lag[i])]
    p99 = ms(percentile(lags, 99))
    not_sent = sum(1 for i in chosen if result.status[i] == NOT_SENT)
    reason = None
    if p99 is not None and p99 > max_lag_ms:
        reason = f"generator lag p99 {p99:.1f} ms > {max_lag_ms:g} ms"
    elif not_sent:
        reason = f"generator connection cap hit, {not_sent} requests not sent"
    return {
        "lag_p99_ms": p99,
        "lag_max_ms": ms(max(lags)) if lags else None,
        "valid": reason is None,
        "invalid_reason": reason,
    }


def summarize(result: LoadResult, start: float, end: float, slo_s: float,
              capacity_rps: float) -> dict:
    """Figures of the requests scheduled in [start, end) of one run."""
    seconds = end - start
    chosen = [i for i, t in enumerate(result.sched) if start <= t < end]
    statuses = [result.status[i] for i in chosen]
    success = [result.latency[i] for i in chosen if 200 <= result.status[i] < 300]
    shed = [result.latency[i] for i in chosen
            if result.status[i] in SHED_STATUSES]
    good = sum(1 for latency in success if latency <= slo_s)
    kinds = _error_kinds(statuses)
    return {
        "offered": len(chosen),
        "offered_rps": round(len(chosen) / seconds, 1),
        "ok": len(success),
        "good": good,
        "goodput_rps": round(good / seconds, 1),
        "goodput_of_capacity": round(good / seconds / capacity_rps, 4),
        "success_p50_ms": ms(percentile(success, 50)),
        "success_p99_ms": ms(percentile(success, 99)),
        "shed": len(shed),
        "shed_p50_ms": ms(percentile(shed, 50)),
        "shed_p99_ms": ms(percentile(shed, 99)),
        "timeouts": statuses.count(TIMEOUT) + statuses.count(PENDING),
        "errors": sum(kinds.values()),
        "error_kinds": kinds,
        "status_counts": _status_counts(statuses),
        "shed_reasons": dict(result.shed_reasons),
        "connections_opened": result.connections_opened,
        "max_open_connections": result.max_open_connections,
    }


def _error_kinds(statuses: list[int]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for status in statuses:
        if status > 0 and (200 <= status < 300 or status in SHED_STATUSES):
            continue
        if status in (TIMEOUT, PENDING):
            continue
        name = OUTCOME_NAMES.get(status, f"status_{status}")
        kinds[name] = kinds.get(name, 0) + 1
    return kinds


def _status_counts(statuses: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        if status > 0:
            counts[str(status)] = counts.get(str(status), 0) + 1
    return counts


def aggregate(rows: list[dict], keys: list[str]) -> dict:
    """Median and [min, max] of each key over the valid rounds."""
    valid = [row for row in rows if row.get("valid", True) and "error" not in row]
    out: dict = {"rounds": len(rows), "valid_rounds": len(valid)}
    for key in keys:
        values = [row[key] for row in valid if row.get(key) is not None]
        out[key] = statistics.median(values) if values else None
        out[key + "_spread"] = [min(values), max(values)] if values else None
    reasons = sorted({row.get("invalid_reason") or row.get("error")
                      for row in rows if row not in valid})
    out["invalid_reasons"] = [reason for reason in reasons if reason]
    return out
