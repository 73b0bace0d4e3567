# Declarations the compiled engine (_http.pyx) and the data path share:
# the head types, so a parser fills them in C, and the case-blind compare.

cdef class RequestHead:
    cdef public bytes method
    cdef public bytes target
    cdef public bytes version
    cdef public list headers
    cdef public object content_length  # int, or None when not declared
    cdef public bint chunked
    cdef public bint keep_alive
    cdef public bint expect_continue


cdef class ResponseHead:
    cdef public int status
    cdef public bytes reason
    cdef public bytes version
    cdef public list headers
    cdef public object content_length
    cdef public bint chunked
    cdef public bint keep_alive


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
cpdef list upstream_fields(list headers, object host, bytes peer,
                           bytes default_host)
cpdef bint valid_host(bytes host)
