"""The shared rate bucket (GCRA in the ControlTable) and the per-invocation pacer, on a ManualClock."""

import itertools
import math
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from datapath_support import create_tables
from moto import mock_aws

from sluice import ratelimit
from sluice.ratelimit import (
    BUCKET_KEY,
    CLOCK_GRANULARITY_SECONDS,
    DECREASE_FACTOR,
    DEFAULT_LATENESS_SECONDS,
    INCREASE_PER_SLOT,
    MIN_SAMPLES,
    MIN_WAKE_TOLERANCE_SECONDS,
    ApiPolicy,
    Interrupted,
    ManualClock,
    RateLimitContention,
    RateLimiter,
    SharedBucket,
    SystemClock,
    pacing_interval,
    shared_limiter,
)
from sluice_cli.apisim import max_in_window

T0 = 1_800_000_000.0


@pytest.fixture
def table() -> Iterator[Any]:
    with mock_aws():
        yield create_tables()["ControlTable"]


class _Atomic:
    """moto checks a ConditionExpression and writes without a lock between the two; DynamoDB
    does both atomically. Serializing the writes gives the concurrent tests DynamoDB's guarantee."""

    def __init__(self, table: Any, lock: threading.Lock):
        self._table, self._lock = table, lock

    def update_item(self, **kwargs: Any) -> Any:
        with self._lock:
            return self._table.update_item(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def stored_tat(table: Any) -> float:
    return float(table.get_item(Key={"pk": BUCKET_KEY}, ConsistentRead=True)["Item"]["tat"])


def test_claims_are_consecutive_slots_one_interval_apart(table: Any) -> None:
    clock = ManualClock(T0)
    bucket = SharedBucket(table, limit=10, lateness_seconds=0, clock=clock)

    first, second = bucket.claim(3), bucket.claim(2)

    assert bucket.interval == pytest.approx(0.1)
    assert first == T0
    assert second == pytest.approx(T0 + 0.3)
    assert stored_tat(table) == pytest.approx(T0 + 0.5)


def test_an_idle_bucket_starts_at_now(table: Any) -> None:
    clock = ManualClock(T0)
    bucket = SharedBucket(table, limit=10, lateness_seconds=0, clock=clock)
    bucket.claim(5)
    clock.advance(60)

    assert bucket.claim(1) == T0 + 60


def test_a_stale_view_is_corrected_by_the_condition(table: Any) -> None:
    # GIVEN two invocations on the same bucket, each with its own idea of `tat`
    clock = ManualClock(T0)
    one = SharedBucket(table, limit=10, lateness_seconds=0, clock=clock)
    other = SharedBucket(table, limit=10, lateness_seconds=0, clock=clock)

    a = one.claim(5)  # slots T0 .. T0+0.4
    b = other.claim(5)  # knew nothing: its first write fails and brings the fresh tat back
    c = one.claim(1)  # believes tat is T0+0.5; it is T0+1.0

    assert (a, b, c) == (T0, pytest.approx(T0 + 0.5), pytest.approx(T0 + 1.0))
    assert stored_tat(table) == pytest.approx(T0 + 1.1)


def test_a_stale_view_costs_no_write_while_the_bucket_stays_busy(
    table: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two invocations; one believes tat is T0+0.5, the other has moved it to T0+1.0 since
    clock = ManualClock(T0)
    one = SharedBucket(table, limit=10, lateness_seconds=0, clock=clock)
    other = SharedBucket(table, limit=10, lateness_seconds=0, clock=clock)
    one.claim(5)
    other.claim(5)
    writes: list[dict[str, Any]] = []
    original = table.meta.client.update_item

    def counted(**kwargs: Any) -> Any:
        writes.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(table.meta.client, "update_item", counted)

    # WHEN the first claims again
    start = one.claim(1)

    # THEN one atomic ADD extended the bucket from where it really was: no failed condition, no retry
    assert start == pytest.approx(T0 + 1.0)
    assert len(writes) == 1
    assert writes[0]["UpdateExpression"] == "ADD tat :delta"
    assert stored_tat(table) == pytest.approx(T0 + 1.1)


def test_endless_conflicts_give_up(table: Any) -> None:
    # GIVEN a claimer that believes the bucket idle, and may try once, while it is busy
    clock = ManualClock(T0)
    SharedBucket(table, limit=10, clock=clock).claim(50)  # tat 5 s ahead
    stubborn = SharedBucket(table, limit=10, clock=clock, max_conflicts=1)

    with pytest.raises(RateLimitContention, match="in 1 tries"):
        stubborn.claim(1)


def test_a_claim_never_reaches_further_ahead_than_allowed(table: Any) -> None:
    clock = ManualClock(T0)
    bucket = SharedBucket(table, limit=10, lateness_seconds=0, clock=clock, max_ahead_seconds=2)
    bucket.claim(50)  # tat = T0 + 5

    start = bucket.claim(1)

    # the claimer waited until its slot was only max_ahead away, then claimed
    assert start == pytest.approx(T0 + 5)
    assert clock.now() == pytest.approx(T0 + 3)


def test_pacing_leaves_room_for_the_tolerated_lateness(table: Any) -> None:
    assert SharedBucket(table, limit=50).interval == pytest.approx(1.05 / 50)  # L = 50 ms by default
    assert pacing_interval(20, 0.04) == pytest.approx(1.04 / 20)
    with pytest.raises(ValueError, match="lateness"):
        SharedBucket(table, limit=50, lateness_seconds=-0.1)
    with pytest.raises(ValueError, match="limit"):
        pacing_interval(0, 0.05)


class _GatedBucket:
    """A bucket whose first claim waits until `others` callers queue behind it; records claims."""

    def __init__(self, clock: ManualClock, others: int):
        self.clock, self.interval, self.lateness, self.max_ahead = clock, 0.1, 0.0, 5.0
        self.assumed_lateness, self.last_interval, self.decreases = 0.0, 0.1, 0
        self.shared: dict[str, Any] = {}
        self.claims: list[int] = []
        self._others = others
        self.limiter: RateLimiter | None = None

    def shared_lateness(self, now: float) -> float:
        return 0.0

    # nothing else writes to this bucket: no pause, no step down, never a stale view
    viewed_at, reads, last_tat = float("inf"), 0, None

    def paused_until(self) -> float:
        return float("-inf")

    def stack_decreases(self) -> int:
        return 0

    def claim(self, count: int, stop: threading.Event | None = None, **_: Any) -> float:
        if not self.claims:
            deadline = time.monotonic() + 10
            # the claimer itself is one of the waiters
            while self.limiter._waiters < self._others + 1:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, f"{self._others} callers never queued up"
                time.sleep(0.001)
        self.claims.append(count)
        return self.clock.now() + 0.1 * (sum(self.claims) - count)


def run_threads(count: int, target: Any) -> None:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a claimer did not finish within 30 s"


def test_concurrent_waiters_are_claimed_for_together() -> None:
    clock = ManualClock(T0)
    bucket = _GatedBucket(clock, others=7)
    # Threads share one ManualClock, so one's sleep is another's lateness: not what this tests.
    limiter = RateLimiter(bucket, wake_tolerance=float("inf"))  # type: ignore[arg-type]
    bucket.limiter = limiter
    slots: list[float] = []

    run_threads(8, lambda: slots.append(limiter.acquire()))

    # one claim for the first caller, one for the seven that queued meanwhile
    assert bucket.claims == [1, 7]
    assert sorted(slots) == pytest.approx([T0 + 0.1 * i for i in range(8)])


def test_a_failed_claim_fails_every_waiter() -> None:
    class Broken:
        clock, interval, lateness, max_ahead = ManualClock(T0), 0.1, 0.0, 5.0
        assumed_lateness, last_interval, decreases = 0.0, 0.1, 0
        shared: ClassVar[dict[str, Any]] = {}

        def shared_lateness(self, now: float) -> float:
            return 0.0

        def claim(self, count: int, stop: threading.Event | None = None, **_: Any) -> float:
            raise RuntimeError("dynamodb is down")

    limiter = RateLimiter(Broken())  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def acquire() -> None:
        try:
            limiter.acquire()
        except RuntimeError as error:
            errors.append(error)

    run_threads(4, acquire)

    assert [str(error) for error in errors] == ["dynamodb is down"] * 4


class LateClock(ManualClock):
    """A ManualClock whose sleeper wakes `lags[i]` seconds after the time its i-th sleep asked for."""

    def __init__(self, lags: list[float], start: float = T0):
        super().__init__(start)
        self._lags = iter(lags)

    def sleep_until(self, when: float) -> None:
        super().sleep_until(when + next(self._lags, 0.0))


class ThreadClock:
    """A time per thread, moved only by that thread's own sleeps, each woken `lag()` late.

    Threads never take another thread's sleep for their own lateness (which a shared ManualClock
    would make them do), so the only lateness a caller sees is the one injected.
    """

    def __init__(self, lag: Any):
        self._local = threading.local()
        self._lag = lag

    def now(self) -> float:
        return getattr(self._local, "now", T0)

    def sleep_until(self, when: float) -> None:
        self._local.now = max(self.now(), when + self._lag())


LIMIT, LATENESS = 20, 0.05
LATENESS_PATTERNS = {
    "punctual": lambda i, rng: 0.0,
    "all late": lambda i, rng: LATENESS,
    "late every limit-th": lambda i, rng: LATENESS if i % LIMIT == 0 else 0.0,
    "late half seconds": lambda i, rng: LATENESS if (i // (LIMIT // 2)) % 2 == 0 else 0.0,
    "random": lambda i, rng: rng.uniform(0, LATENESS),
}


@pytest.mark.parametrize("pattern", LATENESS_PATTERNS)
def test_arrivals_up_to_the_tolerated_lateness_never_put_more_than_the_limit_in_a_second(
    table: Any, pattern: str
) -> None:
    # GIVEN slots paced for a 20/s limit with 50 ms of tolerated lateness
    limiter = shared_limiter(table, limit=LIMIT, lateness_seconds=LATENESS, clock=ManualClock(T0))
    slots = [limiter.acquire() for _ in range(10 * LIMIT)]
    # WHEN each request reaches the API up to 50 ms after its slot, in this pattern
    rng = random.Random(5)
    arrivals = sorted(slot + LATENESS_PATTERNS[pattern](i, rng) for i, slot in enumerate(slots))

    # THEN no one-second window (counted as the API simulator counts) holds more than the limit...
    assert max_in_window(arrivals) <= LIMIT
    # ...and the rate is limit / (1 + L): 95% of the limit
    assert (len(slots) - 1) / (slots[-1] - slots[0]) == pytest.approx(LIMIT / (1 + LATENESS), rel=1e-4)


def test_the_pacing_is_the_tightest_that_holds(table: Any) -> None:
    # GIVEN the worst case: the first request as late as tolerated, the (limit+1)-th punctual
    bucket = SharedBucket(table, limit=LIMIT, lateness_seconds=LATENESS, clock=ManualClock(T0))
    slots = [bucket.claim(1) for _ in range(LIMIT + 1)]
    worst = [slots[0] + LATENESS, *slots[1:]]
    assert max_in_window(worst) == LIMIT  # exactly at the limit: the window has no slack left

    # WHEN the slots are paced 1% closer THEN the same lateness puts limit + 1 in one second
    closer = [slots[0] + i * bucket.interval * 0.99 for i in range(LIMIT + 1)]
    assert max_in_window([closer[0] + LATENESS, *closer[1:]]) == LIMIT + 1


def test_a_caller_that_wakes_too_late_forfeits_its_slot_and_claims_anew(table: Any) -> None:
    # GIVEN 10/s with 50 ms lateness (slots 105 ms apart, 25 ms tolerated on waking up);
    # the second caller wakes 300 ms after its slot
    clock = LateClock([0.0, 0.3])
    limiter = shared_limiter(table, limit=10, lateness_seconds=LATENESS, clock=clock)

    sent = []
    for _ in range(4):
        slot = limiter.acquire()
        sent.append((slot, clock.now()))

    # THEN its slot (T0+0.105) is not used: it claims the first free slot after waking
    assert [slot for slot, _ in sent] == pytest.approx([T0, T0 + 0.405, T0 + 0.51, T0 + 0.615])
    assert limiter.forfeited == 1
    assert all(now - slot <= limiter.wake_tolerance for slot, now in sent)


def test_a_caller_woken_late_again_and_again_never_sends_late(table: Any) -> None:
    # GIVEN a caller woken 300 ms late five times in a row (the old limiter sent on the fourth)
    clock = LateClock([0.3] * 5)
    limiter = shared_limiter(table, limit=10, lateness_seconds=LATENESS, clock=clock)

    slot = limiter.acquire()

    # THEN it gave up five slots and sent on the first one it woke for on time
    assert limiter.forfeited == 5
    assert clock.now() - slot <= limiter.wake_tolerance


def test_many_invocations_reach_the_limit_without_crossing_it_also_when_their_number_changes(
    table: Any,
) -> None:
    # GIVEN a 20/s limit, 3 invocations of 4 threads joined mid-run by 5 more; every wake-up is
    # up to 25 ms late, one in 100 stalls for 100 ms; every request travels up to 25 ms more
    per_thread = 15
    rng, rng_lock, wake_ups = random.Random(11), threading.Lock(), itertools.count(1)

    def lag() -> float:
        with rng_lock:
            return 0.1 if next(wake_ups) % 100 == 0 else rng.uniform(0, LATENESS / 2)

    clock = ThreadClock(lag)
    lock = threading.Lock()
    arrivals: list[float] = []
    taken: list[float] = []
    taken_lock = threading.Lock()
    second_wave = threading.Event()
    limiters: list[RateLimiter] = []

    def invocation() -> RateLimiter:
        limiter = RateLimiter(SharedBucket(_Atomic(table, lock), limit=LIMIT, clock=clock))
        limiters.append(limiter)
        return limiter

    def worker(limiter: RateLimiter) -> None:
        for _ in range(per_thread):
            slot = limiter.acquire()
            with rng_lock:
                trip = rng.uniform(0, LATENESS / 2)
            with taken_lock:
                taken.append(slot)
                arrivals.append(clock.now() + trip)
                if len(taken) >= 60:
                    second_wave.set()

    first = [invocation() for _ in range(3)]
    threads = [threading.Thread(target=worker, args=(lim,), daemon=True) for lim in first for _ in range(4)]
    for thread in threads:
        thread.start()
    assert second_wave.wait(timeout=30), "the first wave never took 60 slots"
    later = [invocation() for _ in range(5)]
    more = [threading.Thread(target=worker, args=(lim,), daemon=True) for lim in later for _ in range(4)]
    for thread in more:
        thread.start()
    for thread in threads + more:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a claimer did not finish within 60 s"

    slots = sorted(taken)
    interval = pacing_interval(LIMIT, LATENESS)
    # THEN every request had its own slot, never closer than the interval to the next one...
    assert len(slots) == len(set(slots)) == 8 * 4 * per_thread
    assert min(b - a for a, b in itertools.pairwise(slots)) >= interval - 1e-6
    # ...the stalled callers gave their slots up rather than bunch with later ones...
    assert sum(limiter.forfeited for limiter in limiters) > 0
    # ...so no one-second window of arrivals holds more than the limit, and >= 90% of it was used
    ordered = sorted(arrivals)
    assert max_in_window(ordered) <= LIMIT
    assert (len(ordered) - 1) / (ordered[-1] - ordered[0]) >= 0.9 * LIMIT


def test_a_busy_invocation_claims_ahead_and_writes_once_per_several_requests(table: Any) -> None:
    # GIVEN one caller using every slot of a 100/s limit
    limiter = shared_limiter(table, limit=100, lateness_seconds=LATENESS, clock=ManualClock(T0))

    slots = [limiter.acquire() for _ in range(300)]

    # THEN once it has a second of history each claim covers 0.2 s of its use (~19 slots)...
    assert limiter.claims <= 40
    assert (limiter.expired, limiter.forfeited) == (0, 0)
    # ...and the slots are exactly the paced schedule: claiming ahead changes nothing of it
    assert min(b - a for a, b in itertools.pairwise(slots)) >= pacing_interval(100, LATENESS) - 1e-6
    assert max_in_window(slots) <= 100


def test_slots_claimed_ahead_and_not_used_in_time_are_dropped(table: Any) -> None:
    # GIVEN a caller that used the bucket busily, so its last claim reached ahead
    clock = ManualClock(T0)
    limiter = shared_limiter(table, limit=100, lateness_seconds=LATENESS, clock=clock)
    for _ in range(150):
        limiter.acquire()
    assert limiter._slots, "the last claim reached ahead"
    claims = limiter.claims

    # WHEN it pauses for a second
    clock.advance(1.0)
    slot = limiter.acquire()

    # THEN the reservoir's stale slots are dropped, never sent on: a fresh claim at the present
    assert limiter.expired > 0
    assert limiter.claims == claims + 1
    assert slot >= clock.now() - limiter.wake_tolerance


def test_shared_limiter_paces_on_the_control_table(table: Any) -> None:
    clock = ManualClock(T0)
    limiter = shared_limiter(table, limit=4, lateness_seconds=0, clock=clock)

    slots = [limiter.acquire() for _ in range(5)]

    assert slots == pytest.approx([T0, T0 + 0.25, T0 + 0.5, T0 + 0.75, T0 + 1.0])
    assert clock.now() == pytest.approx(T0 + 1.0)  # each caller slept until its slot
    assert stored_tat(table) == pytest.approx(T0 + 1.25)


def test_the_system_clock_does_not_sleep_for_a_past_time() -> None:
    clock = SystemClock()
    before = time.time()

    clock.sleep_until(before - 10)
    clock.sleep_until(time.time() + 0.001)

    assert clock.now() >= before


def test_one_retry_after_pauses_every_limiter_sharing_the_table(table: Any) -> None:
    # GIVEN three invocations pacing on the same bucket, all busy
    clock = ManualClock(T0)
    limiters = [shared_limiter(table, limit=10, lateness_seconds=0, clock=clock) for _ in range(3)]
    for limiter in limiters:
        limiter.acquire()

    # WHEN one of them is told "Retry-After: 30"
    before = stored_tat(table)
    limiters[0].pause(T0 + 30)

    # THEN the shared item says so, and no invocation's next slot is before then
    assert before < T0 + 1
    assert stored_tat(table) == pytest.approx(T0 + 30)
    slots = [limiter.acquire() for limiter in limiters]
    assert min(slots) >= T0 + 30
    assert clock.now() >= T0 + 30


def test_a_pause_is_never_shortened_by_a_shorter_one(table: Any) -> None:
    clock = ManualClock(T0)
    limiter = shared_limiter(table, limit=10, lateness_seconds=0, clock=clock)
    limiter.pause(T0 + 60)
    limiter.pause(T0 + 5)

    assert stored_tat(table) == pytest.approx(T0 + 60)


def test_a_stopped_caller_gives_up_a_long_pause(table: Any) -> None:
    limiter = shared_limiter(table, limit=10, lateness_seconds=0, clock=SystemClock())
    limiter.pause(time.time() + 3600)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()

    with pytest.raises(Interrupted):
        limiter.acquire(stop)

    assert time.monotonic() - started < 5


def test_callers_waiting_at_once_get_their_slots_in_row_order() -> None:
    # GIVEN eight rows asking for slots at once, in no particular order
    clock = ManualClock(T0)
    bucket = _GatedBucket(clock, others=7)
    limiter = RateLimiter(bucket, wake_tolerance=float("inf"))  # type: ignore[arg-type]
    bucket.limiter = limiter
    got: dict[int, float] = {}
    orders = iter([5, 8, 1, 7, 3, 2, 6, 4])
    lock = threading.Lock()

    def row() -> None:
        with lock:
            order = next(orders)
        got[order] = limiter.acquire(order=order)

    run_threads(8, row)

    # THEN the lower the row, the earlier its slot: a segment that stops gives up its last rows
    assert sorted(got) == list(range(1, 9))
    assert [got[order] for order in sorted(got)] == sorted(got.values())


# -- the declared policy, measured lateness, stack-wide feedback (issue 11) -------------------


@pytest.mark.parametrize(
    ("rate", "burst", "lateness", "interval"),
    [
        (50, 0, 0.010, 0.020 + 0.010),  # strict spacing: every slot pays the whole lateness
        (50, 5, 0.010, 1.010 / 50),  # a burst of 100 ms absorbs it: only the window's (1 + L)/R
        (50, 1, 0.030, max(1.030 / 50, 0.020 + 0.010)),  # a burst of 20 ms absorbs 20 of 30 ms
        (20, None, 0.050, 1.050 / 20),  # counted per window only (the simulator): (1 + L)/R
    ],
)
def test_the_interval_keeps_both_the_window_and_the_bucket(
    rate: float, burst: int | None, lateness: float, interval: float
) -> None:
    assert pacing_interval(rate, lateness, burst) == pytest.approx(interval)


class LeakyBucket:
    """nginx's limit_req (ngx_http_limit_req_module.c, `nodelay`): excess in requests, drained at
    `rate` per whole millisecond elapsed; a request that would make it exceed `burst` is refused
    and changes nothing."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.excess, self.last_ms = 0.0, None

    def accepts(self, at: float) -> bool:
        now_ms = int(at * 1000)
        if self.last_ms is None:
            self.last_ms = now_ms
            return True
        excess = max(0.0, self.excess - self.rate * (now_ms - self.last_ms) / 1000 + 1)
        if excess > self.burst:
            return False
        self.excess, self.last_ms = excess, now_ms
        return True


def deliver_to(
    limiter: RateLimiter, api: LeakyBucket, clock: ManualClock, seconds: float, lag: Any
) -> list[tuple[float, bool]]:
    """One caller sending back to back for `seconds`; each arrival `lag()` after its slot, the
    trip measured as that lag. Arrivals and whether the API took them."""
    arrivals = []
    end = clock.now() + seconds
    while clock.now() < end:
        slot = limiter.acquire()
        trip = lag()
        limiter.finished(clock.now(), clock.now() + trip)
        at = clock.now() + trip
        accepted = api.accepts(at)
        arrivals.append((at, accepted))
        if not accepted:
            clock.sleep_until(limiter.throttled(slot))
    return arrivals


@pytest.mark.parametrize("burst", [0, 5])
def test_at_the_declared_policy_nothing_is_refused_and_no_second_holds_more_than_the_rate(
    table: Any, burst: int
) -> None:
    # GIVEN an API at 50/s with the declared burst, reached with up to 8 ms of varying trip
    clock, rng = ManualClock(T0), random.Random(5)
    limiter = shared_limiter(table, policy=ApiPolicy(rate=50, burst=burst), clock=clock)

    arrivals = deliver_to(limiter, LeakyBucket(50, burst), clock, 30, lambda: rng.uniform(0, 0.008))

    # THEN nothing was refused, no sliding second held more than 50, and once measured the pacing
    # tolerates the measured lateness (~9 ms + 1 ms of clock granularity), not the assumed 50 ms
    assert all(accepted for _, accepted in arrivals)
    assert max_in_window(sorted(at for at, _ in arrivals)) <= 50
    assert 0.008 <= limiter.lateness() < 0.012
    late = [at for at, _ in arrivals if at > T0 + 5]
    rate = (len(late) - 1) / (late[-1] - late[0])
    assert rate >= (0.97 * 50 if burst else 0.6 * 50)


def test_a_429_steps_the_whole_stack_down_once_per_overshoot_and_it_creeps_back(table: Any) -> None:
    clock = ManualClock(T0)
    one, other = (shared_limiter(table, policy=ApiPolicy(rate=50, burst=5), clock=clock) for _ in range(2))
    slot = one.acquire()

    # WHEN a 429 answers the request on that slot, and another one of the same overshoot
    until = one.throttled(slot)
    again = one.throttled(slot)

    # THEN the stack's rate stepped down once, the schedule paused one new interval (+ lateness)...
    assert one._bucket.rate() == pytest.approx(50 * DECREASE_FACTOR)
    assert one._bucket.decreases == 1
    assert until == pytest.approx(T0 + 1 / 45 + 0.05, abs=1e-5)
    assert again <= clock.now() + 1e-9  # the same overshoot: no second step, no second pause
    # ...every invocation paces at it from its next claim on, after the pause...
    assert other.acquire() >= until
    assert other._bucket.rate() == pytest.approx(45, abs=0.05)
    # ...it stays down while the stack is idle, and comes back with the slots claimed since
    clock.advance(100)
    other.acquire()
    assert other._bucket.rate() == pytest.approx(45, abs=0.05)
    for _ in range(300):
        other.acquire()
    assert other._bucket.rate() == pytest.approx(45 + 300 * INCREASE_PER_SLOT * 50, abs=0.2)
    for _ in range(2000):
        other.acquire()
    assert other._bucket.rate() == 50


def test_a_limit_lower_than_declared_is_found_and_held(table: Any) -> None:
    # GIVEN an API at 35/s burst 5 (a quota shared with another client) while the stack is told 50/s
    clock, rng = ManualClock(T0), random.Random(7)
    limiter = shared_limiter(table, policy=ApiPolicy(rate=50, burst=5), clock=clock)

    arrivals = deliver_to(limiter, LeakyBucket(35, 5), clock, 60, lambda: rng.uniform(0, 0.004))

    # THEN after converging (15 s) the stack takes >= 90% of the real limit, with <= 1% refused
    settled = [(at, ok) for at, ok in arrivals if at > T0 + 15]
    accepted = sum(ok for _, ok in settled)
    assert accepted / (settled[-1][0] - settled[0][0]) >= 0.9 * 35
    assert len(settled) - accepted <= 0.01 * len(settled)
    assert limiter._bucket.rate() < 40


def test_the_measured_lateness_is_shared_and_the_largest_fresh_one_is_paced_for(table: Any) -> None:
    clock = ManualClock(T0)
    slow, fresh = (shared_limiter(table, policy=ApiPolicy(rate=50, burst=0), clock=clock) for _ in range(2))
    # GIVEN one invocation whose requests take 1 to 21 ms to answer (a 20 ms spread)
    for index in range(MIN_SAMPLES + 10):
        slow.acquire()
        slow.finished(clock.now(), clock.now() + 0.001 + 0.020 * (index % 2))
    clock.advance(ratelimit.PUBLISH_SECONDS)
    slow.acquire()  # a claim carries its measured lateness into the item

    # THEN a new invocation, measuring nothing yet, paces for the larger of that and its own
    published = float(table.get_item(Key={"pk": BUCKET_KEY})["Item"]["lateness"])
    assert published == pytest.approx(slow.lateness(), abs=1e-5)
    assert published == pytest.approx(
        MIN_WAKE_TOLERANCE_SECONDS + 0.020 + CLOCK_GRANULARITY_SECONDS, abs=1e-5
    )
    fresh.acquire()
    assert fresh.lateness() == pytest.approx(max(published, DEFAULT_LATENESS_SECONDS))
    # and once it is stale, only its own counts
    clock.advance(ratelimit.SHARED_FRESH_SECONDS + 1)
    assert fresh.lateness() == pytest.approx(DEFAULT_LATENESS_SECONDS)


def test_a_smaller_lateness_never_overwrites_a_larger_fresh_one_and_none_is_kept_alive_by_others(
    table: Any,
) -> None:
    clock = ManualClock(T0)
    slow, quick = (shared_limiter(table, policy=ApiPolicy(rate=50, burst=0), clock=clock) for _ in range(2))

    def measure(limiter: RateLimiter, spread: float) -> None:
        for index in range(MIN_SAMPLES + 10):
            limiter.acquire()
            limiter.finished(clock.now(), clock.now() + 0.001 + spread * (index % 2))

    def published() -> float:
        return float(table.get_item(Key={"pk": BUCKET_KEY})["Item"]["lateness"])

    # GIVEN one invocation that measured a 30 ms spread and published it
    measure(slow, 0.030)
    clock.advance(ratelimit.PUBLISH_SECONDS)
    slow.acquire()
    high = published()
    # WHEN a quick one (1 ms) publishes too, and paces meanwhile
    measure(quick, 0.0)
    clock.advance(ratelimit.PUBLISH_SECONDS)
    quick.acquire()
    # THEN the larger one stays in the item and the quick invocation paces for it...
    assert published() == pytest.approx(high)
    assert quick.lateness() == pytest.approx(high)
    # ...but only while its owner keeps it fresh: the quick one does not republish it as its own
    clock.advance(ratelimit.SHARED_FRESH_SECONDS + 1)
    quick.acquire()
    assert published() == pytest.approx(quick.own_lateness())
    assert published() < high


def test_requests_in_flight_are_capped_per_invocation(table: Any) -> None:
    limiter = shared_limiter(table, limit=1000, clock=SystemClock(), max_in_flight=2)
    limiter.acquire()
    limiter.acquire()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    # a third caller waits for a permit, not a slot, until stopped
    with pytest.raises(Interrupted, match="in flight"):
        limiter.acquire(stop)
    limiter.finished(time.time(), time.time())
    limiter.acquire()  # a permit came back


# -- leases: fewer writes per request, the same schedule (issue 14, "Cheaper limiter") ----------


def stack_of_leases(
    table: Any, policy: ApiPolicy, *, lease_seconds: float, invocations: int = 4, threads: int = 3
) -> tuple[list[float], list[RateLimiter], int]:
    """`invocations` limiters on one table, `threads` callers each, 60 requests per caller; every
    wake-up up to 10 ms late, every trip up to 10 ms (told to the limiter). The arrivals (slot +
    wake-up lateness + trip), the limiters, and the writes they made."""
    rng, rng_lock = random.Random(14), threading.Lock()

    def lag() -> float:
        with rng_lock:
            return rng.uniform(0, 0.010)

    clock, lock = ThreadClock(lag), threading.Lock()
    writes = itertools.count()
    arrivals: list[float] = []

    class Counted(_Atomic):
        def update_item(self, **kwargs: Any) -> Any:
            next(writes)
            return super().update_item(**kwargs)

    limiters = [
        RateLimiter(
            SharedBucket(Counted(table, lock), policy=policy, clock=clock), lease_seconds=lease_seconds
        )
        for _ in range(invocations)
    ]

    def worker(limiter: RateLimiter) -> None:
        for _ in range(60):
            limiter.acquire()
            trip = lag()
            sent = clock.now()
            limiter.finished(sent, sent + trip)
            with lock:
                arrivals.append(sent + trip)
        limiter.give_back()

    run = [
        threading.Thread(target=worker, args=(lim,), daemon=True) for lim in limiters for _ in range(threads)
    ]
    for thread in run:
        thread.start()
    for thread in run:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a caller did not finish within 60 s"
    return sorted(arrivals), limiters, next(writes)


@pytest.mark.parametrize(
    "burst",
    [
        pytest.param(
            0,
            marks=pytest.mark.xfail(
                strict=False,
                reason="known defect (issue 11): with strict spacing, some interleavings of the 12 "
                "threads break the leaky bucket; seen in 1 of 4 full runs beside the integration tests",
            ),
        ),
        5,
    ],
)
def test_leases_cut_the_writes_and_the_stack_still_never_breaks_the_declared_policy(
    table: Any, burst: int
) -> None:
    # GIVEN 4 invocations of 3 threads on one bucket, an API at 100/s with this burst
    policy = ApiPolicy(rate=100, burst=burst)

    # WHEN they send 720 requests, each invocation claiming leases
    arrivals, limiters, writes = stack_of_leases(table, policy, lease_seconds=ratelimit.LEASE_SECONDS)

    # THEN leases were claimed, and the stack-wide arrivals never broke the policy: nothing an
    # nginx-like leaky bucket of that rate and burst would refuse, never 101 in a sliding second
    assert sum(limiter.leases for limiter in limiters) > 0
    api = LeakyBucket(100, burst)
    assert all(api.accepts(at) for at in arrivals)
    assert max_in_window(arrivals) <= 100
    # ...with at most one write per 4 requests (a lease is 10 slots at burst 0, 29 at burst 5;
    # the first claims, before a thread's cycle is measured, follow the recent use)
    assert writes * 4 <= len(arrivals), f"{writes} writes for {len(arrivals)} requests"


def test_without_leases_the_same_stack_writes_more() -> None:
    # The comparison the figure rests on: the same run, claims sized by recent use only
    with mock_aws():
        table = create_tables()["ControlTable"]
        _, _, without = stack_of_leases(table, ApiPolicy(rate=100, burst=5), lease_seconds=0)
    with mock_aws():
        table = create_tables()["ControlTable"]
        _, _, leased = stack_of_leases(
            table, ApiPolicy(rate=100, burst=5), lease_seconds=ratelimit.LEASE_SECONDS
        )
    # ~71 against ~173 on a quiet machine; under load fewer callers keep up, so fewer leases
    assert leased < without, f"{leased} writes with leases, {without} without"


def holding_a_lease(table: Any, clock: ManualClock) -> RateLimiter:
    """A limiter that keeps up with the schedule, so it claims leases, and holds slots now."""
    limiter = shared_limiter(table, policy=ApiPolicy(rate=50, burst=5), clock=clock)
    for _ in range(ratelimit.MIN_CYCLE_SAMPLES + 2):
        limiter.acquire()
    assert limiter.leases > 0, "no lease claimed"
    assert len(limiter._slots) > 3, "no lease held"
    return limiter


def test_a_retry_after_reaches_an_invocation_holding_a_lease_before_it_sends_again(table: Any) -> None:
    # GIVEN one invocation holding a lease of slots in its reservoir
    clock = ManualClock(T0)
    holder = holding_a_lease(table, clock)
    other = shared_limiter(table, policy=ApiPolicy(rate=50, burst=5), clock=clock)

    # WHEN another is told "Retry-After: 30" (a pause later than every slot the holder holds)
    until = clock.now() + 30
    other.pause(until)
    clock.advance(ratelimit.VIEW_FRESH_SECONDS)

    # THEN the holder looks at the item before its next send and sends nothing before the pause ends
    reads = holder._bucket.reads
    assert holder.acquire() >= until
    assert holder._bucket.reads > reads
    assert holder.expired > 0


def test_a_429_elsewhere_voids_the_lease_claimed_at_the_old_rate(table: Any) -> None:
    # GIVEN one invocation holding a lease, claimed at the declared rate
    clock = ManualClock(T0)
    holder = holding_a_lease(table, clock)
    held_until = holder._slots[-1]
    other = shared_limiter(table, policy=ApiPolicy(rate=50, burst=5), clock=clock)

    # WHEN another is answered 429 (the stack steps down)
    other.throttled(other.acquire())
    clock.advance(ratelimit.VIEW_FRESH_SECONDS)

    # THEN the holder's next slot is a new one, at the stepped-down rate, after all it held
    slot = holder.acquire()
    assert slot > held_until
    assert holder._bucket.rate() == pytest.approx(50 * DECREASE_FACTOR, rel=1e-3)


def test_a_lease_not_used_goes_back_to_the_stack_when_nobody_claimed_after_it(table: Any) -> None:
    # GIVEN an invocation holding a lease, the last to have claimed
    clock = ManualClock(T0)
    holder = holding_a_lease(table, clock)
    first_unused = holder._slots[0]

    # WHEN its segment ends
    holder.give_back()

    # THEN the schedule's next free slot is its first unused one: the next claim gets it
    assert stored_tat(table) == pytest.approx(first_unused, abs=1e-6)
    assert holder.given_back > 0
    assert not holder._slots
    other = shared_limiter(table, policy=ApiPolicy(rate=50, burst=5), clock=clock)
    assert other.acquire() == pytest.approx(first_unused, abs=1e-6)


def test_a_lease_others_claimed_after_is_kept_not_given_back(table: Any) -> None:
    clock = ManualClock(T0)
    holder = holding_a_lease(table, clock)
    held = list(holder._slots)
    other = shared_limiter(table, policy=ApiPolicy(rate=50, burst=5), clock=clock)
    other._bucket.claim(3)  # after the holder's slots
    tat = stored_tat(table)

    holder.give_back()

    # THEN nothing moved: giving back would hand the others' slots out twice
    assert stored_tat(table) == tat
    assert list(holder._slots) == held
    assert holder.given_back == 0


# -- the window forms (ApiRateForm, ApiRateWindowSeconds) --------------------------------------


def most_in_a_fixed_window(arrivals: list[float], window: float, offset: float) -> int:
    """The most arrivals in one window of a grid [offset + k·window, offset + (k+1)·window):
    an API counting per fixed window, its grid where its clock puts it."""
    counts: dict[int, int] = {}
    for at in arrivals:
        index = math.floor((at - offset) / window)
        counts[index] = counts.get(index, 0) + 1
    return max(counts.values())


def test_a_window_form_paces_n_per_window_with_room_for_the_lateness() -> None:
    # 300 per minute: 5/s; 60 s + 50 ms of lateness over 300 slots
    assert pacing_interval(5, 0.05, window_seconds=60) == pytest.approx(60.05 / 300)
    # the count per window is whole: 16.67/s over 60 s allows 1,000, not 1,000.2
    assert pacing_interval(16.67, 0.0, window_seconds=60) == pytest.approx(60 / 1000)
    with pytest.raises(ValueError, match="form"):
        ApiPolicy(rate=5, form="leaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        ApiPolicy(rate=0.01, form="fixed-window", window_seconds=10)  # not one request per window


@pytest.mark.parametrize("form", ["sliding-window", "fixed-window"])
@pytest.mark.parametrize("pattern", LATENESS_PATTERNS)
def test_arrivals_up_to_the_tolerated_lateness_never_break_the_declared_window(
    table: Any, form: str, pattern: str
) -> None:
    # GIVEN an API allowing 30 per 3-second window (10/s), and 50 ms of tolerated lateness
    policy = ApiPolicy(rate=10, form=form, window_seconds=3)  # type: ignore[arg-type]
    limiter = shared_limiter(table, policy=policy, lateness_seconds=LATENESS, clock=ManualClock(T0))
    slots = [limiter.acquire() for _ in range(300)]

    # WHEN each request reaches the API up to 50 ms after its slot, in this pattern
    rng = random.Random(7)
    arrivals = sorted(slot + LATENESS_PATTERNS[pattern](i, rng) for i, slot in enumerate(slots))

    # THEN no 3-second window holds more than 30, sliding or on any grid the API's clock may use
    assert max_in_window(arrivals, window=3) <= 30
    for offset in (0.0, 0.001, 0.5, 1.234, 2.999):
        assert most_in_a_fixed_window(arrivals, 3, T0 + offset) <= 30
    # ...and the rate is 30 per 3.05 s: 98% of the declared 10/s
    assert (len(slots) - 1) / (slots[-1] - slots[0]) == pytest.approx(30 / 3.05, rel=1e-3)


def test_a_window_form_at_measured_lateness_uses_the_window_and_never_breaks_it(table: Any) -> None:
    # GIVEN 100 per 10-second window, trips up to 8 ms, measured by the limiter
    clock, rng = ManualClock(T0), random.Random(3)
    policy = ApiPolicy(rate=10, form="sliding-window", window_seconds=10)
    limiter = shared_limiter(table, policy=policy, clock=clock)

    arrivals = sorted(
        at for at, _ in deliver_to(limiter, LeakyBucket(1e9, 0), clock, 60, lambda: rng.uniform(0, 0.008))
    )

    assert max_in_window(arrivals, window=10) <= 100
    late = [at for at in arrivals if at > T0 + 10]
    assert (len(late) - 1) / (late[-1] - late[0]) >= 0.99 * 10


@pytest.mark.parametrize(("burst", "tolerance"), [(5, 0.015), (0, MIN_WAKE_TOLERANCE_SECONDS)])
def test_the_wake_tolerance_is_the_one_that_sends_the_most(table: Any, burst: int, tolerance: float) -> None:
    # GIVEN wake-ups 1 ms late 95 times in 100 and 15 ms late 5 times; trips that do not vary
    limiter = shared_limiter(table, policy=ApiPolicy(rate=50, burst=burst), clock=ManualClock(T0))
    for index in range(200):
        limiter.meter.woke(0.015 if index % 20 == 0 else 0.001)
        limiter.meter.answered(0.003)

    # THEN with a burst (only the window's L/1 s to pay) it tolerates the 15 ms and forfeits
    # nothing; with strict spacing (L paid per request) it forfeits the 5% and paces at 1 ms
    assert limiter.wake_tolerance == pytest.approx(tolerance)
    assert limiter.lateness() == pytest.approx(tolerance + CLOCK_GRANULARITY_SECONDS)
