"""The upstream side: connections to the backend and their keep-alive pool.

An upstream connection serves one client request at a time. While it does,
it is *attached* to that client connection and hands it every event; the
client decides what to relay. When the exchange ends cleanly the
connection goes back to the pool; any doubt (an early response, a body
left half-sent, a framing error) closes it instead.

The pool is a stack of idle connections: the most recently used is the
most likely to be alive. A connection the backend closed while idle is
noticed by its own EOF and leaves the pool at once. A close that arrived
but was not yet read (the EOF waits in the same turn of the loop) is found
by ``take(check=True)``, which polls the socket before handing it out; the
data path asks for that check for requests it could not retry. The rare
connection that dies between ``take()`` and the first response byte is
what the client's single retry of an idempotent request is for; anything
else gets a 502, since a request that was written may have been acted on.

Only a connection whose exchange ended cleanly and whose write buffer is
empty goes back to the pool: bytes still queued to the backend belong to
a request it already answered.

New connections are opened by a task (asyncio's create_connection is a
coroutine): one per new connection, not one per request.

Cython compiles this module with the types in upstream.pxd.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import select
from typing import TYPE_CHECKING

from proxy._core import OUTCOME_UPSTREAM_ERROR
from proxy.errors import UpstreamError

if TYPE_CHECKING:
    from proxy.client import ClientProtocol
    from proxy.server import Proxy

log = logging.getLogger("maitred.error")

# Write buffer marks: past HIGH the client stops reading (back-pressure).
_WRITE_HIGH = 64 * 1024
_WRITE_LOW = 16 * 1024

# Anything readable on an idle connection (EOF, a reset, stray bytes) means
# it cannot carry another request.
_IDLE_DEAD = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)


class UpstreamProtocol:
    """One connection to the backend (an asyncio protocol)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.codec = pool.engine.upstream_codec()
        self.transport = None
        self.client = None
        self.closed = False
        self.received = False
        self._paused = False

    def attach(self, client: ClientProtocol) -> None:
        self.client = client
        self.received = False

    def detach(self) -> None:
        self.client = None
        self.resume_reading()

    def pause_reading(self) -> None:
        """Stop reading the backend while the client is behind."""
        if not self._paused and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    # -- asyncio callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(_WRITE_HIGH, _WRITE_LOW)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Bytes on an idle connection: the backend is confused; drop it.
            self.abort()
            return
        self.received = True
        self.codec.receive(data)
        client.upstream_data(self)

    def eof_received(self) -> bool:
        client = self.client
        if client is not None:
            # The end of a read-until-close body, or a truncation.
            self.codec.receive(b"")
            client.upstream_data(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        client = self.client
        if client is not None:
            self.client = None
            reason = f"upstream connection lost: {exc}" if exc else (
                "upstream closed the connection"
            )
            client.upstream_failed(UpstreamError(reason), OUTCOME_UPSTREAM_ERROR)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.upload_paused(True)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.upload_paused(False)


class UpstreamPool:
    """Keep-alive connections to one backend address."""

    def __init__(self, proxy: Proxy, host: str, port: int, max_idle: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine = proxy.engine
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.idle = []
        self._factory = functools.partial(UpstreamProtocol, self)

    def take(self, check=False) -> UpstreamProtocol | None:
        """The most recently used idle connection still open, if any.

        With ``check``, one poll of the socket first: a connection whose
        close arrived but was not read yet is closed and skipped.
        """
        idle = self.idle
        while idle:
            up = idle.pop()
            if up.closed or up.transport.is_closing():
                continue
            if check and not _looks_alive(up.transport):
                up.abort()
                continue
            return up
        return None

    def put(self, up: UpstreamProtocol) -> None:
        if (
            up.closed
            or up.transport.get_write_buffer_size()
            or len(self.idle) >= self.max_idle
        ):
            up.close()
        else:
            self.idle.append(up)

    def forget(self, up: UpstreamProtocol) -> None:
        try:
            self.idle.remove(up)
        except ValueError:
            pass

    def connect(self, client: ClientProtocol) -> asyncio.Task:
        """Open a new connection for ``client``; it is told how it went."""
        task = self.loop.create_task(
            self.loop.create_connection(self._factory, self.host, self.port)
        )
        task.add_done_callback(functools.partial(self._connected, client))
        return task

    def _connected(self, client: ClientProtocol, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if client.connecting is not task:
            if exc is None:
                self.put(task.result()[1])
            return
        if exc is not None:
            client.connecting = None
            client.upstream_failed(
                UpstreamError(f"cannot connect to upstream: {_describe(exc)}"),
                OUTCOME_UPSTREAM_ERROR,
            )
            return
        client.upstream_connected(task.result()[1])

    def close(self) -> None:
        for up in self.idle:
            up.close()
        self.idle.clear()


def _looks_alive(transport: asyncio.Transport) -> bool:
    """True unless the idle connection's socket has something to read."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), _IDLE_DEAD)
    return not poller.poll(0)


def _describe(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
