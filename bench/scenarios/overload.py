"""overload: goodput and latency at 0.5x to 8x the backend's capacity.

For every multiple of capacity, every system gets a fresh backend and a
fresh proxy, and an open-loop Poisson load at that rate for the warm-up
plus the measured window; only requests scheduled inside the window count.
Rounds repeat the whole sweep, systems interleaved (A B C A B C), so slow
drifts of a shared machine fall on every system alike.
"""

from __future__ import annotations

import math
import time

from .. import loadgen, report, wire
from ..backend import STATS_PATH
from ..harness import Context, attempt, per_system, serving, start_failed
from ..procs import StartError
from ..stats import lag_check, summarize

NAME = "overload"

DEFAULTS = {  # setting: (full run, --quick run)
    "rounds": (3, 1),
    "duration_s": (10.0, 1.0),
    "warmup_s": (2.0, 0.5),
    "multiples": ([0.5, 1.0, 2.0, 4.0, 8.0], [0.5, 1.0, 2.0, 4.0, 8.0]),
}

KEYS = [
    "offered_rps", "goodput_rps", "goodput_of_capacity", "success_p50_ms",
    "success_p99_ms", "shed_p50_ms", "shed_p99_ms", "timeouts", "errors",
    "lag_p99_ms", "backend_max_inflight", "proxy_cpu",
]


def run(ctx: Context) -> dict:
    rows = []
    for round_ in range(ctx.settings["rounds"]):
        for multiple in ctx.settings["multiples"]:
            for peer in ctx.available():
                if attempt(ctx, peer):
                    rows.append(measure(ctx, peer, multiple, round_))
    summary = per_system(ctx, rows, KEYS, by="multiple",
                         values=ctx.settings["multiples"])
    return {"results": rows, "summary": summary, "goals": goals(ctx, summary)}


def measure(ctx: Context, peer, multiple: float, round_: int) -> dict:
    """One system at one offered load, fresh processes."""
    s = ctx.settings
    rate = multiple * ctx.capacity_rps
    ctx.log(f"round {round_ + 1}: {peer.name} at {multiple:g}x ({rate:.0f}/s)")
    spec = loadgen.LoadSpec(
        port=0, phases=[loadgen.Phase(s["warmup_s"] + s["duration_s"], rate)],
        timeout_s=s["client_timeout_ms"] / 1000.0, arrivals=s["arrivals"],
        seed=s["seed"] + round_, max_connections=s["max_client_connections"],
    )
    try:
        with serving(ctx, peer, ctx.admission_limits(), s["slots"],
                     s["service_ms"]) as (running, backend_port):
            spec.port = running.port
            cpu_before, clock = running.measured.cpu_seconds(), time.monotonic()
            result = loadgen.run(spec)
            cpu = (running.measured.cpu_seconds() - cpu_before) / (
                time.monotonic() - clock)
            backend = backend_stats(backend_port)
    except StartError as error:
        return {**start_failed(ctx, peer, error), "multiple": multiple,
                "round": round_}
    row = {"system": peer.name, "multiple": multiple, "round": round_}
    row.update(summarize(result, s["warmup_s"], s["warmup_s"] + s["duration_s"],
                         s["slo_ms"] / 1000.0, ctx.capacity_rps))
    row.update(lag_check(result, s["max_lag_ms"], s["warmup_s"],
                         s["warmup_s"] + s["duration_s"]))
    row["backend_max_inflight"] = backend.get("max_inflight")
    row["proxy_cpu"] = round(cpu, 3)
    return row


def backend_stats(port: int) -> dict:
    try:
        return loadgen.run_in_loop(
            lambda: wire.get_json(port, STATS_PATH.decode(), timeout=2.0))
    except (OSError, wire.ProtocolError, ValueError, TimeoutError):
        return {}


def goals(ctx: Context, summary: list[dict]) -> list[dict]:
    limit_ms = 2 * ctx.settings["service_ms"]
    found = []
    for entry in summary:
        if not entry["system"].startswith("maitred") or "missing" in entry:
            continue
        if entry["multiple"] not in (4, 8) or not entry["valid_rounds"]:
            continue
        where = f"{entry['system']} at {entry['multiple']:g}x"
        found += [
            _goal("goodput >= 98% of capacity", where,
                  report.percent(entry["goodput_of_capacity"]),
                  entry["goodput_of_capacity"], 0.98, ">="),
            _goal(f"success p99 <= {limit_ms:g} ms (2x service time)", where,
                  entry["success_p99_ms"], entry["success_p99_ms"], limit_ms,
                  "<="),
            _goal("shed p99 < 1 ms", where, entry["shed_p99_ms"],
                  entry["shed_p99_ms"], 1.0, "<"),
        ]
    return found


def _goal(text, where, shown, value, target, op) -> dict:
    met = None
    if value is not None:
        met = {">=": value >= target, "<=": value <= target,
               "<": value < target}[op]
    return report.goal(text, where, shown, met)


def markdown(result: dict) -> str:
    headers = ["system", "load", "offered/s", "goodput/s", "of capacity",
               "success p50 ms", "success p99 ms", "shed p50 ms",
               "shed p99 ms", "timeouts", "errors", "proxy CPU",
               "valid rounds"]
    rows = report.summary_rows(result, len(headers), lambda e: [
        e["system"], f"{e['multiple']:g}x", e["offered_rps"], e["goodput_rps"],
        report.percent(e["goodput_of_capacity"]), e["success_p50_ms"],
        e["success_p99_ms"], e["shed_p50_ms"], e["shed_p99_ms"], e["timeouts"],
        e["errors"], report.percent(e["proxy_cpu"]), report.rounds_cell(e),
    ])
    intro = ("Goodput: 2xx responses within the SLO per second, and as a "
             "fraction of the backend's capacity. Proxy CPU: the share of "
             "its core the proxy used (for the bare backend, the backend's). "
             "Medians over valid rounds; spreads are in the JSON.\n\n")
    return "## Overload\n\n" + intro + report.table(headers, rows)


def plot(result: dict, out, pyplot) -> list[str]:
    names = [p["name"] for p in result["systems"] if p["available"]]
    styles = report.system_label(names)
    multiples = result["settings"]["multiples"]
    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for name in names:
        points = {e["multiple"]: e for e in result["summary"]
                  if e["system"] == name and e.get("valid_rounds")}
        if not points:
            continue  # never ran: the table says why
        left.plot(multiples, _series(points, multiples, "goodput_of_capacity"),
                  styles[name], label=name)
        right.plot(multiples, _series(points, multiples, "success_p99_ms"),
                   styles[name], label=name)
    slo = result["settings"]["slo_ms"]
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    right.axhline(slo, color="grey", linewidth=0.8, linestyle=":")
    _axes(left, "goodput (fraction of capacity)", multiples)
    _axes(right, "success p99 latency (ms)", multiples)
    right.set_yscale("log")
    title = "overload" + (" (smoke run)" if result["quick"] else "")
    fig.suptitle(f"{title}: {result['settings']['slots']} slots x "
                 f"{result['settings']['service_ms']:g} ms, SLO {slo:g} ms "
                 "(dotted); gaps: no valid round")
    left.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "overload.png", dpi=110)
    pyplot.close(fig)
    return ["overload.png"]


def _series(points: dict, multiples: list[float], key: str) -> list[float]:
    values = [points.get(m, {}).get(key) for m in multiples]
    return [math.nan if value is None else value for value in values]


def _axes(axes, ylabel: str, multiples: list[float]) -> None:
    axes.set_xscale("log", base=2)
    axes.set_xticks(multiples, [f"{m:g}x" for m in multiples])
    axes.minorticks_off()
    axes.set_xlabel("offered load (multiple of capacity)")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
