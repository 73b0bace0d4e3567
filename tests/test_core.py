"""Tests for proxy._core, the compiled admission core.

Every test drives the core synchronously with a FakeClock moved by hand;
nothing sleeps or times anything. Clock steps and timeouts are
binary fractions (0.125, 0.25, ...) so deadlines land exactly where the
test says. At the end, a Hypothesis state machine runs a plain-Python
model of the admission rules beside the core and checks they agree.
"""

from __future__ import annotations

import bisect
import sys
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from proxy import _core
from proxy._core import (
    ADMITTED,
    HOLDING,
    IDLE,
    OUTCOME_BAD_REQUEST,
    OUTCOME_PROXIED,
    OUTCOME_UPSTREAM_ERROR,
    OUTCOMES,
    PHASE_CLIENT_HEADER,
    PHASE_CONNECT,
    PHASE_IDLE,
    PHASE_QUEUE,
    PHASE_READ,
    PHASE_SHUTDOWN,
    PHASES,
    QUEUE_WAIT_BUCKETS,
    QUEUED,
    SHED_DRAINING,
    SHED_QUEUE_FULL,
    SHED_QUEUE_TIMEOUT,
    SHED_REASONS,
    UPSTREAM_DURATION_BUCKETS,
    WAITING,
    Core,
    Timer,
    Waiter,
)

START = 1000.0


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.failing = False

    def __call__(self) -> float:
        if self.failing:
            raise OSError("the clock is gone")
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_core(clock):
    def make(**limits) -> Core:
        return Core(clock=clock, **limits)

    return make


def waiters(count: int) -> list[Waiter]:
    return [Waiter(f"w{i}") for i in range(count)]


def fill(core: Core, *waiting: Waiter) -> None:
    for waiter in waiting:
        assert core.acquire(waiter) in (ADMITTED, QUEUED)


# -- the module ---------------------------------------------------------------


def test_core_is_the_compiled_extension():
    assert _core.__file__.endswith(".so"), _core.__file__


def test_codes_index_their_name_tuples():
    assert OUTCOMES[_core.OUTCOME_UPSTREAM_TIMEOUT] == "upstream_timeout"
    assert SHED_REASONS[SHED_DRAINING] == "draining"
    assert PHASES[PHASE_QUEUE] == "queue"
    assert ADMITTED not in range(len(SHED_REASONS))
    assert QUEUED not in range(len(SHED_REASONS))


def test_timer_and_waiter_cannot_be_subclassed():
    for base in (Timer, Waiter):
        with pytest.raises(TypeError):
            type("Custom", (base,), {})


def test_owner_is_read_only():
    waiter = Waiter("conn")
    with pytest.raises(AttributeError):
        waiter.owner = "other"
    assert waiter.owner == "conn" and waiter.phase == -1 and not waiter.armed


def test_default_clock_is_the_monotonic_clock():
    core = Core()
    before = time.monotonic()
    now = core.now()
    after = time.monotonic()
    assert before <= now <= after


# -- tokens and the queue -----------------------------------------------------


def test_acquire_admits_up_to_the_cap_then_queues(make_core, clock):
    core = make_core(max_concurrency=2, max_queue=4, queue_timeout=0.25)
    first, second, third = waiters(3)
    assert core.acquire(first) == ADMITTED
    assert core.acquire(second) == ADMITTED
    assert core.acquire(third) == QUEUED

    assert (core.inflight, core.queued) == (2, 1)
    assert (first.state, third.state) == (HOLDING, WAITING)
    assert first.admitted_at == third.enqueued_at == START
    assert third.phase == PHASE_QUEUE and third.deadline == START + 0.25


def test_release_hands_the_token_to_the_oldest_waiter(make_core):
    core = make_core(max_concurrency=1, max_queue=3)
    holder, *queue = waiters(4)
    fill(core, holder, *queue)

    assert core.release(holder, OUTCOME_PROXIED) is queue[0]
    assert core.release(queue[0], OUTCOME_PROXIED) is queue[1]
    assert core.release(queue[1], OUTCOME_PROXIED) is queue[2]
    assert core.release(queue[2], OUTCOME_PROXIED) is None
    assert (core.inflight, core.queued) == (0, 0)
    assert not queue[0].armed  # its queue deadline went with the grant


def test_queue_full_sheds_without_queueing(make_core):
    core = make_core(max_concurrency=1, max_queue=1)
    holder, queued, extra = waiters(3)
    fill(core, holder, queued)

    assert core.acquire(extra) == SHED_QUEUE_FULL
    assert extra.state == IDLE and not extra.armed
    stats = core.stats()
    assert stats["shed"]["queue_full"] == stats["requests"]["shed"] == 1
    assert core.queued == 1


def test_zero_max_queue_sheds_at_the_cap(make_core):
    core = make_core(max_concurrency=1, max_queue=0)
    holder, extra = waiters(2)
    assert core.acquire(holder) == ADMITTED
    assert core.acquire(extra) == SHED_QUEUE_FULL
    assert core.queued == 0


def test_queue_timeout_sheds_waiter_on_tick(make_core, clock):
    core = make_core(max_concurrency=1, max_queue=2, queue_timeout=0.5)
    holder, waiter = waiters(2)
    fill(core, holder, waiter)

    clock.advance(0.25)
    assert core.tick() == []
    clock.advance(0.25)
    assert core.tick() == [waiter]
    assert (waiter.state, waiter.phase) == (IDLE, PHASE_QUEUE)
    assert not waiter.armed
    assert core.queued == 0
    assert core.stats()["shed"]["queue_timeout"] == 1
    assert core.release(holder, OUTCOME_PROXIED) is None


def test_release_skips_expired_heads_and_tick_reports_them(make_core, clock):
    core = make_core(max_concurrency=1, max_queue=2, queue_timeout=0.5)
    holder, stale, fresh = waiters(3)
    fill(core, holder, stale)
    clock.advance(0.25)
    fill(core, fresh)
    clock.advance(0.25)  # stale's deadline passes; no tick has run yet

    assert core.release(holder, OUTCOME_PROXIED) is fresh
    assert stale.state == IDLE
    assert core.stats()["shed"]["queue_timeout"] == 1
    assert core.tick() == [stale]
    assert core.tick() == []


def test_cancel_removes_a_queued_waiter(make_core, clock):
    core = make_core(max_concurrency=1, max_queue=3)
    holder, first, leaving, last = waiters(4)
    fill(core, holder, first, leaving, last)

    core.cancel(leaving)
    assert (leaving.state, leaving.armed, core.queued) == (IDLE, False, 2)
    assert core.stats()["requests"]["client_abort_queued"] == 1
    assert core.release(holder, OUTCOME_PROXIED) is first
    assert core.release(first, OUTCOME_PROXIED) is last
    clock.advance(10.0)
    assert core.tick() == []


def test_cancel_of_an_idle_waiter_does_nothing(make_core):
    core = make_core()
    core.cancel(Waiter("idle"))
    assert core.stats()["requests"]["client_abort_queued"] == 0


def test_cancel_of_a_holder_raises(make_core):
    core = make_core()
    holder = Waiter("holder")
    fill(core, holder)
    with pytest.raises(RuntimeError, match="OUTCOME_CLIENT_ABORT_INFLIGHT"):
        core.cancel(holder)
    assert holder.state == HOLDING and core.inflight == 1


def test_double_release_raises(make_core):
    core = make_core()
    waiter = Waiter("w")
    fill(core, waiter)
    core.release(waiter, OUTCOME_PROXIED)

    with pytest.raises(RuntimeError, match="exactly once"):
        core.release(waiter, OUTCOME_PROXIED)
    assert core.inflight == 0
    assert core.stats()["requests"]["proxied"] == 1


def test_release_of_a_queued_waiter_raises(make_core):
    core = make_core(max_concurrency=1)
    holder, queued = waiters(2)
    fill(core, holder, queued)
    with pytest.raises(RuntimeError):
        core.release(queued, OUTCOME_PROXIED)
    assert (core.inflight, core.queued, queued.state) == (1, 1, WAITING)


def test_acquire_of_a_busy_waiter_raises(make_core):
    core = make_core()
    waiter = Waiter("w")
    fill(core, waiter)
    with pytest.raises(RuntimeError, match="holding"):
        core.acquire(waiter)
    assert core.inflight == 1


def test_draining_sheds_new_work_but_queued_waiters_keep_their_turn(make_core):
    core = make_core(max_concurrency=1, max_queue=2)
    holder, queued, late = waiters(3)
    fill(core, holder, queued)

    core.drain()
    assert core.draining
    assert core.acquire(late) == SHED_DRAINING
    assert core.release(holder, OUTCOME_PROXIED) is queued
    assert core.stats()["shed"]["draining"] == 1


def test_failing_clock_leaves_the_core_unchanged(make_core, clock):
    core = make_core(max_concurrency=1)
    holder, waiter = waiters(2)
    fill(core, holder)

    clock.failing = True
    with pytest.raises(OSError):
        core.acquire(waiter)
    with pytest.raises(OSError):
        core.release(holder, OUTCOME_PROXIED)
    assert (holder.state, waiter.state) == (HOLDING, IDLE)
    assert (core.inflight, core.queued) == (1, 0)


# -- connections --------------------------------------------------------------


def test_connections_past_the_limit_are_shed(make_core):
    core = make_core(max_connections=2)
    assert core.open_connection() and core.open_connection()
    assert not core.open_connection()
    assert core.connections == 2
    stats = core.stats()
    assert stats["shed"]["connections"] == stats["requests"]["shed"] == 1

    core.close_connection()
    assert core.open_connection()


def test_closing_an_unopened_connection_raises(make_core):
    core = make_core()
    with pytest.raises(RuntimeError):
        core.close_connection()
    assert core.connections == 0


# -- live limits --------------------------------------------------------------


def test_raising_the_cap_grants_waiters_in_fifo_order(make_core):
    core = make_core(max_concurrency=1, max_queue=4)
    holder, *queue = waiters(4)
    fill(core, holder, *queue)

    assert core.set_limits(max_concurrency=3) == queue[:2]
    assert [w.state for w in queue] == [HOLDING, HOLDING, WAITING]
    assert (core.inflight, core.queued) == (3, 1)


def test_raising_the_cap_skips_expired_heads(make_core, clock):
    core = make_core(max_concurrency=1, max_queue=2, queue_timeout=0.5)
    holder, stale, fresh = waiters(3)
    fill(core, holder, stale)
    clock.advance(0.25)
    fill(core, fresh)
    clock.advance(0.25)

    assert core.set_limits(max_concurrency=3) == [fresh]
    assert core.tick() == [stale]
    assert core.inflight == 2


def test_lowering_the_cap_cancels_nothing_and_admits_nobody_above_it(make_core):
    core = make_core(max_concurrency=3, max_queue=2)
    holders = waiters(3)
    queued = Waiter("queued")
    fill(core, *holders)

    assert core.set_limits(max_concurrency=1) == []
    assert all(w.state == HOLDING for w in holders) and core.inflight == 3
    assert core.acquire(queued) == QUEUED
    assert core.release(holders[0], OUTCOME_PROXIED) is None
    assert core.release(holders[1], OUTCOME_PROXIED) is None
    assert core.release(holders[2], OUTCOME_PROXIED) is queued
    assert core.inflight == 1


def test_queued_waiters_keep_their_deadline_when_queue_timeout_changes(
    make_core, clock
):
    core = make_core(max_concurrency=1, max_queue=2, queue_timeout=0.5)
    holder, early, late = waiters(3)
    fill(core, holder, early)
    core.set_limits(queue_timeout=2.0)
    fill(core, late)

    assert (early.deadline, late.deadline) == (START + 0.5, START + 2.0)
    clock.advance(0.5)
    assert core.tick() == [early]
    assert late.state == WAITING


@pytest.mark.parametrize(
    "limits",
    [
        {"max_concurrency": 0},
        {"max_concurrency": True},
        {"max_queue": -1},
        {"max_connections": 2.5},
        {"queue_timeout": 0},
        {"read": float("nan")},
        {"idle": float("inf")},
        {"connect": "2s"},
        {"resolution": 0.5},
        {"max_concurrency": 8, "shutdown": -1.0},
    ],
)
def test_invalid_set_limits_changes_nothing(make_core, limits):
    core = make_core(max_concurrency=1, max_queue=1)
    holder, queued = waiters(2)
    fill(core, holder, queued)
    before = core.limits()

    with pytest.raises(ValueError) as error:
        core.set_limits(**limits)
    assert list(limits)[-1] in str(error.value)
    assert core.limits() == before
    assert (queued.state, core.inflight) == (WAITING, 1)


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_concurrency", 0),
        ("max_queue", -1),
        ("max_connections", 0),
        ("queue_timeout", -0.25),
        ("client_header", 0),
        ("shutdown", 10**400),
        ("resolution", 0),
        ("resolution", 1e-9),
    ],
)
def test_constructor_rejects_bad_limits_naming_them(name, value):
    with pytest.raises(ValueError, match=name) as error:
        Core(**{name: value})
    assert repr(value) in str(error.value)


def test_limits_reports_every_setting(clock):
    given = {
        "max_concurrency": 8, "max_queue": 16, "queue_timeout": 0.125,
        "max_connections": 100, "client_header": 1.0, "client_body": 2.0,
        "idle": 3.0, "connect": 4.0, "response": 5.0, "read": 6.0,
        "shutdown": 7.0,
    }
    core = Core(clock=clock, **given)
    assert core.limits() == given
    core.set_limits(max_queue=2, read=0.5)
    assert core.limits() == {**given, "max_queue": 2, "read": 0.5}


# -- deadlines ----------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    timeout=st.floats(0.001, 2.0),
    resolution=st.sampled_from([0.001, 0.01, 0.1]),
    step=st.floats(0.005, 0.05),
)
def test_timer_fires_not_early_and_within_one_resolution(
    timeout, resolution, step
):
    clock = FakeClock()
    core = Core(client_header=timeout, resolution=resolution, clock=clock)
    timer = Timer("conn")
    core.arm(timer, PHASE_CLIENT_HEADER)
    deadline = timer.deadline

    fired = []
    while not fired:
        assert clock.now < deadline + resolution, "fired late"
        clock.advance(step)
        fired = core.tick()
    assert fired == [timer] and deadline <= clock.now
    assert not timer.armed and timer.deadline == 0.0
    assert timer.phase == PHASE_CLIENT_HEADER


# Timeouts by phase for the wheel test. A rotation of the wheel is 4096
# ticks: 4.096 s at a 1 ms resolution, so some deadlines lie a rotation or
# more ahead; at 0.5 s many deadlines fall in the tick they were armed in.
WHEEL_TIMEOUTS = {
    "client_header": 0.5, "client_body": 1.0, "idle": 9.0,
    "queue_timeout": 0.25, "connect": 0.125, "response": 3.0, "read": 0.75,
    "shutdown": 5.0,
}
wheel_steps = st.one_of(
    st.sampled_from([0.0, 0.0625, 0.125, 0.25, 1000.0]), st.floats(0.0, 3.0)
)
wheel_ops = st.lists(
    st.one_of(
        st.tuples(st.just("arm"), st.integers(0, 3), st.integers(0, 7)),
        st.tuples(st.just("disarm"), st.integers(0, 3)),
        st.tuples(st.just("advance"), wheel_steps),
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(resolution=st.sampled_from([0.001, 0.125, 0.5]), ops=wheel_ops)
def test_random_timer_use_fires_each_arming_once_and_on_time(resolution, ops):
    clock = FakeClock()
    core = Core(clock=clock, resolution=resolution, **WHEEL_TIMEOUTS)
    timers = [Timer(i) for i in range(4)]
    timeouts = list(WHEEL_TIMEOUTS.values())
    pending = {}  # timer index -> deadline
    for op, *args in ops:
        if op == "arm":
            index, phase = args
            core.arm(timers[index], phase)
            pending[index] = clock.now + timeouts[phase]
            assert timers[index].deadline == pending[index]
        elif op == "disarm":
            core.disarm(timers[args[0]])
            pending.pop(args[0], None)
        else:
            clock.advance(args[0])
            for timer in core.tick():
                assert pending.pop(timer.owner) <= clock.now, "fired early"
            late = [d for d in pending.values() if d + resolution <= clock.now]
            assert not late, "fired late"


def test_rearming_replaces_the_deadline(make_core, clock):
    core = make_core(client_header=1.0, idle=4.0)
    timer = Timer("conn")
    core.arm(timer, PHASE_CLIENT_HEADER)
    core.arm(timer, PHASE_IDLE)
    assert (timer.phase, timer.deadline) == (PHASE_IDLE, START + 4.0)

    clock.advance(2.0)
    assert core.tick() == []
    clock.advance(2.0)
    assert core.tick() == [timer]
    clock.advance(10.0)
    assert core.tick() == []


def test_rearming_back_and_forth_fires_once(make_core, clock):
    core = make_core(client_header=1.0, idle=4.0)
    timer = Timer("conn")
    for phase in (PHASE_CLIENT_HEADER, PHASE_IDLE, PHASE_CLIENT_HEADER):
        core.arm(timer, phase)
    clock.advance(1.0)
    assert core.tick() == [timer]
    clock.advance(10.0)
    assert core.tick() == []


def test_timer_rearmed_into_a_swept_tick_still_fires(make_core, clock):
    core = make_core(connect=0.125, resolution=0.5)
    timer = Timer("conn")
    core.arm(timer, PHASE_CONNECT)
    core.disarm(timer)
    assert core.tick() == []  # sweeps the current tick; the entry is stale
    core.arm(timer, PHASE_CONNECT)  # the same tick again

    clock.advance(0.125)
    assert core.tick() == [timer]


def test_disarmed_timer_never_fires(make_core, clock):
    core = make_core(client_header=1.0)
    timer = Timer("conn")
    core.arm(timer, PHASE_CLIENT_HEADER)
    core.disarm(timer)
    assert not timer.armed and timer.deadline == 0.0
    assert timer.phase == PHASE_CLIENT_HEADER
    clock.advance(2.0)
    assert core.tick() == []


def test_rearmed_timer_leaves_no_stale_entries_behind(make_core, clock):
    core = make_core(read=1.0)
    timer = Timer("conn")
    unfiled = sys.getrefcount(timer)
    for _ in range(200):  # each arming files it under a new tick
        core.arm(timer, PHASE_READ)
        clock.advance(0.25)
        assert core.tick() == []
    clock.advance(0.5)  # past every stale entry, short of the live one
    assert core.tick() == []
    assert sys.getrefcount(timer) == unfiled + 1  # the wheel's one entry

    core.disarm(timer)
    clock.advance(2.0)
    assert core.tick() == []
    assert sys.getrefcount(timer) == unfiled


def test_arming_a_queued_waiter_raises(make_core):
    core = make_core(max_concurrency=1)
    holder, queued = waiters(2)
    fill(core, holder, queued)
    with pytest.raises(RuntimeError):
        core.arm(queued, PHASE_IDLE)
    with pytest.raises(RuntimeError):
        core.disarm(queued)
    assert queued.phase == PHASE_QUEUE and queued.armed


def test_big_clock_jump_fires_every_due_timer_once(make_core, clock):
    core = make_core(client_header=1.0, idle=60.0, shutdown=2000.0)
    timers = [Timer(i) for i in range(300)]
    for timer in timers:
        core.arm(timer, (PHASE_CLIENT_HEADER, PHASE_IDLE)[timer.owner % 2])
    far = Timer("far")
    core.arm(far, PHASE_SHUTDOWN)

    clock.advance(1000.0)
    assert sorted(t.owner for t in core.tick()) == list(range(300))
    clock.advance(999.875)
    assert core.tick() == []
    clock.advance(0.125)
    assert core.tick() == [far]


def test_thousands_of_timers_each_fire_once_on_time(clock):
    timeouts = {"client_header": 0.5, "client_body": 1.5, "idle": 60.0,
                "connect": 2.0, "response": 5.0, "read": 3.0, "shutdown": 45.0}
    phases = [PHASES.index(name) for name in timeouts]
    core = Core(clock=clock, resolution=0.01, **timeouts)
    timers = [Timer(i) for i in range(5000)]
    deadlines = {}
    for timer in timers:
        core.arm(timer, phases[timer.owner % len(phases)])
        deadlines[timer.owner] = timer.deadline
        clock.advance(0.0001)

    fired_at = {}
    while clock.now < START + 70.0:
        clock.advance(0.0625)
        for timer in core.tick():
            assert timer.owner not in fired_at
            fired_at[timer.owner] = clock.now
    assert fired_at.keys() == deadlines.keys()
    assert all(0 <= fired_at[i] - deadlines[i] < 0.0625 for i in deadlines)


# -- histograms and counters --------------------------------------------------


def test_histograms_count_queue_wait_and_upstream_duration(make_core, clock):
    core = make_core(max_concurrency=1, max_queue=1, queue_timeout=1.0)
    holder, waiter = waiters(2)
    fill(core, holder, waiter)
    clock.advance(0.25)
    core.release(holder, OUTCOME_PROXIED)  # both observe 0.25, a bound
    clock.advance(100.0)
    core.release(waiter, OUTCOME_UPSTREAM_ERROR)  # past the last bound

    bounds, counts, total = core.histogram("upstream_duration")
    assert bounds == UPSTREAM_DURATION_BUCKETS
    assert len(counts) == len(bounds) + 1 and sum(counts) == 2
    assert counts[bounds.index(0.25)] == 1 and counts[-1] == 1
    assert total == 100.25
    bounds, counts, total = core.histogram("queue_wait")
    assert bounds == QUEUE_WAIT_BUCKETS
    assert counts[bounds.index(0.25)] == 1 and sum(counts) == 1
    assert total == 0.25


def test_unknown_histogram_raises(make_core):
    with pytest.raises(ValueError, match="latency"):
        make_core().histogram("latency")


def test_stats_report_gauges_and_every_counter(make_core):
    core = make_core(max_concurrency=1, max_queue=1)
    holder, queued = waiters(2)
    fill(core, holder, queued)
    core.open_connection()
    core.record(OUTCOME_BAD_REQUEST)
    core.shed(SHED_QUEUE_TIMEOUT)

    stats = core.stats()
    requests, shed = stats.pop("requests"), stats.pop("shed")
    assert requests == dict.fromkeys(OUTCOMES, 0) | {"bad_request": 1, "shed": 1}
    assert shed == dict.fromkeys(SHED_REASONS, 0) | {"queue_timeout": 1}
    assert stats == {
        "inflight": 1, "queued": 1, "connections": 1, "admitted": 1,
        "enqueued": 1, "draining": False,
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda core: core.record(len(OUTCOMES)),
        lambda core: core.record(-1),
        lambda core: core.shed(len(SHED_REASONS)),
        lambda core: core.arm(Timer(None), len(PHASES)),
        lambda core: core.release(Waiter(None), 99),
    ],
)
def test_out_of_range_codes_raise(make_core, call):
    core = make_core()
    with pytest.raises(ValueError):
        call(core)
    assert core.stats()["requests"] == {name: 0 for name in OUTCOMES}


# -- the reference model ------------------------------------------------------

RESOLUTION = 0.01
HISTOGRAM_BOUNDS = {
    "queue_wait": QUEUE_WAIT_BUCKETS,
    "upstream_duration": UPSTREAM_DURATION_BUCKETS,
}


class AdmissionModel:
    """The admission rules in plain Python: the yardstick for the core."""

    def __init__(self, limits: dict, names: list[str]) -> None:
        self.limits = dict(limits)
        self.inflight = self.connections = self.admitted = self.enqueued = 0
        self.draining = False
        self.queue: list[str] = []  # oldest first
        self.state = dict.fromkeys(names, IDLE)
        self.deadline: dict[str, float] = {}
        self.enqueued_at: dict[str, float] = {}
        self.admitted_at: dict[str, float] = {}
        self.parked: list[str] = []  # shed by release, reported by tick
        self.requests: Counter[str] = Counter()
        self.shed: Counter[str] = Counter()
        self.observed = {name: [] for name in HISTOGRAM_BOUNDS}

    @property
    def cap(self) -> int:
        return self.limits["max_concurrency"]

    def count_shed(self, reason: str) -> int:
        self.shed[reason] += 1
        self.requests["shed"] += 1
        return SHED_REASONS.index(reason)

    def acquire(self, name: str, now: float) -> int:
        if self.draining:
            return self.count_shed("draining")
        if not self.queue and self.inflight < self.cap:
            self.admit(name, now)
            return ADMITTED
        if len(self.queue) >= self.limits["max_queue"]:
            return self.count_shed("queue_full")
        self.queue.append(name)
        self.state[name] = WAITING
        self.deadline[name] = now + self.limits["queue_timeout"]
        self.enqueued_at[name] = now
        self.enqueued += 1
        return QUEUED

    def admit(self, name: str, now: float) -> None:
        self.inflight += 1
        self.admitted += 1
        self.state[name] = HOLDING
        self.admitted_at[name] = now

    def release(self, name: str, outcome: int, now: float) -> str | None:
        self.inflight -= 1
        self.state[name] = IDLE
        self.requests[OUTCOMES[outcome]] += 1
        self.observed["upstream_duration"].append(now - self.admitted_at[name])
        return self.grant_next(now)

    def grant_next(self, now: float) -> str | None:
        while self.queue and self.inflight < self.cap:
            name = self.queue.pop(0)
            if self.deadline[name] <= now:
                self.state[name] = IDLE
                self.count_shed("queue_timeout")
                self.parked.append(name)
                continue
            self.admit(name, now)
            self.observed["queue_wait"].append(now - self.enqueued_at[name])
            return name
        return None

    def set_limits(self, now: float, **limits) -> list[str]:
        self.limits.update(limits)
        granted = []
        while (name := self.grant_next(now)) is not None:
            granted.append(name)
        return granted

    def leave_queue(self, name: str) -> None:
        self.queue.remove(name)
        self.state[name] = IDLE

    def histogram(self, name: str) -> tuple[list[int], float]:
        bounds = HISTOGRAM_BOUNDS[name]
        counts = [0] * (len(bounds) + 1)
        for value in self.observed[name]:
            # Prometheus "le": a value on a bound counts in that bucket.
            counts[bisect.bisect_left(bounds, value)] += 1
        return counts, sum(self.observed[name])

    def stats(self) -> dict:
        return {
            "inflight": self.inflight, "queued": len(self.queue),
            "connections": self.connections, "admitted": self.admitted,
            "enqueued": self.enqueued, "draining": self.draining,
            "requests": {name: self.requests[name] for name in OUTCOMES},
            "shed": {name: self.shed[name] for name in SHED_REASONS},
        }


NAMES = [f"w{i}" for i in range(6)]
LIMITS = {"max_concurrency": 2, "max_queue": 2, "queue_timeout": 0.25,
          "max_connections": 2}
clock_steps = st.one_of(
    st.sampled_from([0.0, 0.125, 0.25, 1000.0]), st.floats(0.0, 0.5)
)


def in_state(state: int):
    """Precondition: some waiter is in `state`."""
    return lambda machine: machine.named(state)


class AdmissionMachine(RuleBasedStateMachine):
    """Random operation sequences on the core and the model side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.core = Core(clock=self.clock, resolution=RESOLUTION, **LIMITS)
        self.model = AdmissionModel(LIMITS, NAMES)
        self.waiters = {name: Waiter(name) for name in NAMES}
        self.attempts: Counter[str] = Counter()  # acquire() calls taken
        self.endings: Counter[str] = Counter()  # admitted, shed or cancelled
        self.ceiling = 0  # in-flight when the cap was last lowered

    def named(self, state: int) -> list[str]:
        return [name for name in NAMES if self.model.state[name] == state]

    def ended(self, *names: str) -> None:
        self.endings.update(names)

    @initialize(count=st.integers(0, len(NAMES)))
    def busy_start(self, count):
        for name in NAMES[:count]:
            self.acquire_one(name)

    @precondition(in_state(IDLE))
    @rule(data=st.data())
    def acquire(self, data):
        idle = st.sampled_from(self.named(IDLE))
        for name in data.draw(st.lists(idle, min_size=1, max_size=3, unique=True)):
            self.acquire_one(name)

    def acquire_one(self, name: str) -> None:
        expected = self.model.acquire(name, self.clock.now)
        assert self.core.acquire(self.waiters[name]) == expected
        self.attempts[name] += 1
        if expected != QUEUED:
            self.ended(name)

    @precondition(in_state(HOLDING))
    @rule(data=st.data(), outcome=st.sampled_from(range(len(OUTCOMES))))
    def release(self, data, outcome):
        name = data.draw(st.sampled_from(self.named(HOLDING)))
        expected = self.model.release(name, outcome, self.clock.now)
        granted = self.core.release(self.waiters[name], outcome)
        assert (granted and granted.owner) == expected
        if granted:
            self.ended(granted.owner)
            assert self.core.inflight <= self.model.cap

    @precondition(in_state(WAITING))
    @rule(data=st.data())
    def cancel(self, data):
        name = data.draw(st.sampled_from(self.named(WAITING)))
        self.model.leave_queue(name)
        self.model.requests["client_abort_queued"] += 1
        self.core.cancel(self.waiters[name])
        self.ended(name)

    @rule(
        name=st.sampled_from(NAMES),
        key=st.sampled_from(["max_concurrency", "max_queue", "idle"]),
    )
    def misuse_is_refused(self, name, key):
        with pytest.raises(ValueError, match=key):
            self.core.set_limits(max_connections=5, **{key: -1})
        waiter, state = self.waiters[name], self.model.state[name]
        if state != IDLE:
            with pytest.raises(RuntimeError):
                self.core.acquire(waiter)
        if state != HOLDING:
            with pytest.raises(RuntimeError):
                self.core.release(waiter, OUTCOME_PROXIED)
        if state == HOLDING:
            with pytest.raises(RuntimeError):
                self.core.cancel(waiter)

    @rule(seconds=clock_steps, then_tick=st.booleans())
    def advance_clock(self, seconds, then_tick):
        self.clock.advance(seconds)
        if then_tick:
            self.tick()

    def tick(self) -> None:
        # The contract lets a queue timeout come up to one resolution late,
        # so the model takes the timeouts the core reports, within bounds.
        now = self.clock.now
        reported = [waiter.owner for waiter in self.core.tick()]
        parked, self.model.parked = self.model.parked, []
        assert reported[: len(parked)] == parked
        timed_out = reported[len(parked):]
        assert len(set(timed_out)) == len(timed_out)
        for name in timed_out:
            assert self.model.state[name] == WAITING
            assert self.model.deadline[name] <= now, "timed out early"
            self.model.leave_queue(name)
            self.model.count_shed("queue_timeout")
        for name in self.model.queue:
            deadline = self.model.deadline[name]
            assert deadline + RESOLUTION > now, "timed out late"
        self.ended(*reported)

    @rule(
        max_concurrency=st.none() | st.integers(1, 4),
        max_queue=st.none() | st.integers(0, 3),
        queue_timeout=st.none() | st.sampled_from([0.125, 0.25, 1.0]),
    )
    def set_limits(self, **limits):
        limits = {key: val for key, val in limits.items() if val is not None}
        if limits.get("max_concurrency", self.model.cap) < self.model.cap:
            self.ceiling = self.model.inflight
        expected = self.model.set_limits(self.clock.now, **limits)
        granted = [waiter.owner for waiter in self.core.set_limits(**limits)]
        assert granted == expected
        self.ended(*granted)

    @rule(opening=st.booleans())
    def connection(self, opening):
        if opening:
            opened = self.model.connections < LIMITS["max_connections"]
            self.model.connections += opened
            if not opened:
                self.model.count_shed("connections")
            assert self.core.open_connection() == opened
        elif self.model.connections:
            self.model.connections -= 1
            self.core.close_connection()
        else:
            with pytest.raises(RuntimeError):
                self.core.close_connection()

    @rule(roll=st.integers(0, 19))
    def now_and_then(self, roll):
        """Rarely, so most runs keep admitting: drain, or all traffic stops."""
        if roll == 0:
            self.model.draining = True
            self.core.drain()
        elif roll == 1:
            self.stop_traffic()

    def stop_traffic(self):
        # Everyone leaves: the core must be quiet and every waiter ended.
        for name in self.named(WAITING):
            self.model.leave_queue(name)
            self.model.requests["client_abort_queued"] += 1
            self.core.cancel(self.waiters[name])
            self.ended(name)
        for name in self.named(HOLDING):
            self.model.release(name, OUTCOME_PROXIED, self.clock.now)
            assert self.core.release(self.waiters[name], OUTCOME_PROXIED) is None
        for _ in range(self.model.connections):
            self.model.connections -= 1
            self.core.close_connection()
        self.tick()
        assert (self.core.inflight, self.core.queued) == (0, 0)
        assert self.core.connections == 0
        assert self.attempts == self.endings, "a waiter ended twice or never"

    @invariant()
    def core_agrees_with_model(self):
        assert self.core.stats() == self.model.stats()
        states = {name: w.state for name, w in self.waiters.items()}
        assert states == self.model.state
        limits = self.core.limits()
        assert {key: limits[key] for key in LIMITS} == self.model.limits
        for name in HISTOGRAM_BOUNDS:
            _, counts, total = self.core.histogram(name)
            expected_counts, expected_total = self.model.histogram(name)
            assert counts == expected_counts
            assert total == pytest.approx(expected_total)

    @invariant()
    def admission_invariants_hold(self):
        inflight, cap = self.core.inflight, self.model.cap
        assert 0 <= inflight <= max(cap, self.ceiling)
        if self.core.queued:
            assert inflight >= cap, "a token is free while waiters wait"
        for name in NAMES:
            waiting = self.model.state[name] == WAITING
            unreported = self.model.parked.count(name)
            assert self.attempts[name] == self.endings[name] + waiting + unreported


TestCoreAgreesWithReferenceModel = AdmissionMachine.TestCase
TestCoreAgreesWithReferenceModel.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
