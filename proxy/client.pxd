# Static types for proxy/client.py, which Cython compiles: every step of
# a request runs as C-level attribute reads and calls, while the source
# stays plain Python that reads (and, uncompiled, runs) as such.

from proxy._core cimport Core, Timer, Waiter
from proxy._heads cimport RequestHead, ResponseHead
from proxy.upstream cimport UpstreamPool, UpstreamProtocol


# The connection's phases and read-pause reasons, as C integers.
cdef int HEAD, QUEUED_PHASE, CONNECTING, FORWARDING, CLOSED
cdef int _PAUSE_BUFFER, _PAUSE_UPLOAD
cdef Py_ssize_t _MAX_BUFFERED


cdef class ClientProtocol:
    cdef readonly object proxy
    cdef Core core
    cdef UpstreamPool pool
    cdef readonly object transport
    cdef readonly object codec
    cdef Timer timer
    cdef Waiter waiter
    cdef readonly int phase
    cdef bint counted
    cdef bytes peer
    cdef int paused
    cdef bint writing_paused
    cdef RequestHead request
    cdef bint request_done
    cdef Py_ssize_t body_bytes
    cdef bint response_started
    cdef UpstreamProtocol upstream
    cdef bint reused
    cdef bint retried
    cdef public object connecting
    cdef bint keep_alive
    cdef int status
    cdef double started
    cdef bytes target
    cdef object host

    cpdef _pump(self)
    cdef _request_head(self, RequestHead head)
    cdef _request_body(self, bytes data)
    cdef _request_end(self)
    cdef _shed(self, str reason)
    cdef _start_upstream(self)
    cdef _attach(self, UpstreamProtocol up, bint reused)
    cpdef upstream_data(self, UpstreamProtocol up)
    cdef _response_head(self, ResponseHead head, list out)
    cdef _response_end(self, UpstreamProtocol up)
    cpdef upstream_failed(self, err, int outcome)
    cdef bint _can_retry(self, err)
    cdef bint _retryable(self)
    cdef _drop_upstream(self)
    cdef _release(self, int outcome)
    cdef _access(self, int outcome)
    cdef _arm_exchange(self)
    cdef _client_stalled(self)
    cdef _next_request(self)
    cdef _reject(self, err)
    cdef _answer_error(self, int status, str detail)
    cdef _close(self)
    cdef _pause(self, int reason)
    cdef _resume(self, int reason)
