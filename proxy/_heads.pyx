# Message heads, and the rules for carrying their fields across the proxy.
#
# Theory of operation
# ===================
#
# Both HTTP engines hand the data path a RequestHead or a ResponseHead:
# the parsed start line, the fields as (name as sent, value) pairs, and
# the framing the parser settled on. The compiled engine fills them in C;
# h11's codec builds them through the constructor. What goes out is
# written again from the parsed fields (names as sent, values trimmed,
# CRLF line ends, framing from the parsed framing), never copied as a
# block, so the backend cannot frame a message differently from how the
# proxy framed it.
#
# Two rules decide which fields cross, whatever engine parsed them:
#
# - end_to_end: hop-by-hop fields describe one connection and stop at the
#   proxy (RFC 9110 7.6.1), as do those a Connection field names, except
#   the X-Forwarded-* fields the proxy owns. Framing fields
#   (Content-Length, Transfer-Encoding) stop too: each hop frames for
#   itself, from the head's parsed framing.
# - upstream_fields: a request's end-to-end fields, less those the proxy
#   sets itself, plus Host (from the resolved target, so neither a
#   Connection field nor an absolute-form target can make the proxy and
#   the backend disagree about the site) and X-Forwarded-For, -Proto and
#   -Host. A client's own X-Forwarded-For values are kept, joined (empty
#   ones skipped), and the peer's address appended.
#
# Both run in one pass over the list in the usual case; a second pass
# happens only when a Connection field names further fields to drop (the
# usual "keep-alive" and "close" name none).
#
# Spans: a head from the compiled parser keeps its field lines as they
# arrived (one bytes object) and, per field, a Span of offsets into them,
# and builds the (name, value) list only if asked for `headers`. The
# compiled codecs' forward_request and forward_response apply the two
# rules above straight to the spans (field_role, connection_names), so a
# forwarded head costs the same few allocations whatever its number of
# fields; they fall back to the list for the rare head that needs the
# second pass.

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

cdef frozenset _PROXY_OWNED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
cdef bytes _HOST = b"Host"
cdef bytes _XFF = b"X-Forwarded-For"
cdef bytes _XFP = b"X-Forwarded-Proto"
cdef bytes _XFH = b"X-Forwarded-Host"
cdef bytes _HTTP = b"http"
cdef bytes _COMMA_SP = b", "
cdef bytes _CHUNKED = b"chunked"
cdef tuple _CONNECTION_CLOSE = (b"Connection", b"close")


cdef class Head:
    """What request and response heads share: the version, the framing
    the parser settled on, and the fields.

    A head from the compiled parser keeps its field lines as received
    (one bytes object) and a Span per field; the (name, value) list is
    built only if something asks for ``headers``, so forwarding a head
    need not make a Python object per field.
    """

    @property
    def headers(self):
        """The fields as (name as sent, value) pairs."""
        if self._headers is None:
            self._headers = (
                [] if self._raw is None else _field_list(self._raw, self._spans)
            )
        return self._headers

    @headers.setter
    def headers(self, list value not None):
        self._headers = value
        self._raw = None
        self._spans = None

    cdef void set_raw(self, bytes raw, bytes spans) noexcept:
        self._raw = raw
        self._spans = spans
        self._headers = None

    cdef bint has_raw(self) noexcept:
        # The spans describe the fields only until someone else's list
        # replaces them; a list read through ``headers`` may be changed.
        return self._raw is not None and self._headers is None


cdef list _field_list(bytes raw, bytes spans):
    cdef const Span *span = <const Span *><const char *>spans
    cdef Py_ssize_t count = len(spans) // sizeof(Span)
    cdef Py_ssize_t i
    cdef list fields = []
    for i in range(count):
        fields.append((
            raw[span[i].name_start:span[i].name_end],
            _CHUNKED if span[i].value_start < 0
            else raw[span[i].value_start:span[i].value_end],
        ))
    return fields


cdef class RequestHead(Head):
    """A parsed request head."""

    def __init__(self, bytes method, bytes target, bytes version,
                 list headers, content_length, bint chunked,
                 bint keep_alive, bint expect_continue):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue

    @property
    def has_body(self):
        return self.chunked or bool(self.content_length)

    @property
    def host(self):
        """The Host field's value, or None without one."""
        cdef const unsigned char *p
        cdef const Span *span
        cdef Py_ssize_t i
        cdef bytes name, value
        if self.has_raw():
            p = self._raw
            span = <const Span *><const char *>self._spans
            for i in range(len(self._spans) // sizeof(Span)):
                if ieq(p + span[i].name_start,
                       span[i].name_end - span[i].name_start, b"host", 4):
                    return self._raw[span[i].value_start:span[i].value_end]
            return None
        for name, value in self.headers:
            if ieq(name, len(name), b"host", 4):
                return value
        return None


cdef class ResponseHead(Head):
    """A parsed response head (final or 1xx)."""

    def __init__(self, int status, bytes reason, bytes version,
                 list headers, content_length, bint chunked,
                 bint keep_alive):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive


cdef int field_role(const unsigned char *p, Py_ssize_t n) noexcept:
    """The forwarding role of the field name p[:n]."""
    if n == 10:
        if ieq(p, n, b"connection", 10):
            return F_CONNECTION
        if ieq(p, n, b"keep-alive", 10):
            return F_HOP
    elif n == 2:
        if ieq(p, n, b"te", 2):
            return F_HOP
    elif n == 4:
        if ieq(p, n, b"host", 4):
            return F_HOST
    elif n == 5:
        if ieq(p, n, b"close", 5):
            return F_CLOSE
    elif n == 7:
        if ieq(p, n, b"trailer", 7) or ieq(p, n, b"upgrade", 7):
            return F_HOP
    elif n == 14:
        if ieq(p, n, b"content-length", 14):
            return F_HOP
    elif n == 15:
        if ieq(p, n, b"x-forwarded-for", 15):
            return F_FORWARDED_FOR
    elif n == 16:
        if ieq(p, n, b"proxy-connection", 16):
            return F_HOP
        if ieq(p, n, b"x-forwarded-host", 16):
            return F_SET_BY_PROXY
    elif n == 17:
        if ieq(p, n, b"transfer-encoding", 17):
            return F_HOP
        if ieq(p, n, b"x-forwarded-proto", 17):
            return F_SET_BY_PROXY
    elif n == 18:
        if ieq(p, n, b"proxy-authenticate", 18):
            return F_HOP
    elif n == 19:
        if ieq(p, n, b"proxy-authorization", 19):
            return F_HOP
    return F_OTHER


cdef int connection_names(const unsigned char *p, Py_ssize_t n) noexcept:
    """What the Connection value p[:n] names beyond the hop-by-hop
    Keep-Alive: NAMES_CLOSE for the close option, NAMES_OTHER for any
    other name."""
    cdef Py_ssize_t a = 0, b, e
    cdef int names = 0
    while a < n:
        b = a
        while b < n and p[b] != 44:  # ,
            b += 1
        e = b
        while a < e and (p[a] == 32 or p[a] == 9):
            a += 1
        while e > a and (p[e - 1] == 32 or p[e - 1] == 9):
            e -= 1
        if ieq(p + a, e - a, b"close", 5):
            names |= NAMES_CLOSE
        elif e > a and not ieq(p + a, e - a, b"keep-alive", 10):
            names |= NAMES_OTHER
        a = b + 1
    return names


cdef set _connection_named(list headers):
    """The lower-cased names every Connection field lists, less ours."""
    cdef set named = set()
    cdef bytes name, value, token
    for name, value in headers:
        if field_role(name, len(name)) == F_CONNECTION:
            for token in value.split(b","):
                named.add(token.strip().lower())
    return named - _PROXY_OWNED


cpdef list end_to_end(list headers):
    """The fields that cross the proxy: hop-by-hop ones and those the
    Connection field names are dropped."""
    cdef list kept = []
    cdef int names = 0
    cdef bint close_field = False
    cdef tuple pair
    cdef int role
    cdef set dropped
    for pair in headers:
        role = field_role(<bytes>pair[0], len(<bytes>pair[0]))
        if role == F_HOP:
            continue
        if role == F_CONNECTION:
            names |= connection_names(<bytes>pair[1], len(<bytes>pair[1]))
            continue
        close_field = close_field or role == F_CLOSE
        kept.append(pair)
    if not (names & NAMES_OTHER or names & NAMES_CLOSE and close_field):
        return kept
    dropped = _connection_named(headers)
    return [pair for pair in kept if (<bytes>pair[0]).lower() not in dropped]


cpdef list response_fields(list headers, bint close):
    """A response's fields as sent to the client: the end-to-end ones, and
    ``Connection: close`` when the connection ends after it."""
    cdef list fields = end_to_end(headers)
    if close:
        fields.append(_CONNECTION_CLOSE)
    return fields


cpdef list upstream_fields(list headers, object host, bytes peer,
                           bytes default_host):
    """A request's fields as sent to the backend.

    ``host`` is the Host the target resolved to (None: the client sent
    none, and ``default_host`` goes instead); ``peer`` the client's
    address, appended to X-Forwarded-For.
    """
    cdef list fields = []
    cdef object forwarded_for = None
    cdef tuple pair
    cdef int role
    for pair in end_to_end(headers):
        role = field_role(<bytes>pair[0], len(<bytes>pair[0]))
        if role == F_FORWARDED_FOR:
            if not pair[1]:
                continue  # an empty field adds no hop
            if forwarded_for is None:
                forwarded_for = pair[1]
            else:
                forwarded_for = forwarded_for + _COMMA_SP + pair[1]
        elif role != F_SET_BY_PROXY and role != F_HOST:
            fields.append(pair)
    if forwarded_for:
        forwarded_for = forwarded_for + _COMMA_SP + peer
    else:
        forwarded_for = peer
    fields.append((_HOST, host or default_host))
    fields.append((_XFF, forwarded_for))
    fields.append((_XFP, _HTTP))
    if host:
        fields.append((_XFH, host))
    return fields


cdef inline bint _reg_name_byte(unsigned char c) noexcept:
    # RFC 3986 reg-name: unreserved, sub-delims and the % of pct-encoding.
    return (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
            or c in b"-._~%!$&'()*+,;=")


cdef inline bint _ip_literal_byte(unsigned char c) noexcept:
    return 48 <= c <= 58 or 65 <= c <= 70 or 97 <= c <= 102 or c == 46


cpdef bint valid_host(bytes host):
    """A host name or [IP literal], then an optional port of up to five
    digits: what a Host field (or a URL's authority) may carry."""
    cdef const unsigned char *p = host
    cdef Py_ssize_t n = len(host)
    cdef Py_ssize_t i = 0
    if n and p[0] == 91:  # [
        i = 1
        while i < n and _ip_literal_byte(p[i]):
            i += 1
        if i == 1 or i == n or p[i] != 93:  # ]
            return False
        i += 1
    else:
        while i < n and _reg_name_byte(p[i]):
            i += 1
    if i == n:
        return True
    if p[i] != 58 or n - i - 1 > 5:  # :
        return False
    for i in range(i + 1, n):
        if not 48 <= p[i] <= 57:
            return False
    return True
