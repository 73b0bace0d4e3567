"""Where a request is going: its target form and its Host, checked once.

Both HTTP engines hand the data path a parsed head; the rules here are
about meaning, not syntax, so they apply whatever engine parsed it
(RFC 9112 3.2 and 3.3):

- origin-form (``/path?query``) is forwarded as it is;
- absolute-form (``http://host:port/path``) is forwarded in origin-form,
  and its authority replaces the Host header, which the RFC says to ignore;
- asterisk-form (``*``) only with OPTIONS; authority-form is CONNECT's,
  which the proxy refuses earlier;
- the Host header, when present, must be a valid host with an optional
  port: a space, a slash or an ``@`` in it is an attempt to make the proxy
  and the backend disagree about the site, and gets 400.
"""

from __future__ import annotations

import re

from proxy._heads import valid_host
from proxy.errors import BadRequest

_ABSOLUTE = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)([^#]*)")


def resolve(method: bytes, target: bytes,
            host: bytes | None) -> tuple[bytes, bytes | None]:
    """The target to forward and the Host to send, or BadRequest."""
    if target[:1] == b"/":
        forwarded = target
    elif target == b"*":
        if method != b"OPTIONS":
            raise BadRequest("the * target is only for OPTIONS")
        forwarded = target
    else:
        absolute = _ABSOLUTE.fullmatch(target)
        if absolute is None:
            raise BadRequest("the request target is not a path or a URL")
        host = absolute.group(1)
        if b"@" in host:
            raise BadRequest("a URL with user information")
        forwarded = absolute.group(2) or b"/"
        if forwarded[:1] != b"/":
            forwarded = b"/" + forwarded
    if host is not None and not valid_host(host):
        raise BadRequest("the Host header is not a host name")
    return forwarded, host
