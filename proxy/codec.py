"""The HTTP/1.1 codec: the narrow interface the data path speaks.

The data path never parses or writes HTTP itself. Each client connection
owns a *client codec* (we are the server there) and each upstream connection
an *upstream codec* (we are the client there). Both are fed raw bytes and
give back events; both turn messages into bytes to write. An engine is a
pair of factories for the two codecs.

Events returned by ``next_event()``:

- a :class:`RequestHead` or :class:`ResponseHead` (a message head, parsed);
- ``bytes``: a piece of body, already de-framed (chunk sizes removed);
- ``END``: the message is complete;
- ``NEED_DATA``: feed more bytes first;
- ``PAUSED``: the current exchange is complete and the next message must
  wait until ``next_cycle()``.

Malformed input raises an :class:`~proxy.errors.HttpError` carrying the
status the client gets. Every forwarded head is re-serialised from parsed
fields; raw head bytes never cross the proxy, so the backend cannot frame
a message differently from how the proxy framed it.

Two engines implement this: ``h11`` (below), the pure-Python reference,
and ``compiled``, which must accept, reject and frame exactly as it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import h11

from proxy._heads import (
    RequestHead,
    ResponseHead,
    response_fields,
    upstream_fields,
)
from proxy.errors import (
    BadRequest,
    HeadersTooLarge,
    HttpError,
    NotImplementedMethod,
    UpstreamError,
    UriTooLong,
    VersionNotSupported,
)

if TYPE_CHECKING:
    from proxy._http import CompiledEngine


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Marker("NEED_DATA")
PAUSED: Final = _Marker("PAUSED")
END: Final = _Marker("END")

Headers = list[tuple[bytes, bytes]]


# -- the h11 engine ---------------------------------------------------------


def _framing(headers: h11._headers.Headers) -> tuple[int | None, bool]:
    length = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


def _raw(headers: h11._headers.Headers) -> Headers:
    return list(headers.raw_items())


def _translate(exc: h11.RemoteProtocolError) -> HttpError:
    """The one place h11's errors become maitred's."""
    status = exc.error_status_hint
    text = str(exc)
    if status == 431:
        return HeadersTooLarge("request head or chunk header too large")
    if status == 501:
        return NotImplementedMethod(text)
    return BadRequest(text)


# Where a client codec is in scanning the next request head.
_SCANNING: Final = 0  # every byte received belongs to it until its end
_PENDING: Final = 1  # a new cycle: bytes already received must be scanned
_SCANNED: Final = 2  # its end was seen; what follows is not head


def _head_end(data: bytes) -> int:
    """The offset just past the blank line that ends a head, or -1."""
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n")
    if lf < 0 and crlf < 0:
        return -1
    if lf < 0 or 0 <= crlf < lf:
        return crlf + 3
    return lf + 2


class H11ClientCodec:
    """The client side of a connection, on h11 (we are the server).

    Every request head is scanned as raw bytes before h11 parses it, for
    what h11 lets through: obs-fold lines (h11 unfolds them; RFC 9112 5.2
    lets a proxy reject them, and we do, because a folded framing header is
    a smuggling vector) and a head over ``max_head`` that arrived whole in
    one read (h11 measures only a head still incomplete). Bytes that came
    in while the previous exchange was still going (pipelining) are
    scanned when the next cycle starts.
    """

    __slots__ = ("_conn", "_max_head", "_max_target", "_tail", "_head_size",
                 "_scan", "_method")

    def __init__(self, max_head: int, max_target: int) -> None:
        self._conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=max_head
        )
        self._max_head = max_head
        self._max_target = max_target
        self._method = b""
        self._start_head(_SCANNING)

    def _start_head(self, scan: int) -> None:
        self._tail = b""  # the last bytes scanned, for a mark split in two
        self._head_size = 0
        self._scan = scan

    def receive(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client sent EOF."""
        if self._conn.their_state is h11.MUST_CLOSE:
            # The request that ends the connection is complete: whatever
            # follows is never processed (RFC 9112 9.6), so not kept.
            return
        if self._scan != _SCANNED and data:
            self._catch_up()
            if self._scan == _SCANNING:
                self._scan_head(data)
        self._conn.receive_data(data)

    def _catch_up(self) -> None:
        # The next head may have begun in bytes received before its cycle.
        if self._scan == _PENDING:
            self._scan = _SCANNING
            pending = self._conn.trailing_data[0]
            if pending:
                self._scan_head(pending)

    def _scan_head(self, data: bytes) -> None:
        head = self._tail + data
        end = _head_end(head)
        if end < 0:
            scan = head
            self._head_size += len(data)
            self._tail = head[-3:]
        else:
            scan = head[:end]
            self._head_size += end - len(self._tail)
            self._scan = _SCANNED
        if b"\n " in scan or b"\n\t" in scan:
            raise BadRequest("obsolete line folding in the request head")
        if self._head_size > self._max_head:
            raise HeadersTooLarge(f"request head over {self._max_head} bytes")

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        if self._conn.their_state is h11.MUST_CLOSE:
            return 0
        return len(self._conn.trailing_data[0])

    def next_event(self) -> object:
        if self._conn.their_state is h11.MUST_CLOSE:
            # As after any complete request; bytes that came with this one
            # are ignored, not an error (h11 would raise on them).
            return PAUSED
        self._catch_up()
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _translate(exc) from None
        kind = type(event)
        if kind is h11.Data:
            return bytes(event.data)
        if kind is h11.Request:
            return self._request_head(event)
        if kind is h11.EndOfMessage:
            return END
        if event is h11.NEED_DATA:
            return NEED_DATA
        if event is h11.PAUSED:
            return PAUSED
        if kind is h11.ConnectionClosed:
            return END
        raise BadRequest(f"unexpected {kind.__name__}")

    def _request_head(self, event: h11.Request) -> RequestHead:
        self._method = event.method
        if event.http_version not in (b"1.1", b"1.0"):
            raise VersionNotSupported(
                f"HTTP/{event.http_version.decode()} is not supported"
            )
        if len(event.target) > self._max_target:
            raise UriTooLong(f"request target of {len(event.target)} bytes")
        if event.method == b"CONNECT":
            raise NotImplementedMethod("CONNECT is not supported")
        length, chunked = _framing(event.headers)
        if chunked and length is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if chunked and event.http_version == b"1.0":
            # RFC 9112 6.1: its framing is faulty; a hop that ignores
            # Transfer-Encoding in HTTP/1.0 would frame it differently.
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        expect = any(
            n == b"expect" and v.lower() == b"100-continue"
            for n, v in event.headers
        )
        return RequestHead(
            event.method,
            event.target,
            event.http_version,
            _raw(event.headers),
            length,
            chunked,
            self._conn.their_state is not h11.MUST_CLOSE
            and self._keep_alive(event),
            expect,
        )

    @staticmethod
    def _keep_alive(event: h11.Request) -> bool:
        if event.http_version == b"1.0":
            return False
        for name, value in event.headers:
            if name == b"connection" and b"close" in value.lower():
                return False
        return True

    def continue_(self) -> bytes:
        """A 100 Continue, for a client that asked for one."""
        return self._conn.send(h11.InformationalResponse(status_code=100))

    def response_head(self, head: ResponseHead, headers: Headers) -> bytes:
        """Serialise a response head for the client, framing chosen here."""
        if head.status < 200:
            # An interim response has no body, whatever its headers say.
            event = h11.InformationalResponse(
                status_code=head.status, headers=headers, reason=head.reason
            )
        else:
            if head.content_length is not None and not head.chunked:
                headers.append(
                    (b"Content-Length", b"%d" % head.content_length)
                )
            event = h11.Response(
                status_code=head.status, headers=headers, reason=head.reason
            )
        return self._conn.send(event)

    def forward_response(self, head: ResponseHead, close: bool) -> bytes:
        """The backend's response head as sent to the client: its
        end-to-end fields, and ``Connection: close`` when ``close``."""
        return self.response_head(head, response_fields(head.headers, close))

    def body(self, data: bytes) -> bytes:
        return self._conn.send(h11.Data(data=data))

    def end(self) -> bytes:
        return self._conn.send(h11.EndOfMessage())

    def canned(self, status: int, reason: bytes, headers: Headers,
               body: bytes) -> bytes:
        """A complete response the proxy makes itself (a shed, an error)."""
        headers = headers + [(b"Content-Length", b"%d" % len(body))]
        conn = self._conn
        if conn.our_state is not h11.SEND_RESPONSE:
            # No request was parsed (or it was rejected): write it raw.
            return _raw_response(status, reason, headers, body)
        data = conn.send(
            h11.Response(status_code=status, headers=headers, reason=reason)
        )
        if self._method != b"HEAD":
            # The answer to a HEAD is the head alone, Content-Length kept.
            data += conn.send(h11.Data(data=body))
        return data + conn.send(h11.EndOfMessage())

    def next_cycle(self) -> bool:
        """Get ready for the next request; False if the connection must close."""
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._start_head(_PENDING)
            return True
        return False


def _raw_response(status: int, reason: bytes, headers: Headers,
                  body: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in headers)
    lines.append(b"\r\n")
    return b"".join(lines) + body


class H11UpstreamCodec:
    """The upstream side of a connection, on h11 (we are the client)."""

    __slots__ = ("_conn", "_method", "_suspect")

    def __init__(self, max_head: int) -> None:
        self._conn = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=max_head
        )
        self._method = b""
        self._suspect = False

    def request_head(
        self, method: bytes, target: bytes, headers: Headers,
        content_length: int | None, chunked: bool,
    ) -> bytes:
        if chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        elif content_length is not None:
            headers.append((b"Content-Length", b"%d" % content_length))
        self._method = method
        return self._conn.send(
            h11.Request(method=method, target=target, headers=headers)
        )

    def forward_request(
        self, head: RequestHead, target: bytes, host: bytes | None,
        peer: bytes, default_host: bytes,
    ) -> bytes:
        """The client's request head as sent to the backend: the fields
        of ``upstream_fields``, the client's framing."""
        return self.request_head(
            head.method,
            target,
            upstream_fields(head.headers, host, peer, default_host),
            head.content_length,
            head.chunked,
        )

    def body(self, data: bytes) -> bytes:
        return self._conn.send(h11.Data(data=data))

    def end(self) -> bytes:
        return self._conn.send(h11.EndOfMessage())

    def receive(self, data: bytes) -> None:
        self._conn.receive_data(data)

    def next_event(self) -> object:
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(f"malformed response: {exc}") from None
        kind = type(event)
        if kind is h11.Data:
            return bytes(event.data)
        if kind is h11.Response or kind is h11.InformationalResponse:
            return self._response_head(event)
        if kind is h11.EndOfMessage:
            return END
        if event is h11.NEED_DATA:
            return NEED_DATA
        if event is h11.PAUSED:
            return PAUSED
        if kind is h11.ConnectionClosed:
            raise UpstreamError("upstream closed the connection")
        raise UpstreamError(f"unexpected {kind.__name__}")

    def _response_head(self, event: h11.Response) -> ResponseHead:
        # The declared framing: for HEAD, 204 and 304 it describes a body
        # that is not there, and h11 already knows to read none.
        length, chunked = _framing(event.headers)
        if chunked and length is not None:
            # Relayed chunked without the Content-Length (RFC 9112 6.3),
            # but a backend that sends both is not trusted with another.
            self._suspect = True
        return ResponseHead(
            event.status_code,
            event.reason,
            event.http_version,
            _raw(event.headers),
            length,
            chunked,
            self._conn.their_state is not h11.MUST_CLOSE,
        )

    @property
    def reusable(self) -> bool:
        """True once the exchange ended cleanly and keep-alive holds.

        Bytes past the response's end (a 304 or a HEAD answer carrying a
        body it must not have) would be read as the next response, and a
        response framed by both Content-Length and Transfer-Encoding shows
        a backend that frames loosely: such a connection is not reusable.
        """
        conn = self._conn
        return (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
            and not self._suspect
        )

    def next_cycle(self) -> None:
        self._conn.start_next_cycle()


class H11Engine:
    """The reference engine: h11 on both sides."""

    name = "h11"

    def __init__(self, max_head: int, max_target: int) -> None:
        self.max_head = max_head
        self.max_target = max_target

    def client_codec(self) -> H11ClientCodec:
        return H11ClientCodec(self.max_head, self.max_target)

    def upstream_codec(self) -> H11UpstreamCodec:
        return H11UpstreamCodec(max(self.max_head, 64 * 1024))


def make_engine(
    name: str, max_head: int, max_target: int
) -> H11Engine | CompiledEngine:
    """The engine ``[listen] http_engine`` names."""
    if name == "h11":
        return H11Engine(max_head, max_target)
    if name == "compiled":
        # Imported here: the compiled module imports this one.
        from proxy._http import CompiledEngine

        return CompiledEngine(max_head, max_target)
    raise ValueError(f"http_engine {name!r} is not available in this build")
