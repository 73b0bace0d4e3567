"""The controlled-capacity backend the bench puts behind every proxy.

Theory of operation
-------------------
The backend has N service slots. A request takes a free slot and holds it
for S milliseconds -- a timer, not CPU work -- then gets a small 200. While
every slot is busy, requests wait in an unbounded FIFO queue. Nothing is
refused, and nothing is dropped when its client has gone: the work is still
done, as a thread-pool server would do it. Its capacity is therefore exactly
N * 1000 / S requests per second, and offered more than that, its queue and
every request's latency grow without bound: the collapse that admission
control exists to prevent.

With S = 0 there are no slots at all: every request is answered at once (the
fast backend of the idle-connections scenario).

``GET /_bench/stats`` is answered at once, outside the slots, with JSON
counters (in flight, queued, served, connections); the bench reads it
directly, never through a proxy, to see the backend's queue.

Run it as ``python -m bench.backend --port P --slots N --service-ms S``. It
binds 127.0.0.1 only and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import deque

STATS_PATH = b"/_bench/stats"
MAX_HEAD = 16 * 1024

_OK_BODY = b"ok\n"
_OK_KEEP = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_OK_BODY) + _OK_BODY
)
_OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_OK_BODY) + _OK_BODY
)
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)


class Capacity:
    """N slots held S seconds each, and the unbounded queue in front."""

    def __init__(self, loop, slots: int, service_s: float) -> None:
        self.loop = loop
        self.slots = slots
        self.service_s = service_s
        self.free = slots
        self.waiting: deque[Connection] = deque()
        self.served = 0
        self.max_inflight = 0
        self.max_queued = 0

    @property
    def inflight(self) -> int:
        return self.slots - self.free

    def submit(self, conn: Connection) -> None:
        if self.service_s <= 0:
            self.served += 1
            conn.respond()
        elif self.free:
            self._start(conn)
        else:
            self.waiting.append(conn)
            self.max_queued = max(self.max_queued, len(self.waiting))

    def _start(self, conn: Connection) -> None:
        self.free -= 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.loop.call_later(self.service_s, self._finish, conn)

    def _finish(self, conn: Connection) -> None:
        self.free += 1
        self.served += 1
        if self.waiting:
            self._start(self.waiting.popleft())
        conn.respond()


class Server:
    """Shared state of one backend process: capacity and connection counts."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self.connections_open = 0
        self.connections_total = 0

    def stats(self) -> dict:
        cap = self.capacity
        capacity_rps = cap.slots / cap.service_s if cap.service_s > 0 else None
        return {
            "slots": cap.slots,
            "service_ms": cap.service_s * 1000.0,
            "capacity_rps": capacity_rps,
            "inflight": cap.inflight,
            "queued": len(cap.waiting),
            "served": cap.served,
            "max_inflight": cap.max_inflight,
            "max_queued": cap.max_queued,
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
        }


class Connection(asyncio.Protocol):
    """One client connection; serves its requests one at a time, in order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport = None
        self.buffer = bytearray()
        self.busy = False
        self.keep_alive = True

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections_open += 1
        self.server.connections_total += 1

    def connection_lost(self, exc) -> None:
        self.server.connections_open -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()

    def respond(self) -> None:
        self.busy = False
        if self.transport.is_closing():
            return
        if self.keep_alive:
            self.transport.write(_OK_KEEP)
            self._next_request()
        else:
            self.transport.write(_OK_CLOSE)
            self.transport.close()

    def _next_request(self) -> None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._reject()
            return
        request = _parse_head(bytes(self.buffer[:head_end]))
        if request is None:
            self._reject()
            return
        target, keep_alive, body_length = request
        if len(self.buffer) < head_end + 4 + body_length:
            return
        del self.buffer[: head_end + 4 + body_length]
        self.keep_alive = keep_alive
        self.busy = True
        if target == STATS_PATH:
            self._answer_stats()
        else:
            self.server.capacity.submit(self)

    def _answer_stats(self) -> None:
        body = json.dumps(self.server.stats()).encode()
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.busy = False
        if self.keep_alive:
            self._next_request()
        else:
            self.transport.close()

    def _reject(self) -> None:
        self.transport.write(_BAD_REQUEST)
        self.transport.close()


def _parse_head(head: bytes) -> tuple[bytes, bool, int] | None:
    """Target, keep-alive and body length of a request head, None if bad."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    keep_alive = parts[2] == b"HTTP/1.1"
    body_length = 0
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            if not value.isdigit():
                return None
            body_length = int(value)
        elif name == b"transfer-encoding":
            return None
        elif name == b"connection":
            if b"close" in value:
                keep_alive = False
            elif b"keep-alive" in value:
                keep_alive = True
    return parts[1], keep_alive, body_length


async def serve(port: int, slots: int, service_ms: float) -> None:
    """Serve on 127.0.0.1:port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = Server(Capacity(loop, slots, service_ms / 1000.0))
    listener = await loop.create_server(
        lambda: Connection(server), "127.0.0.1", port, backlog=4096
    )
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with listener:
        await stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backend")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--service-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.slots < 1 or args.service_ms < 0:
        parser.error("--slots must be at least 1 and --service-ms at least 0")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.slots, args.service_ms))
    else:
        uvloop.run(serve(args.port, args.slots, args.service_ms))


if __name__ == "__main__":
    main()
