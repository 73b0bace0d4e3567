"""overhead: what a proxy costs when all is well.

wrk (closed loop, one thread, on the load core) drives each system in front
of a fast origin: nginx answering ``return 200`` (the bench's Python
backend would be the bottleneck well before HAProxy is; without nginx it is
used anyway and the results say so). The origin shares the load core with
wrk; each proxy has the other core to itself.

Per system and round: requests/s and p50/p99 at ``connections`` keep-alive
connections; the proxy's CPU time during that run, hence requests/s per
core of proxy CPU; and p50/p99 at light load (one connection, one request
at a time). Ratios are taken to HAProxy in the same round, and added
latency to the bare origin in the same round; rounds alternate the systems
(A B C A B C).
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from .. import report
from ..harness import Context, attempt, per_system, require_tool, start_failed
from ..procs import StartError, pinned
from ..systems import (
    Limits,
    find_tool,
    start_backend,
    start_nginx_origin,
    start_system,
)

NAME = "overhead"

DEFAULTS = {  # setting: (full run, --quick run); wrk runs whole seconds
    "rounds": (3, 1),
    "duration_s": (10.0, 1.0),
    "warmup_s": (1.0, 1.0),
    "latency_duration_s": (5.0, 1.0),
    "connections": (64, 64),
}

LUA = Path(__file__).resolve().parent.parent / "wrk_report.lua"

KEYS = ["rps", "p50_us", "p99_us", "proxy_cpu", "rps_per_core", "light_p50_us",
        "light_p99_us", "rps_vs_haproxy", "rps_per_core_vs_haproxy",
        "added_light_p50_us", "errors"]


def run(ctx: Context) -> dict:
    wrk = require_tool(ctx, "wrk")
    if wrk is None:
        return {"results": [], "summary": _missing_all(ctx), "goals": []}
    rows: list[dict] = []
    with ExitStack() as stack:
        origin, origin_port = _start_origin(ctx, stack)
        for round_ in range(ctx.settings["rounds"]):
            batch = [measure(ctx, wrk, peer, origin, origin_port, round_)
                     for peer in ctx.available() if attempt(ctx, peer)]
            rows += _relate(batch)
    summary = per_system(ctx, rows, KEYS)
    _note_unsaturated(ctx, summary)
    return {"results": rows, "summary": summary, "goals": goals(summary)}


def _note_unsaturated(ctx: Context, summary: list[dict]) -> None:
    """Say when a proxy had CPU to spare: then the load core set the pace."""
    for entry in summary:
        cpu = entry.get("proxy_cpu")
        if entry["system"] != "backend" and cpu is not None and cpu < 0.9:
            ctx.notes.append(
                f"{entry['system']} used {cpu:.0%} of its core: wrk and the "
                "origin on the load core set the pace, so compare requests/s "
                "per core of proxy CPU rather than requests/s")


def _missing_all(ctx: Context) -> list[dict]:
    return [{"system": peer.name, "missing": peer.reason or "wrk is missing"}
            for peer in ctx.peers]


def _start_origin(ctx: Context, stack: ExitStack):
    nginx = find_tool("nginx", ctx.tools.get("nginx"))
    if nginx is not None:
        child, port = start_nginx_origin(nginx, ctx.workdir, ctx.load_cpu)
        ctx.settings["origin"] = "nginx return 200"
    else:
        child, port = start_backend(ctx.workdir, 1, 0.0, ctx.load_cpu)
        ctx.settings["origin"] = "bench Python backend (answers at once)"
        ctx.notes.append("nginx missing: the origin is the bench's Python "
                         "backend, which likely caps every system's rate")
    stack.callback(child.stop)
    return child, port


def measure(ctx: Context, wrk: str, peer, origin, origin_port: int,
            round_: int) -> dict:
    s = ctx.settings
    ctx.log(f"round {round_ + 1}: {peer.name}")
    try:
        running, child = start_system(peer, origin_port, origin, Limits(),
                                      ctx.workdir, ctx.proxy_cpu)
    except StartError as error:
        return {**start_failed(ctx, peer, error), "round": round_}
    try:
        url = f"http://127.0.0.1:{running.port}/"
        if s["warmup_s"] > 0:
            run_wrk(ctx, wrk, url, s["connections"], s["warmup_s"])
        cpu_before, clock = running.measured.cpu_seconds(), time.monotonic()
        loaded = run_wrk(ctx, wrk, url, s["connections"], s["duration_s"])
        cpu = (running.measured.cpu_seconds() - cpu_before) / (
            time.monotonic() - clock)
        light = run_wrk(ctx, wrk, url, 1, s["latency_duration_s"])
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return {"system": peer.name, "round": round_, "error": str(error)}
    finally:
        if child is not None:
            child.stop()
    return _row(peer.name, round_, loaded, light, cpu)


def _row(name: str, round_: int, loaded: dict, light: dict, cpu: float) -> dict:
    rps = loaded["requests"] / (loaded["duration_us"] / 1e6)
    errors = sum(loaded[k] + light[k] for k in (
        "connect_errors", "read_errors", "write_errors", "status_errors",
        "timeouts"))
    return {
        "system": name, "round": round_, "rps": round(rps),
        "p50_us": loaded["p50_us"], "p99_us": loaded["p99_us"],
        "proxy_cpu": round(cpu, 3),
        "rps_per_core": round(rps / cpu) if cpu > 0.05 else None,
        "light_p50_us": light["p50_us"], "light_p99_us": light["p99_us"],
        "errors": errors, "valid": errors == 0,
        "invalid_reason": f"{errors} wrk errors" if errors else None,
    }


def run_wrk(ctx: Context, wrk: str, url: str, connections: int,
            seconds: float) -> dict:
    """One wrk run on the load core; its figures from wrk_report.lua."""
    seconds = max(1, round(seconds))
    cmd = pinned([wrk, "-t1", f"-c{connections}", f"-d{seconds}s",
                  "--timeout", "2s", "-s", str(LUA), url], ctx.load_cpu)
    done = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=seconds + 30)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_WRK "):
            return json.loads(line.partition(" ")[2])
    raise RuntimeError(f"wrk printed no figures (exit {done.returncode}): "
                       f"{done.stderr.strip()[-300:]}")


def _relate(batch: list[dict]) -> list[dict]:
    """Ratios to HAProxy and latency added to the origin, same round."""
    by_name = {row["system"]: row for row in batch if "error" not in row}
    haproxy, bare = by_name.get("haproxy"), by_name.get("backend")
    for row in by_name.values():
        if haproxy:
            row["rps_vs_haproxy"] = round(row["rps"] / haproxy["rps"], 3)
            if row["rps_per_core"] and haproxy["rps_per_core"]:
                row["rps_per_core_vs_haproxy"] = round(
                    row["rps_per_core"] / haproxy["rps_per_core"], 3)
        if bare:
            row["added_light_p50_us"] = round(
                row["light_p50_us"] - bare["light_p50_us"], 1)
    return batch


def goals(summary: list[dict]) -> list[dict]:
    found = []
    for entry in summary:
        if not entry["system"].startswith("maitred") or "missing" in entry:
            continue
        ratio = entry.get("rps_per_core_vs_haproxy")
        added = entry.get("added_light_p50_us")
        found.append(report.goal(
            "requests/s per core >= 0.75x HAProxy's", entry["system"], ratio,
            None if ratio is None else ratio >= 0.75))
        found.append(report.goal(
            "added p50 latency at light load < 150 us", entry["system"], added,
            None if added is None else added < 150))
    return found


def markdown(result: dict) -> str:
    headers = ["system", "req/s", "vs HAProxy", "proxy CPU", "req/s per core",
               "per core vs HAProxy", "p50 us", "p99 us", "light p50 us",
               "added p50 us", "valid rounds"]
    rows = report.summary_rows(result, len(headers), lambda e: [
        e["system"], e["rps"], e["rps_vs_haproxy"],
        report.percent(e["proxy_cpu"]), e["rps_per_core"],
        e["rps_per_core_vs_haproxy"], e["p50_us"], e["p99_us"],
        e["light_p50_us"], e["added_light_p50_us"], report.rounds_cell(e),
    ])
    settings = result["settings"]
    intro = (f"wrk, 1 thread, {settings['connections']} connections, "
             f"{settings['duration_s']} s per round, origin: "
             f"{settings.get('origin')}. Light load: 1 connection. "
             "Proxy CPU is the share of one core the proxy used; for the "
             "bare backend row it is the origin's. Medians over rounds.\n\n")
    return "## Overhead\n\n" + intro + report.table(headers, rows)


def plot(result: dict, out, pyplot) -> list[str]:
    entries = [e for e in result["summary"] if e.get("rps")]
    if not entries:
        return []
    names = [e["system"] for e in entries]
    xs = range(len(names))
    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    left.bar([x - 0.2 for x in xs], [e["rps"] for e in entries], 0.4,
             yerr=_errors(entries, "rps"), capsize=4, label="requests/s")
    per_core = [e if e["system"] != "backend" and e.get("rps_per_core")
                else {**e, "rps_per_core": 0.0, "rps_per_core_spread": None}
                for e in entries]
    left.bar([x + 0.2 for x in xs], [e["rps_per_core"] for e in per_core],
             0.4, yerr=_errors(per_core, "rps_per_core"), capsize=4,
             label="requests/s per core of proxy CPU")
    left.set_xticks(list(xs), names)
    left.legend(fontsize="small")
    right.bar(names, [e["light_p50_us"] for e in entries],
              yerr=_errors(entries, "light_p50_us"), capsize=4)
    right.set_ylabel("p50 latency at light load (us)")
    for axes in (left, right):
        axes.tick_params(axis="x", rotation=20)
        axes.grid(True, axis="y", alpha=0.3)
    fig.suptitle("overhead" + (" (smoke run)" if result["quick"] else ""))
    fig.tight_layout()
    fig.savefig(out / "overhead.png", dpi=110)
    pyplot.close(fig)
    return ["overhead.png"]


def _errors(entries: list[dict], key: str) -> list[list[float]]:
    low, high = [], []
    for entry in entries:
        spread = entry.get(key + "_spread") or [entry[key], entry[key]]
        low.append(entry[key] - spread[0])
        high.append(spread[1] - entry[key])
    return [low, high]
