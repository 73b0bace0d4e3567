"""slow-clients: a normal load beside thousands of slow-loris connections.

Each system runs the same open-loop load (``load_multiple`` of capacity)
twice, interleaved: alone, and beside ``loris`` connections that each send
the start of a request head and then one more header line every
``loris_interval_s``, never finishing it. A loris that the system closes is
replaced, so the pressure stays on for the whole run (at most
``loris_reconnects`` replacements per connection). The load starts once the
loris connections are open (``loris_ramp_s``).

Reported: the normal load's goodput and success p99 alone and beside the
loris connections; how many loris were still open at the end and how many
the system cut (its header timeout is ``client_header_s``).
"""

from __future__ import annotations

import asyncio
import itertools

from .. import loadgen, report
from ..harness import Context, attempt, per_system, serving, start_failed
from ..procs import StartError
from ..stats import lag_check, summarize
from ..wire import reset_on_close

NAME = "slow-clients"

DEFAULTS = {  # setting: (full run, --quick run)
    "rounds": (2, 1),
    "duration_s": (10.0, 1.5),
    "warmup_s": (1.0, 0.5),
    "load_multiple": (0.5, 0.5),
    "loris": (3000, 300),
    "loris_interval_s": (1.0, 0.5),
    "loris_ramp_s": (2.0, 0.5),
    "loris_reconnects": (3, 3),
    "client_header_s": (10.0, 10.0),
}

KEYS = ["goodput_rps", "goodput_of_offered", "success_p50_ms",
        "success_p99_ms", "timeouts", "errors", "loris_open_at_end",
        "loris_cut", "lag_p99_ms"]

LORIS_START = b"GET / HTTP/1.1\r\nHost: bench\r\n"


class _Loris(asyncio.Protocol):
    def __init__(self, swarm: _Swarm, slot: int) -> None:
        self.swarm = swarm
        self.slot = slot
        self.transport = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        reset_on_close(transport)
        transport.write(LORIS_START)

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.swarm.cut(self)


class _Swarm:
    """``size`` slow-loris connections, trickling header lines, replaced
    when the server closes them."""

    def __init__(self, port: int, size: int, interval: float,
                 reconnects: int) -> None:
        self.port, self.size, self.interval = port, size, interval
        self.budget = size * reconnects
        self.live: set[_Loris] = set()
        self.cuts = 0
        self.stopping = False
        self.slots = itertools.count()

    async def ramp(self, seconds: float) -> None:
        pause = seconds / max(self.size, 1)
        for _ in range(self.size):
            await self._open()
            await asyncio.sleep(pause)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Loris(self, next(self.slots)), "127.0.0.1",
                self.port)
        except OSError:
            return
        if self.stopping:
            conn.transport.abort()
        else:
            self.live.add(conn)

    def cut(self, conn: _Loris) -> None:
        self.live.discard(conn)
        if self.stopping:
            return
        self.cuts += 1
        if self.budget > 0:
            self.budget -= 1
            asyncio.ensure_future(self._open())

    async def trickle(self) -> None:
        """One header line per connection per interval, spread evenly."""
        ticks = 10
        for tick in itertools.cycle(range(ticks)):
            await asyncio.sleep(self.interval / ticks)
            if self.stopping:
                return
            for conn in list(self.live):
                if conn.slot % ticks == tick and not conn.lost:
                    conn.transport.write(b"X-Slow: %d\r\n" % tick)

    def stop(self) -> None:
        self.stopping = True
        for conn in list(self.live):
            conn.transport.abort()


def run(ctx: Context) -> dict:
    rows = []
    for round_ in range(ctx.settings["rounds"]):
        for peer in ctx.available():
            for loris in (0, ctx.settings["loris"]):
                if attempt(ctx, peer):
                    rows.append(measure(ctx, peer, loris, round_))
    summary = per_system(ctx, rows, KEYS, by="loris",
                         values=(0, ctx.settings["loris"]))
    return {"results": rows, "summary": summary, "goals": []}


def measure(ctx: Context, peer, loris: int, round_: int) -> dict:
    s = ctx.settings
    ctx.log(f"round {round_ + 1}: {peer.name}, {loris} slow clients")
    rate = s["load_multiple"] * ctx.capacity_rps
    spec = loadgen.LoadSpec(
        port=0, phases=[loadgen.Phase(s["warmup_s"] + s["duration_s"], rate)],
        timeout_s=s["client_timeout_ms"] / 1000.0, arrivals=s["arrivals"],
        seed=s["seed"] + round_, max_connections=s["max_client_connections"],
    )
    limits = ctx.admission_limits(client_header_s=s["client_header_s"])
    try:
        with serving(ctx, peer, limits, s["slots"],
                     s["service_ms"]) as (running, _):
            spec.port = running.port
            result, swarm = loadgen.run_in_loop(
                lambda: _beside_loris(spec, loris, s))
    except StartError as error:
        return {**start_failed(ctx, peer, error), "loris": loris,
                "round": round_}
    row = {"system": peer.name, "loris": loris, "round": round_}
    window = (s["warmup_s"], s["warmup_s"] + s["duration_s"])
    row.update(summarize(result, *window, s["slo_ms"] / 1000.0,
                         ctx.capacity_rps))
    row["goodput_of_offered"] = round(row["good"] / row["offered"], 4) if (
        row["offered"]) else None
    row.update(lag_check(result, s["max_lag_ms"], *window))
    row["loris_open_at_end"] = swarm["open_at_end"]
    row["loris_cut"] = swarm["cut"]
    return row


async def _beside_loris(spec: loadgen.LoadSpec, loris: int, s: dict):
    swarm = _Swarm(spec.port, loris, s["loris_interval_s"],
                   s["loris_reconnects"])
    trickle = asyncio.ensure_future(swarm.trickle())
    try:
        await swarm.ramp(s["loris_ramp_s"] if loris else 0.0)
        result = await loadgen.generate(spec)
        facts = {"open_at_end": len(swarm.live), "cut": swarm.cuts}
    finally:
        swarm.stop()
        trickle.cancel()
    return result, facts


def markdown(result: dict) -> str:
    headers = ["system", "slow clients", "goodput/s", "of offered",
               "success p50 ms", "success p99 ms", "timeouts", "errors",
               "loris open at end", "loris cut", "valid rounds"]
    rows = report.summary_rows(result, len(headers), lambda e: [
        e["system"], e["loris"], e["goodput_rps"],
        report.percent(e["goodput_of_offered"]), e["success_p50_ms"],
        e["success_p99_ms"], e["timeouts"], e["errors"], e["loris_open_at_end"],
        e["loris_cut"], report.rounds_cell(e),
    ])
    s = result["settings"]
    intro = (f"Normal load: {s['load_multiple']:g}x capacity, "
             f"{s['duration_s']:g} s; beside {s['loris']} slow-loris "
             f"connections, one header line each per "
             f"{s['loris_interval_s']:g} s; header timeout "
             f"{s['client_header_s']:g} s.\n\n")
    return "## Slow clients\n\n" + intro + report.table(headers, rows)


def plot(result: dict, out, pyplot) -> list[str]:
    entries = [e for e in result["summary"] if e.get("valid_rounds")]
    names = sorted({e["system"] for e in entries}, key=[
        p["name"] for p in result["systems"]].index)
    if not names:
        return []
    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    width = 0.4
    for offset, loris in ((-width / 2, 0), (width / 2, result["settings"]
                                              ["loris"])):
        picked = {e["system"]: e for e in entries if e["loris"] == loris}
        xs = [i + offset for i in range(len(names))]
        label = "alone" if loris == 0 else f"beside {loris} slow clients"
        left.bar(xs, [_get(picked, n, "goodput_of_offered") for n in names],
                 width, label=label)
        right.bar(xs, [_get(picked, n, "success_p99_ms") for n in names],
                  width, label=label)
    for axes, ylabel in ((left, "goodput (fraction of offered)"),
                         (right, "success p99 (ms)")):
        axes.set_xticks(range(len(names)), names, rotation=20)
        axes.set_ylabel(ylabel)
        axes.grid(True, axis="y", alpha=0.3)
    left.legend(fontsize="small")
    fig.suptitle("slow clients" + (" (smoke run)" if result["quick"] else ""))
    fig.tight_layout()
    fig.savefig(out / "slow-clients.png", dpi=110)
    pyplot.close(fig)
    return ["slow-clients.png"]


def _get(picked: dict, name: str, key: str) -> float:
    value = picked.get(name, {}).get(key)
    return 0.0 if value is None else value
