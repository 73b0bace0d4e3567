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
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from proxy import config
from proxy.demo import SampleBackend
from proxy.server import Proxy

ENGINES = ["h11"]


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

    def __init__(self, loop: LoopThread, backend: SampleBackend, proxy: Proxy):
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
              backend_port: int | None = None, **overrides: str) -> Harness:
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
