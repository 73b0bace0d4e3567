"""Type stub for the compiled admission core (proxy/_core.pyx).

The core is sans-IO: it never touches a socket or an event loop. The data
path asks it for decisions and feeds it time; tests drive it with a fake
clock. See the theory of operation at the top of _core.pyx.
"""

from collections.abc import Callable
from typing import Any

# acquire() results. A shed returns its reason code (one of SHED_*), which is
# never equal to ADMITTED or QUEUED.
ADMITTED: int  # -2
QUEUED: int  # -1

# Shed reasons: index into SHED_REASONS (the X-Maitred-Shed words).
SHED_QUEUE_FULL: int  # 0
SHED_QUEUE_TIMEOUT: int  # 1
SHED_CONNECTIONS: int  # 2
SHED_DRAINING: int  # 3
SHED_REASONS: tuple[str, ...]

# Request outcomes: index into OUTCOMES (the maitred_requests_total labels).
OUTCOME_PROXIED: int  # 0
OUTCOME_SHED: int  # 1
OUTCOME_BAD_REQUEST: int  # 2
OUTCOME_UPSTREAM_ERROR: int  # 3
OUTCOME_UPSTREAM_TIMEOUT: int  # 4
OUTCOME_UPSTREAM_TRUNCATED: int  # 5
OUTCOME_CLIENT_ABORT_QUEUED: int  # 6
OUTCOME_CLIENT_ABORT_INFLIGHT: int  # 7
OUTCOMES: tuple[str, ...]

# Deadline phases: index into PHASES (the timeout each one uses).
PHASE_CLIENT_HEADER: int  # 0  timeouts.client_header
PHASE_CLIENT_BODY: int  # 1  timeouts.client_body
PHASE_IDLE: int  # 2  timeouts.idle
PHASE_QUEUE: int  # 3  limits.queue_timeout (armed by the core itself)
PHASE_CONNECT: int  # 4  upstream.connect_timeout
PHASE_RESPONSE: int  # 5  upstream.response_timeout
PHASE_READ: int  # 6  upstream.read_timeout
PHASE_SHUTDOWN: int  # 7  timeouts.shutdown
PHASES: tuple[str, ...]

# Waiter states.
IDLE: int  # 0  holds nothing
WAITING: int  # 1  in the queue
HOLDING: int  # 2  holds a token

# Histogram bucket upper bounds in seconds (ascending, +Inf implied).
QUEUE_WAIT_BUCKETS: tuple[float, ...]
UPSTREAM_DURATION_BUCKETS: tuple[float, ...]

class Timer:
    """One deadline, armed for one phase at a time; owned by a connection."""

    owner: Any  # the object to tell when the deadline passes (read-only)
    @property
    def phase(self) -> int: ...  # last phase armed (kept after it fires); -1 before
    @property
    def deadline(self) -> float: ...  # core clock seconds; 0.0 when not armed
    @property
    def armed(self) -> bool: ...
    def __init__(self, owner: Any) -> None: ...

class Waiter(Timer):
    """A request's claim on a token: queued, holding, or idle. Reusable."""

    @property
    def state(self) -> int: ...  # IDLE, WAITING or HOLDING
    @property
    def enqueued_at(self) -> float: ...
    @property
    def admitted_at(self) -> float: ...

class Core:
    """Tokens, the wait queue, connection accounting, deadlines, counters."""

    def __init__(
        self,
        *,
        max_concurrency: int = 64,
        max_queue: int = 256,
        queue_timeout: float = 0.25,
        max_connections: int = 10000,
        client_header: float = 10.0,
        client_body: float = 30.0,
        idle: float = 60.0,
        connect: float = 2.0,
        response: float = 30.0,
        read: float = 30.0,
        shutdown: float = 30.0,
        resolution: float = 0.01,  # seconds, at least 1e-6
        clock: Callable[[], float] | None = None,
    ) -> None: ...
    def now(self) -> float: ...
    # connections
    def open_connection(self) -> bool: ...
    def close_connection(self) -> None: ...
    # admission
    def acquire(self, waiter: Waiter) -> int: ...
    def release(self, waiter: Waiter, outcome: int) -> Waiter | None: ...
    def cancel(self, waiter: Waiter) -> None: ...
    def record(self, outcome: int) -> None: ...
    def shed(self, reason: int) -> None: ...
    # deadlines. A queued Waiter's deadline is the core's: arm/disarm raise
    # RuntimeError on it. tick() returns the Timers whose deadline <= now,
    # after the waiters release()/set_limits() shed for queue_timeout.
    def arm(self, timer: Timer, phase: int) -> None: ...
    def disarm(self, timer: Timer) -> None: ...
    def tick(self) -> list[Timer]: ...
    # limits and draining
    def set_limits(self, **limits: float) -> list[Waiter]: ...
    def limits(self) -> dict[str, float]: ...
    def drain(self) -> None: ...
    @property
    def draining(self) -> bool: ...
    # state and counters
    @property
    def inflight(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def connections(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    def histogram(self, name: str) -> tuple[tuple[float, ...], list[int], float]: ...
