"""burst: a step from 0.5x to 4x capacity and back; how fast things recover.

One open-loop run per system: ``duration_s`` at the low rate, ``duration_s``
at the high rate, then three times ``duration_s`` at the low rate again.
Every 100 ms the bench reads the backend's queue (its own counter) and the
proxy's (HAProxy's stats socket, maitred's admin ``/status``; nginx has
none).

- *recovery*: from the step down until goodput recovers for good -- the
  first moment from which every later ``recovery_window_s`` of arrivals
  has at least ``recovered_fraction`` of its requests answered with a 2xx
  within the SLO.
- *queue drain*: from the step down until the backend's and the proxy's
  queues are both empty.
Either is "not within the run" (None) when it did not happen before the
run ended: the bare backend still works through the requests its clients
abandoned long ago.
"""

from __future__ import annotations

from .. import loadgen, report, wire
from ..backend import STATS_PATH
from ..harness import Context, attempt, per_system, serving, start_failed
from ..procs import StartError
from ..stats import lag_check, summarize

NAME = "burst"

DEFAULTS = {  # setting: (full run, --quick run)
    "rounds": (2, 1),
    "duration_s": (5.0, 1.0),
    "low_multiple": (0.5, 0.5),
    "high_multiple": (4.0, 4.0),
    "bin_ms": (250.0, 100.0),
    "recovered_fraction": (0.9, 0.9),
    "recovery_window_s": (0.5, 0.5),
}

KEYS = ["goodput_before", "goodput_during", "goodput_after", "recovery_s",
        "queue_drain_s", "peak_backend_queue", "peak_proxy_queue",
        "success_p99_ms_during", "lag_p99_ms"]


def phases(ctx: Context) -> list[loadgen.Phase]:
    s, cap = ctx.settings, ctx.capacity_rps
    return [
        loadgen.Phase(s["duration_s"], s["low_multiple"] * cap),
        loadgen.Phase(s["duration_s"], s["high_multiple"] * cap),
        loadgen.Phase(3 * s["duration_s"], s["low_multiple"] * cap),
    ]


def run(ctx: Context) -> dict:
    rows = []
    for round_ in range(ctx.settings["rounds"]):
        for peer in ctx.available():
            if attempt(ctx, peer):
                rows.append(measure(ctx, peer, round_))
    summary = per_system(ctx, rows, KEYS)
    return {"results": rows, "summary": summary, "goals": []}


def measure(ctx: Context, peer, round_: int) -> dict:
    s = ctx.settings
    ctx.log(f"round {round_ + 1}: {peer.name}")
    spec = loadgen.LoadSpec(
        port=0, phases=phases(ctx), timeout_s=s["client_timeout_ms"] / 1000.0,
        arrivals=s["arrivals"], seed=s["seed"] + round_,
        max_connections=s["max_client_connections"],
    )
    try:
        with serving(ctx, peer, ctx.admission_limits(), s["slots"],
                     s["service_ms"]) as (running, backend_port):
            spec.port = running.port
            samplers = {"backend": _backend_queue(backend_port),
                        "proxy": running.queued}
            result = loadgen.run(spec, samplers)
    except StartError as error:
        return {**start_failed(ctx, peer, error), "round": round_}
    return _row(ctx, peer.name, round_, result)


def _backend_queue(port: int):
    async def read() -> int:
        stats = await wire.get_json(port, STATS_PATH.decode(), timeout=0.5)
        return int(stats["queued"])
    return read


def _row(ctx: Context, name: str, round_: int, result) -> dict:
    s = ctx.settings
    step = s["duration_s"]
    slo, cap = s["slo_ms"] / 1000.0, ctx.capacity_rps
    window = {w: summarize(result, a, b, slo, cap) for w, a, b in (
        ("before", 0.0, step), ("during", step, 2 * step),
        ("after", 2 * step, 5 * step))}
    timeline = _timeline(result, s["bin_ms"] / 1000.0, 5 * step, slo)
    queues = _queues(result.samples)
    down = 2 * step
    row = {
        "system": name, "round": round_,
        "goodput_before": window["before"]["goodput_of_capacity"],
        "goodput_during": window["during"]["goodput_of_capacity"],
        "goodput_after": window["after"]["goodput_of_capacity"],
        "success_p99_ms_during": window["during"]["success_p99_ms"],
        "recovery_s": _recovery(timeline, down, s["recovered_fraction"],
                                max(1, round(s["recovery_window_s"] * 1000
                                             / s["bin_ms"]))),
        "queue_drain_s": _drain(queues, down),
        "peak_backend_queue": _peak(queues["backend"]),
        "peak_proxy_queue": _peak(queues["proxy"]),
        "windows": window, "timeline": timeline, "queues": queues,
    }
    row.update(lag_check(result, s["max_lag_ms"]))
    return row


def _timeline(result, width: float, end: float, slo: float) -> dict:
    """Offered and good requests per bin of scheduled time, as rates."""
    bins = int(round(end / width))
    offered, good = [0] * bins, [0] * bins
    for t, status, latency in zip(result.sched, result.status, result.latency,
                                  strict=True):
        k = min(int(t / width), bins - 1)
        offered[k] += 1
        if 200 <= status < 300 and latency <= slo:
            good[k] += 1
    return {
        "t": [round(k * width, 3) for k in range(bins)],
        "offered_rps": [round(n / width, 1) for n in offered],
        "goodput_rps": [round(n / width, 1) for n in good],
    }


def _recovery(timeline: dict, down: float, fraction: float,
              window: int) -> float | None:
    """Seconds after ``down`` from which every window of ``window`` bins
    stays recovered."""
    t, offered, good = (timeline["t"], timeline["offered_rps"],
                        timeline["goodput_rps"])
    recovered_from = None
    for k in range(len(t) - window + 1):
        if t[k] < down:
            continue
        wanted = fraction * sum(offered[k:k + window])
        if sum(good[k:k + window]) < wanted:
            recovered_from = None
        elif recovered_from is None:
            recovered_from = t[k]
    return None if recovered_from is None else round(recovered_from - down, 3)


def _queues(samples: list[dict]) -> dict:
    return {
        "t": [round(sample["t"], 3) for sample in samples],
        "backend": [sample.get("backend") for sample in samples],
        "proxy": [sample.get("proxy") for sample in samples],
    }


def _peak(values: list) -> int | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def _drain(queues: dict, down: float) -> float | None:
    """Seconds after ``down`` until both queues first read empty."""
    for t, backend, proxy in zip(queues["t"], queues["backend"],
                                 queues["proxy"], strict=True):
        if t >= down and backend == 0 and not proxy:
            return round(t - down, 3)
    return None


def markdown(result: dict) -> str:
    headers = ["system", "goodput before", "goodput during", "goodput after",
               "success p99 during ms", "recovery s", "queue drain s",
               "peak backend queue", "peak proxy queue", "valid rounds"]
    rows = report.summary_rows(result, len(headers), lambda e: [
        e["system"], report.percent(e["goodput_before"]),
        report.percent(e["goodput_during"]), report.percent(e["goodput_after"]),
        e["success_p99_ms_during"], e["recovery_s"], e["queue_drain_s"],
        e["peak_backend_queue"], e["peak_proxy_queue"], report.rounds_cell(e),
    ])
    s = result["settings"]
    intro = (f"{s['low_multiple']:g}x for {s['duration_s']:g} s, "
             f"{s['high_multiple']:g}x for {s['duration_s']:g} s, "
             f"{s['low_multiple']:g}x for {3 * s['duration_s']:g} s. Goodput "
             "as a fraction of capacity; recovery and drain are counted "
             "from the step down ('-': not within the run).\n\n")
    return "## Burst\n\n" + intro + report.table(headers, rows)


def plot(result: dict, out, pyplot) -> list[str]:
    names = [p["name"] for p in result["systems"] if p["available"]]
    styles = report.system_label(names)
    fig, (top, bottom) = pyplot.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    offered_drawn = False
    for row in result["results"]:
        if row.get("round") != 0 or "timeline" not in row:
            continue
        line = styles[row["system"]].replace("-", "")[:1]
        timeline, queues = row["timeline"], row["queues"]
        if not offered_drawn:
            top.plot(timeline["t"], timeline["offered_rps"], color="grey",
                     linestyle=":", label="offered")
            offered_drawn = True
        top.plot(timeline["t"], timeline["goodput_rps"], marker=line,
                 markersize=3, label=row["system"])
        depth = [(b or 0) + (p or 0) for b, p in
                 zip(queues["backend"], queues["proxy"], strict=True)]
        bottom.plot(queues["t"], depth, marker=line, markersize=3,
                    label=row["system"])
    top.set_ylabel("goodput (req/s, by arrival)")
    bottom.set_ylabel("queued (backend + proxy)")
    bottom.set_yscale("symlog")
    bottom.set_xlabel("time (s)")
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
    top.legend(fontsize="small")
    fig.suptitle("burst" + (" (smoke run)" if result["quick"] else ""))
    fig.tight_layout()
    fig.savefig(out / "burst.png", dpi=110)
    pyplot.close(fig)
    return ["burst.png"]
