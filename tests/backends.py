"""Scripted backends on raw loopback sockets, for end-to-end tests.

A ScriptedBackend records every byte the proxy sends it and answers each
request it can parse with the steps of its script: bytes to write, seconds
to sleep, CLOSE (shut the connection), RESET (abort it) or STALL (hang
until the test ends). Its request parser is small and shares no code with
the proxy's codecs, so what it records is what went over the wire.
"""

from __future__ import annotations

import asyncio
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from wire import LINGER_ZERO


class _Step:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CLOSE = _Step("CLOSE")
RESET = _Step("RESET")
STALL = _Step("STALL")

Step = bytes | float | _Step



@dataclass
class Request:
    """One complete request as the backend read it."""

    conn: int  # which connection, in accept order from 0
    index: int  # which request on that connection, from 0
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False

    def header(self, name: str) -> bytes | None:
        """Every value of one header, joined with ", "; None if absent."""
        key = name.lower().encode()
        values = [v for n, v in self.headers if n.lower() == key]
        return b", ".join(values) if values else None

    def names(self) -> set[str]:
        return {n.decode().lower() for n, _ in self.headers}


def response(status: int = 200, body: bytes = b"ok\n",
             headers: Iterable[tuple[str, str]] = (),
             reason: str = "OK") -> bytes:
    """A complete response framed by Content-Length."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked_response(pieces: Iterable[bytes], status: int = 200) -> bytes:
    """A complete response framed by chunked transfer coding."""
    head = f"HTTP/1.1 {status} OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    out = [head.encode()]
    for piece in pieces:
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def answer_ok(request: Request) -> list[Step]:
    return [response()]


class _Closed(Exception):
    """The proxy closed the connection (or sent what cannot be parsed)."""


class _Connection:
    """Reads requests off one accepted socket, logging every byte."""

    def __init__(self, reader: asyncio.StreamReader, log: bytearray) -> None:
        self.reader = reader
        self.log = log
        self.buffer = b""

    async def _fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise _Closed
        self.log += data
        self.buffer += data

    async def _until(self, mark: bytes) -> bytes:
        while mark not in self.buffer:
            await self._fill()
        data, _, self.buffer = self.buffer.partition(mark)
        return data

    async def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    async def request(self, conn: int, index: int) -> Request:
        head = await self._until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            method, target, version = lines[0].split(b" ")
        except ValueError:
            raise _Closed from None
        request = Request(conn, index, method, target, version)
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            request.headers.append((name, value.strip()))
        coding = request.header("transfer-encoding")
        if coding is not None:
            request.chunked = True
            request.body = await self._chunked()
        elif request.header("content-length") is not None:
            length = int(request.header("content-length"))
            request.body = await self._exactly(length)
        return request

    async def _chunked(self) -> bytes:
        body = b""
        while True:
            size = int((await self._until(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self._until(b"\r\n"):
                    pass
                return body
            body += await self._exactly(size)
            if await self._exactly(2) != b"\r\n":
                raise _Closed


class LoopbackServer(ABC):
    """What every test backend shares: a loopback listener on a free port
    whose connection handlers are tracked, so ``stop()`` ends them all.
    Subclasses implement ``handle(reader, writer, conn)``; ``conn`` counts
    accepted connections from 0."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        conn = self.connections
        self.connections += 1
        try:
            await self.handle(reader, writer, conn)
        finally:
            self._handlers.discard(task)
            writer.close()

    @abstractmethod
    async def handle(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, conn: int) -> None:
        """Serve one connection until it ends."""


class ScriptedBackend(LoopbackServer):
    """A loopback HTTP/1.1 backend that answers as its script says.

    ``script(request)`` returns the steps for one request. The backend
    keeps ``received`` (every byte, all connections), ``requests`` (the
    complete ones, in order) and ``connections`` (how many it accepted).
    """

    def __init__(
        self, script: Callable[[Request], Iterable[Step]] = answer_ok
    ) -> None:
        super().__init__()
        self.script = script
        self.received = bytearray()
        self.requests: list[Request] = []

    async def handle(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, conn: int) -> None:
        connection = _Connection(reader, self.received)
        try:
            index = 0
            while True:
                request = await connection.request(conn, index)
                self.requests.append(request)
                if not await self._play(self.script(request), writer):
                    return
                index += 1
        except (_Closed, ConnectionError):
            pass

    async def _play(self, steps: Iterable[Step], writer) -> bool:
        """Run one request's steps; False once the connection is done."""
        for step in steps:
            if isinstance(step, bytes):
                writer.write(step)
                await writer.drain()
            elif step is CLOSE:
                return False
            elif step is RESET:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO
                )
                writer.transport.abort()
                return False
            elif step is STALL:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(step)
        return True


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scripted(start_proxy, script=None, **settings):
    """A proxy in front of a ScriptedBackend; returns (harness, backend)."""
    backend = ScriptedBackend(script) if script else ScriptedBackend()
    harness = start_proxy(backend=backend, **settings)
    return harness, backend
