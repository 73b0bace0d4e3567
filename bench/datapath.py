"""The data path's own cost per request, without sockets or peers.

``python -m bench.datapath`` drives one ClientProtocol and one pooled
UpstreamProtocol of a real Proxy in one process: the client's request goes
in through ``data_received``, the backend's response through the upstream's
``data_received``, and the transports are stubs that only count writes. So
the figure is the proxy's user-space work per request (parsing, admission,
forwarding, deadlines) with the kernel and the event loop left out; it is
the number to watch when optimising the hot path, beside ``overhead``,
which measures the whole thing against HAProxy and nginx.

Nothing listens and nothing connects: the upstream address is never used.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import uvloop

from proxy import config
from proxy.client import ClientProtocol
from proxy.server import Proxy
from proxy.upstream import UpstreamProtocol

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n\r\n"
# What nginx's `return 200 "ok\n"` sends.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
    b"Date: Fri, 04 Dec 2026 19:00:00 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)
WARMUP = 2000


class StubTransport:
    """Takes writes and counts them, and notes a close."""

    def __init__(self) -> None:
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, data: list) -> None:
        self.writes += 1

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    abort = close


async def measure(engine: str, requests: int, profile: bool) -> float:
    """Microseconds per request through the data path on ``engine``."""
    environ = {
        "MAITRED_LISTEN_ADDRESS": "127.0.0.1:0",
        "MAITRED_UPSTREAM_URL": "http://127.0.0.1:9",
        "MAITRED_LISTEN_HTTP_ENGINE": engine,
    }
    proxy = Proxy(config.load(None, environ=environ))
    await proxy.start()
    try:
        client_side, upstream_side = StubTransport(), StubTransport()
        client = ClientProtocol(proxy)
        client.connection_made(client_side)
        upstream = UpstreamProtocol(proxy.pool)
        upstream.connection_made(upstream_side)
        proxy.pool.put(upstream)

        def run(count: int) -> None:
            for _ in range(count):
                client.data_received(REQUEST)
                upstream.data_received(RESPONSE)

        run(WARMUP)
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        started = time.perf_counter()
        run(requests)
        elapsed = time.perf_counter() - started
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        if client_side.closed or upstream_side.closed:
            raise RuntimeError("the data path closed a connection mid-run")
        if client_side.writes != upstream_side.writes:
            raise RuntimeError("requests and responses do not pair up")
        if proxy.core.inflight:
            raise RuntimeError("a token was left in flight")
        return elapsed / requests * 1e6
    finally:
        await proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.datapath",
        description="The data path's user-space cost per request.",
    )
    parser.add_argument("--engines", default="compiled,h11")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one round (slows it down)")
    args = parser.parse_args()
    for engine in args.engines.split(","):
        count = args.requests if engine == "compiled" else args.requests // 40
        figures = [
            uvloop.run(measure(engine, count, args.profile and not i))
            for i in range(args.rounds)
        ]
        print(f"{engine}: {min(figures):.2f} us per request "
              f"(best of {args.rounds} rounds of {count})")


if __name__ == "__main__":
    main()
