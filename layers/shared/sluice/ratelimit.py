"""The stack-wide limit on requests to the downstream API: a shared schedule of send slots.

The limit (API_RATE_LIMIT requests per second) holds for the whole stack, however many
ProcessObject invocations run and however their number changes mid-run. A per-invocation
share (rate / concurrency) would not: it is computed when an invocation starts, so when the
dispatcher raises concurrency from 3 to 6, the old invocations keep their larger share and the
sum overshoots; when it lowers it, the API is under-used. So all invocations draw from one
schedule kept in the ControlTable.

The schedule is GCRA ("next free slot"): item `pk = "ratelimit#downstream"` holds `tat`, the
theoretical arrival time, epoch seconds of the first slot nobody holds yet. Claiming n slots is
`start = max(tat, now)`, `tat' = start + n × interval`, in one UpdateItem: while the bucket is
busy (tat >= now, the case under a backlog) an atomic `ADD tat :n×interval` conditional on
`tat >= :now`, which succeeds however many invocations claimed meanwhile (the new tat comes
back, the claimer's slots end there); when it is idle a `SET tat = :now + n×interval`
conditional on `tat < :now`. A condition fails only when the bucket switched between busy and
idle since the claimer last looked; the item comes back with the failure
(ReturnValuesOnConditionCheckFailure) and the other form is tried. The claimer owns the slots
`start + i × interval`, i < n. Slots are at least `interval` apart across all claims.

A slot is only worth something if it is used on time: slots claimed early and used late would
bunch up with later slots and break the window. So a `RateLimiter` (one per invocation, shared
by its worker threads) keeps the slots it claimed in a local reservoir and never hands one out
late (see below). One claim serves every thread waiting at that moment plus a short stretch of
the invocation's recent use (`claim_ahead_seconds`), so a busy invocation writes to DynamoDB
once per several requests, not once per request. A claim never reaches more than
`max_ahead_seconds` past now; beyond that the caller just waits.

Pacing, and why it is (1 + L) / R. What the API counts is *arrivals*, and a request arrives
after its slot, by the thread's wake-up plus the request's trip. Say every arrival lags its slot
by d, 0 <= d <= L (the tolerated lateness). Then the R + 1 slots s_0 < ... < s_R of any run
span at least R × interval = 1 + L seconds, so their arrivals are at least
(1 + L) + d_R - d_0 >= 1 second apart: never R + 1 arrivals in one half-open one-second window,
whatever the lateness pattern within [0, L]. The rate is R / (1 + L): 95.2% of the limit at
L = 50 ms, where a fixed 90% headroom gave up 10% and still had no stated bound.

The lateness is made a bound, not a hope, on the sending side: a caller that wakes up more than
`wake_tolerance` (L / 2 by default) after its slot forfeits it and claims a new one, so a stalled
thread or a descheduled process cannot send late into a later caller's second. The other half of
L is left for the trip to the API. Measured on loopback on this 2-core machine under load
(docs/performance.md): wake-up lateness p99 ~11 ms, max ~17 ms; slot to arrival p99 ~18 ms,
max ~42 ms. A deployment whose trip to the API varies more sets a larger L.

A pause (a 429 or 503 whose Retry-After says "not before T") is written into the same item:
`tat` is pushed to T (`SET tat = :T` if tat < T, one write), so every invocation's next claim,
busy or idle, starts at T or later. Slots an invocation already holds before T are dropped from
its own reservoir; other invocations hold at most `claim_ahead_seconds` of slots, which they
may still use. Every wait here takes a `stop` event: a caller whose segment runs out of time
gives up its wait (Interrupted) instead of sleeping through a long pause.

Time is epoch seconds because it is shared between machines; a `Clock` is injected so tests run
on a `ManualClock` without sleeping.
"""

import heapq
import itertools
import math
import threading
import time
from collections import deque
from decimal import Decimal
from typing import Any, Protocol

BUCKET_KEY = "ratelimit#downstream"
DEFAULT_LATENESS_SECONDS = 0.05  # L: slot → arrival at the API; paces at R / 1.05 = 95.2% of R
MAX_FORFEITS = 3  # consecutive late wake-ups before a caller sends on the slot it has anyway
CLAIM_AHEAD_SECONDS = 0.2  # a claim covers this long of the invocation's recent use...
MAX_BATCH = 64  # ...but never more slots than this
RATE_WINDOW = 1.0  # seconds of hand-outs that make "recent use"
WAIT_TICK_SECONDS = 0.25  # a long wait looks at its stop event this often
STOPPED_GRACE_SECONDS = 1.0  # a stopped caller still sends on a slot due within this


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep_until(self, when: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep_until(self, when: float) -> None:
        if (delay := when - time.time()) > 0:
            time.sleep(delay)


class ManualClock:
    """A clock that only moves when someone sleeps: it jumps to the latest wake-up asked for.

    For tests and simulations: thousands of paced requests run in milliseconds, and every time
    a caller sees is exactly the time it was scheduled for.
    """

    def __init__(self, start: float = 1_800_000_000.0):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep_until(self, when: float) -> None:
        with self._lock:
            self._now = max(self._now, when)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Interrupted(Exception):
    """A wait was given up because its caller's stop event was set."""


def sleep_until(
    clock: Clock, when: float, stop: threading.Event | None = None, *, grace_seconds: float = 0.0
) -> None:
    """`clock.sleep_until(when)` in ticks, giving up (Interrupted) once `stop` is set, unless
    what is left of the wait is within `grace_seconds`."""
    if stop is None:
        clock.sleep_until(when)
        return
    while (now := clock.now()) < when:
        if stop.is_set() and when - now > grace_seconds:
            raise Interrupted(f"stopped {when - now:.1f}s before the end of a wait")
        clock.sleep_until(min(when, now + WAIT_TICK_SECONDS))


class RateLimitContention(RuntimeError):
    """The bucket kept changing under us: too many claimers for one item."""


def pacing_interval(limit: float, lateness_seconds: float) -> float:
    """Seconds between two slots so that arrivals up to `lateness_seconds` late never put more
    than `limit` requests in one second (module doc)."""
    if limit <= 0 or lateness_seconds < 0:
        raise ValueError("limit must be > 0 and lateness_seconds >= 0")
    return (1.0 + lateness_seconds) / limit


class SharedBucket:
    """The GCRA schedule in the ControlTable (a boto3 DynamoDB Table resource).

    `tat` is kept as the exact decimal string stored, so the condition compares like with like.
    """

    def __init__(
        self,
        table: Any,
        *,
        limit: float,
        lateness_seconds: float = DEFAULT_LATENESS_SECONDS,
        clock: Clock | None = None,
        key: str = BUCKET_KEY,
        max_ahead_seconds: float = 5.0,
        max_conflicts: int = 100,
    ):
        self.interval = pacing_interval(limit, lateness_seconds)
        self.lateness = lateness_seconds
        self.clock = clock or SystemClock()
        self._table = table
        self._conflict = table.meta.client.exceptions.ConditionalCheckFailedException
        self._key = {"pk": key}
        self.max_ahead = max_ahead_seconds
        self._max_conflicts = max_conflicts
        self._tat: str | None = None  # the last value seen

    def claim(self, count: int, stop: threading.Event | None = None) -> float:
        """Take `count` consecutive slots; the first one's time. Slots are `interval` apart.

        One write in the usual case, whatever the other invocations did meanwhile: a busy bucket
        (tat at or after now) is extended with an atomic ADD, an idle one restarted at now with a
        SET; each is conditional on the bucket being in that case, so only a switch between busy
        and idle since our last look costs a second write.
        """
        for _ in range(self._max_conflicts):
            now = self.clock.now()
            seen = float(self._tat) if self._tat is not None else None
            if seen is not None and seen - now > self.max_ahead:
                sleep_until(self.clock, seen - self.max_ahead, stop)
                continue
            start = (
                self._extend(now, count) if seen is not None and seen >= now else self._restart(now, count)
            )
            if start is not None:
                return start
        raise RateLimitContention(f"could not claim a rate slot in {self._max_conflicts} tries")

    def pause(self, until: float) -> None:
        """No slot before `until` for anyone: tat = until unless it is later already. One write."""
        value = _micros(until)
        condition = "attribute_not_exists(tat) OR tat < :until"
        if self._update("SET tat = :until", condition, {":until": Decimal(value)}) is not None:
            self._tat = value

    def _extend(self, now: float, count: int) -> float | None:
        """Busy bucket: tat += count × interval, if tat >= now still. The first slot, or None."""
        delta = Decimal(_micros(count * self.interval))
        answer = self._update(
            "ADD tat :delta", "tat >= :now", {":delta": delta, ":now": Decimal(_micros(now))}
        )
        if answer is None:
            return None
        new_tat = answer["tat"]
        self._tat = str(new_tat)
        return float(new_tat - delta)

    def _restart(self, now: float, count: int) -> float | None:
        """Idle (or new) bucket: tat = now + count × interval, if tat < now still. Now, or None."""
        new_tat = _micros(now + count * self.interval)
        condition = "attribute_not_exists(tat) OR tat < :now"
        answer = self._update(
            "SET tat = :new", condition, {":new": Decimal(new_tat), ":now": Decimal(_micros(now))}
        )
        if answer is None:
            return None
        self._tat = new_tat
        return now

    def _update(self, update: str, condition: str, values: dict[str, Decimal]) -> dict[str, Any] | None:
        """The item's new attributes, or None when the condition failed (our view is refreshed)."""
        try:
            answer = self._table.update_item(
                Key=self._key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._conflict as error:
            # The item inside the error is not deserialized by the resource: {"tat": {"N": "..."}}
            old = error.response.get("Item", {}).get("tat")
            self._tat = old["N"] if old else None
            return None
        return dict(answer.get("Attributes", {}))


def _micros(when: float) -> str:
    """Epoch seconds rounded UP to the microsecond, as an exact decimal string: rounding up
    keeps slots at least `interval` apart, the string round-trips through DynamoDB unchanged."""
    micros = math.ceil(when * 1_000_000)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


class RateLimiter:
    """Paces the threads of one invocation on the shared bucket; `acquire` before every request.

    Slots are claimed into a local reservoir and handed out earliest first. One thread at a time
    claims: for every thread waiting at that moment, and ahead for what this invocation has been
    using (its hand-outs over the last second × `claim_ahead_seconds`, at most `max_batch`), so a
    busy invocation makes one DynamoDB write per several requests instead of one each. A slot
    claimed ahead is only ever used on time: one that has passed by more than `wake_tolerance`
    is dropped from the reservoir, and a caller that wakes more than `wake_tolerance` after its
    slot gives it up and takes another (module doc). What was claimed and not used is capacity
    the stack does not get back, which is why the reservoir follows the demand.
    """

    def __init__(
        self,
        bucket: SharedBucket,
        *,
        wake_tolerance: float | None = None,
        claim_ahead_seconds: float = CLAIM_AHEAD_SECONDS,
        max_batch: int = MAX_BATCH,
    ):
        self._bucket = bucket
        self._clock = bucket.clock
        self.wake_tolerance = bucket.lateness / 2 if wake_tolerance is None else wake_tolerance
        self._claim_ahead = claim_ahead_seconds
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._slots: deque[float] = deque()  # claimed, not handed out yet, in time order
        self._handed: deque[float] = deque()  # when slots were handed out, the last RATE_WINDOW
        self._waiters = 0
        # Callers waiting for a slot, lowest (order, ticket) first: a segment's rows take slots in
        # file order, so when it stops, the rows that give up their wait come after those that send.
        self._line: list[tuple[int, int]] = []
        self._tickets = itertools.count()
        self._claiming = False
        self.claims = 0  # writes to the bucket
        self.expired = 0  # claimed ahead, never handed out in time
        self.forfeited = 0  # handed out, given up because the caller woke too late for it
        self.late_sends = 0  # sent late anyway, after MAX_FORFEITS consecutive forfeits

    def acquire(self, stop: threading.Event | None = None, order: int | None = None) -> float:
        """Block until this caller's slot; its time (epoch seconds). Interrupted once `stop` is set.

        Among callers waiting at once, a lower `order` (a row number) gets the earlier slot.
        """
        for forfeits in range(MAX_FORFEITS + 1):
            slot = self._take_slot(stop, order)
            # A request handed out before its segment stopped still goes out on a slot that is
            # due (the segment's safety margin covers a second); a longer wait, a pause, is given
            # up. Slots go in row order, so the rows that give up come after those that send.
            sleep_until(self._clock, slot, stop, grace_seconds=STOPPED_GRACE_SECONDS)
            if self._clock.now() - slot <= self.wake_tolerance:
                return slot
            if forfeits == MAX_FORFEITS:
                break
            with self._cond:
                self.forfeited += 1
        # Woken late every time: the machine is stalling. Sending beats starving the caller; the
        # API's own 429 (retried) is the last guard.
        with self._cond:
            self.late_sends += 1
        return slot

    def pause(self, until: float) -> None:
        """Nobody in the stack sends before `until` (a Retry-After): one write to the shared item."""
        self._bucket.pause(until)
        with self._cond:
            while self._slots and self._slots[0] < until:
                self._slots.popleft()
                self.expired += 1

    def _take_slot(self, stop: threading.Event | None = None, order: int | None = None) -> float:
        """The next slot, to the waiting caller with the lowest `order` first (then first come)."""
        with self._cond:
            me = (0 if order is None else order, next(self._tickets))
            heapq.heappush(self._line, me)
            self._waiters += 1
            try:
                while True:
                    now = self._clock.now()
                    while self._slots and now - self._slots[0] > self.wake_tolerance:
                        self._slots.popleft()
                        self.expired += 1
                    if self._slots and self._line[0] == me:
                        heapq.heappop(self._line)
                        self._handed.append(now)
                        self._cond.notify_all()  # the next in line takes the next slot
                        return self._slots.popleft()
                    if self._claiming or self._slots:
                        self._cond.wait(WAIT_TICK_SECONDS)
                    else:
                        self._claim(now, stop)
            finally:
                self._waiters -= 1
                if me in self._line:  # gave up (an error): out of the line
                    self._line.remove(me)
                    heapq.heapify(self._line)
                    self._cond.notify_all()

    def _claim(self, now: float, stop: threading.Event | None) -> None:
        """Called holding the lock; releases it for the DynamoDB write. A failure goes to the
        claimer; the threads waiting try a claim of their own."""
        while self._handed and now - self._handed[0] > RATE_WINDOW:
            self._handed.popleft()
        demand = math.ceil(len(self._handed) / RATE_WINDOW * self._claim_ahead)
        count = max(self._waiters, min(self._max_batch, demand))
        self._claiming = True
        self._cond.release()
        try:
            start = self._bucket.claim(count, stop)
        finally:
            self._cond.acquire()
            self._claiming = False
            self._cond.notify_all()
        self.claims += 1
        self._slots.extend(start + index * self._bucket.interval for index in range(count))


def shared_limiter(
    table: Any,
    *,
    limit: float,
    lateness_seconds: float = DEFAULT_LATENESS_SECONDS,
    clock: Clock | None = None,
) -> RateLimiter:
    """A limiter for one invocation, on the stack's bucket in `table` (the ControlTable)."""
    return RateLimiter(SharedBucket(table, limit=limit, lateness_seconds=lateness_seconds, clock=clock))
