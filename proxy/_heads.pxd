# Declarations the compiled engine (_http.pyx) and the data path share:
# the head types, so a parser fills them in C; the field spans a parsed
# head keeps; the forwarding roles of field names; the case-blind compare.

# One field of a parsed head, as offsets into the head's raw field bytes.
# A value_start of -1 stands for the value b"chunked" (the normalised
# Transfer-Encoding, whatever case it came in).
cdef struct Span:
    Py_ssize_t name_start
    Py_ssize_t name_end
    Py_ssize_t value_start
    Py_ssize_t value_end


cdef class Head:
    cdef public bytes version
    cdef public object content_length  # int, or None when not declared
    cdef public bint chunked
    cdef public bint keep_alive
    cdef bytes _raw        # the field lines as received, or None
    cdef bytes _spans      # a Span per field, packed; None without _raw
    cdef list _headers     # (name, value) pairs, built on first use

    cdef void set_raw(self, bytes raw, bytes spans) noexcept
    cdef bint has_raw(self) noexcept


cdef class RequestHead(Head):
    cdef public bytes method
    cdef public bytes target
    cdef public bint expect_continue


cdef class ResponseHead(Head):
    cdef public int status
    cdef public bytes reason


# What a field name is to the forwarding rules.
cdef enum:
    F_OTHER = 0
    F_HOP = 1            # hop-by-hop: never forwarded
    F_CONNECTION = 2     # hop-by-hop, and names more of them
    F_FORWARDED_FOR = 3  # X-Forwarded-For: appended to
    F_SET_BY_PROXY = 4   # X-Forwarded-Proto, X-Forwarded-Host
    F_HOST = 5           # Host: set by the proxy too, and written first
    F_CLOSE = 6          # a field named Close: dropped if Connection lists it

# What the Connection fields name beyond the hop-by-hop Keep-Alive.
cdef enum:
    NAMES_CLOSE = 1      # the close option
    NAMES_OTHER = 2      # anything else: a second pass drops those fields

cdef int field_role(const unsigned char *p, Py_ssize_t n) noexcept
cdef int connection_names(const unsigned char *p, Py_ssize_t n) noexcept


cdef inline bint ieq(const unsigned char *p, Py_ssize_t n,
                     const char *lower, Py_ssize_t m) noexcept:
    """p[:n] equals the lower-case ASCII `lower`, ignoring case."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n != m:
        return False
    for i in range(n):
        c = p[i]
        if 65 <= c <= 90:
            c += 32
        if c != <unsigned char>lower[i]:
            return False
    return True


cpdef list end_to_end(list headers)
cpdef list response_fields(list headers, bint close)
cpdef list upstream_fields(list headers, object host, bytes peer,
                           bytes default_host)
cpdef bint valid_host(bytes host)
