"""Type stub for the message heads and forwarding rules (proxy/_heads.pyx).

See the theory of operation at the top of _heads.pyx.
"""

IDEMPOTENT: frozenset[bytes]

Headers = list[tuple[bytes, bytes]]

class Head:
    """What request and response heads share."""

    version: bytes
    content_length: int | None
    chunked: bool
    keep_alive: bool
    @property
    def headers(self) -> Headers:
        """The fields as (name as sent, value) pairs, built on first use
        for a head from the compiled parser."""
    @headers.setter
    def headers(self, value: Headers) -> None: ...

class RequestHead(Head):
    """A parsed request head."""

    method: bytes
    target: bytes
    expect_continue: bool
    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: Headers,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None: ...
    @property
    def has_body(self) -> bool: ...
    @property
    def host(self) -> bytes | None:
        """The Host field's value, or None without one."""

class ResponseHead(Head):
    """A parsed response head (final or 1xx)."""

    status: int
    reason: bytes
    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        headers: Headers,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None: ...

def end_to_end(headers: Headers) -> Headers:
    """The fields that cross the proxy: hop-by-hop ones and those the
    Connection field names are dropped."""

def response_fields(headers: Headers, close: bool) -> Headers:
    """A response's fields as sent to the client: the end-to-end ones, and
    ``Connection: close`` when the connection ends after it."""

def upstream_fields(
    headers: Headers, host: bytes | None, peer: bytes, default_host: bytes
) -> Headers:
    """A request's fields as sent to the backend: end-to-end ones less
    those the proxy sets, then Host and the X-Forwarded fields."""

def valid_host(host: bytes) -> bool:
    """A host name or [IP literal], then an optional port of up to five
    digits."""
