"""idle-connections: memory per idle keep-alive client connection.

Each system starts in front of a fast backend. After a short warm-up the
bench reads the RSS of the system's processes (nginx: master and worker),
opens ``idle_count`` client connections, sends one request on each and
keeps every connection open and idle; after ``settle_s`` it reads the RSS
again. Memory per connection = RSS delta / connections still open. The
open file descriptors of the system are read the same way, to show that
the connections were really held.
"""

from __future__ import annotations

import asyncio

from .. import loadgen, report
from ..harness import Context, attempt, per_system, serving, start_failed
from ..procs import StartError
from ..systems import Limits, haproxy_maxconn_cap
from ..wire import ProtocolError, ResponseParser, reset_on_close

NAME = "idle-connections"

DEFAULTS = {  # setting: (full run, --quick run)
    "rounds": (1, 1),
    "idle_count": (10000, 1000),
    "open_concurrency": (200, 200),
    "settle_s": (2.0, 0.5),
}

KEYS = ["kib_per_connection", "rss_before_kib", "rss_after_kib", "held",
        "fds_delta"]

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


class _IdleConnection(asyncio.Protocol):
    """Sends one request, then holds the connection until told to let go."""

    def __init__(self, answered: asyncio.Future) -> None:
        self.answered = answered
        self.parser = ResponseParser()
        self.transport = None
        self.lost = False
        self.status: int | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        reset_on_close(transport)
        transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except ProtocolError:
            responses = []
        if responses and self.status is None:
            self.status = responses[0].status
        if responses and not self.answered.done():
            self.answered.set_result(self.status)

    def connection_lost(self, exc) -> None:
        self.lost = True
        if not self.answered.done():
            self.answered.set_result(None)


async def hold_connections(port: int, count: int, concurrency: int,
                           ) -> list[_IdleConnection]:
    """Open ``count`` connections, one request each; return them held open."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    held: list[_IdleConnection] = []

    async def open_one() -> None:
        async with gate:
            answered = loop.create_future()
            try:
                _, conn = await loop.create_connection(
                    lambda: _IdleConnection(answered), "127.0.0.1", port)
            except OSError:
                return
            held.append(conn)
            await asyncio.wait_for(answered, 5.0)

    await asyncio.gather(*(open_one() for _ in range(count)),
                         return_exceptions=True)
    return held


def release(held: list[_IdleConnection]) -> None:
    for conn in held:
        if not conn.lost:
            conn.transport.abort()


def run(ctx: Context) -> dict:
    cap = haproxy_maxconn_cap()
    if ctx.settings["idle_count"] > cap and any(
            p.kind == "haproxy" and p.available for p in ctx.peers):
        ctx.notes.append(
            f"HAProxy's maxconn is capped at {cap} here: it needs two file "
            "descriptors per connection and the hard limit is "
            f"{2 * cap + 64}; it cannot hold all "
            f"{ctx.settings['idle_count']} connections")
    rows = []
    for round_ in range(ctx.settings["rounds"]):
        for peer in ctx.available():
            if attempt(ctx, peer):
                rows.append(measure(ctx, peer, round_))
    summary = per_system(ctx, rows, KEYS)
    return {"results": rows, "summary": summary, "goals": goals(summary)}


def measure(ctx: Context, peer, round_: int) -> dict:
    s = ctx.settings
    count = s["idle_count"]
    ctx.log(f"round {round_ + 1}: {peer.name}, {count} idle connections")
    limits = Limits(max_connections=count + 1000, idle_s=300.0)
    try:
        with serving(ctx, peer, limits, 1, 0.0) as (running, _):
            return loadgen.run_in_loop(
                lambda: _measure(running, count, s, peer.name, round_))
    except StartError as error:
        return {**start_failed(ctx, peer, error), "round": round_}


async def _measure(running, count: int, s: dict, name: str, round_: int):
    warm = await hold_connections(running.port, 20, 20)
    release(warm)
    await asyncio.sleep(0.5)
    process = running.measured
    rss_before, fds_before = process.rss_kib(), process.open_fds()
    held = await hold_connections(running.port, count, s["open_concurrency"])
    try:
        await asyncio.sleep(s["settle_s"])
        rss_after, fds_after = process.rss_kib(), process.open_fds()
        alive = [c for c in held if not c.lost and c.status == 200]
    finally:
        release(held)
    per_connection = (rss_after - rss_before) / len(alive) if alive else None
    return {
        "system": name, "round": round_, "requested": count,
        "held": len(alive), "rss_before_kib": rss_before,
        "rss_after_kib": rss_after, "fds_delta": fds_after - fds_before,
        "kib_per_connection": None if per_connection is None
        else round(per_connection, 2),
        "valid": len(alive) >= 0.99 * count,
        "invalid_reason": None if len(alive) >= 0.99 * count
        else f"only {len(alive)} of {count} connections held",
    }


def goals(summary: list[dict]) -> list[dict]:
    found = []
    for entry in summary:
        if entry["system"].startswith("maitred") and "missing" not in entry:
            value = entry.get("kib_per_connection")
            found.append(report.goal(
                "at most 10 KiB per idle connection", entry["system"], value,
                None if value is None else value <= 10))
    return found


def markdown(result: dict) -> str:
    headers = ["system", "KiB per connection", "connections held",
               "RSS before KiB", "RSS after KiB", "fds added", "valid rounds"]
    rows = report.summary_rows(result, len(headers), lambda e: [
        e["system"], e["kib_per_connection"], e["held"], e["rss_before_kib"],
        e["rss_after_kib"], e["fds_delta"], report.rounds_cell(e),
    ])
    intro = (f"{result['settings']['idle_count']} idle keep-alive client "
             "connections, one request each. RSS of the system's processes "
             "(the bare backend row: the bench's Python backend).\n\n")
    return "## Idle connections\n\n" + intro + report.table(headers, rows)


def plot(result: dict, out, pyplot) -> list[str]:
    entries = [e for e in result["summary"]
               if e.get("kib_per_connection") is not None]
    if not entries:
        return []
    fig, axes = pyplot.subplots(figsize=(7, 4))
    axes.bar([e["system"] for e in entries],
             [e["kib_per_connection"] for e in entries])
    axes.axhline(10, color="grey", linestyle=":", linewidth=0.8)
    axes.set_ylabel("KiB per idle connection (RSS delta / held)")
    axes.tick_params(axis="x", rotation=20)
    axes.grid(True, axis="y", alpha=0.3)
    fig.suptitle("idle connections" + (" (smoke run)" if result["quick"]
                                       else ""))
    fig.tight_layout()
    fig.savefig(out / "idle-connections.png", dpi=110)
    pyplot.close(fig)
    return ["idle-connections.png"]
