"""Shared fixtures: a proxy and a backend running on loopback.

The proxy and the sample backend run on one uvloop event loop in a
background thread; tests talk to them over real sockets from the main
thread, as clients would. After every scenario the ``proxy`` fixture checks
the invariant: once traffic stops, in-flight is 0, the queue is empty and
no client connection is left counted.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from wire import Reader

from proxy import config
from proxy.admin import AdminServer
from proxy.demo import SampleBackend
from proxy.server import Proxy

ENGINES = ["h11", "compiled"]


class LoopThread:
    """An event loop in a daemon thread; ``call`` runs code on it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, func: Callable[[], Any], timeout: float = 10.0) -> Any:
        async def invoke():
            return func()

        return self.run(invoke(), timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Harness:
    """A running proxy in front of a running backend."""

    def __init__(self, loop: LoopThread, backend: Any, proxy: Proxy):
        self.loop = loop
        self.backend = backend
        self.proxy = proxy

    @property
    def port(self) -> int:
        return self.proxy.address[1]

    def stats(self) -> dict:
        return self.loop.call(self.proxy.core.stats)

    def set_limits(self, **limits) -> None:
        self.loop.call(lambda: self.proxy.set_limits(limits, who="test"))

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while not predicate(stats):
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.01)
            stats = self.stats()
        return stats

    def backend_counts(self) -> dict:
        """A SampleBackend's own counters, read on its event loop."""
        backend = self.backend
        return self.loop.call(lambda: {
            "active": backend.active, "peak": backend.peak,
            "served": backend.served,
        })

    def reset_backend_peak(self) -> None:
        """Restart a SampleBackend's peak from what is active now."""
        backend = self.backend

        def reset() -> None:
            backend.peak = backend.active

        self.loop.call(reset)

    def assert_quiet(self) -> None:
        """The invariant: nothing in flight, nothing queued, nothing open."""
        stats = self.wait_for(
            lambda s: s["inflight"] == 0 and s["queued"] == 0
            and s["connections"] == 0
        )
        assert stats["inflight"] == 0, stats
        assert stats["queued"] == 0, stats
        assert stats["connections"] == 0, stats
        assert self.loop.call(lambda: len(self.proxy.clients)) == 0


def make_settings(backend_port: int, **overrides: str):
    """Settings on loopback ports; overrides as {"limits.max_queue": "4"}."""
    environ = {
        "MAITRED_LISTEN_ADDRESS": "127.0.0.1:0",
        "MAITRED_UPSTREAM_URL": f"http://127.0.0.1:{backend_port}",
    }
    for name, value in overrides.items():
        section, key = name.split(".")
        environ[f"MAITRED_{section.upper()}_{key.upper()}"] = str(value)
    return config.load(None, environ=environ)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture
def start_proxy(loop_thread, engine) -> Iterator[Callable[..., Harness]]:
    """Start a backend and a proxy; checks the invariant after the test."""
    started: list[Harness] = []

    def start(seats: int = 64, service_time: float = 0.0,
              backend_port: int | None = None, backend: Any = None,
              **overrides: str) -> Harness:
        """``backend``: another backend to start instead of a SampleBackend
        (anything with async start()/stop() and an address)."""
        if backend is None:
            backend = SampleBackend(seats, service_time)
        loop_thread.run(backend.start())
        port = backend_port if backend_port is not None else backend.address[1]
        overrides.setdefault("listen.http_engine", engine)
        settings = make_settings(port, **overrides)
        proxy = Proxy(settings)
        loop_thread.run(proxy.start())
        harness = Harness(loop_thread, backend, proxy)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        try:
            harness.assert_quiet()
        finally:
            loop_thread.run(harness.proxy.close())
            loop_thread.run(harness.backend.stop())


@pytest.fixture
def proxy(start_proxy) -> Harness:
    """A proxy with roomy limits in front of an instant backend."""
    return start_proxy()


@pytest.fixture
def start_admin(loop_thread) -> Iterator[Callable[..., AdminServer]]:
    """Start the admin API of a harness's proxy on a free loopback port."""
    started: list[AdminServer] = []

    def start(harness: Harness, token: str | None = None) -> AdminServer:
        admin = AdminServer(harness.proxy, token)
        loop_thread.run(admin.start("127.0.0.1", 0))
        started.append(admin)
        return admin

    yield start
    for admin in started:
        loop_thread.call(admin.close)


class SteadyLoad:
    """Client threads sending one request after another, until stopped.

    Bounded twice: ``max_requests`` in all and ``max_seconds`` of sending,
    whichever comes first. Each client keeps its connection alive unless
    ``keep_alive`` is False or the proxy closes it. ``outcomes`` counts
    statuses (ints) and failures (exception class names).
    """

    def __init__(self, port: int, raw: bytes, clients: int,
                 max_requests: int, max_seconds: float,
                 keep_alive: bool = True) -> None:
        self.port = port
        self.raw = raw
        self.keep_alive = keep_alive
        self.outcomes: Counter = Counter()
        self.bodies: Counter = Counter()
        self._budget = max_requests
        self._deadline = time.monotonic() + max_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, daemon=True)
            for _ in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def sent(self) -> int:
        with self._lock:
            return sum(self.outcomes.values())

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return False
            if self._budget == 0:
                return False
            self._budget -= 1
            return True

    def _record(self, outcome: int | str, body: bytes = b"") -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if body:
                self.bodies[body] += 1

    def _client(self) -> None:
        sock = None
        try:
            while self._take():
                if sock is None:
                    sock = self._connect()
                    if sock is None:
                        continue
                sock = self._one_request(sock)
        finally:
            if sock is not None:
                sock.close()

    def _connect(self) -> socket.socket | None:
        try:
            address = ("127.0.0.1", self.port)
            return socket.create_connection(address, timeout=10)
        except OSError as err:
            self._record(type(err).__name__)
            time.sleep(0.01)
            return None

    def _one_request(self, sock: socket.socket) -> socket.socket | None:
        try:
            sock.sendall(self.raw)
            response = Reader(sock).response()
        except OSError as err:
            self._record(type(err).__name__)
            sock.close()
            return None
        self._record(response.status, response.body)
        if not self.keep_alive or response.header("connection") == "close":
            sock.close()
            return None
        return sock

    def stop(self, timeout: float = 15.0) -> Counter:
        """Stop sending, wait for the answers in flight; the outcomes."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "load hung"
        return self.outcomes


@pytest.fixture
def start_load() -> Iterator[Callable[..., SteadyLoad]]:
    """Start a SteadyLoad; every one is stopped after the test.

    Name it after ``start_proxy`` in a test's arguments, so the load stops
    before the proxy's quiet check runs.
    """
    started: list[SteadyLoad] = []

    def start(port: int, raw: bytes, clients: int = 8,
              max_requests: int = 2000, max_seconds: float = 8.0,
              keep_alive: bool = True) -> SteadyLoad:
        load = SteadyLoad(port, raw, clients, max_requests, max_seconds,
                          keep_alive)
        started.append(load)
        return load

    yield start
    for load in started:
        load.stop()
