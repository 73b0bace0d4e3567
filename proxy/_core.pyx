# The admission core of maitred: tokens, the queue, connection accounting,
# deadlines and counters, compiled and free of I/O.
#
# Theory of operation
# ===================
#
# The data path asks this module for every admission decision and feeds it
# time. It opens no socket and knows no event loop, so tests drive it
# synchronously with a fake clock, and a benchmark can time it alone.
#
# What it keeps
# -------------
# One State struct holds the limits, the gauges (in-flight, queued,
# connections), the counters and the histogram buckets as plain C numbers,
# so that a later multi-worker mode can move it into shared memory. Beside
# it live the parts made of Python objects, which stay per process:
#
# - the queue: a FIFO, doubly linked through the Waiter objects themselves,
#   so a client that leaves is unlinked in O(1);
# - the timing wheel: WHEEL_SIZE buckets of (timer, generation) entries,
#   one bucket per tick of `resolution` seconds, the tick number taken
#   modulo WHEEL_SIZE;
# - the expired list: waiters that release() or set_limits() found past
#   their queue deadline, shed and parked until the next tick() reports
#   them, so the owner learns every queue timeout from tick() alone.
#
# Glossary
# --------
# limit      a configured bound: max_concurrency, max_queue,
#            max_connections, or one of the timeouts.
# token      one seat at the backend; there are max_concurrency of them.
# acquire    ask for a token: admitted at once, queued, or shed.
# release    give the token back when the backend's side of the exchange
#            ends; the next live waiter in the queue gets it.
# in-flight  the number of tokens held.
# queue      the waiters for a token, oldest first, at most max_queue.
# waiter     a request's claim on a token: idle, waiting or holding.
# shed       turn a request away at once, with a reason (the 503 word).
# drain      stop taking new work; in-flight and queued work finishes.
#
# Invariants
# ----------
# - A token is released exactly once: release() takes it from a holding
#   waiter and raises on any other, so a double release is loud.
# - In-flight never goes negative. It never exceeds max_concurrency except
#   after a live lowering; then nobody is admitted until it is below the
#   new cap again.
# - While the queue is not empty every token is held: acquire() never
#   admits past a waiter, and each release() or raise of the cap hands the
#   free tokens to the oldest live waiters at once.
# - Every waiter that enters acquire() ends exactly once: admitted (at once,
#   or later by release or set_limits), shed (queue_full, draining, or
#   queue_timeout), or cancelled.
# - A shed touches no upstream: it is two counter increments and a code.
# - A timer never fires before its deadline, fires at most once per arming,
#   and a disarmed timer never fires.
#
# Deadlines
# ---------
# Each connection owns a Timer (header, body, idle, upstream phases) and a
# Waiter, which is itself a Timer carrying the queue deadline. Arming
# computes the deadline's tick and appends an entry to that tick's bucket;
# disarming only clears a flag. Deletion is lazy: an entry is stale when its
# timer was disarmed or re-armed into another bucket (the generation number
# tells), and the sweep drops it. Re-arming into the same bucket reuses the
# live entry, so a timer has at most one live entry. An entry whose tick
# lies in a later rotation stays in its bucket, which is the right one for
# it, and is looked at again one rotation later.
#
# tick() sweeps the buckets of the ticks that passed since the last call,
# plus the current one again, since it may hold deadlines later in the same
# tick. Thousands of armed timers therefore cost nothing until their tick
# comes, and a clock jump longer than a rotation sweeps each bucket once.
# Arming never files an entry under a tick already swept, so tick() returns
# exactly the timers whose deadline is <= now; `resolution` sets the width
# of a tick, hence how many entries share a bucket and how far ahead one
# rotation reaches.
#
# Why it is built this way
# ------------------------
# One wheel instead of one event-loop timer per request phase: arming is a
# few stores, and the event loop keeps a single periodic call to tick().
# Plain C state makes the hot path (acquire, release, tick) mostly C, and
# leaves the door open to shared memory. The wheel holds strong references;
# the ones it lets go of during a sweep are released only after the sweep,
# so a finaliser that runs then sees a consistent core. The garbage
# collector cannot see those references: a Core dropped while it still has
# timers filed whose owners refer back to it is never freed; the proxy
# keeps one Core for the life of its process.
#
# Errors: each method checks its arguments and state and reads the clock
# before it changes anything, so an exception (a bad argument, a misuse, a
# failing injected clock) leaves the core as it was. The cdef helpers
# declare exception values, so every error reaches the Python caller: none
# is printed and swallowed, and none escapes a C-level call.

cimport cython
from cpython.object cimport PyObject, PyTypeObject
from libc.math cimport floor, isfinite
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, realloc
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from "Python.h":
    const unsigned long Py_TPFLAGS_BASETYPE
    void incref "Py_INCREF" (PyObject *obj)
    void decref "Py_DECREF" (PyObject *obj)


# The C constants, the structs and the classes' fields are declared in
# _core.pxd, so the compiled data path can call the core in C.

ADMITTED = _ADMITTED
QUEUED = _QUEUED

SHED_QUEUE_FULL = _SHED_QUEUE_FULL
SHED_QUEUE_TIMEOUT = _SHED_QUEUE_TIMEOUT
SHED_CONNECTIONS = _SHED_CONNECTIONS
SHED_DRAINING = _SHED_DRAINING
SHED_REASONS = ("queue_full", "queue_timeout", "connections", "draining")

OUTCOME_PROXIED = _OUTCOME_PROXIED
OUTCOME_SHED = _OUTCOME_SHED
OUTCOME_BAD_REQUEST = _OUTCOME_BAD_REQUEST
OUTCOME_UPSTREAM_ERROR = _OUTCOME_UPSTREAM_ERROR
OUTCOME_UPSTREAM_TIMEOUT = _OUTCOME_UPSTREAM_TIMEOUT
OUTCOME_UPSTREAM_TRUNCATED = _OUTCOME_UPSTREAM_TRUNCATED
OUTCOME_CLIENT_ABORT_QUEUED = _OUTCOME_CLIENT_ABORT_QUEUED
OUTCOME_CLIENT_ABORT_INFLIGHT = _OUTCOME_CLIENT_ABORT_INFLIGHT
OUTCOMES = (
    "proxied", "shed", "bad_request", "upstream_error", "upstream_timeout",
    "upstream_truncated", "client_abort_queued", "client_abort_inflight",
)

PHASE_CLIENT_HEADER = _PHASE_CLIENT_HEADER
PHASE_CLIENT_BODY = _PHASE_CLIENT_BODY
PHASE_IDLE = _PHASE_IDLE
PHASE_QUEUE = _PHASE_QUEUE
PHASE_CONNECT = _PHASE_CONNECT
PHASE_RESPONSE = _PHASE_RESPONSE
PHASE_READ = _PHASE_READ
PHASE_SHUTDOWN = _PHASE_SHUTDOWN
PHASES = (
    "client_header", "client_body", "idle", "queue", "connect", "response",
    "read", "shutdown",
)

IDLE = _IDLE
WAITING = _WAITING
HOLDING = _HOLDING

QUEUE_WAIT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10,
)
UPSTREAM_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    30, 60,
)

# The limit that sets each phase's timeout, in PHASES order.
_TIMEOUT_KEYS = (
    "client_header", "client_body", "idle", "queue_timeout", "connect",
    "response", "read", "shutdown",
)
# The smallest legal value of each count limit.
_COUNT_MINIMUM = {"max_concurrency": 1, "max_queue": 0, "max_connections": 1}
# Every key of set_limits() and limits().
_LIMIT_KEYS = (
    "max_concurrency", "max_queue", "queue_timeout", "max_connections",
    "client_header", "client_body", "idle", "connect", "response", "read",
    "shutdown",
)
_STATE_NAMES = ("idle", "waiting", "holding")
_INT64_MAX = 2 ** 63 - 1
# Tick numbers are clamped here, far beyond any clock, so they fit int64.
cdef double TICK_CLAMP = 4.0e18
# The finest resolution: keeps tick numbers far from the clamp.
cdef double MIN_RESOLUTION = 1e-6


# -- plain C state ---------------------------------------------------------

# -- timers and waiters ----------------------------------------------------

cdef class Timer:
    """One deadline, armed for one phase at a time; owned by a connection."""

    def __cinit__(self, owner):
        self.owner = owner
        self._phase = -1

    @property
    def phase(self):
        return self._phase

    @property
    def deadline(self):
        return self._deadline if self._armed else 0.0

    @property
    def armed(self):
        return bool(self._armed)


@cython.final
cdef class Waiter(Timer):
    """A request's claim on a token: queued, holding, or idle. Reusable."""

    @property
    def state(self):
        return self._state

    @property
    def enqueued_at(self):
        return self._enqueued_at

    @property
    def admitted_at(self):
        return self._admitted_at


# Waiter is the only subclass Timer may have. The core reads the C fields
# directly, so a Python override would be bypassed without a word.
(<PyTypeObject *>Timer).tp_flags &= ~Py_TPFLAGS_BASETYPE


# -- the core --------------------------------------------------------------

cdef class Core:
    """Tokens, the wait queue, connection accounting, deadlines, counters."""

    def __cinit__(self, *args, **kwargs):
        self._wheel = <Bucket *>calloc(WHEEL_SIZE, sizeof(Bucket))
        if self._wheel == NULL:
            raise MemoryError()
        self._expired = []
        _init_histogram(&self._st.queue_wait, QUEUE_WAIT_BUCKETS)
        _init_histogram(&self._st.upstream_duration, UPSTREAM_DURATION_BUCKETS)

    def __init__(
        self,
        *,
        max_concurrency=64,
        max_queue=256,
        queue_timeout=0.25,
        max_connections=10000,
        client_header=10.0,
        client_body=30.0,
        idle=60.0,
        connect=2.0,
        response=30.0,
        read=30.0,
        shutdown=30.0,
        resolution=0.01,
        clock=None,
    ):
        cdef:
            Limits limits

        given = {
            "max_concurrency": max_concurrency, "max_queue": max_queue,
            "queue_timeout": queue_timeout, "max_connections": max_connections,
            "client_header": client_header, "client_body": client_body,
            "idle": idle, "connect": connect, "response": response,
            "read": read, "shutdown": shutdown,
        }
        for key, value in given.items():
            _put_limit(&limits, key, value)
        self._resolution = _seconds("resolution", resolution)
        if self._resolution < MIN_RESOLUTION:
            raise ValueError(
                f"resolution must be at least {MIN_RESOLUTION:g} seconds, "
                f"got {resolution!r}"
            )
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, got {clock!r}")

        self._clock = clock
        self._st.limits = limits
        self._next_tick = self._tick_of(self._now())

    def __dealloc__(self):
        cdef:
            Py_ssize_t i, j

        if self._wheel != NULL:
            for i in range(WHEEL_SIZE):
                for j in range(self._wheel[i].len):
                    decref(self._wheel[i].entries[j].timer)
                free(self._wheel[i].entries)
            free(self._wheel)
        _let_go(&self._due)
        _let_go(&self._dropped)
        free(self._due.refs)
        free(self._dropped.refs)

    # -- clock -------------------------------------------------------------

    cpdef double now(self) except? -1.0:
        """The core's clock, in seconds."""
        return self._now()

    cdef double _now(self) except? -1.0:
        cdef:
            timespec ts
            int64_t ns

        if self._clock is None:
            clock_gettime(CLOCK_MONOTONIC, &ts)
            # The arithmetic of time.monotonic(), so both agree to the bit.
            ns = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
            return <double>ns / 1e9
        return self._clock()

    cdef int64_t _tick_of(self, double when) noexcept:
        cdef:
            double tick = floor(when / self._resolution)

        if tick > TICK_CLAMP:
            return <int64_t>TICK_CLAMP
        if tick < -TICK_CLAMP:
            return -<int64_t>TICK_CLAMP
        return <int64_t>tick

    # -- connections -------------------------------------------------------

    cpdef bint open_connection(self):
        """Count a new client connection; False (and a shed) past the limit."""
        if self._st.connections >= self._st.limits.max_connections:
            self._count_shed(_SHED_CONNECTIONS)
            return False
        self._st.connections += 1
        return True

    cpdef close_connection(self):
        """Count a closed client connection."""
        if self._st.connections <= 0:
            raise RuntimeError("close_connection without an open connection")
        self._st.connections -= 1

    # -- admission ---------------------------------------------------------

    cpdef int acquire(self, Waiter waiter) except? -100:
        """Ask for a token: ADMITTED, QUEUED, or the shed reason."""
        cdef:
            double now

        _check_given(waiter)
        if waiter._state != _IDLE:
            raise RuntimeError(
                f"acquire needs an idle waiter, got a "
                f"{_STATE_NAMES[waiter._state]} one"
            )
        if self._st.draining:
            self._count_shed(_SHED_DRAINING)
            return _SHED_DRAINING

        now = self._now()
        if (self._head is None
                and self._st.inflight < self._st.limits.max_concurrency):
            self._admit(waiter, now)
            return _ADMITTED
        if self._st.queued < self._st.limits.max_queue:
            self._enqueue(waiter, now)
            return _QUEUED
        self._count_shed(_SHED_QUEUE_FULL)
        return _SHED_QUEUE_FULL

    cpdef Waiter release(self, Waiter waiter, int outcome):
        """Give the token back; return the waiter it went to, if any."""
        cdef:
            double now

        _check_given(waiter)
        _check_code("outcome", outcome, _N_OUTCOMES)
        if waiter._state != _HOLDING:
            raise RuntimeError(
                f"release of a {_STATE_NAMES[waiter._state]} waiter: "
                f"a token is released exactly once, by its holder"
            )

        now = self._now()
        self._st.inflight -= 1
        waiter._state = _IDLE
        self._st.requests[outcome] += 1
        _observe(&self._st.upstream_duration, now - waiter._admitted_at)
        return self._grant_next(now)

    cpdef cancel(self, Waiter waiter):
        """Take a waiting waiter out of the queue (its client left)."""
        _check_given(waiter)
        if waiter._state == _HOLDING:
            raise RuntimeError(
                "cancel of a waiter holding a token; release it with "
                "OUTCOME_CLIENT_ABORT_INFLIGHT"
            )
        if waiter._state == _WAITING:
            self._unlink(waiter)
            waiter._armed = 0
            waiter._state = _IDLE
            self._st.requests[_OUTCOME_CLIENT_ABORT_QUEUED] += 1

    cpdef record(self, int outcome):
        """Count an outcome that held no token, such as bad_request."""
        _check_code("outcome", outcome, _N_OUTCOMES)
        self._st.requests[outcome] += 1

    def shed(self, int reason):
        """Count a shed decided by the data path."""
        _check_code("shed reason", reason, _N_SHED_REASONS)
        self._count_shed(reason)

    cdef void _count_shed(self, int reason) noexcept:
        self._st.shed[reason] += 1
        self._st.requests[_OUTCOME_SHED] += 1

    cdef void _admit(self, Waiter waiter, double now) noexcept:
        self._st.inflight += 1
        self._st.admitted += 1
        waiter._state = _HOLDING
        waiter._admitted_at = now

    cdef int _enqueue(self, Waiter waiter, double now) except -1:
        self._arm(waiter, _PHASE_QUEUE,
                  now + self._st.limits.timeouts[_PHASE_QUEUE])
        waiter._state = _WAITING
        waiter._enqueued_at = now
        waiter._prev = self._tail
        if self._tail is None:
            self._head = waiter
        else:
            self._tail._next = waiter
        self._tail = waiter
        self._st.queued += 1
        self._st.enqueued += 1
        return 0

    cdef void _unlink(self, Waiter waiter) noexcept:
        if waiter._prev is None:
            self._head = waiter._next
        else:
            waiter._prev._next = waiter._next
        if waiter._next is None:
            self._tail = waiter._prev
        else:
            waiter._next._prev = waiter._prev
        waiter._prev = None
        waiter._next = None
        self._st.queued -= 1

    cdef Waiter _grant_next(self, double now):
        # Hands one free token to the oldest live waiter. Heads found past
        # their deadline are shed and parked for the next tick() on the way.
        cdef:
            Waiter waiter

        while (self._head is not None
               and self._st.inflight < self._st.limits.max_concurrency):
            waiter = self._head
            self._unlink(waiter)
            waiter._armed = 0
            if waiter._deadline <= now:
                waiter._state = _IDLE
                self._count_shed(_SHED_QUEUE_TIMEOUT)
                self._expired.append(waiter)
                continue

            self._admit(waiter, now)
            _observe(&self._st.queue_wait, now - waiter._enqueued_at)
            return waiter
        return None

    # -- deadlines ---------------------------------------------------------

    cpdef arm(self, Timer timer, int phase):
        """Set the timer's deadline to now plus the phase's timeout."""
        cdef:
            double now

        _check_code("phase", phase, _N_PHASES)
        _check_not_waiting(timer)
        now = self._now()
        self._arm(timer, phase, now + self._st.limits.timeouts[phase])

    cpdef disarm(self, Timer timer):
        """Cancel the timer's deadline."""
        _check_not_waiting(timer)
        timer._armed = 0

    def tick(self):
        """Return the waiters shed since the last tick and the timers due."""
        cdef:
            double now
            list fired
            Py_ssize_t i

        now = self._now()
        self._sweep(now)
        fired = self._expired
        self._expired = []
        for i in range(self._due.len):
            fired.append(<object>self._due.refs[i])
        _let_go(&self._due)
        _let_go(&self._dropped)
        return fired

    cdef int _arm(self, Timer timer, int phase, double deadline) except -1:
        # Files the timer under its deadline's tick, reusing its live entry
        # when that sits in the same bucket. The deadline is in the future,
        # so its tick is never one swept for good; the clamp keeps that true
        # for an injected clock that steps back.
        cdef:
            int64_t tick = self._tick_of(deadline)
            Bucket *bucket

        if tick < self._next_tick:
            tick = self._next_tick
        bucket = &self._wheel[tick & WHEEL_MASK]
        if not timer._filed or (timer._tick - tick) & WHEEL_MASK:
            _reserve_entries(bucket)
            timer._gen += 1
            bucket.entries[bucket.len].timer = <PyObject *>timer
            bucket.entries[bucket.len].gen = timer._gen
            bucket.len += 1
            incref(<PyObject *>timer)
            timer._filed = 1

        timer._tick = tick
        timer._deadline = deadline
        timer._phase = phase
        timer._armed = 1
        return 0

    cdef int _sweep(self, double now) except -1:
        # Sweeps the buckets of the ticks that passed and the current one,
        # at most one rotation however far the clock jumped.
        cdef:
            int64_t now_tick = self._tick_of(now)
            int64_t tick = self._next_tick

        if now_tick < tick:
            now_tick = tick
        if now_tick - tick >= WHEEL_SIZE:
            tick = now_tick - WHEEL_SIZE + 1
        while tick <= now_tick:
            self._sweep_bucket(&self._wheel[tick & WHEEL_MASK], now, now_tick)
            tick += 1
        self._next_tick = now_tick
        return 0

    cdef int _sweep_bucket(self, Bucket *bucket, double now,
                           int64_t now_tick) except -1:
        # Keeps the entries not yet due, moves the due ones to _due and the
        # stale ones to _dropped; both buffers are reserved first, so the
        # loop cannot fail half way.
        cdef:
            Py_ssize_t i
            Py_ssize_t kept = 0
            Entry entry
            Timer timer

        _reserve_refs(&self._due, bucket.len)
        _reserve_refs(&self._dropped, bucket.len)
        for i in range(bucket.len):
            entry = bucket.entries[i]
            timer = <Timer>entry.timer
            if entry.gen != timer._gen:
                _push_ref(&self._dropped, entry.timer)
            elif not timer._armed:
                timer._filed = 0
                _push_ref(&self._dropped, entry.timer)
            elif timer._tick > now_tick or timer._deadline > now:
                bucket.entries[kept] = entry
                kept += 1
            else:
                timer._filed = 0
                timer._armed = 0
                self._expire_if_waiting(timer)
                _push_ref(&self._due, entry.timer)
        bucket.len = kept
        return 0

    cdef void _expire_if_waiting(self, Timer timer) noexcept:
        # A waiting waiter's timer carries its queue deadline: shed it.
        cdef:
            Waiter waiter

        if type(timer) is not Waiter:
            return
        waiter = <Waiter>timer
        if waiter._state == _WAITING:
            self._unlink(waiter)
            waiter._state = _IDLE
            self._count_shed(_SHED_QUEUE_TIMEOUT)

    # -- limits and draining -----------------------------------------------

    def set_limits(self, **limits):
        """Change limits at once; return the waiters a higher cap admits."""
        cdef:
            Limits changed = self._st.limits
            double now
            Waiter waiter

        for key, value in limits.items():
            _put_limit(&changed, key, value)
        now = self._now()
        self._st.limits = changed

        granted = []
        waiter = self._grant_next(now)
        while waiter is not None:
            granted.append(waiter)
            waiter = self._grant_next(now)
        return granted

    def limits(self):
        """The limits in force, by set_limits() key."""
        cdef:
            Limits *limits = &self._st.limits

        return {
            "max_concurrency": limits.max_concurrency,
            "max_queue": limits.max_queue,
            "queue_timeout": limits.timeouts[_PHASE_QUEUE],
            "max_connections": limits.max_connections,
            "client_header": limits.timeouts[_PHASE_CLIENT_HEADER],
            "client_body": limits.timeouts[_PHASE_CLIENT_BODY],
            "idle": limits.timeouts[_PHASE_IDLE],
            "connect": limits.timeouts[_PHASE_CONNECT],
            "response": limits.timeouts[_PHASE_RESPONSE],
            "read": limits.timeouts[_PHASE_READ],
            "shutdown": limits.timeouts[_PHASE_SHUTDOWN],
        }

    def drain(self):
        """Shed every new acquire from now on; the queue keeps its turn."""
        self._st.draining = True

    @property
    def draining(self):
        return bool(self._st.draining)

    # -- state and counters ------------------------------------------------

    @property
    def inflight(self):
        return self._st.inflight

    @property
    def queued(self):
        return self._st.queued

    @property
    def connections(self):
        return self._st.connections

    def stats(self):
        """A snapshot of the gauges and counters."""
        return {
            "inflight": self._st.inflight,
            "queued": self._st.queued,
            "connections": self._st.connections,
            "admitted": self._st.admitted,
            "enqueued": self._st.enqueued,
            "draining": bool(self._st.draining),
            "requests": {
                name: self._st.requests[i] for i, name in enumerate(OUTCOMES)
            },
            "shed": {
                name: self._st.shed[i] for i, name in enumerate(SHED_REASONS)
            },
        }

    def histogram(self, str name):
        """(bounds, per-bucket counts with +Inf last, sum of seconds)."""
        cdef:
            Histogram *hist

        if name == "queue_wait":
            hist = &self._st.queue_wait
            bounds = QUEUE_WAIT_BUCKETS
        elif name == "upstream_duration":
            hist = &self._st.upstream_duration
            bounds = UPSTREAM_DURATION_BUCKETS
        else:
            raise ValueError(
                f"unknown histogram {name!r}; expected 'queue_wait' or "
                f"'upstream_duration'"
            )
        counts = [hist.counts[i] for i in range(hist.nbounds + 1)]
        return bounds, counts, hist.sum


# -- helpers ---------------------------------------------------------------

cdef int _check_code(str what, int code, int count) except -1:
    if not 0 <= code < count:
        raise ValueError(f"{what} must be in 0..{count - 1}, got {code}")
    return 0


cdef int _check_given(Timer timer) except -1:
    # The entry points take typed arguments, which may still be None.
    if timer is None:
        raise TypeError("a Timer or Waiter is required, not None")
    return 0


cdef int _check_not_waiting(Timer timer) except -1:
    _check_given(timer)
    if type(timer) is Waiter and (<Waiter>timer)._state == _WAITING:
        raise RuntimeError(
            "the timer of a queued waiter carries its queue deadline; "
            "it is the core's to arm"
        )
    return 0


cdef int _put_limit(Limits *limits, str key, object value) except -1:
    # Validates one setting and stores it; raises ValueError naming it.
    cdef:
        int64_t count

    if key in _COUNT_MINIMUM:
        count = _count(key, value, _COUNT_MINIMUM[key])
        if key == "max_concurrency":
            limits.max_concurrency = count
        elif key == "max_queue":
            limits.max_queue = count
        else:
            limits.max_connections = count
    elif key in _TIMEOUT_KEYS:
        limits.timeouts[_TIMEOUT_KEYS.index(key)] = _seconds(key, value)
    else:
        raise ValueError(
            f"unknown limit {key!r}; expected one of {', '.join(_LIMIT_KEYS)}"
        )
    return 0


cdef int64_t _count(str key, object value, int64_t minimum) except? -1:
    # An integer, or a float with an integral value, from `minimum` up.
    number = value
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    if (isinstance(number, bool) or not isinstance(number, int)
            or not minimum <= number <= _INT64_MAX):
        raise ValueError(
            f"{key} must be an integer >= {minimum}, got {value!r}"
        )
    return number


cdef double _seconds(str key, object value) except? -1.0:
    cdef:
        double seconds = 0.0

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = value
        except OverflowError:
            pass
    if not (isfinite(seconds) and seconds > 0):
        raise ValueError(
            f"{key} must be a finite number of seconds > 0, got {value!r}"
        )
    return seconds


cdef void _init_histogram(Histogram *hist, tuple bounds) noexcept:
    cdef:
        int i

    hist.nbounds = len(bounds)
    for i in range(hist.nbounds):
        hist.bounds[i] = bounds[i]


cdef inline void _observe(Histogram *hist, double value) noexcept:
    # Prometheus buckets: a value lands in the first bucket whose upper
    # bound it does not exceed, or in the final +Inf one.
    cdef:
        int i = 0

    while i < hist.nbounds and value > hist.bounds[i]:
        i += 1
    hist.counts[i] += 1
    hist.sum += value


cdef int _reserve_entries(Bucket *bucket) except -1:
    # Room for one more entry.
    cdef:
        Py_ssize_t cap
        Entry *entries

    if bucket.len < bucket.cap:
        return 0
    cap = bucket.cap * 2 if bucket.cap else 8
    entries = <Entry *>realloc(bucket.entries, cap * sizeof(Entry))
    if entries == NULL:
        raise MemoryError()
    bucket.entries = entries
    bucket.cap = cap
    return 0


cdef int _reserve_refs(RefBuffer *buf, Py_ssize_t extra) except -1:
    # Room for `extra` more references.
    cdef:
        Py_ssize_t cap
        PyObject **refs

    if buf.len + extra <= buf.cap:
        return 0
    cap = max(buf.cap * 2, buf.len + extra, 64)
    refs = <PyObject **>realloc(buf.refs, cap * sizeof(PyObject *))
    if refs == NULL:
        raise MemoryError()
    buf.refs = refs
    buf.cap = cap
    return 0


cdef inline void _push_ref(RefBuffer *buf, PyObject *ref) noexcept:
    # The caller reserved the room.
    buf.refs[buf.len] = ref
    buf.len += 1


cdef void _let_go(RefBuffer *buf) noexcept:
    # Drops the buffered references. A finaliser may run and call back into
    # the core, even sweep again, so the array is detached while it runs.
    cdef:
        PyObject **refs = buf.refs
        Py_ssize_t cap = buf.cap
        Py_ssize_t n = buf.len
        Py_ssize_t i

    buf.refs = NULL
    buf.len = 0
    buf.cap = 0
    for i in range(n):
        decref(refs[i])
    if buf.refs == NULL:
        buf.refs = refs
        buf.cap = cap
    else:
        free(refs)
