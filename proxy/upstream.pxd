# Static types for proxy/upstream.py, which Cython compiles: the upstream
# side of every request runs as C-level attribute reads and calls.

cdef class UpstreamProtocol:
    cdef readonly UpstreamPool pool
    cdef readonly object codec
    cdef readonly object transport
    cdef readonly object client
    cdef readonly bint closed
    cdef readonly bint received
    cdef bint _paused  # reading paused by attach()'s client

    cpdef attach(self, client)
    cpdef detach(self)
    cpdef close(self)
    cpdef abort(self)
    cpdef pause_reading(self)
    cpdef resume_reading(self)


cdef class UpstreamPool:
    cdef readonly object loop
    cdef readonly object engine
    cdef readonly str host
    cdef readonly int port
    cdef readonly Py_ssize_t max_idle
    cdef readonly list idle
    cdef object _factory

    cpdef UpstreamProtocol take(self, bint check=*)
    cpdef put(self, UpstreamProtocol up)
    cpdef forget(self, UpstreamProtocol up)
