"""Type stub for the compiled HTTP/1.1 engine (proxy/_http.pyx).

The codecs implement the interface of proxy/codec.py, event for event and
byte for byte as its h11 engine does, except where docs/http-engines.md
lists a difference. See the theory of operation at the top of _http.pyx.
"""

from proxy._heads import RequestHead, ResponseHead
from proxy.codec import Headers

class ClientCodec:
    """The client side of a connection (we are the server)."""

    def __init__(self, max_head: int, max_target: int) -> None: ...
    def receive(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client sent EOF."""
    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
    def next_event(self) -> RequestHead | bytes | object:
        """A RequestHead, a body piece, END, NEED_DATA or PAUSED.

        Raises an HttpError carrying the status the client gets: 400, 414,
        431, 501 or 505.
        """
    def continue_(self) -> bytes:
        """A 100 Continue, for a client that asked for one."""
    def response_head(self, head: ResponseHead, headers: Headers) -> bytes:
        """Serialise a response head for the client, framing chosen here:
        Content-Length when known, else chunked (HTTP/1.1 client) or
        close-delimited (HTTP/1.0 client); none for HEAD, 204 and 304."""
    def forward_response(self, head: ResponseHead, close: bool) -> bytes:
        """The backend's response head as sent to the client: its
        end-to-end fields, ``Connection: close`` when ``close``; written
        from the head's spans, byte for byte what response_head would
        write."""
    def body(self, data: bytes) -> bytes:
        """Frame one piece of the response body."""
    def end(self) -> bytes:
        """End the response."""
    def canned(
        self, status: int, reason: bytes, headers: Headers, body: bytes
    ) -> bytes:
        """A complete response the proxy makes itself (a shed, an error);
        the head alone for a HEAD request."""
    def next_cycle(self) -> bool:
        """Get ready for the next request; False if the connection must close."""

class UpstreamCodec:
    """The upstream side of a connection (we are the client)."""

    def __init__(self, max_head: int) -> None: ...
    def request_head(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        content_length: int | None,
        chunked: bool,
    ) -> bytes:
        """Serialise a request head for the backend, Host first."""
    def forward_request(
        self,
        head: RequestHead,
        target: bytes,
        host: bytes | None,
        peer: bytes,
        default_host: bytes,
    ) -> bytes:
        """The client's request head as sent to the backend: the fields of
        ``upstream_fields``, the client's framing; written from the
        head's spans, byte for byte what request_head would write."""
    def body(self, data: bytes) -> bytes:
        """Frame one piece of the request body."""
    def end(self) -> bytes:
        """End the request."""
    def receive(self, data: bytes) -> None:
        """Feed bytes from the backend; ``b""`` means it sent EOF."""
    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
    def next_event(self) -> ResponseHead | bytes | object:
        """A ResponseHead (1xx included), a body piece, END, NEED_DATA or
        PAUSED. Raises UpstreamError for a malformed response."""
    @property
    def reusable(self) -> bool:
        """True once the exchange ended cleanly and keep-alive holds."""
    def next_cycle(self) -> None:
        """Get ready for the next exchange on this connection."""

class CompiledEngine:
    """The compiled engine: this module's codecs on both sides."""

    name: str  # "compiled"
    max_head: int  # the proxy may change it live; new codecs use it
    max_target: int
    def __init__(self, max_head: int, max_target: int) -> None: ...
    def client_codec(self) -> ClientCodec: ...
    def upstream_codec(self) -> UpstreamCodec: ...
