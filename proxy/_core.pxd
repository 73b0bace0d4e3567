# Declarations of the admission core (_core.pyx) for the compiled data
# path (client.py, through client.pxd): its state and the entry points it
# calls per request, so they run as C calls. The theory of operation is at
# the top of _core.pyx.

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

# The C values behind the public constants; a leading underscore marks the
# C twin of each Python name.
cdef enum:
    _ADMITTED = -2
    _QUEUED = -1

cdef enum:
    _SHED_QUEUE_FULL
    _SHED_QUEUE_TIMEOUT
    _SHED_CONNECTIONS
    _SHED_DRAINING
    _N_SHED_REASONS

cdef enum:
    _OUTCOME_PROXIED
    _OUTCOME_SHED
    _OUTCOME_BAD_REQUEST
    _OUTCOME_UPSTREAM_ERROR
    _OUTCOME_UPSTREAM_TIMEOUT
    _OUTCOME_UPSTREAM_TRUNCATED
    _OUTCOME_CLIENT_ABORT_QUEUED
    _OUTCOME_CLIENT_ABORT_INFLIGHT
    _N_OUTCOMES

cdef enum:
    _PHASE_CLIENT_HEADER
    _PHASE_CLIENT_BODY
    _PHASE_IDLE
    _PHASE_QUEUE
    _PHASE_CONNECT
    _PHASE_RESPONSE
    _PHASE_READ
    _PHASE_SHUTDOWN
    _N_PHASES

cdef enum:
    _IDLE
    _WAITING
    _HOLDING

cdef enum:
    WHEEL_SIZE = 4096        # buckets; a power of two
    WHEEL_MASK = WHEEL_SIZE - 1
    MAX_BOUNDS = 16          # histogram bounds, +Inf not counted


# -- plain C state ---------------------------------------------------------

cdef struct Limits:
    int64_t max_concurrency
    int64_t max_queue
    int64_t max_connections
    double timeouts[_N_PHASES]      # seconds, by phase; queue_timeout at 3

cdef struct Histogram:
    int nbounds
    double bounds[MAX_BOUNDS]
    uint64_t counts[MAX_BOUNDS + 1]  # per bucket, not cumulative; +Inf last
    double sum

cdef struct State:
    Limits limits
    int64_t inflight
    int64_t queued
    int64_t connections
    bint draining
    uint64_t admitted
    uint64_t enqueued
    uint64_t requests[_N_OUTCOMES]
    uint64_t shed[_N_SHED_REASONS]
    Histogram queue_wait
    Histogram upstream_duration

cdef struct Entry:
    PyObject *timer                # a strong reference, owned by the wheel
    uint32_t gen                   # the timer's generation when filed

cdef struct Bucket:
    Entry *entries
    Py_ssize_t len
    Py_ssize_t cap

cdef struct RefBuffer:
    PyObject **refs                # strong references
    Py_ssize_t len
    Py_ssize_t cap


# -- timers, waiters and the core ------------------------------------------

cdef class Timer:
    cdef readonly object owner
    cdef double _deadline
    cdef int64_t _tick             # tick of the live wheel entry
    cdef uint32_t _gen             # generation of the live wheel entry
    cdef signed char _phase        # last phase armed, -1 before the first
    cdef uint8_t _armed
    cdef uint8_t _filed            # a live entry sits in the wheel


@cython.final
cdef class Waiter(Timer):
    cdef Waiter _prev              # queue neighbours while waiting
    cdef Waiter _next
    cdef double _enqueued_at
    cdef double _admitted_at
    cdef uint8_t _state


cdef class Core:
    cdef State _st
    cdef double _resolution
    cdef object _clock             # None: the C monotonic clock
    cdef Waiter _head              # the queue, oldest first
    cdef Waiter _tail
    cdef list _expired             # shed queue_timeout, for the next tick()
    cdef Bucket *_wheel
    cdef int64_t _next_tick        # the earliest tick not yet swept for good
    cdef RefBuffer _due            # timers fired by the running sweep
    cdef RefBuffer _dropped        # stale entries' references to let go

    cpdef double now(self) except? -1.0
    cdef double _now(self) except? -1.0
    cdef int64_t _tick_of(self, double when) noexcept
    cpdef bint open_connection(self)
    cpdef close_connection(self)
    cpdef int acquire(self, Waiter waiter) except? -100
    cpdef Waiter release(self, Waiter waiter, int outcome)
    cpdef cancel(self, Waiter waiter)
    cpdef record(self, int outcome)
    cdef void _count_shed(self, int reason) noexcept
    cdef void _admit(self, Waiter waiter, double now) noexcept
    cdef int _enqueue(self, Waiter waiter, double now) except -1
    cdef void _unlink(self, Waiter waiter) noexcept
    cdef Waiter _grant_next(self, double now)
    cpdef arm(self, Timer timer, int phase)
    cpdef disarm(self, Timer timer)
    cdef int _arm(self, Timer timer, int phase, double deadline) except -1
    cdef int _sweep(self, double now) except -1
    cdef int _sweep_bucket(self, Bucket *bucket, double now,
                           int64_t now_tick) except -1
    cdef void _expire_if_waiting(self, Timer timer) noexcept
