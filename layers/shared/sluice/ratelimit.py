"""The stack-wide limit on requests to the downstream API: a shared schedule of send slots.

The limit (API_RATE_LIMIT requests per second) holds for the whole stack, however many
ProcessObject invocations run and however their number changes mid-run. A per-invocation
share (rate / concurrency) would not: it is computed when an invocation starts, so when the
dispatcher raises concurrency from 3 to 6, the old invocations keep their larger share and the
sum overshoots; when it lowers it, the API is under-used. So all invocations draw from one
schedule kept in the ControlTable.

The schedule is GCRA ("next free slot"): item `pk = "ratelimit#downstream"` holds `tat`, the
theoretical arrival time, epoch seconds of the first slot nobody holds yet. Claiming n slots is
one conditional UpdateItem (optimistic concurrency): `start = max(tat, now)`,
`tat' = start + n × interval`, written only if `tat` is still the value read; on
ConditionalCheckFailed the fresh value comes back with the failure
(ReturnValuesOnConditionCheckFailure) and the claim is recomputed. The claimer owns the slots
`start + i × interval`, i < n. Slots are at least `interval` apart across all claims.

A slot is only worth something if it is used on time: slots claimed early and used late would
bunch up with later slots and break the window. So a `RateLimiter` (one per invocation, shared
by its worker threads) claims only for callers waiting right now: concurrent waiters are batched
into one claim (one write for many requests), each sleeps until its own slot, and sends. A claim
never reaches more than `max_ahead_seconds` past now; beyond that the caller just waits.

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

Time is epoch seconds because it is shared between machines; a `Clock` is injected so tests run
on a `ManualClock` without sleeping.
"""

import math
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, cast

BUCKET_KEY = "ratelimit#downstream"
DEFAULT_LATENESS_SECONDS = 0.05  # L: slot → arrival at the API; paces at R / 1.05 = 95.2% of R
MAX_FORFEITS = 3  # consecutive late wake-ups before a caller sends on the slot it has anyway


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
        self._max_ahead = max_ahead_seconds
        self._max_conflicts = max_conflicts
        self._tat: str | None = None  # the last value seen

    def claim(self, count: int) -> float:
        """Take `count` consecutive slots; the first one's time. Slots are `interval` apart."""
        for _ in range(self._max_conflicts):
            now = self.clock.now()
            start = max(float(self._tat), now) if self._tat is not None else now
            if start - now > self._max_ahead:
                self.clock.sleep_until(start - self._max_ahead)
                continue
            new_tat = _micros(start + count * self.interval)
            if self._write(new_tat):
                return start
        raise RateLimitContention(f"could not claim a rate slot in {self._max_conflicts} tries")

    def _write(self, new_tat: str) -> bool:
        values = {":new": Decimal(new_tat)}
        condition = "attribute_not_exists(tat)"
        if self._tat is not None:
            values[":old"], condition = Decimal(self._tat), "tat = :old"
        try:
            self._table.update_item(
                Key=self._key,
                UpdateExpression="SET tat = :new",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._conflict as error:
            # The item inside the error is not deserialized by the resource: {"tat": {"N": "..."}}
            old = error.response.get("Item", {}).get("tat")
            self._tat = old["N"] if old else None
            return False
        self._tat = new_tat
        return True


def _micros(when: float) -> str:
    """Epoch seconds rounded UP to the microsecond, as an exact decimal string: rounding up
    keeps slots at least `interval` apart, the string round-trips through DynamoDB unchanged."""
    micros = math.ceil(when * 1_000_000)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


@dataclass(slots=True)
class _Ticket:
    slot: float | None = None
    error: BaseException | None = None


class RateLimiter:
    """Paces the threads of one invocation on the shared bucket; `acquire` before every request.

    One thread at a time claims, for itself and every thread waiting at that moment; threads
    that arrive during a claim are served by the next one. A caller that wakes more than
    `wake_tolerance` seconds after its slot gives it up and queues again (module doc).
    """

    def __init__(self, bucket: SharedBucket, *, wake_tolerance: float | None = None):
        self._bucket = bucket
        self._clock = bucket.clock
        self.wake_tolerance = bucket.lateness / 2 if wake_tolerance is None else wake_tolerance
        self._cond = threading.Condition()
        self._waiting: list[_Ticket] = []
        self._claiming = False
        self.forfeited = 0  # slots given up because the caller woke too late for them
        self.late_sends = 0  # sent late anyway, after MAX_FORFEITS consecutive forfeits

    def acquire(self) -> float:
        """Block until this caller's slot; its time (epoch seconds)."""
        for forfeits in range(MAX_FORFEITS + 1):
            slot = self._take_slot()
            self._clock.sleep_until(slot)
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

    def _take_slot(self) -> float:
        ticket = _Ticket()
        with self._cond:
            self._waiting.append(ticket)
            while ticket.slot is None and ticket.error is None:
                if self._claiming:
                    self._cond.wait()
                else:
                    self._claim_for_waiters()
        if ticket.error is not None:
            raise ticket.error
        return cast(float, ticket.slot)  # the loop above ends with a slot or an error

    def _claim_for_waiters(self) -> None:
        """Called holding the lock; releases it for the DynamoDB write."""
        batch, self._waiting = self._waiting, []
        self._claiming = True
        self._cond.release()
        try:
            start = self._bucket.claim(len(batch))
            error = None
        except Exception as failure:  # every waiter of this batch gets it
            start, error = 0.0, failure
        finally:
            self._cond.acquire()
            self._claiming = False
        for index, ticket in enumerate(batch):
            if error is None:
                ticket.slot = start + index * self._bucket.interval
            else:
                ticket.error = error
        self._cond.notify_all()


def shared_limiter(
    table: Any,
    *,
    limit: float,
    lateness_seconds: float = DEFAULT_LATENESS_SECONDS,
    clock: Clock | None = None,
) -> RateLimiter:
    """A limiter for one invocation, on the stack's bucket in `table` (the ControlTable)."""
    return RateLimiter(SharedBucket(table, limit=limit, lateness_seconds=lateness_seconds, clock=clock))
