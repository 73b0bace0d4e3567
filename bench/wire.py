"""The client side of HTTP/1.1 that the bench's own load tools need.

A small incremental response parser -- status, framing by Content-Length,
chunked or close, and the Connection header -- and a one-shot JSON GET for
reading the backend's and maitred's counters. It understands exactly what
the bench's backend, HAProxy, nginx and maitred send, and raises
``ProtocolError`` on anything else rather than guessing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

MAX_HEAD = 64 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.1 response we can frame."""


class Response:
    """One parsed response: status, keep-alive and the shed reason if any."""

    __slots__ = ("status", "keep_alive", "shed_reason")

    def __init__(self, status: int, keep_alive: bool, shed_reason: str) -> None:
        self.status = status
        self.keep_alive = keep_alive
        self.shed_reason = shed_reason


class ResponseParser:
    """Feed bytes, get complete responses; ``eof()`` ends a close-framed body."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: Response | None = None
        self._remaining = 0  # body bytes left; -1 chunked; -2 until close

    def feed(self, data: bytes) -> list[Response]:
        self._buf += data
        try:
            return self._complete_responses()
        except ValueError as exc:
            raise ProtocolError(f"bad framing: {exc}") from None

    def _complete_responses(self) -> list[Response]:
        done = []
        while True:
            if self._head is None and not self._read_head():
                return done
            if not self._read_body():
                return done
            done.append(self._head)
            self._head = None

    def eof(self) -> Response | None:
        """The response that the connection's end completes, if one does."""
        if self._head is not None and self._remaining == -2:
            head, self._head = self._head, None
            head.keep_alive = False
            return head
        return None

    def _read_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise ProtocolError("response head too long")
            return False
        lines = bytes(self._buf[:end]).split(b"\r\n")
        del self._buf[: end + 4]
        status, keep_alive = _status_line(lines[0])
        shed_reason = ""
        self._remaining = -2
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                self._remaining = int(value)
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self._remaining = -1
            elif name == b"connection":
                value = value.lower()
                keep_alive = b"close" not in value and (
                    keep_alive or b"keep-alive" in value
                )
            elif name == b"x-maitred-shed":
                shed_reason = value.decode("ascii", "replace")
        if 100 <= status < 200 or status in (204, 304):
            self._remaining = 0
        self._head = Response(status, keep_alive, shed_reason)
        return True

    def _read_body(self) -> bool:
        if self._remaining >= 0:
            if len(self._buf) < self._remaining:
                return False
            del self._buf[: self._remaining]
            return True
        if self._remaining == -1:
            return self._read_chunks()
        self._buf.clear()  # close-framed: wait for eof()
        return False

    def _read_chunks(self) -> bool:
        while True:
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(self._buf[:line_end]).split(b";")[0], 16)
            if size == 0:
                return self._read_trailers(line_end + 2)
            if len(self._buf) < line_end + 2 + size + 2:
                return False
            del self._buf[: line_end + 2 + size + 2]

    def _read_trailers(self, start: int) -> bool:
        if self._buf[start:start + 2] == b"\r\n":
            del self._buf[: start + 2]
            return True
        end = self._buf.find(b"\r\n\r\n", start)
        if end < 0:
            return False
        del self._buf[: end + 4]
        return True


def _status_line(line: bytes) -> tuple[int, bool]:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {line[:60]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise ProtocolError(f"bad status line {line[:60]!r}") from None
    return status, parts[0] == b"HTTP/1.1"


def reset_on_close(transport) -> None:
    """Make closing this connection send RST, so it leaves no TIME_WAIT.

    A load generator opens and abandons connections by the thousand; on
    loopback both ends share one port space, and TIME_WAIT entries would
    run it out within a minute.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


async def get_json(port: int, path: str, timeout: float = 1.0) -> dict:
    """GET http://127.0.0.1:port/path and decode its JSON body."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), timeout
    )
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, _ = _status_line(head.split(b"\r\n", 1)[0])
    if status != 200:
        raise ProtocolError(f"GET {path} answered {status}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return json.loads(body)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        body = rest[size + 2:]
