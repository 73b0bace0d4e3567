"""A small, independent HTTP/1.1 response reader for tests.

Tests send raw bytes (so malformed input goes out exactly as written) and
read responses with this reader, which shares no code with the proxy's
codecs: a bug there cannot hide itself here.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# SO_LINGER on with a zero timeout: close() sends RST, not FIN.
LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Reader:
    """Reads responses off one socket, keeping bytes between them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError("closed in the middle of a line")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ConnectionError("closed in the middle of a body")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def response(self, method: str = "GET") -> Response:
        """The next complete response (1xx ones are skipped)."""
        while True:
            response = self._head()
            if response.status >= 200 or response.status == 101:
                break
        if method == "HEAD" or response.status in (204, 304):
            return response
        if response.header("transfer-encoding") == "chunked":
            response.body = self._chunked()
        elif response.header("content-length") is not None:
            response.body = self._exactly(int(response.header("content-length")))
        else:
            while self._fill():
                pass
            response.body, self.buffer = self.buffer, b""
        return response

    def head_only(self) -> Response:
        """The next response head, 1xx included; the body is left unread."""
        return self._head()

    def _head(self) -> Response:
        status_line = self._line()
        parts = status_line.split(b" ", 2)
        response = Response(int(parts[1]), raw_head=status_line + b"\r\n")
        while line := self._line():
            response.raw_head += line + b"\r\n"
            name, _, value = line.partition(b":")
            key = name.decode().lower()
            text = value.strip().decode("latin-1")
            if key in response.headers:
                response.headers[key] += ", " + text
            else:
                response.headers[key] = text
        return response

    def _chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                while self._line():
                    pass
                return body
            body += self._exactly(size)
            self._line()

    def rest(self, timeout: float = 2.0) -> tuple[bytes, bool]:
        """What arrives until the peer closes, and whether it did in time.

        A reset counts as closing: a proxy that cuts a broken response
        short may abort the connection instead of ending it cleanly.
        """
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return self.buffer, False
        return self.buffer, True

    def closed(self, timeout: float = 2.0) -> bool:
        """True if the peer closes the connection (EOF or reset) in time."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def request(port: int, raw: bytes, method: str = "GET",
            timeout: float = 5.0) -> Response:
    """Send one raw request on a new connection and read the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return Reader(sock).response(method)


def get(path: str = "/", host: str = "test") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def exchange(harness, raw: bytes, method: str = "GET") -> Response:
    """Send one raw request on a new connection and read the response."""
    with harness.connect() as sock:
        sock.sendall(raw)
        return Reader(sock).response(method)


def reset(sock: socket.socket) -> None:
    """Close with RST: the client is gone, not half-closed."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    sock.close()


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
