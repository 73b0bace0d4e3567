"""``maitred demo``: a sample backend of known capacity, maitred in front.

The sample backend behaves like the servers maitred exists for: it has
``seats`` service seats, each request holds one for ``service_time``, and
everything else waits in an unbounded queue inside it, so past its
capacity (seats / service_time requests per second) its latency grows
without bound. It counts its own concurrency, so the demo (and the tests)
can show that it never saw more than maitred's cap.

Requests: any GET holds a seat for the service time (``?delay=MS``
overrides it); a request with a body is echoed back after the same wait.
For tests, ``hold()`` keeps every seated request waiting until ``resume()``,
and the backend remembers what reached it (``connections``, ``targets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

_MAX_DELAY_MS = 60_000


class SampleBackend:
    """A small HTTP/1.1 server with a fixed number of service seats."""

    def __init__(self, seats: int = 8, service_time: float = 0.05) -> None:
        self.seats = seats
        self.service_time = service_time
        self.active = 0
        self.peak = 0
        self.served = 0
        self.connections = 0  # connections accepted
        self.targets: list[bytes] = []  # request targets, in arrival order
        self._seats: asyncio.Semaphore | None = None
        self._open: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task] = set()

    @property
    def capacity(self) -> float:
        """Requests per second the backend can serve at most."""
        return self.seats / self.service_time

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._seats = asyncio.Semaphore(self.seats)
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._serve, host, port)

    def hold(self) -> None:
        """Keep every seated request waiting (in its seat) until resume()."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._one_exchange(conn, reader, writer):
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _one_exchange(self, conn: h11.Connection, reader, writer) -> bool:
        request, body = await _read_request(conn, reader)
        if request is None:
            return False
        self.targets.append(request.target)
        delay = _delay(request.target, self.service_time)
        async with self._seats:
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                await self._open.wait()
                await asyncio.sleep(delay)
            finally:
                self.active -= 1
        self.served += 1
        payload = body if body else b"ok\n"
        headers = [("Content-Length", str(len(payload))),
                   ("Content-Type", "text/plain")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
        writer.write(conn.send(h11.Data(data=payload)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _read_request(conn: h11.Connection, reader) -> tuple:
    request = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and request is None:
                return None, b""
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        else:
            return None, b""


def _delay(target: bytes, default: float) -> float:
    query = parse_qs(urlsplit(target.decode("latin-1")).query)
    try:
        ms = int(query["delay"][0])
    except (KeyError, ValueError):
        return default
    return min(max(ms, 0), _MAX_DELAY_MS) / 1000


# -- the demo load ------------------------------------------------------------


@dataclass
class LoadReport:
    """What a bounded burst of requests got back."""

    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    shed_reasons: dict[str, int] = field(default_factory=dict)
    ok_latency: list[float] = field(default_factory=list)
    shed_latency: list[float] = field(default_factory=list)
    failed: int = 0

    def record(self, status: int, shed: str | None, latency: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.ok_latency.append(latency)
        elif shed:
            self.shed_reasons[shed] = self.shed_reasons.get(shed, 0) + 1
            self.shed_latency.append(latency)


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


async def drive_load(host: str, port: int, rate: float, duration: float,
                     timeout: float = 5.0) -> LoadReport:
    """Send GETs open-loop at ``rate`` per second for ``duration`` seconds.

    Each request uses its own connection, so a slow answer never delays the
    next arrival. Bounded: at most rate * duration requests, and every one
    gives up after ``timeout``.
    """
    report = LoadReport()
    total = int(rate * duration)
    start = time.monotonic()
    tasks = []
    for i in range(total):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(_one_get(host, port, timeout, report)))
        report.sent += 1
    await asyncio.gather(*tasks)
    return report


async def _one_get(host: str, port: int, timeout: float,
                   report: LoadReport) -> None:
    started = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            status, shed = await _read_status(reader)
    except (OSError, TimeoutError, ValueError):
        report.failed += 1
        return
    finally:
        if writer is not None:
            writer.close()
    report.record(status, shed, time.monotonic() - started)


async def _read_status(reader: asyncio.StreamReader) -> tuple[int, str | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    shed = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-maitred-shed":
            shed = value.strip().decode()
    with contextlib.suppress(OSError):
        await reader.read()
    return status, shed


# -- maitred demo -------------------------------------------------------------

DEMO_SEATS = 8
DEMO_SERVICE_TIME = 0.05
# The limits configs/demo.toml holds; a test checks the two agree.
DEMO_LIMITS = {
    "MAITRED_LIMITS_MAX_CONCURRENCY": "8",
    "MAITRED_LIMITS_MAX_QUEUE": "16",
    "MAITRED_LIMITS_QUEUE_TIMEOUT": "100ms",
    "MAITRED_UPSTREAM_RESPONSE_TIMEOUT": "5s",
}
_BURST_FACTOR = 4
_BURST_SECONDS = 2.5


def demo_settings(port: int, backend_port: int):
    """The demo's settings: configs/demo.toml's limits, on loopback ports."""
    from proxy import config

    environ = dict(DEMO_LIMITS)
    environ["MAITRED_LISTEN_ADDRESS"] = f"127.0.0.1:{port}"
    environ["MAITRED_UPSTREAM_URL"] = f"http://127.0.0.1:{backend_port}"
    return config.load(None, environ=environ)


async def run_demo(port: int, with_load: bool, echo) -> None:
    """Start the sample backend and maitred; serve, or burst and report."""
    from proxy.server import Proxy

    backend = SampleBackend(DEMO_SEATS, DEMO_SERVICE_TIME)
    await backend.start()
    settings = demo_settings(port, backend.address[1])
    proxy = Proxy(settings)
    await proxy.start()
    limits = settings.limits
    echo("maitred demo")
    echo(f"  backend  http://127.0.0.1:{backend.address[1]}  "
         f"{backend.seats} seats x {backend.service_time * 1000:.0f} ms = "
         f"{backend.capacity:.0f} requests/s at most")
    echo(f"  maitred  http://127.0.0.1:{proxy.address[1]}  "
         f"max_concurrency {limits.max_concurrency}, max_queue "
         f"{limits.max_queue}, queue_timeout "
         f"{limits.queue_timeout * 1000:.0f} ms")
    try:
        if with_load:
            await _burst_and_report(backend, proxy, echo)
        else:
            echo(f"serving; try: curl -i http://127.0.0.1:{proxy.address[1]}/"
                 "  (Ctrl-C stops)")
            await asyncio.Event().wait()
    finally:
        await proxy.drain(1.0)
        await proxy.close()
        await backend.stop()


async def _burst_and_report(backend: SampleBackend, proxy, echo) -> None:
    rate = backend.capacity * _BURST_FACTOR
    echo(f"\nburst: {rate:.0f} requests/s ({_BURST_FACTOR}x capacity) for "
         f"{_BURST_SECONDS} s, each request on its own connection\n")
    through = await drive_load("127.0.0.1", proxy.address[1], rate,
                               _BURST_SECONDS)
    peak_behind_maitred = backend.peak
    stats = proxy.core.stats()
    backend.peak = 0
    direct = await drive_load("127.0.0.1", backend.address[1], rate,
                              _BURST_SECONDS, timeout=3.0)
    rows = [
        ("requests sent", through.sent, direct.sent),
        ("200 OK", through.statuses.get(200, 0), direct.statuses.get(200, 0)),
        ("503 shed (queue_full)", through.shed_reasons.get("queue_full", 0), "-"),
        ("503 shed (queue_timeout)",
         through.shed_reasons.get("queue_timeout", 0), "-"),
        ("failed or timed out (3 s)", through.failed, direct.failed),
        ("200 latency p50", _ms(through.ok_latency, 50), _ms(direct.ok_latency, 50)),
        ("200 latency p99", _ms(through.ok_latency, 99), _ms(direct.ok_latency, 99)),
        ("503 latency p50", _ms(through.shed_latency, 50), "-"),
        ("503 latency p99", _ms(through.shed_latency, 99), "-"),
        ("backend peak concurrency", peak_behind_maitred, backend.peak),
    ]
    echo(f"  {'':28}{'through maitred':>18}{'backend alone':>18}")
    for label, a, b in rows:
        echo(f"  {label:28}{a!s:>18}{b!s:>18}")
    echo(f"\n  maitred admitted {stats['admitted']}, queued {stats['enqueued']}, "
         f"shed {stats['requests']['shed']}; cap "
         f"{proxy.core.limits()['max_concurrency']}")
    echo("  maitred kept the backend at its cap and answered the surplus at "
         "once;\n  alone, the backend queued everything and latency grew "
         "until clients gave up.")


def _ms(samples: list[float], q: float) -> str:
    if not samples:
        return "-"
    return f"{percentile(samples, q) * 1000:.1f} ms"
