"""The responses maitred makes itself: sheds and errors.

A shed must cost microseconds, so its head is built once, when the limits
change, not per request. Every shed says why (``X-Maitred-Shed``, the same
words that label ``maitred_shed_total``) and when to come back
(``Retry-After``, whole seconds, at least 1).
"""

from __future__ import annotations

import math
import re

from proxy import _core
from proxy.codec import Headers

SHED_BODY = {
    "queue_full": b"maitred: the backend is at capacity and the queue is full\n",
    "queue_timeout": b"maitred: no backend capacity freed up in time\n",
    "connections": b"maitred: too many open connections\n",
    "draining": b"maitred: shutting down, not taking new requests\n",
}

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

# Parsers quote the offending bytes as Python reprs (b'...', bytearray(...));
# the client gets the sentence without them.
_PARSER_QUOTE = re.compile(r"""\s*:?\s*(?:b['"]|bytearray\()""")

_TEXT = (b"Content-Type", b"text/plain; charset=utf-8")
_CLOSE = (b"Connection", b"close")


def retry_after(setting: int | str, queue_timeout: float,
                mean_upstream: float) -> int:
    """Seconds a shed client should wait: a fixed number, or "auto".

    Auto is the time a fresh request would need to get through: one queue
    wait plus the mean upstream exchange (since start), rounded up, within
    1..60 s.
    """
    if isinstance(setting, int):
        return setting
    return max(1, min(60, math.ceil(queue_timeout + mean_upstream)))


def shed_headers(reason: str, seconds: int, close: bool) -> Headers:
    headers = [
        _TEXT,
        (b"Retry-After", b"%d" % seconds),
        (b"X-Maitred-Shed", reason.encode()),
    ]
    if close:
        headers.append(_CLOSE)
    return headers


def error_body(status: int, detail: str = "") -> bytes:
    """A one-line body: the status and, for client errors, what was wrong."""
    text = f"maitred: {status} {REASONS[status].decode()}"
    detail = _PARSER_QUOTE.split(detail, 1)[0].strip(" :")
    if detail and status < 500:
        text += f": {detail[:200]}"
    return text.encode("utf-8", "replace") + b"\n"


def raw_shed(reason: str, seconds: int) -> bytes:
    """A complete shed response with Connection: close, ready to write."""
    body = SHED_BODY[reason]
    headers = shed_headers(reason, seconds, close=True)
    headers.append((b"Content-Length", b"%d" % len(body)))
    lines = [b"HTTP/1.1 503 Service Unavailable\r\n"]
    lines.extend(b"%s: %s\r\n" % pair for pair in headers)
    return b"".join(lines) + b"\r\n" + body


SHED_REASON_NAMES = _core.SHED_REASONS
