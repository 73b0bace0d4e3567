"""Fuzzing a live proxy with Hypothesis, from both sides.

Client side: request heads, bodies and chunk streams are built from
fragments known to confuse HTTP parsers (conflicting framing, folded and
whitespace-prefixed lines, bare CR and NUL, bad chunk sizes, pipelined
requests hidden in bodies), then mutated byte by byte, and sent raw to the
proxy in front of a recording backend, in up to three pieces that arrive
in separate reads, sometimes followed by a half-close. Upstream side: a
valid request goes through the proxy to a backend that answers with a
mutated response, then closes, keeps the connection, or stalls.

The property, after every example:

- no crash: the event loop reported no exception and maitred logged no
  error;
- no hang: every connection ends within a few seconds (the proxy's
  timeouts here are a few hundred milliseconds);
- the client only sees documented statuses, or one the backend sent;
- the invariant holds: nothing in flight, nothing queued, no connection
  left counted;
- the backend never receives a request the proxy did not count: every
  request it parsed is one the proxy admitted and logged as sent upstream;
- a fresh request is still served.

The budget is small and the examples are fixed (derandomized) so that CI
runs the same ones in about 20 s (both engines). For a long run on
demand:

    MAITRED_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py

and MAITRED_FUZZ_SEED=N draws other examples than the fixed ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections import Counter

import pytest
from backends import CLOSE, Request, ScriptedBackend, response
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from proxy.target import resolve

EXAMPLES = int(os.environ.get("MAITRED_FUZZ_EXAMPLES", "400"))
SEED = os.environ.get("MAITRED_FUZZ_SEED")

DOCUMENTED = {200, 400, 408, 413, 414, 431, 501, 502, 503, 504, 505}

# Short timeouts and small limits: every example ends in well under a
# second, and every limit is within reach of the generated input.
LIMITS = {
    "timeouts.client_header": "200ms",
    "timeouts.client_body": "200ms",
    "timeouts.idle": "200ms",
    "upstream.response_timeout": "150ms",
    "upstream.read_timeout": "150ms",
    "limits.max_head": "2KiB",
    "limits.max_target": "256B",
    "limits.max_body": "4KiB",
}

# Outcomes of requests whose head the proxy wrote upstream: the only ones
# a backend may have received complete.
SENT_UPSTREAM = {
    "proxied",
    "upstream_error",
    "upstream_timeout",
    "upstream_truncated",
    "client_abort_inflight",
}

FRESH = b"GET /fresh HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"


def fuzz_settings(examples: int):
    chosen = settings(
        max_examples=examples,
        derandomize=SEED is None,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )

    def apply(test):
        test = chosen(test)
        return seed(int(SEED))(test) if SEED is not None else test

    return apply


# -- the loop must stay clean -------------------------------------------------


@pytest.fixture
def loop_errors(loop_thread, caplog):
    """Exceptions the loop reported, and errors maitred logged, so far."""
    errors: list = []

    def record(loop, context: dict) -> None:
        # Python 3.11's start_server reports a test backend's handler
        # cancelled at stop as an error: that one is not the proxy's.
        error = context.get("exception")
        cancelled = isinstance(error, asyncio.CancelledError)
        if not (cancelled and "StreamReaderProtocol" in repr(context)):
            errors.append(context)

    loop_thread.call(lambda: loop_thread.loop.set_exception_handler(record))
    caplog.set_level(logging.ERROR, logger="maitred")

    def found() -> list:
        logged = [r.getMessage() for r in caplog.records
                  if r.levelno >= logging.ERROR
                  and r.name.startswith("maitred")]
        return errors + logged

    yield found
    assert not found()


class Upstreamed:
    """The proxy's access-log hook: (method, target) of every request it
    logged as sent upstream, since the example began."""

    def __init__(self) -> None:
        self.requests: Counter = Counter()
        self.outcomes: list = []

    def __call__(self, peer, request, status, outcome, seconds) -> None:
        self.outcomes.append((request.method, request.target, outcome))
        if outcome in SENT_UPSTREAM:
            # Upstream, an absolute-form target travels in origin-form.
            target, _ = resolve(request.method, request.target, None)
            self.requests[(request.method, target)] += 1

    def begin(self) -> None:
        self.requests.clear()
        self.outcomes.clear()


def fuzz_proxy(start_proxy, backend: ScriptedBackend):
    harness = start_proxy(backend=backend, **LIMITS)
    upstreamed = Upstreamed()
    harness.proxy.access = upstreamed
    return harness, upstreamed


# -- generating requests ------------------------------------------------------

METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
           b"get", b"CONNECT", b"G T", b""]
TARGETS = [b"/", b"/a?b=c", b"*", b"http://other.test/x", b"/" + b"t" * 300,
           b"/%00", b"", b"/a b", b"/\x7f"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2",
            b"HTTP/1", b"http/1.1", b""]
REQUEST_HEADERS = [
    b"Host: test", b"Host: test", b"Host: other.test",
    b"Content-Length: 5", b"Content-Length: 0", b"Content-Length: 5, 5",
    b"Content-Length: -1", b"Content-Length: 99999999", b"Content-Length:5",
    b"Content-Length : 5", b"Content-Length: 0x5", b"Content-Length: +5",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: Chunked",
    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding:\tchunked", b" Transfer-Encoding: chunked",
    b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked\r",
    b"Expect: 100-continue", b"Connection: close",
    b"Connection: keep-alive, X-Forwarded-For, Host", b"Upgrade: websocket",
    b"TE: trailers", b"X-Forwarded-For: 192.0.2.1", b"X-A: \x00",
    b"X-B: a\rb", b"\tfolded", b" folded: x", b"X-Long: " + b"x" * 2100,
    b"Keep-Alive: timeout=1", b"Trailer: X-T", b"X-C:", b": empty",
]
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"0\r\n\r\n",
          b"\r\n\r\n", b"Transfer-Encoding: chunked\r\n",
          b"Content-Length: 5\r\n", b"GET /hidden HTTP/1.1\r\nHost: t\r\n\r\n",
          b"ffffffff", b";ext=1", b"HTTP/1.1", b"\xff"]


@st.composite
def chunked_body(draw) -> bytes:
    """A chunk stream, valid or slightly wrong."""
    out = []
    for piece in draw(st.lists(st.binary(min_size=1, max_size=24),
                               max_size=4)):
        size = len(piece) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        digits = draw(st.sampled_from([b"%x", b"%X", b"%04x", b" %x"]))
        ext = draw(st.sampled_from([b"", b"", b";a=b", b" ;a", b";\n"]))
        end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"", b"XX"]))
        out.append(digits % max(size, 0) + ext + b"\r\n" + piece + end)
    last = draw(st.sampled_from([
        b"0\r\n\r\n", b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b"0\n\n", b"",
        b"0\r\nContent-Length: 5\r\n\r\n",
    ]))
    return b"".join(out) + last


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` with a few byte-level mutations."""
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "flip", "repeat"]))
        if op == "insert":
            data = data[:at] + draw(st.sampled_from(TOKENS)) + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif op == "flip" and at < len(data):
            byte = data[at] ^ (1 << draw(st.integers(0, 7)))
            data = data[:at] + bytes([byte]) + data[at + 1:]
        elif op == "repeat":
            piece = data[at:at + draw(st.integers(1, 32))]
            data = data[:at] + piece + data[at:]
    return data


@st.composite
def raw_request(draw) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from(VERSIONS))
    headers = draw(st.lists(st.sampled_from(REQUEST_HEADERS), max_size=5))
    if draw(st.booleans()):
        headers.insert(0, b"Host: test")
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    head = eol.join([b" ".join([method, target, version]), *headers])
    body = draw(st.one_of(st.just(b""), st.binary(max_size=40),
                          chunked_body()))
    return head + eol + eol + body


@st.composite
def client_bytes(draw) -> bytes:
    data = draw(mutated(draw(raw_request())))
    if draw(st.booleans()):
        # A second request right behind: pipelined, or hidden in a body.
        data += draw(st.sampled_from([
            b"GET /second HTTP/1.1\r\nHost: test\r\n\r\n",
            b"POST /second HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n"
            b"\r\nhi",
        ])) if draw(st.booleans()) else draw(raw_request())
    return data


# -- generating responses -----------------------------------------------------

STATUS_LINES = [
    b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found",
    b"HTTP/1.1 500 Oops", b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 100 Continue",
    b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 101 Switching Protocols",
    b"HTTP/1.0 200 OK", b"HTTP/1.1 999 Odd", b"HTTP/1.1 200", b"HTTP/2 200",
    b"HTTP/1.1 abc OK", b"HTTP/1.1 099 Low", b"ICY 200 OK", b"",
]
RESPONSE_HEADERS = [
    b"Content-Length: 5", b"Content-Length: 5", b"Content-Length: 0",
    b"Content-Length: 50", b"Content-Length: 5, 6", b"Content-Length: -5",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: gzip, chunked", b"Connection: close",
    b"Connection: keep-alive", b"Keep-Alive: timeout=5", b"X-A: \x00",
    b"X-B: 1\r\n 2", b" Leading: space", b"Set-Cookie: a=b", b"X-Long: "
    + b"y" * 3000, b"Upgrade: h2c", b"Trailer: X-T",
]


@st.composite
def raw_response(draw) -> bytes:
    status = draw(st.sampled_from(STATUS_LINES))
    headers = draw(st.lists(st.sampled_from(RESPONSE_HEADERS), max_size=4))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    body = draw(st.one_of(st.just(b""), st.just(b"hello"),
                          st.binary(max_size=60), chunked_body()))
    data = eol.join([status, *headers]) + eol + eol + body
    if status.endswith((b"100 Continue", b"103 Early Hints")):
        data += response(body=b"after")
    return draw(mutated(data))


def backend_statuses(data: bytes) -> set[int]:
    """Every status a backend's bytes could be read as carrying."""
    return {int(m) for m in re.findall(rb"HTTP/\d(?:\.\d)? (\d{3})", data)}


# -- reading what the client got ----------------------------------------------


def exchange(port: int, data: bytes, half_close: bool,
             cuts: tuple[int, ...] = ()) -> bytes:
    """Send ``data`` raw, in pieces split at ``cuts`` a moment apart so
    that they arrive in separate reads; read until the proxy closes."""
    bounds = zip((0, *cuts), (*cuts, len(data)), strict=True)
    pieces = [data[a:b] for a, b in bounds]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(0.003)
                sock.sendall(piece)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy may close before it read everything
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def statuses(raw: bytes) -> list[int]:
    """The statuses of the responses in ``raw``, read by their framing.

    A response cut short (the proxy may abort one whose backend broke) ends
    the list. Requests are never HEAD here, so framing alone tells where
    each response ends. Anything that is not a response head fails.
    """
    found = []
    while raw:
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            assert raw.startswith(b"HTTP/1.1 "), raw[:80]
            break
        lines = raw[:end].split(b"\r\n")
        raw = raw[end + 4:]
        match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) [^\r\n]*", lines[0])
        assert match, lines[0]
        status = int(match.group(1))
        found.append(status)
        headers = dict(
            (n.strip().lower(), v.strip())
            for n, _, v in (line.partition(b":") for line in lines[1:])
        )
        if status < 200 or status in (204, 304):
            continue
        if headers.get(b"transfer-encoding") == b"chunked":
            raw = skip_chunks(raw)
        elif b"content-length" in headers:
            raw = raw[int(headers[b"content-length"]):]
        else:
            raw = b""
    return found


def skip_chunks(raw: bytes) -> bytes:
    while raw:
        line, sep, rest = raw.partition(b"\r\n")
        if not sep:
            return b""
        size = int(line.split(b";")[0], 16)
        if size == 0:
            end = rest.find(b"\r\n")
            while end > 0:  # trailer lines
                rest = rest[end + 2:]
                end = rest.find(b"\r\n")
            return rest[2:] if end == 0 else b""
        raw = rest[size + 2:]
    return raw


def assert_counted(harness, backend: ScriptedBackend,
                   upstreamed: Upstreamed, seen_before: int) -> None:
    """Every request the backend parsed in this example was admitted and
    sent upstream by the proxy."""
    got = Counter((r.method, r.target) for r in backend.requests[seen_before:]
                  if r.target != b"/fresh")
    assert not got - upstreamed.requests, (got, upstreamed.outcomes)
    assert len(backend.requests) <= harness.stats()["admitted"]


def assert_fresh_request_served(harness) -> None:
    raw = exchange(harness.port, FRESH, half_close=False)
    assert statuses(raw)[-1:] == [200], raw[:200]


# -- the fuzz targets ---------------------------------------------------------


@pytest.fixture
def client_side(start_proxy):
    """A proxy in front of a recording backend, shared by all examples."""
    backend = ScriptedBackend()
    harness, upstreamed = fuzz_proxy(start_proxy, backend)
    return harness, backend, upstreamed


@st.composite
def split(draw, data: bytes) -> tuple[int, ...]:
    """Up to two places to cut ``data`` at."""
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=2))
    return tuple(sorted(set(c for c in cuts if c < len(data))))


@fuzz_settings(EXAMPLES)
@given(data=st.shared(client_bytes(), key="request"),
       cuts=st.shared(client_bytes(), key="request").flatmap(split),
       half_close=st.booleans())
def test_mutated_requests_never_break_the_proxy(
    client_side, loop_errors, data, cuts, half_close
):
    harness, backend, upstreamed = client_side
    seen_before = len(backend.requests)
    upstreamed.begin()

    raw = exchange(harness.port, data, half_close, cuts)

    for status in statuses(raw):
        assert status in DOCUMENTED, (status, data)
    harness.assert_quiet()
    assert not loop_errors(), loop_errors()
    assert_counted(harness, backend, upstreamed, seen_before)
    assert_fresh_request_served(harness)
    harness.assert_quiet()


class ResponseScript:
    """Answers each request with the current example's bytes, then
    closes, keeps the connection, or stalls past the proxy's response
    timeout, as the example says; /fresh always gets a plain 200."""

    def __init__(self) -> None:
        self.data = b""
        self.after: list = [CLOSE]

    def __call__(self, request: Request) -> list:
        if request.target == b"/fresh":
            return [response()]
        return [self.data, *self.after]


@pytest.fixture
def upstream_side(start_proxy):
    """A proxy in front of a backend whose answers the examples set."""
    script = ResponseScript()
    backend = ScriptedBackend(script)
    harness, upstreamed = fuzz_proxy(start_proxy, backend)
    return harness, backend, upstreamed, script


REQUESTS = [
    b"GET /u HTTP/1.1\r\nHost: test\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /u HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
    b"Content-Length: 5\r\n\r\nhello",
]
AFTER_RESPONSE = [
    [CLOSE],  # the backend closes: the end of a read-until-close body
    [],  # the backend keeps the connection
    [0.3, CLOSE],  # the backend stalls past response/read timeout
]


@fuzz_settings(EXAMPLES)
@given(
    data=raw_response(),
    after=st.sampled_from(AFTER_RESPONSE),
    request=st.sampled_from(REQUESTS),
)
def test_mutated_responses_never_break_the_proxy(
    upstream_side, loop_errors, data, after, request
):
    harness, backend, upstreamed, script = upstream_side
    script.data, script.after = data, after
    seen_before = len(backend.requests)
    upstreamed.begin()

    raw = exchange(harness.port, request + FRESH, half_close=False)

    allowed = DOCUMENTED | backend_statuses(data)
    for status in statuses(raw):
        assert status in allowed, (status, data)
    harness.assert_quiet()
    assert not loop_errors(), loop_errors()
    assert_counted(harness, backend, upstreamed, seen_before)
    assert_fresh_request_served(harness)
