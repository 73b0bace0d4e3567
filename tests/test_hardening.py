"""Hostile clients, broken backends, ambiguous HTTP (issue 5).

Each test drives the whole data path over loopback with raw bytes, in
front of a backend that records what reached it. tests/test_proxy.py holds
the first examples of each kind (smuggling heads, bad chunks, 408s, the
dead pooled GET, ...); this file probes each kind further:

1. request framing        5. slow and heavy clients
2. response framing       6. timeouts that count the right thing
3. Expect: 100-continue   7. shed responses
4. connection lifecycle

Besides the ``start_proxy`` invariant (in-flight 0, queue empty, no
connection left counted), every test here fails if the event loop reported
an exception or maitred logged an error.

No test measures speed: a deadline is shown to fire by what happened
before it (bytes still unsent, a response still incomplete), and waits
poll for a state with a generous bound. Memory is measured with
tracemalloc (the proxy runs in this process, in the loop thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import selectors
import socket
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator

import pytest
from backends import (
    CLOSE,
    LINGER_ZERO,
    RESET,
    STALL,
    LoopbackServer,
    ScriptedBackend,
    response,
)
from conftest import LoopThread
from wire import Reader, eventually, exchange, reset

# -- raw requests -------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
GET_HOLD = b"GET /hold HTTP/1.1\r\nHost: test\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n"
MIB = 1 << 20
PUT_EXPECT_HEAD = (
    b"PUT /upload HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
    b"Content-Length: %d\r\n\r\n" % MIB
)
PUT_HEAD = b"PUT /upload HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n"
SLOW_HEAD = (
    b"GET /slow HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"s" * 60 + b"\r\n\r\n"
)

# Rejected from the head alone, beyond tests/test_proxy.py's BAD_HEADS.
MORE_BAD_HEADS = {
    "gzip_then_chunked": (
        b"POST / HTTP/1.1\r\nHost: test\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "chunked_twice": (
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "transfer_encoding_in_http_1_0": (
        b"POST / HTTP/1.0\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "content_length_with_sign": (
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    "content_length_list_differing": (
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5, 6\r\n\r\nhello",
        400,
    ),
    "space_before_colon": (
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length : 5\r\n\r\nhello",
        400,
    ),
    "two_hosts": (
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        400,
    ),
    "no_host_in_http_1_1": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "control_byte_in_target": (
        b"GET /a\x01b HTTP/1.1\r\nHost: test\r\n\r\n",
        400,
    ),
    "connect_method": (
        b"CONNECT backend.test:443 HTTP/1.1\r\nHost: backend.test\r\n\r\n",
        501,
    ),
}

# Responses a backend should not send, and how the client must see them.
CONTENT_LENGTH_AND_CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n5\r\nhello\r\n0\r\n\r\n"
)
BAD_CHUNK_AFTER_HEAD_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhelloXX0\r\n\r\n"
)
UNSOLICITED_SWITCH_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: upgrade\r\n\r\n"
)
EARLY_HINTS_THEN_OK = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
    b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n"
    + response(body=b"final")
)
UNTIL_CLOSE_RESPONSE = b"HTTP/1.1 200 OK\r\n\r\nread until the close"

FAST_UPSTREAM = {
    "upstream.response_timeout": "300ms",
    "upstream.read_timeout": "300ms",
}

# -- the loop must stay clean -------------------------------------------------


@pytest.fixture(autouse=True)
def loop_errors(loop_thread, caplog):
    """Fail the test if the loop reported an exception or maitred an error.

    Set up before the proxy starts and checked after it has closed, so
    failures while closing count too.
    """
    errors: list[dict] = []

    def record(loop, context: dict) -> None:
        if not backend_handler_cancelled(context):
            errors.append(context)

    loop_thread.call(lambda: loop_thread.loop.set_exception_handler(record))
    caplog.set_level(logging.ERROR, logger="maitred")
    yield errors
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    assert not logged, [r.getMessage() for r in logged]


def backend_handler_cancelled(context: dict) -> bool:
    """A test backend's stream handler cancelled when the backend stopped:
    Python 3.11's asyncio.start_server reports it as an error."""
    return (
        isinstance(context.get("exception"), asyncio.CancelledError)
        and "StreamReaderProtocol" in repr(context.get("handle"))
    )


# -- backends made for these tests --------------------------------------------

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int],
                 Awaitable[None]]


class CoroutineBackend(LoopbackServer):
    """A loopback backend that runs ``serve(reader, writer, conn)`` for
    each connection it accepts; ``conn`` counts from 0. Unlike the
    ScriptedBackend it can answer before a body arrives, stream what it
    generates, and read bodies without keeping them. It counts bytes
    ``sent`` and ``received`` (body bytes its handlers report) and
    connections ``closed`` after their handler ended.
    """

    def __init__(self, serve: Serve) -> None:
        super().__init__()
        self.serve = serve
        self.closed = 0
        self.sent = 0
        self.received = 0
        self.gate: asyncio.Event | None = None

    async def start(self) -> None:
        self.gate = asyncio.Event()
        await super().start()

    async def handle(self, reader, writer, conn: int) -> None:
        try:
            await self.serve(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError,
                asyncio.CancelledError):
            pass
        finally:
            self.closed += 1

    async def stream(self, writer, size: int) -> None:
        """Write ``size`` generated bytes, waiting whenever the proxy lags."""
        piece = b"z" * (256 << 10)
        left = size
        while left:
            chunk = piece if left >= len(piece) else piece[:left]
            writer.write(chunk)
            left -= len(chunk)
            self.sent += len(chunk)
            await writer.drain()

    async def drain_body(self, reader, size: int,
                         pause_every: int = 0, pause: float = 0.0) -> int:
        """Read and drop ``size`` body bytes; pause now and then."""
        left = size
        mark = pause_every
        while left:
            data = await reader.read(min(left, 256 << 10))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            self.received += len(data)
            if pause_every and size - left >= mark:
                mark += pause_every
                await asyncio.sleep(pause)
        return size


async def read_head(reader) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    """The method, target and headers (lower-cased names) of a request."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].split(b" ")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def ok(body: bytes = b"ok\n", status: int = 200) -> bytes:
    return response(status=status, body=body, reason="Whatever")


class Blackhole:
    """A loopback address whose connects hang: its accept queue is full.

    With a backlog of 0, one connection that is never accepted fills the
    queue; the kernel then drops every further SYN, so a connect waits
    until its caller gives up.
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._filler = socket.socket()

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.getsockname()[:2]

    async def start(self) -> None:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self._filler.setblocking(False)
        try:
            self._filler.connect(self.address)
        except BlockingIOError:
            pass

    async def stop(self) -> None:
        self._filler.close()
        self._listener.close()


class OnOtherLoop:
    """Runs a backend on its own event loop thread, so that a test can
    hold the proxy's loop still while the backend goes on."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.thread = LoopThread()

    @property
    def address(self) -> tuple[str, int]:
        return self.backend.address

    def call(self, func):
        return self.thread.call(func)

    async def start(self) -> None:
        await self._on_thread(self.backend.start())

    async def stop(self) -> None:
        try:
            await self._on_thread(self.backend.stop())
        finally:
            self.thread.stop()

    async def _on_thread(self, coro) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self.thread.loop)
        await asyncio.wrap_future(future)


# -- helpers ------------------------------------------------------------------








def silent_for(sock: socket.socket, seconds: float) -> bool:
    """True if nothing arrives on ``sock`` for ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5.0)
    return False


@contextlib.contextmanager
def loop_held(harness) -> Iterator[None]:
    """Keep the proxy's loop busy for the block: whatever reaches the proxy
    meanwhile is handled in one turn of its loop, in arrival order."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(5)

    harness.loop.loop.call_soon_threadsafe(hold)
    assert held.wait(5)
    try:
        yield
        time.sleep(0.05)
    finally:
        release.set()


def assert_shed(resp, reason: str) -> None:
    assert resp.status == 503
    assert resp.header("x-maitred-shed") == reason
    assert int(resp.header("retry-after")) >= 1


def send_in_background(sock: socket.socket, size: int,
                       piece: int = MIB) -> threading.Thread:
    """Send ``size`` bytes of body from a thread; a closed socket ends it."""
    block = memoryview(b"b" * piece)

    def send() -> None:
        left = size
        try:
            while left:
                n = min(left, piece)
                sock.sendall(block[:n])
                left -= n
        except OSError:
            pass

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def read_exactly(sock: socket.socket, size: int,
                 pause_every: int = 0, pause: float = 0.0,
                 reader: Reader | None = None) -> int:
    """Read ``size`` bytes into one reused buffer; pause now and then.

    With ``reader``, the bytes it already holds past a head count first.
    """
    buf = bytearray(256 << 10)
    got = 0
    if reader is not None:
        got, reader.buffer = len(reader.buffer), b""
    mark = pause_every
    while got < size:
        n = sock.recv_into(buf, min(len(buf), size - got))
        if not n:
            break
        got += n
        if pause_every and mark <= got < size:
            mark += pause_every
            time.sleep(pause)
    return got


class MemoryWatch:
    """Peak growth of traced memory while a block runs, in bytes."""

    def __enter__(self) -> MemoryWatch:
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        self.growth = 0
        return self

    def __exit__(self, *exc) -> None:
        self.growth = tracemalloc.get_traced_memory()[1] - self._base
        if not self._was_tracing:
            tracemalloc.stop()


def gated_backend() -> CoroutineBackend:
    """GET /hold waits for the backend's gate; anything else gets 200."""

    async def serve(reader, writer, conn):
        while True:
            _, target, _ = await read_head(reader)
            if target == b"/hold":
                await backend.gate.wait()
            writer.write(ok(target))
            await writer.drain()

    backend = CoroutineBackend(serve)
    return backend


def open_gate(harness) -> None:
    harness.loop.call(harness.backend.gate.set)


# -- 1. request framing, beyond the first examples ----------------------------


@pytest.mark.parametrize(
    "raw,status", MORE_BAD_HEADS.values(), ids=MORE_BAD_HEADS.keys()
)
def test_more_ambiguous_heads_are_rejected_before_the_backend(
    start_proxy, raw, status
):
    backend = ScriptedBackend()
    harness = start_proxy(backend=backend)

    with harness.connect() as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == status
    assert backend.connections == 0
    assert harness.stats()["requests"]["bad_request"] == 1
    assert exchange(harness, GET).status == 200


def test_pipelined_request_with_both_framings_never_reaches_the_backend(
    start_proxy,
):
    backend = ScriptedBackend()
    harness = start_proxy(backend=backend)
    smuggler = (
        b"POST /second HTTP/1.1\r\nHost: test\r\nContent-Length: 30\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /hidden HTTP/1.1\r\nHost: test\r\n\r\n"
    )

    with harness.connect() as sock:
        sock.sendall(GET + smuggler)
        reader = Reader(sock)
        first, second = reader.response(), reader.response()
        assert reader.closed()

    assert (first.status, second.status) == (200, 400)
    assert [r.target for r in backend.requests] == [b"/"]
    assert b"/hidden" not in backend.received
    assert b"/second" not in backend.received


@pytest.mark.parametrize("raw", [
    b"GET /last HTTP/1.0\r\n\r\n\x00",
    b"GET /last HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    b"GET /after HTTP/1.1\r\nHost: test\r\n\r\n",
], ids=["http_1_0_then_a_nul", "connection_close_then_a_request"])
def test_bytes_after_a_request_that_ends_the_connection_are_ignored(
    start_proxy, raw
):
    # Found by the fuzzer: they turned the answer into a 400 although the
    # backend had the request already.
    backend = ScriptedBackend(lambda r: [response(body=r.target)])
    harness = start_proxy(backend=backend)

    with harness.connect() as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        resp = reader.response()
        leftover, closed = reader.rest()

    assert (resp.status, resp.body) == (200, b"/last")
    assert (leftover, closed) == (b"", True)
    assert [r.target for r in backend.requests] == [b"/last"]
    requests = harness.stats()["requests"]
    assert (requests["proxied"], requests["bad_request"]) == (1, 0)


def test_lone_lf_head_goes_upstream_with_crlf_only(start_proxy):
    backend = ScriptedBackend()
    harness = start_proxy(backend=backend)

    resp = exchange(
        harness, b"GET /lf HTTP/1.1\nHost: test\nX-Kept: yes\n\n"
    )

    assert resp.status == 200
    raw = bytes(backend.received)
    assert raw.count(b"\n") == raw.count(b"\r\n")
    (request,) = backend.requests
    assert request.header("x-kept") == b"yes"


# -- 2. response framing, beyond the first examples ---------------------------


def test_response_with_both_framings_is_relayed_chunked_and_not_reused(
    start_proxy,
):
    backend = ScriptedBackend(
        lambda r: [CONTENT_LENGTH_AND_CHUNKED_RESPONSE]
        if r.target == b"/" else [response()]
    )
    harness = start_proxy(backend=backend)

    with harness.connect() as sock:
        reader = Reader(sock)
        sock.sendall(GET)
        resp = reader.response()
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
        after = reader.response()

    assert resp.status == 200
    assert resp.header("content-length") is None
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"hello"
    assert after.status == 200
    assert backend.connections == 2


def test_bad_chunk_after_the_head_cuts_the_client_connection(start_proxy):
    backend = ScriptedBackend(lambda r: [BAD_CHUNK_AFTER_HEAD_RESPONSE])
    harness = start_proxy(backend=backend)

    with harness.connect() as sock:
        sock.sendall(GET)
        reader = Reader(sock)
        head = reader.head_only()
        rest, closed = reader.rest(timeout=5)

    assert head.status == 200
    assert closed
    assert not rest.endswith(b"0\r\n\r\n")
    assert harness.stats()["requests"]["upstream_truncated"] == 1


def test_unsolicited_switching_protocols_gives_502(start_proxy):
    backend = ScriptedBackend(lambda r: [UNSOLICITED_SWITCH_RESPONSE])
    harness = start_proxy(backend=backend)

    assert exchange(harness, GET).status == 502
    assert harness.stats()["requests"]["upstream_error"] == 1


def test_interim_responses_are_dropped_or_relayed_without_a_body(
    start_proxy,
):
    backend = ScriptedBackend(lambda r: [EARLY_HINTS_THEN_OK])
    harness = start_proxy(backend=backend)
    put = PUT_EXPECT_HEAD.replace(b"%d" % MIB, b"5") + b"hello"

    with harness.connect() as sock:
        sock.sendall(put)
        reader = Reader(sock)
        interim = reader.head_only()
        final = reader.response()

    # 103 is dropped; the 100 the client asked for comes without a length.
    assert interim.status == 100
    assert interim.header("content-length") is None
    assert (final.status, final.body) == (200, b"final")


def test_response_read_until_close_is_relayed_chunked(start_proxy):
    backend = ScriptedBackend(lambda r: [UNTIL_CLOSE_RESPONSE, CLOSE])
    harness = start_proxy(backend=backend)

    with harness.connect() as sock:
        sock.sendall(GET)
        backend_done = eventually(lambda: len(backend.requests) == 1)
        resp = Reader(sock).response()

    assert backend_done
    assert resp.status == 200
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"read until the close"


# -- 3. Expect: 100-continue with a queue -------------------------------------


def expect_backend(mode: str) -> CoroutineBackend:
    """A GET gets 200 (/hold once the gate opens); a PUT is answered as
    ``mode`` says:
    "continue" sends 100 then reads the body, "no_continue" reads it
    without a 100, "refuse" answers 401 at once, "ignore" does nothing."""

    async def serve(reader, writer, conn):
        while True:
            method, target, headers = await read_head(reader)
            if method != b"PUT":
                if target == b"/hold":
                    await backend.gate.wait()
                writer.write(ok())
                continue
            size = int(headers.get(b"content-length", b"0"))
            if mode == "refuse":
                writer.write(ok(b"nope", status=401))
                await writer.drain()
                await asyncio.sleep(30)
                return
            if mode == "ignore":
                await asyncio.sleep(30)
                return
            if mode == "continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            got = await backend.drain_body(reader, size)
            writer.write(ok(b"%d" % got, status=201))

    backend = CoroutineBackend(serve)
    return backend


def test_queued_expect_continue_gets_no_100_until_the_backend_sends_it(
    start_proxy,
):
    harness = start_proxy(
        backend=expect_backend("continue"),
        **{"limits.max_concurrency": 1, "limits.queue_timeout": "10s"},
    )
    with harness.connect() as holder, harness.connect(timeout=10) as sock:
        holder.sendall(GET_HOLD)
        harness.wait_for(lambda s: s["inflight"] == 1)
        sock.sendall(PUT_EXPECT_HEAD)
        assert harness.wait_for(lambda s: s["queued"] == 1)["queued"] == 1

        quiet_while_queued = silent_for(sock, 0.3)
        open_gate(harness)
        reader = Reader(sock)
        interim = reader.head_only()
        sock.sendall(b"u" * MIB)
        final = reader.response()
        assert Reader(holder).response().status == 200

    assert quiet_while_queued
    assert interim.status == 100
    assert (final.status, final.body) == (201, b"%d" % MIB)
    assert harness.backend.received == MIB


def test_queued_expect_continue_that_times_out_gets_503_and_close(
    start_proxy,
):
    harness = start_proxy(
        backend=expect_backend("continue"),
        **{"limits.max_concurrency": 1, "limits.queue_timeout": "200ms"},
    )
    with harness.connect() as holder, harness.connect() as sock:
        holder.sendall(GET_HOLD)
        harness.wait_for(lambda s: s["inflight"] == 1)
        sock.sendall(PUT_EXPECT_HEAD)
        reader = Reader(sock)
        first = reader.head_only()
        assert reader.closed()
        open_gate(harness)
        assert Reader(holder).response().status == 200

    assert_shed(first, "queue_timeout")
    assert first.header("connection") == "close"
    assert harness.backend.received == 0
    assert harness.stats()["shed"]["queue_timeout"] == 1


@pytest.mark.parametrize("expect", [True, False], ids=["expect", "no_expect"])
def test_backend_refusing_before_the_body_is_relayed_and_not_reused(
    start_proxy, expect
):
    harness = start_proxy(backend=expect_backend("refuse"))
    head = PUT_EXPECT_HEAD if expect else PUT_HEAD % (8 * MIB)

    with harness.connect() as sock:
        sock.sendall(head)
        if not expect:
            sender = send_in_background(sock, 8 * MIB)
        reader = Reader(sock)
        resp = reader.response()
        closed = reader.closed()
    if not expect:
        sender.join(5)
    fresh = exchange(harness, GET)

    assert (resp.status, resp.body) == (401, b"nope")
    assert resp.header("connection") == "close"
    assert closed
    # The first upstream connection held half a request: never reused.
    assert fresh.status == 200
    assert harness.backend.connections == 2
    assert harness.stats()["requests"]["proxied"] == 2


def test_backend_that_never_sends_100_gets_the_body_after_the_clients_wait(
    start_proxy,
):
    harness = start_proxy(backend=expect_backend("no_continue"))

    with harness.connect() as sock:
        sock.sendall(PUT_EXPECT_HEAD)
        waited = silent_for(sock, 0.3)
        sock.sendall(b"u" * MIB)
        resp = Reader(sock).response()

    assert waited
    assert (resp.status, resp.body) == (201, b"%d" % MIB)


def test_client_waiting_for_a_100_that_never_comes_is_timed_out(start_proxy):
    harness = start_proxy(
        backend=expect_backend("ignore"), **{"timeouts.client_body": "300ms"}
    )

    with harness.connect() as sock:
        sock.sendall(PUT_EXPECT_HEAD)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == 408
    assert harness.wait_for(lambda s: s["inflight"] == 0)["inflight"] == 0


# -- 4. connection lifecycle --------------------------------------------------


def test_post_on_a_pooled_connection_closed_unread_goes_on_a_fresh_one(
    start_proxy,
):
    # The backend closes its idle connection while the proxy's loop is
    # busy, right after a POST arrived: both wait in the same turn of the
    # loop, and the POST must not be written into the dead connection.
    writers = []

    async def serve(reader, writer, conn):
        writers.append(writer)
        while True:
            _, target, headers = await read_head(reader)
            size = int(headers.get(b"content-length", b"0"))
            await reader.readexactly(size)
            writer.write(ok(target))

    remote = OnOtherLoop(CoroutineBackend(serve))
    harness = start_proxy(backend=remote)
    post = b"POST /post HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi"

    with harness.connect() as sock:
        reader = Reader(sock)
        sock.sendall(GET)
        assert reader.response().status == 200
        with loop_held(harness):
            sock.sendall(post)
            time.sleep(0.05)
            remote.call(lambda: writers[0].transport.close())
        resp = reader.response()

    assert (resp.status, resp.body) == (200, b"/post")
    assert remote.backend.connections == 2
    assert harness.stats()["requests"]["upstream_error"] == 0


@pytest.mark.parametrize("first", ["client_leaves", "token_frees"])
def test_queued_client_leaving_as_its_token_frees_releases_once(
    start_proxy, first
):
    # Both events reach the proxy in one turn of its loop, in either order.
    remote = OnOtherLoop(gated_backend())
    harness = start_proxy(
        backend=remote,
        **{"limits.max_concurrency": 1, "limits.queue_timeout": "10s"},
    )
    with harness.connect() as holder, harness.connect() as leaver:
        holder.sendall(GET_HOLD)
        harness.wait_for(lambda s: s["inflight"] == 1)
        leaver.sendall(b"GET /leaver HTTP/1.1\r\nHost: test\r\n\r\n")
        harness.wait_for(lambda s: s["queued"] == 1)

        with loop_held(harness):
            if first == "client_leaves":
                reset(leaver)
                time.sleep(0.05)
            remote.call(remote.backend.gate.set)
            time.sleep(0.05)
            if first == "token_frees":
                reset(leaver)
        assert Reader(holder).response().status == 200

    stats = harness.wait_for(lambda s: s["inflight"] == 0)
    requests = stats["requests"]
    assert stats["inflight"] == 0
    assert stats["queued"] == 0
    assert requests["proxied"] == 1
    aborted = (requests["client_abort_queued"],
               requests["client_abort_inflight"])
    assert sorted(aborted) == [0, 1]
    assert stats["admitted"] == 1 + requests["client_abort_inflight"]
    assert exchange(harness, GET).status == 200


def test_client_leaving_while_its_upstream_connection_opens_releases(
    start_proxy,
):
    harness = start_proxy(
        backend=Blackhole(), **{"upstream.connect_timeout": "10s"}
    )
    with harness.connect() as sock:
        sock.sendall(GET)
        assert harness.wait_for(lambda s: s["inflight"] == 1)["inflight"] == 1

        reset(sock)
        stats = harness.wait_for(lambda s: s["inflight"] == 0)

    assert stats["inflight"] == 0
    assert stats["requests"]["client_abort_inflight"] == 1
    assert harness.loop.call(lambda: harness.proxy.pool.idle) == []


def test_upstream_reset_mid_request_body_gives_502_and_releases(start_proxy):
    async def serve(reader, writer, conn):
        await read_head(reader)
        await reader.readexactly(64 << 10)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        writer.transport.abort()

    harness = start_proxy(backend=CoroutineBackend(serve))

    with harness.connect() as sock:
        sock.sendall(PUT_HEAD % (8 * MIB))
        sender = send_in_background(sock, 8 * MIB)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()
    sender.join(5)

    assert resp.status == 502
    stats = harness.wait_for(lambda s: s["inflight"] == 0)
    assert stats["requests"]["upstream_error"] == 1
    assert stats["inflight"] == 0


def test_client_reset_mid_response_releases_and_drops_the_upstream(
    start_proxy,
):
    async def serve(reader, writer, conn):
        while True:
            _, target, _ = await read_head(reader)
            size = int(target[1:])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                         % size)
            await backend.stream(writer, size)

    backend = CoroutineBackend(serve)
    harness = start_proxy(backend=backend)
    with harness.connect() as sock:
        sock.sendall(b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % (256 * MIB))
        read_exactly(sock, MIB)

        reset(sock)
        stats = harness.wait_for(lambda s: s["inflight"] == 0)

    assert stats["requests"]["client_abort_inflight"] == 1
    assert eventually(lambda: backend.closed == 1)
    assert backend.sent < 256 * MIB
    resp = exchange(harness, b"GET /10 HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (resp.status, len(resp.body)) == (200, 10)
    assert backend.connections == 2


def test_client_reset_mid_upload_completes_no_request_upstream(start_proxy):
    completed = []

    async def serve(reader, writer, conn):
        _, _, headers = await read_head(reader)
        await backend.drain_body(reader, int(headers[b"content-length"]))
        completed.append(conn)
        writer.write(ok())

    backend = CoroutineBackend(serve)
    harness = start_proxy(backend=backend)
    with harness.connect() as sock:
        sock.sendall(PUT_HEAD % (8 * MIB) + b"b" * MIB)
        assert eventually(lambda: backend.received >= 512 << 10)

        reset(sock)
        stats = harness.wait_for(lambda s: s["inflight"] == 0)

    assert stats["requests"]["client_abort_inflight"] == 1
    assert eventually(lambda: backend.closed == 1)
    assert completed == []


# -- 5. slow and heavy clients ------------------------------------------------


def test_slow_loris_head_is_cut_by_the_whole_head_deadline(start_proxy):
    backend = ScriptedBackend()
    harness = start_proxy(backend=backend,
                          **{"timeouts.client_header": "500ms"})
    sent = 0
    with harness.connect() as sock:
        # One byte every 50 ms: the whole head would take 4 s.
        while sent < len(SLOW_HEAD):
            sock.sendall(SLOW_HEAD[sent:sent + 1])
            sent += 1
            if not silent_for(sock, 0.05):
                break
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert sent < len(SLOW_HEAD)
    assert resp.status == 408
    assert backend.connections == 0


def slow_loris_count() -> int:
    """As many dribbling connections as the descriptor limit allows, up to
    600 (each costs two descriptors in this process: both ends)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(50, min(600, (soft - 200) // 2))


def test_hundreds_of_slow_loris_connections_do_not_stop_normal_clients(
    start_proxy,
):
    count = slow_loris_count()
    harness = start_proxy(**{"timeouts.client_header": "1500ms"})
    loris = []
    answered = {}
    try:
        for _ in range(count):
            sock = harness.connect()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            loris.append(sock)
        assert harness.wait_for(
            lambda s: s["connections"] == count
        )["connections"] == count
        normal = []
        with harness.connect() as sock:
            reader = Reader(sock)
            for _ in range(20):
                for slow in loris:
                    slow.send(b"s")
                sock.sendall(GET)
                normal.append(reader.response().status)
        answered = collect_answers(loris, seconds=10.0)
    finally:
        for sock in loris:
            sock.close()

    assert normal == [200] * 20
    assert sorted(answered.values()) == [408] * count
    assert harness.stats()["requests"]["bad_request"] == count


def collect_answers(socks: list[socket.socket],
                    seconds: float) -> dict[int, int]:
    """The status each socket got, within ``seconds``: taken when its
    response head is complete or it closes (0 if closed without one)."""
    selector = selectors.DefaultSelector()
    buffers = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock.fileno()] = b""
    statuses = {}
    deadline = time.monotonic() + seconds
    try:
        while len(statuses) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(0.1):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except ConnectionError:
                    data = b""
                got = buffers[sock.fileno()] = buffers[sock.fileno()] + data
                if data and b"\r\n\r\n" not in got:
                    continue
                selector.unregister(sock)
                statuses[sock.fileno()] = (
                    int(got.split(b" ")[1]) if got.startswith(b"HTTP/") else 0
                )
    finally:
        selector.close()
    return statuses


def source_backend() -> CoroutineBackend:
    """GET /N answers N generated bytes, framed by Content-Length."""

    async def serve(reader, writer, conn):
        while True:
            _, target, _ = await read_head(reader)
            size = int(target[1:])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                         % size)
            await backend.stream(writer, size)

    backend = CoroutineBackend(serve)
    return backend


# What the slow-reader and large-upload tests move (512 MiB: a few seconds
# each here; MAITRED_HEAVY_MIB=1024 for the 1 GiB), and the most
# the proxy's memory may grow meanwhile (measured: under 3 MiB).
HEAVY_SIZE = int(os.environ.get("MAITRED_HEAVY_MIB", "512")) * MIB
MEMORY_BOUND = 8 * MIB


def test_slow_reader_of_a_large_response_keeps_memory_bounded(start_proxy):
    backend = source_backend()
    harness = start_proxy(backend=backend, **FAST_UPSTREAM)

    with harness.connect(timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % HEAVY_SIZE)
        reader = Reader(sock)
        head = reader.head_only()
        with MemoryWatch() as memory:
            # Pauses longer than read_timeout: the client's, not the
            # backend's, so they must not cut the response.
            got = read_exactly(sock, HEAVY_SIZE, pause_every=128 * MIB,
                               pause=0.4, reader=reader)

    print(f"\nslow reader: {HEAVY_SIZE >> 20} MiB relayed, proxy memory "
          f"grew {memory.growth / MIB:.2f} MiB at most")
    assert head.status == 200
    assert got == HEAVY_SIZE
    assert memory.growth < MEMORY_BOUND
    assert harness.stats()["requests"]["proxied"] == 1


def test_large_upload_streams_with_bounded_memory(start_proxy):
    async def serve(reader, writer, conn):
        _, _, headers = await read_head(reader)
        size = int(headers[b"content-length"])
        # A backend slow at times: the proxy must stop reading the client.
        got = await backend.drain_body(reader, size, pause_every=128 * MIB,
                                       pause=0.4)
        writer.write(ok(b"%d" % got))

    backend = CoroutineBackend(serve)
    harness = start_proxy(backend=backend, **{
        "limits.max_body": "1GiB",
        "timeouts.client_body": "200ms",
        "upstream.read_timeout": "3s",
    })

    with harness.connect(timeout=10) as sock:
        sock.sendall(PUT_HEAD % HEAVY_SIZE)
        with MemoryWatch() as memory:
            sender = send_in_background(sock, HEAVY_SIZE)
            resp = Reader(sock).response()
            sender.join(10)

    print(f"\nlarge upload: {HEAVY_SIZE >> 20} MiB relayed, proxy memory "
          f"grew {memory.growth / MIB:.2f} MiB at most")
    assert (resp.status, resp.body) == (200, b"%d" % HEAVY_SIZE)
    assert memory.growth < MEMORY_BOUND


def test_pipelined_response_waits_while_the_client_is_behind(start_proxy):
    # The first response ends while the proxy still holds part of it for
    # a client that does not read: the second must not be read from the
    # backend (into memory) until the client catches up.
    backend = source_backend()
    harness = start_proxy(backend=backend)
    big = 64 * MIB

    def slow_down_writes() -> None:
        (client,) = harness.proxy.clients
        client.transport.set_write_buffer_limits(high=1, low=0)
        sock = client.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", harness.port))
        harness.wait_for(lambda s: s["connections"] == 1)
        harness.loop.call(slow_down_writes)
        sock.sendall(b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % (32 << 10)
                     + b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % big)
        assert eventually(lambda: backend.connections == 1)
        time.sleep(0.5)
        sent_while_behind = backend.sent
        reader = Reader(sock)
        first = reader.response()
        second = reader.head_only()
    finally:
        reset(sock)

    print(f"\nsent while the client was behind: {sent_while_behind >> 10} KiB")
    assert (first.status, len(first.body)) == (200, 32 << 10)
    assert second.status == 200
    assert sent_while_behind < 16 * MIB
    stats = harness.wait_for(lambda s: s["inflight"] == 0)
    assert stats["requests"]["client_abort_inflight"] == 1


# -- 6. timeouts that count the right thing -----------------------------------


def test_queue_wait_and_first_byte_are_separate_budgets(start_proxy):
    async def serve(reader, writer, conn):
        while True:
            _, target, _ = await read_head(reader)
            if target == b"/hold":
                await backend.gate.wait()
            else:
                await asyncio.sleep(0.6)
            writer.write(ok(target))

    backend = CoroutineBackend(serve)
    harness = start_proxy(backend=backend, **{
        "limits.max_concurrency": 1,
        "limits.queue_timeout": "1s",
        "upstream.response_timeout": "1s",
    })
    with harness.connect() as holder, harness.connect() as sock:
        holder.sendall(GET_HOLD)
        harness.wait_for(lambda s: s["inflight"] == 1)
        sock.sendall(GET)
        harness.wait_for(lambda s: s["queued"] == 1)
        time.sleep(0.6)
        open_gate(harness)
        # 0.6 s queued, then 0.6 s at the backend: over either budget
        # if they were one.
        resp = Reader(sock).response()
        assert Reader(holder).response().status == 200

    assert resp.status == 200
    assert harness.stats()["requests"]["proxied"] == 2


def test_queued_request_gets_503_while_the_one_upstream_gets_504(
    start_proxy,
):
    backend = ScriptedBackend(lambda r: [STALL])
    harness = start_proxy(backend=backend, **{
        "limits.max_concurrency": 1,
        "limits.queue_timeout": "200ms",
        "upstream.response_timeout": "600ms",
    })
    with harness.connect() as first, harness.connect() as second:
        first.sendall(GET)
        harness.wait_for(lambda s: s["inflight"] == 1)
        second.sendall(GET)
        queued = Reader(second).response()
        upstream = Reader(first).response()

    assert_shed(queued, "queue_timeout")
    assert upstream.status == 504
    stats = harness.stats()
    assert stats["shed"]["queue_timeout"] == 1
    assert stats["requests"]["upstream_timeout"] == 1
    assert len(backend.requests) == 1


def test_connect_timeout_gives_504(start_proxy):
    harness = start_proxy(backend=Blackhole(),
                          **{"upstream.connect_timeout": "200ms"})

    with harness.connect() as sock:
        sock.sendall(GET)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == 504
    assert harness.stats()["requests"]["upstream_timeout"] == 1


def chunk(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def chunk_stream_backend(pieces: int, gap: float,
                         stall_after: int | None = None) -> CoroutineBackend:
    """A chunked response of ``pieces`` chunks, ``gap`` seconds apart,
    that stalls for good after ``stall_after`` chunks if given."""

    async def serve(reader, writer, conn):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(pieces):
            if i == stall_after:
                await asyncio.sleep(30)
            writer.write(chunk(b"piece %d;" % i))
            await asyncio.sleep(gap)
        writer.write(b"0\r\n\r\n")
        await asyncio.sleep(30)

    return CoroutineBackend(serve)


def test_response_that_keeps_sending_outlives_the_first_byte_timeout(
    start_proxy,
):
    harness = start_proxy(backend=chunk_stream_backend(16, 0.06),
                          **FAST_UPSTREAM)

    resp = exchange(harness, GET)

    assert resp.status == 200
    assert resp.body == b"".join(b"piece %d;" % i for i in range(16))
    assert harness.stats()["requests"]["proxied"] == 1


def test_gap_between_chunks_over_read_timeout_cuts_the_response(
    start_proxy,
):
    harness = start_proxy(
        backend=chunk_stream_backend(16, 0.03, stall_after=4),
        **FAST_UPSTREAM,
    )

    with harness.connect() as sock:
        sock.sendall(GET)
        reader = Reader(sock)
        head = reader.head_only()
        rest, closed = reader.rest(timeout=5)

    assert head.status == 200
    assert closed
    assert b"piece 3;" in rest
    assert b"piece 4;" not in rest
    assert harness.stats()["requests"]["upstream_timeout"] == 1


def test_backend_not_reading_the_upload_gets_504_not_408(start_proxy):
    async def serve(reader, writer, conn):
        await read_head(reader)
        await asyncio.sleep(30)

    harness = start_proxy(backend=CoroutineBackend(serve), **{
        "timeouts.client_body": "200ms",
        "upstream.read_timeout": "600ms",
    })

    with harness.connect() as sock:
        sock.sendall(PUT_HEAD % (8 * MIB))
        sender = send_in_background(sock, 8 * MIB)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()
    sender.join(5)

    assert resp.status == 504
    requests = harness.stats()["requests"]
    assert requests["upstream_timeout"] == 1
    assert requests["bad_request"] == 0


def test_client_pausing_its_reading_is_not_blamed_on_the_backend(
    start_proxy,
):
    backend = source_backend()
    harness = start_proxy(backend=backend, **FAST_UPSTREAM)
    size = 16 * MIB

    with harness.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % size)
        reader = Reader(sock)
        reader.head_only()
        got = read_exactly(sock, size, pause_every=6 * MIB, pause=0.6,
                           reader=reader)

    assert got == size
    requests = harness.stats()["requests"]
    assert requests["proxied"] == 1
    assert requests["upstream_timeout"] == 0


def test_client_that_stops_reading_is_cut_after_client_body(start_proxy):
    backend = source_backend()
    harness = start_proxy(backend=backend, **{"timeouts.client_body": "300ms"})

    with harness.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % (256 * MIB))
        read_exactly(sock, MIB)
        stats = harness.wait_for(lambda s: s["inflight"] == 0)

    requests = stats["requests"]
    assert stats["inflight"] == 0
    assert requests["client_abort_inflight"] == 1
    assert requests["upstream_timeout"] == 0
    assert eventually(lambda: backend.closed == 1)


def test_queue_deadlines_fire_with_a_thousand_queued(start_proxy):
    count = min(1000, slow_loris_count() * 2 - 100)
    harness = start_proxy(backend=gated_backend(), **{
        "limits.max_concurrency": 1,
        "limits.max_queue": str(count),
        "limits.queue_timeout": "500ms",
    })
    socks = []
    try:
        with harness.connect() as holder:
            holder.sendall(GET_HOLD)
            harness.wait_for(lambda s: s["inflight"] == 1)
            for _ in range(count):
                sock = harness.connect()
                socks.append(sock)
                sock.sendall(GET)
            answers = collect_answers(socks, seconds=15.0)
            open_gate(harness)
            assert Reader(holder).response().status == 200
    finally:
        for sock in socks:
            sock.close()

    assert sorted(answers.values()) == [503] * count
    stats = harness.stats()
    assert stats["shed"]["queue_timeout"] == count
    assert stats["queued"] == 0


# -- 7. shed responses are unambiguous ----------------------------------------


@contextlib.contextmanager
def shed_scenario(start_proxy, reason: str):
    """A proxy whose next request is shed for ``reason``; yields (harness,
    the socket to send that request on)."""
    settings = {
        "queue_full": {"limits.max_concurrency": 1, "limits.max_queue": 0},
        "queue_timeout": {"limits.max_concurrency": 1,
                          "limits.queue_timeout": "100ms"},
        "connections": {"listen.max_connections": 1},
        "draining": {},
    }[reason]
    harness = start_proxy(backend=gated_backend(), **settings)
    with contextlib.ExitStack() as stack:
        stack.callback(open_gate, harness)
        holder = stack.enter_context(harness.connect())
        if reason in ("queue_full", "queue_timeout"):
            holder.sendall(GET_HOLD)
            harness.wait_for(lambda s: s["inflight"] == 1)
        else:
            harness.wait_for(lambda s: s["connections"] == 1)
        if reason == "draining":
            # A head begun before the drain is finished after it.
            holder.sendall(GET[:10])
            harness.loop.run(harness.proxy.drain(1.0))
            yield harness, holder
        else:
            yield harness, stack.enter_context(harness.connect())


@pytest.mark.parametrize(
    "reason", ["queue_full", "queue_timeout", "connections", "draining"]
)
def test_every_shed_says_why_and_when_and_is_counted(start_proxy, reason):
    with shed_scenario(start_proxy, reason) as (harness, sock):
        sock.sendall(GET[10:] if reason == "draining" else GET)
        reader = Reader(sock)
        resp = reader.response()
        closes = reason in ("connections", "draining") and reader.closed()

    assert_shed(resp, reason)
    assert resp.body.startswith(b"maitred: ")
    if reason in ("connections", "draining"):
        assert resp.header("connection") == "close"
        assert closes
    else:
        assert resp.header("connection") is None
    stats = harness.stats()
    assert stats["shed"] == {
        name: int(name == reason) for name in stats["shed"]
    }
    assert stats["requests"]["shed"] == 1
    assert stats["admitted"] == (0 if reason in ("connections", "draining")
                                 else 1)


def test_shed_answer_to_head_has_no_body_and_keeps_the_connection(
    start_proxy,
):
    harness = start_proxy(backend=gated_backend(), **{
        "limits.max_concurrency": 1, "limits.max_queue": 0,
    })
    with harness.connect() as holder, harness.connect() as sock:
        holder.sendall(GET_HOLD)
        harness.wait_for(lambda s: s["inflight"] == 1)
        reader = Reader(sock)
        sock.sendall(HEAD)
        shed = reader.response("HEAD")
        open_gate(harness)
        assert Reader(holder).response().status == 200
        harness.wait_for(lambda s: s["inflight"] == 0)
        sock.sendall(GET)
        after = reader.response()

    assert_shed(shed, "queue_full")
    assert int(shed.header("content-length")) > 0
    assert after.status == 200


def test_error_answer_to_head_has_no_body(start_proxy):
    harness = start_proxy(backend=ScriptedBackend(lambda r: [RESET]))

    with harness.connect() as sock:
        sock.sendall(HEAD)
        reader = Reader(sock)
        resp = reader.response("HEAD")
        leftover, closed = reader.rest()

    assert resp.status == 502
    assert (leftover, closed) == (b"", True)


def test_shed_costs_no_upstream_work(start_proxy):
    harness = start_proxy(backend=gated_backend(), **{
        "limits.max_concurrency": 1, "limits.max_queue": 0,
    })
    with harness.connect() as holder:
        holder.sendall(GET_HOLD)
        harness.wait_for(lambda s: s["inflight"] == 1)
        statuses = [exchange(harness, GET).status for _ in range(20)]
        open_gate(harness)
        assert Reader(holder).response().status == 200

    assert statuses == [503] * 20
    assert harness.backend.connections == 1
