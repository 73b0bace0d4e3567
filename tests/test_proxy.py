"""End-to-end scenarios: real sockets, a real backend, the whole data path.

Each test starts a proxy in front of a backend (the SampleBackend, or a
ScriptedBackend from tests/backends.py that records every byte it gets),
talks to it over loopback with raw bytes, and reads answers with the
independent reader in tests/wire.py. The ``start_proxy`` fixture checks
the invariant after every scenario: in-flight 0, queue empty, no
connection left counted. Everything runs once per HTTP engine.

No test measures speed. Timeouts are short so that the suite is quick;
waits poll for a state and give up after a few seconds.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from backends import (
    CLOSE,
    RESET,
    STALL,
    Request,
    chunked_response,
    response,
    scripted,
    unused_port,
)
from wire import Reader, eventually, exchange, reset

# -- raw requests -------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n"
POST_HELLO = (
    b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\n"
    b"hello world"
)
POST_HELLO_CHUNKED = (
    b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)
PIPELINED_GETS = (
    b"GET /one HTTP/1.1\r\nHost: test\r\n\r\n"
    b"GET /two HTTP/1.1\r\nHost: test\r\n\r\n"
)
GET_WITH_HOP_BY_HOP = (
    b"GET /h HTTP/1.1\r\n"
    b"Host: app.test\r\n"
    b"Connection: keep-alive, X-Secret\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"X-Secret: 1\r\n"
    b"TE: trailers\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Proxy-Authorization: Basic eDp5\r\n"
    b"X-Forwarded-For: 203.0.113.7\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Kept: yes\r\n"
    b"\r\n"
)
GET_STRIPPING_FORWARDED = (
    b"GET / HTTP/1.1\r\n"
    b"Host: app.test\r\n"
    b"Connection: close, X-Forwarded-For, X-Forwarded-Proto,"
    b" X-Forwarded-Host\r\n"
    b"X-Forwarded-For: 198.51.100.1\r\n"
    b"\r\n"
)
POST_HEAD = b"POST / HTTP/1.1\r\nHost: test\r\n"  # framing follows
HEAD_PARTIAL = b"GET / HTTP/1.1\r\nHost: test\r\n"
POST_BODY_STALLS = (
    b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n"
    b"only ten.."
)
POST_OVER_MAX_BODY = (
    b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 2048\r\n\r\n"
    + b"x" * 2048
)
POST_CHUNKED_OVER_MAX_BODY = (
    b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"200\r\n" + b"x" * 512 + b"\r\n"
    + b"200\r\n" + b"x" * 512 + b"\r\n"
    + b"200\r\n" + b"x" * 512 + b"\r\n"
    + b"0\r\n\r\n"
)

# Rejected from the head alone: the backend must see nothing at all.
# Limits in force: max_target 256 bytes, max_head 1 KiB.
BAD_HEADS = {
    "content_length_with_chunked": (
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 42\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "differing_content_lengths": (
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n"
        b"Content-Length: 4\r\n\r\nabcd",
        400,
    ),
    "obs_fold": (
        b"GET / HTTP/1.1\r\nHost: test\r\nX-A: 1\r\n folded\r\n\r\n",
        400,
    ),
    "folded_content_length": (
        b"POST / HTTP/1.1\r\nHost: test\r\nX-A: 1\r\n\tContent-Length: 4\r\n"
        b"\r\nabcd",
        400,
    ),
    "whitespace_after_request_line": (
        b"GET / HTTP/1.1\r\n Host: test\r\n\r\n",
        400,
    ),
    "bare_cr_in_header": (
        b"GET / HTTP/1.1\r\nHost: test\r\nX-A: 1\r2\r\n\r\n",
        400,
    ),
    "nul_in_header": (
        b"GET / HTTP/1.1\r\nHost: test\r\nX-A: 1\x002\r\n\r\n",
        400,
    ),
    "target_too_long": (
        b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: test\r\n\r\n",
        414,
    ),
    "head_too_large": (
        b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n",
        431,
    ),
    "http_version_2": (
        b"GET / HTTP/2.0\r\nHost: test\r\n\r\n",
        505,
    ),
    # A newcomer's probes: targets and Hosts the backend could read
    # differently from the proxy.
    "relative_target": (b"GET a/b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "asterisk_not_options": (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "host_with_space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host_with_userinfo": (b"GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n", 400),
    "url_with_userinfo": (
        b"GET http://u@h.test/ HTTP/1.1\r\nHost: h.test\r\n\r\n", 400
    ),
}
BAD_HEAD_LIMITS = {"limits.max_target": "256B", "limits.max_head": "1KiB"}

# Bad chunked bodies: the head is fine, so it may be forwarded, but the
# backend must never receive a complete request, nor anything hidden after.
BAD_CHUNKED_BODIES = {
    "bad_chunk_size": (
        b"POST /x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk_data_without_crlf": (
        b"POST /x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nAAAAAXX0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: test\r\n\r\n"
    ),
}

HEAD_RESPONSE_5000 = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
BODILESS_RESPONSES = {
    "no_content": b"HTTP/1.1 204 No Content\r\nX-Why: empty\r\n\r\n",
    "not_modified": b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n',
}
NOT_MODIFIED_WITH_STRAY_BODY = (
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nabcd"
)
CONFLICTING_LENGTHS_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
)
PARTIAL_BODY_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes."
)

FAST = {"upstream.response_timeout": "200ms", "upstream.read_timeout": "200ms"}

# -- helpers ------------------------------------------------------------------


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()










def echo_target(request: Request) -> list:
    return [response(body=request.target)]


def echo_body(request: Request) -> list:
    return [response(body=request.body)]


def assert_shed(resp, reason: str) -> None:
    assert resp.status == 503
    assert resp.header("x-maitred-shed") == reason
    assert int(resp.header("retry-after")) >= 1


# -- bodies both ways ---------------------------------------------------------


def test_get_is_answered_with_the_backends_response(proxy):
    resp = exchange(proxy, GET)

    assert resp.status == 200
    assert resp.body == b"ok\n"
    assert proxy.stats()["requests"]["proxied"] == 1


def test_content_length_body_reaches_backend_and_comes_back(proxy):
    resp = exchange(proxy, POST_HELLO)

    assert resp.status == 200
    assert resp.body == b"hello world"


def test_chunked_request_body_goes_upstream_chunked(start_proxy):
    harness, backend = scripted(start_proxy, echo_body)

    resp = exchange(harness, POST_HELLO_CHUNKED)

    assert resp.status == 200
    assert resp.body == b"hello world"
    (request,) = backend.requests
    assert request.chunked
    assert request.header("content-length") is None
    assert request.body == b"hello world"


def test_chunked_response_is_relayed_chunked(start_proxy):
    pieces = [b"hello ", b"chunked ", b"world"]
    harness, _ = scripted(start_proxy, lambda r: [chunked_response(pieces)])

    resp = exchange(harness, GET)

    assert resp.status == 200
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"".join(pieces)


def chunked(body: bytes, piece: int = 64 << 10) -> bytes:
    """``body`` in chunked transfer coding, ``piece`` bytes a chunk."""
    chunks = (body[i:i + piece] for i in range(0, len(body), piece))
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return framed + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content_length", "chunked"])
def test_body_of_several_mib_streams_through_both_ways(proxy, framing):
    body = os.urandom(4 << 20)
    if framing == "chunked":
        raw = POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)
    else:
        raw = POST_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body

    with proxy.connect(timeout=10) as sock:
        sock.sendall(raw)
        resp = Reader(sock).response()

    assert resp.status == 200
    assert len(resp.body) == len(body)
    assert resp.body == body


# -- keep-alive ---------------------------------------------------------------


def test_client_connection_carries_several_requests(proxy):
    with proxy.connect() as sock:
        reader = Reader(sock)
        for _ in range(5):
            sock.sendall(GET)
            assert reader.response().status == 200
            assert proxy.stats()["connections"] == 1

    assert proxy.stats()["requests"]["proxied"] == 5


def test_upstream_connection_is_reused_across_clients(proxy):
    for _ in range(5):
        assert exchange(proxy, GET_CLOSE).status == 200

    assert proxy.backend.served == 5
    assert proxy.backend.connections == 1


def test_pipelined_requests_are_answered_in_order(start_proxy):
    harness, _ = scripted(start_proxy, echo_target)

    with harness.connect() as sock:
        sock.sendall(PIPELINED_GETS)
        reader = Reader(sock)
        first, second = reader.response(), reader.response()

    assert (first.body, second.body) == (b"/one", b"/two")


# -- headers ------------------------------------------------------------------


def test_hop_by_hop_headers_are_dropped_and_forwarded_headers_set(start_proxy):
    harness, backend = scripted(start_proxy)

    assert exchange(harness, GET_WITH_HOP_BY_HOP).status == 200

    (request,) = backend.requests
    names = request.names()
    for hop in ("keep-alive", "x-secret", "te", "proxy-connection",
                "proxy-authorization"):
        assert hop not in names
    assert request.header("connection") is None
    assert request.header("x-kept") == b"yes"
    assert request.header("host") == b"app.test"
    assert request.header("x-forwarded-for") == b"203.0.113.7, 127.0.0.1"
    assert request.header("x-forwarded-proto") == b"http"
    assert request.header("x-forwarded-host") == b"app.test"


def test_connection_header_cannot_strip_the_proxys_forwarded_headers(
    start_proxy,
):
    harness, backend = scripted(start_proxy)

    with harness.connect() as sock:
        sock.sendall(GET_STRIPPING_FORWARDED)
        reader = Reader(sock)
        assert reader.response().status == 200
        assert reader.closed()

    (request,) = backend.requests
    assert request.header("x-forwarded-for").split(b", ")[-1] == b"127.0.0.1"
    assert request.header("x-forwarded-proto") == b"http"
    assert request.header("x-forwarded-host") == b"app.test"
    assert request.header("connection") is None


# -- admission ----------------------------------------------------------------


def test_burst_never_exceeds_the_cap_and_sheds_the_surplus(start_proxy):
    cap, sent = 4, 16
    harness = start_proxy(**{
        "limits.max_concurrency": cap,
        "limits.max_queue": cap,
        "limits.queue_timeout": "300ms",
    })
    backend = harness.backend
    harness.loop.call(backend.hold)

    with ThreadPoolExecutor(sent) as pool:
        futures = [pool.submit(exchange, harness, GET_CLOSE)
                   for _ in range(sent)]
        decided = harness.wait_for(
            lambda s: s["admitted"] + s["requests"]["shed"] == sent
            and s["queued"] == 0
        )
        harness.loop.call(backend.resume)
        responses = [future.result() for future in futures]

    assert decided["admitted"] == cap
    assert backend.peak <= cap
    ok = [r for r in responses if r.status == 200]
    shed = [r for r in responses if r.status != 200]
    reasons = [r.header("x-maitred-shed") for r in shed]
    assert len(ok) == cap
    for resp, reason in zip(shed, reasons, strict=True):
        assert_shed(resp, reason)
    assert set(reasons) == {"queue_full", "queue_timeout"}
    stats = harness.stats()
    assert stats["admitted"] + stats["requests"]["shed"] == sent
    assert stats["requests"]["proxied"] == len(ok)
    assert stats["shed"]["queue_full"] == reasons.count("queue_full")
    assert stats["shed"]["queue_timeout"] == reasons.count("queue_timeout")


def test_queued_requests_are_admitted_in_arrival_order(start_proxy):
    harness = start_proxy(**{
        "limits.max_concurrency": 1,
        "limits.queue_timeout": "5s",
    })
    backend = harness.backend
    harness.loop.call(backend.hold)
    paths = ["/a", "/b", "/c", "/d"]
    socks = []
    try:
        for i, path in enumerate(paths):
            sock = harness.connect()
            socks.append(sock)
            sock.sendall(get(path))
            if i == 0:
                assert eventually(lambda: backend.active == 1)
            else:
                stats = harness.wait_for(lambda s, i=i: s["queued"] == i)
                assert stats["queued"] == i
        harness.loop.call(backend.resume)
        statuses = [Reader(sock).response().status for sock in socks]
    finally:
        for sock in socks:
            sock.close()

    assert statuses == [200] * len(paths)
    assert backend.targets == [p.encode() for p in paths]


def test_shed_request_leaves_keep_alive_connection_usable(start_proxy):
    harness = start_proxy(**{
        "limits.max_concurrency": 1,
        "limits.max_queue": 0,
    })
    harness.loop.call(harness.backend.hold)
    with harness.connect() as holder, harness.connect() as sock:
        holder.sendall(GET)
        assert eventually(lambda: harness.backend.active == 1)
        sock.sendall(GET)
        reader = Reader(sock)
        shed = reader.response()
        harness.loop.call(harness.backend.resume)
        assert Reader(holder).response().status == 200
        assert harness.wait_for(lambda s: s["inflight"] == 0)["inflight"] == 0
        sock.sendall(GET)
        again = reader.response()

    assert_shed(shed, "queue_full")
    assert shed.header("connection") is None
    assert b"queue is full" in shed.body
    assert again.status == 200


# -- broken and slow backends -------------------------------------------------


def test_backend_that_is_down_gives_502(start_proxy):
    harness = start_proxy(backend_port=unused_port())

    with harness.connect() as sock:
        sock.sendall(GET)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == 502
    assert harness.stats()["requests"]["upstream_error"] == 1


def test_backend_reset_before_answering_gives_502(start_proxy):
    harness, _ = scripted(start_proxy, lambda r: [RESET])

    assert exchange(harness, GET).status == 502
    assert harness.stats()["requests"]["upstream_error"] == 1


def test_malformed_response_gives_502_and_its_connection_is_dropped(
    start_proxy,
):
    def script(request: Request) -> list:
        if request.conn == 0:
            return [CONFLICTING_LENGTHS_RESPONSE]
        return [response()]

    harness, backend = scripted(start_proxy, script)

    assert exchange(harness, GET).status == 502
    assert exchange(harness, GET).status == 200
    assert backend.connections == 2
    assert harness.stats()["requests"]["upstream_error"] == 1


def test_backend_stalling_before_its_response_gives_504(start_proxy):
    harness, _ = scripted(start_proxy, lambda r: [STALL], **FAST)

    with harness.connect() as sock:
        sock.sendall(GET)
        resp = Reader(sock).response()

    assert resp.status == 504
    assert harness.stats()["requests"]["upstream_timeout"] == 1


def test_backend_stalling_mid_body_cuts_the_client_connection(start_proxy):
    harness, _ = scripted(
        start_proxy, lambda r: [PARTIAL_BODY_RESPONSE, STALL], **FAST
    )

    with harness.connect() as sock:
        sock.sendall(GET)
        reader = Reader(sock)
        head = reader.head_only()
        body, closed = reader.rest(timeout=5)

    assert head.status == 200
    assert closed
    assert len(body) < 100
    assert harness.stats()["requests"]["upstream_timeout"] == 1


def test_backend_closing_mid_body_truncates_the_response(start_proxy):
    harness, _ = scripted(
        start_proxy, lambda r: [PARTIAL_BODY_RESPONSE, CLOSE]
    )

    with harness.connect() as sock:
        sock.sendall(GET)
        reader = Reader(sock)
        head = reader.head_only()
        body, closed = reader.rest(timeout=5)

    assert head.status == 200
    assert closed
    assert len(body) < 100
    assert harness.stats()["requests"]["upstream_truncated"] == 1


def test_pooled_connection_closed_by_backend_leaves_the_pool(start_proxy):
    harness, backend = scripted(start_proxy, lambda r: [response(), CLOSE])
    pooled = harness.proxy.pool.idle

    assert exchange(harness, GET).status == 200
    assert eventually(lambda: harness.loop.call(lambda: not pooled))
    assert exchange(harness, GET).status == 200

    assert backend.connections == 2
    assert harness.stats()["requests"]["proxied"] == 2


def test_get_on_a_pooled_connection_found_dead_is_retried(start_proxy):
    # The backend closes its first connection when a second request comes,
    # as if its idle timer fired just as the proxy reused it.
    harness, backend = scripted(
        start_proxy, lambda r: [CLOSE] if r.index == 1 else [response()]
    )

    assert exchange(harness, GET).status == 200
    assert exchange(harness, get("/again")).status == 200

    assert [(r.conn, r.target) for r in backend.requests] == [
        (0, b"/"), (0, b"/again"), (1, b"/again"),
    ]
    stats = harness.stats()
    assert stats["requests"]["proxied"] == 2
    assert stats["requests"]["upstream_error"] == 0


def test_post_on_a_pooled_connection_found_dead_is_not_retried(start_proxy):
    harness, backend = scripted(
        start_proxy, lambda r: [CLOSE] if r.index == 1 else [response()]
    )

    assert exchange(harness, GET).status == 200
    assert exchange(harness, POST_HELLO).status == 502

    assert backend.connections == 1
    assert harness.stats()["requests"]["upstream_error"] == 1


# -- clients that leave -------------------------------------------------------


def test_client_leaving_the_queue_never_reaches_the_backend(start_proxy):
    harness = start_proxy(**{
        "limits.max_concurrency": 1,
        "limits.queue_timeout": "5s",
    })
    backend = harness.backend
    harness.loop.call(backend.hold)
    with harness.connect() as first:
        first.sendall(get("/first"))
        assert eventually(lambda: backend.active == 1)
        with harness.connect() as second:
            second.sendall(get("/second"))
            assert harness.wait_for(lambda s: s["queued"] == 1)["queued"] == 1
        stats = harness.wait_for(lambda s: s["queued"] == 0)
        harness.loop.call(backend.resume)
        assert Reader(first).response().status == 200

    assert stats["queued"] == 0
    assert stats["requests"]["client_abort_queued"] == 1
    assert backend.targets == [b"/first"]
    assert harness.stats()["admitted"] == 1


def test_client_reset_while_upstream_releases_its_token(start_proxy):
    harness = start_proxy(**{"limits.max_concurrency": 1})
    backend = harness.backend
    harness.loop.call(backend.hold)
    sock = harness.connect()
    sock.sendall(get("/slow"))
    assert eventually(lambda: backend.active == 1)

    reset(sock)
    stats = harness.wait_for(lambda s: s["inflight"] == 0)
    harness.loop.call(backend.resume)

    assert stats["inflight"] == 0
    assert stats["requests"]["client_abort_inflight"] == 1
    assert exchange(harness, GET).status == 200


def test_half_closed_client_still_gets_its_response(proxy):
    with proxy.connect() as sock:
        sock.sendall(GET)
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == 200
    assert resp.body == b"ok\n"


# -- client timeouts ----------------------------------------------------------


def test_head_not_complete_in_time_gets_408(start_proxy):
    harness = start_proxy(**{"timeouts.client_header": "200ms"})

    with harness.connect() as sock:
        sock.sendall(HEAD_PARTIAL)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == 408
    assert harness.backend.connections == 0


def test_slow_second_head_on_a_keep_alive_connection_gets_408(start_proxy):
    harness = start_proxy(**{"timeouts.client_header": "200ms"})

    with harness.connect() as sock:
        reader = Reader(sock)
        sock.sendall(GET)
        first = reader.response()
        sock.sendall(HEAD_PARTIAL)
        second = reader.response()
        assert reader.closed()

    assert (first.status, second.status) == (200, 408)


def test_request_body_that_stalls_gets_408(start_proxy):
    harness = start_proxy(**{"timeouts.client_body": "200ms"})

    with harness.connect() as sock:
        sock.sendall(POST_BODY_STALLS)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == 408
    assert harness.backend.served == 0


def test_idle_keep_alive_connection_is_closed(start_proxy):
    harness = start_proxy(**{"timeouts.idle": "200ms"})

    with harness.connect() as sock:
        sock.sendall(GET)
        reader = Reader(sock)
        assert reader.response().status == 200
        leftover, closed = reader.rest(timeout=5)

    assert closed
    assert leftover == b""


# -- requests rejected --------------------------------------------------------


@pytest.mark.parametrize(
    "raw,status", BAD_HEADS.values(), ids=BAD_HEADS.keys()
)
def test_bad_head_is_answered_and_never_reaches_the_backend(
    start_proxy, raw, status
):
    harness, backend = scripted(start_proxy, **BAD_HEAD_LIMITS)

    with harness.connect() as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == status
    assert resp.header("connection") == "close"
    assert backend.connections == 0
    assert harness.stats()["requests"]["bad_request"] == 1
    assert exchange(harness, GET).status == 200
    assert len(backend.requests) == 1


@pytest.mark.parametrize("name", ["obs_fold", "head_too_large"])
def test_pipelined_bad_head_is_rejected_like_a_first_one(start_proxy, name):
    raw, status = BAD_HEADS[name]
    harness, backend = scripted(start_proxy, **BAD_HEAD_LIMITS)

    with harness.connect() as sock:
        sock.sendall(GET + raw)
        reader = Reader(sock)
        first, second = reader.response(), reader.response()
        assert reader.closed()

    assert (first.status, second.status) == (200, status)
    assert len(backend.requests) == 1


@pytest.mark.parametrize(
    "raw", BAD_CHUNKED_BODIES.values(), ids=BAD_CHUNKED_BODIES.keys()
)
def test_bad_chunked_body_gets_400_and_no_request_completes_upstream(
    start_proxy, raw
):
    harness, backend = scripted(start_proxy)

    with harness.connect() as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        resp = reader.response()
        assert reader.closed()

    assert resp.status == 400
    assert backend.requests == []
    assert b"/hidden" not in backend.received
    assert harness.stats()["requests"]["bad_request"] == 1


def test_content_length_over_max_body_gets_413(start_proxy):
    harness, backend = scripted(start_proxy, **{"limits.max_body": "1KiB"})

    resp = exchange(harness, POST_OVER_MAX_BODY)

    assert resp.status == 413
    assert backend.connections == 0


def test_chunked_body_growing_over_max_body_gets_413(start_proxy):
    harness, backend = scripted(start_proxy, **{"limits.max_body": "1KiB"})

    resp = exchange(harness, POST_CHUNKED_OVER_MAX_BODY)

    assert resp.status == 413
    assert backend.requests == []


# -- responses without a body -------------------------------------------------


def test_head_response_is_relayed_without_a_body(start_proxy):
    harness, backend = scripted(
        start_proxy,
        lambda r: [HEAD_RESPONSE_5000] if r.method == b"HEAD"
        else [response()],
    )

    with harness.connect() as sock:
        reader = Reader(sock)
        sock.sendall(HEAD)
        head = reader.response("HEAD")
        sock.sendall(GET)
        after = reader.response()

    assert head.status == 200
    assert head.header("content-length") == "5000"
    assert after.body == b"ok\n"
    assert backend.connections == 1


@pytest.mark.parametrize(
    "raw", BODILESS_RESPONSES.values(), ids=BODILESS_RESPONSES.keys()
)
def test_bodiless_status_is_relayed_without_a_body(start_proxy, raw):
    harness, _ = scripted(
        start_proxy, lambda r: [raw] if r.target == b"/" else [response()]
    )

    with harness.connect() as sock:
        reader = Reader(sock)
        sock.sendall(GET)
        resp = reader.response()
        sock.sendall(get("/next"))
        after = reader.response()

    assert resp.status == int(raw.split()[1])
    assert resp.header("transfer-encoding") is None
    assert resp.header("content-length") in (None, "0")
    assert after.body == b"ok\n"


def test_stray_body_after_304_is_dropped_with_its_connection(start_proxy):
    harness, backend = scripted(
        start_proxy,
        lambda r: [NOT_MODIFIED_WITH_STRAY_BODY] if r.target == b"/"
        else [response()],
    )

    with harness.connect() as sock:
        reader = Reader(sock)
        sock.sendall(GET)
        resp = reader.response()
        sock.sendall(get("/next"))
        after = reader.response()

    assert resp.status == 304
    assert after.status == 200
    assert after.body == b"ok\n"
    assert backend.connections == 2


# -- where a request goes -----------------------------------------------------

GET_ABSOLUTE_FORM = (
    b"GET http://other.test:8081/x?y=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n"
)
GET_STRIPPING_HOST = (
    b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close, Host\r\n\r\n"
)
GET_GARBAGE_LINE = b"GARBAGE\r\n\r\n"


def test_absolute_form_target_goes_upstream_in_origin_form_with_its_host(
    start_proxy,
):
    harness, backend = scripted(start_proxy)

    assert exchange(harness, GET_ABSOLUTE_FORM).status == 200

    (request,) = backend.requests
    assert request.target == b"/x?y=1"
    assert request.header("host") == b"other.test:8081"
    assert request.header("x-forwarded-host") == b"other.test:8081"


def test_connection_header_cannot_strip_host(start_proxy):
    harness, backend = scripted(start_proxy)

    assert exchange(harness, GET_STRIPPING_HOST).status == 200

    (request,) = backend.requests
    assert request.header("host") == b"shop.test"
    assert request.header("x-forwarded-host") == b"shop.test"


def test_error_body_quotes_no_parser_internals(start_proxy):
    harness, _ = scripted(start_proxy)

    resp = exchange(harness, GET_GARBAGE_LINE)

    assert resp.status == 400
    assert b"bytearray" not in resp.body and b"b'" not in resp.body


def test_a_204_is_relayed_without_content_length(start_proxy):
    harness, _ = scripted(
        start_proxy,
        lambda request: [b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"],
    )

    resp = exchange(harness, GET)

    assert resp.status == 204
    assert resp.header("content-length") is None
