"""Open-loop HTTP/1.1 load generator.

Theory of operation
-------------------
The schedule -- the time of every request, Poisson or evenly spaced, at a
rate that may change from phase to phase -- is drawn before the run starts,
and requests go out at those times whatever the responses do: a slow or
stalled server gets more connections, never fewer requests. That is how
users arrive, and it is what makes overload visible; a closed-loop tool
such as wrk slows down with the server and so hides it.

The generator records its lag: how late each request went out. Latency
runs from that moment -- connecting included, when the request needs a new
connection -- to the end of its response, on the monotonic clock (the
event loop's own clock ticks in milliseconds). A generator that falls
behind would send late and so hide the delay a user would have seen
(coordinated omission): a run whose lag p99 exceeds the allowed lag, or
that hit the generator's connection cap, is therefore invalid -- what it
measured was the generator -- and in a valid run latency from the schedule
differs from the reported one by at most that lag.

Connections are kept alive and reused, last idle first. A request takes an
idle connection or opens a new one; nothing ever waits for a connection to
come free. Each request has a client timeout: when it runs out, the
connection is reset and the request counts as a timeout.

The run is bounded in count (the schedule holds at most ``max_requests``)
and in time (it ends at the last scheduled time plus the client timeout,
plus one second at most), and it stops by itself.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .wire import ProtocolError, ResponseParser, reset_on_close

PENDING = 0
TIMEOUT = -1
CONNECT_ERROR = -2
CONNECTION_LOST = -3
PROTOCOL_ERROR = -4
NOT_SENT = -5  # the generator's own connection cap: invalidates the run

OUTCOME_NAMES = {
    TIMEOUT: "timeout",
    CONNECT_ERROR: "connect_error",
    CONNECTION_LOST: "connection_lost",
    PROTOCOL_ERROR: "protocol_error",
    NOT_SENT: "not_sent",
}

SWEEP_INTERVAL = 0.01

Sampler = Callable[[], Awaitable[dict]]


@dataclass
class Phase:
    seconds: float
    rate: float  # requests per second


@dataclass
class LoadSpec:
    port: int
    phases: list[Phase]
    timeout_s: float = 1.0
    arrivals: str = "poisson"  # or "constant"
    seed: int = 1
    max_connections: int = 9000
    max_requests: int = 1_000_000
    path: str = "/"
    prewarm: int | None = None  # connections opened before the start;
    # None: 50 ms worth of arrivals at the first phase's rate, at most 256


def prewarm_count(spec: LoadSpec) -> int:
    if spec.prewarm is not None:
        return spec.prewarm
    first = spec.phases[0].rate if spec.phases else 0.0
    return min(256, int(first * 0.05) + 1)


@dataclass
class LoadResult:
    """Per request: scheduled offset, outcome, latency and lag, in seconds."""

    sched: list[float]
    status: list[int]
    latency: list[float]
    lag: list[float]
    shed_reasons: dict[str, int] = field(default_factory=dict)
    connections_opened: int = 0
    max_open_connections: int = 0
    samples: list[dict] = field(default_factory=list)


def schedule(
    phases: list[Phase], arrivals: str, seed: int, max_requests: int
) -> list[float]:
    """Offsets in seconds of every request, phase after phase."""
    if arrivals not in ("poisson", "constant"):
        raise ValueError(f"arrivals must be poisson or constant, not {arrivals!r}")
    rng = random.Random(seed)
    times: list[float] = []
    start = 0.0
    for phase in phases:
        end = start + phase.seconds
        if phase.rate > 0:
            times += _phase_times(phase.rate, start, end, arrivals, rng)
        start = end
    return times[:max_requests]


def _phase_times(rate: float, start: float, end: float, arrivals: str,
                 rng: random.Random) -> list[float]:
    if arrivals == "constant":
        count = math.ceil((end - start) * rate - 1e-9)
        return [start + k / rate for k in range(count)]
    times = []
    t = start + rng.expovariate(rate)
    while t < end:
        times.append(t)
        t += rng.expovariate(rate)
    return times


class _Connection(asyncio.Protocol):
    __slots__ = ("gen", "transport", "parser", "req", "dead")

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport = None
        self.parser = ResponseParser()
        self.req = -1
        self.dead = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        reset_on_close(transport)

    def send(self, i: int, request: bytes) -> None:
        self.req = i
        self.gen.conn_of[i] = self
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except ProtocolError:
            self.gen.fail(self, PROTOCOL_ERROR)
            return
        for response in responses:
            self.gen.complete(self, response)

    def connection_lost(self, exc) -> None:
        self.dead = True
        response = self.parser.eof()
        if response is not None and self.req >= 0:
            self.gen.complete(self, response)
        self.gen.lost(self)


class _Generator:
    """One run: fires the schedule, pools connections, records outcomes."""

    def __init__(self, spec: LoadSpec, loop) -> None:
        self.spec = spec
        self.loop = loop
        self.request = (
            f"GET {spec.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode("ascii")
        )
        sched = schedule(spec.phases, spec.arrivals, spec.seed, spec.max_requests)
        n = len(sched)
        self.result = LoadResult(sched, [PENDING] * n, [math.nan] * n,
                                 [math.nan] * n)
        self.sent_at = [0.0] * n
        self.conn_of: dict[int, _Connection] = {}
        self.connecting: set[asyncio.Future] = set()
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()
        self.in_order: deque[int] = deque()
        self.outstanding = 0
        self.dispatched = False
        self.all_done = asyncio.Event()
        self.t0 = 0.0

    async def run(self, samplers: dict[str, Sampler]) -> LoadResult:
        await self._prewarm(prewarm_count(self.spec))
        self.t0 = time.perf_counter() + 0.05
        sweeper = asyncio.ensure_future(self._sweep())
        sampler = asyncio.ensure_future(self._sample(samplers))
        try:
            await self._dispatch()
            await self._wait_for_stragglers()
        finally:
            sweeper.cancel()
            sampler.cancel()
            for task in list(self.connecting):
                task.cancel()
            for conn in list(self.open):
                conn.transport.abort()
        return self.result

    async def _prewarm(self, count: int) -> None:
        """Open idle connections first, as a client's warm pool would be."""
        for _ in range(count):
            try:
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), "127.0.0.1", self.spec.port)
            except OSError:
                return
            self.open.add(conn)
            self.idle.append(conn)

    async def _dispatch(self) -> None:
        sched = self.result.sched
        i, n = 0, len(sched)
        while i < n:
            due = self.t0 + sched[i]
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.perf_counter()
            while i < n and self.t0 + sched[i] <= now:
                self._fire(i, now)
                i += 1
        self.dispatched = True
        if self.outstanding == 0:
            self.all_done.set()

    async def _wait_for_stragglers(self) -> None:
        sched = self.result.sched
        last = sched[-1] if sched else 0.0
        limit = self.t0 + last + self.spec.timeout_s + 1.0 - time.perf_counter()
        try:
            await asyncio.wait_for(self.all_done.wait(), max(limit, 0.0))
        except TimeoutError:
            pass

    def _fire(self, i: int, now: float) -> None:
        self.result.lag[i] = now - (self.t0 + self.result.sched[i])
        self.sent_at[i] = now
        self.outstanding += 1
        self.in_order.append(i)
        while self.idle:
            conn = self.idle.pop()
            if not conn.dead:
                conn.send(i, self.request)
                return
        if len(self.open) + len(self.connecting) >= self.spec.max_connections:
            self._finish(i, NOT_SENT)
            return
        task = asyncio.ensure_future(self._connect_and_send(i))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect_and_send(self, i: int) -> None:
        self.result.connections_opened += 1
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self), "127.0.0.1", self.spec.port
            )
        except OSError:
            self._finish(i, CONNECT_ERROR)
            return
        self.open.add(conn)
        self.result.max_open_connections = max(
            self.result.max_open_connections, len(self.open)
        )
        if self.result.status[i] == PENDING:
            conn.send(i, self.request)
        else:  # timed out while connecting
            self.idle.append(conn)

    def complete(self, conn: _Connection, response) -> None:
        i, conn.req = conn.req, -1
        if i < 0:
            self.fail(conn, PROTOCOL_ERROR)  # a response nobody asked for
            return
        if response.shed_reason:
            reasons = self.result.shed_reasons
            reasons[response.shed_reason] = reasons.get(response.shed_reason, 0) + 1
        self._finish(i, response.status)
        if response.keep_alive and not conn.dead:
            self.idle.append(conn)
        elif not conn.dead:
            conn.transport.close()

    def fail(self, conn: _Connection, outcome: int) -> None:
        i, conn.req = conn.req, -1
        if i >= 0:
            self._finish(i, outcome)
        conn.transport.abort()

    def lost(self, conn: _Connection) -> None:
        self.open.discard(conn)
        i, conn.req = conn.req, -1
        if i >= 0:
            self._finish(i, CONNECTION_LOST)

    def _finish(self, i: int, outcome: int) -> None:
        result = self.result
        if result.status[i] != PENDING:
            return
        result.status[i] = outcome
        self.conn_of.pop(i, None)
        if outcome > 0:
            result.latency[i] = time.perf_counter() - self.sent_at[i]
        self.outstanding -= 1
        if self.outstanding == 0 and self.dispatched:
            self.all_done.set()

    async def _sweep(self) -> None:
        """Time out requests past their deadline; deadlines follow the schedule."""
        status, sched = self.result.status, self.result.sched
        timeout = self.spec.timeout_s
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.perf_counter()
            while self.in_order:
                i = self.in_order[0]
                if status[i] == PENDING and self.t0 + sched[i] + timeout > now:
                    break
                self.in_order.popleft()
                if status[i] == PENDING:
                    self._time_out(i)

    def _time_out(self, i: int) -> None:
        conn = self.conn_of.get(i)
        self._finish(i, TIMEOUT)
        if conn is not None:
            conn.req = -1
            conn.transport.abort()

    async def _sample(self, samplers: dict[str, Sampler]) -> None:
        if not samplers:
            return
        while True:
            sample = {"t": time.perf_counter() - self.t0}
            for name, read in samplers.items():
                try:
                    sample[name] = await read()
                except (TimeoutError, OSError, ProtocolError, ValueError):
                    sample[name] = None
            self.result.samples.append(sample)
            await asyncio.sleep(0.1)


async def generate(
    spec: LoadSpec, samplers: dict[str, Sampler] | None = None
) -> LoadResult:
    """Run one schedule against 127.0.0.1:spec.port in the running loop."""
    gen = _Generator(spec, asyncio.get_running_loop())
    return await gen.run(samplers or {})


def run_in_loop(coro_factory: Callable[[], Awaitable]):
    """Run a coroutine on a fresh uvloop loop, with the GC paused meanwhile.

    A collection of the many per-request objects would stall the schedule
    for milliseconds; the run is bounded, so its garbage can wait.
    """
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    gc.collect()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro_factory())
    finally:
        gc.enable()


def run(spec: LoadSpec, samplers: dict[str, Sampler] | None = None) -> LoadResult:
    return run_in_loop(lambda: generate(spec, samplers))
