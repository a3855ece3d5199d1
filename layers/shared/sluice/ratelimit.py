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

Leases: fewer writes, the same schedule (issue 14). An invocation whose threads keep up with
slots `interval` apart (the p90 of a thread's cycle, its slot -> its next acquire, is within
senders x interval; senders: threads that asked lately, within the in-flight cap) claims
LEASE_SECONDS of consecutive slots in its one write: at 50/s, 14 slots a write instead of the
2-4 its share of the recent use gave. The slots are the schedule's own, `interval` apart, so
nothing of the pacing's proof changes; what a lease risks is capacity, not precision: slots it
does not use are lost to the stack. Hence the cycle test (a lease the threads cannot fill is not
claimed), and `give_back` at a segment's end: tat = the first unused slot if tat is still where
this invocation's last claim left it (nobody claimed after), one conditional write. A lease
holds slots longer than a claim-ahead did, so news must reach it before it sends: when its view
of the item would be older than VIEW_FRESH_SECONDS at a slot, it reads the item (one consistent
read, a fifth of a write's price) half that before the slot, never between the wake-up and the
send (the read's round trip would make the arrival late), and drops what the item voids: slots
before `paused_until`, and every slot claimed before a step down it had not seen.

A slot's wake-up stays within what its claim paced for: the measured lateness moves between a
claim and its slots (and the largest fresh one of the stack is paced for), so a caller may wake
at most min(wake tolerance, lateness paced for at the claim - the trip's share) after its slot.

Window forms (ApiRateForm sliding-window / fixed-window, ApiRateWindowSeconds W): the API allows
N = floor(R x W) per window. N + 1 consecutive slots span N x interval; with interval (W + L)/N
their arrivals are at least W apart however late each is within L: never N + 1 in a W-second
window. A fixed window's grid is on the API's clock, which we cannot see: keeping every
W-second window keeps every grid's. The burst does not apply.

The policy is the API's, as it documents it (`ApiPolicy`: template ApiRateLimit R, ApiBurst B):
never more than R requests in any one-second window, and never more than a token bucket of rate R
and depth B lets through (nginx's `limit_req burst=B nodelay`; B = 0 is strict spacing, 1/R).

Pacing, and why it is max((1 + L) / R, 1/R + max(0, L - B/R)). What the API counts is
*arrivals*, and a request arrives after its slot, by the thread's wake-up plus the request's trip.
Say every arrival lags its slot by d, 0 <= d <= L (the lateness). The window: the R + 1 slots
s_0 < ... < s_R of any run span at least R × interval >= 1 + L seconds, so their arrivals are at
least (1 + L) + d_R - d_0 >= 1 second apart: never R + 1 arrivals in a half-open one-second window.
The bucket (GCRA with emission interval T = 1/R and tolerance B·T): arrivals conform when
a_j - a_i >= (j - i)·T - B·T for every i < j; slots `interval` >= T apart give
a_j - a_i >= (j - i)·interval - L, so interval >= T + L - B·T suffices. A burst covers lateness:
with B/R >= L only the window's (1 + L) / R is left (98% of R at L = 20 ms); strict spacing pays
the whole lateness per request (1/R + L). `window_only` (a limit with no stated burst, the
simulator's sliding window) keeps the first term only.

Pacing from measured lateness, not an assumed one. L is what this stack measures (`LatenessMeter`,
the last LATENESS_SAMPLES requests of the invocation): the wake-up tolerance (below) plus the p99
of the trip above its minimum (the part every request pays shifts all arrivals alike; only the
spread above it can bunch them) plus 1 ms for an API that counts whole milliseconds. The trip is
send → first byte, less the time the API declares it spent after the arrival (its Server-Timing
header, `downstream.declared_answer_seconds`): the API counts a request when it arrives, and its
own work comes after. Without that header the whole answer time counts, which is safe but slow for
an API whose answers vary: the simulator's 50-200 ms answers made L ~160 ms and paced 50/s at
~12/s (`make run` delivered 8.9 rows/s) until it declared them; without the header, a burst that
covers the spread (B/R >= L) leaves only the window's (1 + L) / R. Until MIN_SAMPLES are in, the
assumed lateness (ApiRateLatenessSeconds) is used. Each invocation
publishes its L into the shared item with a claim every PUBLISH_SECONDS (no extra write), and
paces for the larger of its own and any published within SHARED_FRESH_SECONDS: every invocation
claims slots for the worst lateness measured in the stack.

A slot woken late is never used late: a caller that wakes more than `wake_tolerance` after its
slot forfeits it and claims a new one, as often as it takes (the old limiter sent on the fourth
late slot; an arrival later than L is exactly what breaks the window). The tolerance is the
measured p99 of real sleeps' wake-up lateness (at least MIN_WAKE_TOLERANCE_SECONDS; L/2 assumed
until measured); slots handed out already due are not samples, else the tolerance would ratchet
up on its own values. Connections are opened before a slot is taken (downstream.HttpTransport
.ready), so a handshake never makes an arrival late.

Stack-wide feedback on 429 (AIMD in the same item). The declared limit can be wrong (a quota
shared with another client). A 429 steps the stack's rate down, `rate = DECREASE_FACTOR × rate`,
one conditional write that also counts `decreases`; a 429 on a slot within DECREASE_HOLD_SECONDS
of the last decrease is the same overshoot and changes nothing. The schedule pauses (tat pushed)
for Retry-After, or one interval at the new rate plus L, so the API's bucket drains. The rate
creeps back by INCREASE_PER_SLOT × R per slot claimed, inside the claim's own write: with
requests, not with time, so a stack idle for a minute does not come back at the refused rate.
Every claim reads the item back (ReturnValues ALL_NEW): every invocation paces at the stack's rate
from its next claim on. The 429 is no failed attempt for the row: it waits and goes again.

A pause (a 429, or a 503 whose Retry-After says "not before T") is written into the same item:
`paused_until = T`, and `tat` pushed to T if earlier (one write; a second when tat is past T), so
every invocation's next claim, busy or idle, starts at T or later. Slots an invocation already
holds before T are dropped from its own reservoir; the other invocations drop theirs at their
next look at the item (a claim's answer, or the read before a slot: within VIEW_FRESH_SECONDS).
Every wait here takes a `stop` event: a caller whose segment runs out of time gives up its wait
(Interrupted) instead of sleeping through a long pause.

R in the interval is the stack's rate now (declared, or lower after 429s); each claim computes
its interval when it is made, and slots of claims at different intervals are still at least the
smaller one apart (a claim starts at or after the previous tat).

The most requests in flight (ApiMaxInFlight) is enforced per invocation, as an equal share:
`max_in_flight` permits, taken before the slot (a caller never holds a slot waiting for a permit)
and returned by `finished`. A stack-wide counter in the item would cost two writes per request and
leak the count of every invocation that dies mid-request; a share of ApiMaxInFlight /
ConcurrencyMax per invocation holds the sum with no write at all, at the price of leaving part
of it unused while fewer invocations run (settings.ProcessSettings.api_in_flight_per_invocation).

Time is epoch seconds because it is shared between machines; a `Clock` is injected so tests run
on a `ManualClock` without sleeping.
"""

import bisect
import contextlib
import heapq
import itertools
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol, get_args

from boto3.dynamodb.types import TypeDeserializer

from sluice.observability import MetricUnit

BUCKET_KEY = "ratelimit#downstream"
DEFAULT_LATENESS_SECONDS = 0.05  # lateness assumed until measured (ApiRateLatenessSeconds)
CLAIM_AHEAD_SECONDS = 0.2  # a claim covers this long of the invocation's recent use...
MAX_BATCH = 64  # ...but never more slots than this
# Leases (module doc, "Leases"): an invocation whose threads can send at the stack's pace claims
# this long a run of consecutive slots in one write...
LEASE_SECONDS = 0.3
# ...and, while it holds slots, looks at the shared item (one consistent read) at least this often
# before sending, so a pause or a step down written by another invocation reaches it in time.
VIEW_FRESH_SECONDS = 0.3
CYCLE_SAMPLES = 64  # the recent slot -> next acquire times (a thread's cycle) kept
MIN_CYCLE_SAMPLES = 8  # fewer: no lease, the claim follows the recent use
ACTIVE_THREAD_SECONDS = 5.0  # a thread that asked for a slot this recently is one of the senders
RATE_WINDOW = 1.0  # seconds of hand-outs that make "recent use"
WAIT_TICK_SECONDS = 0.25  # a long wait looks at its stop event this often
STOPPED_GRACE_SECONDS = 1.0  # a stopped caller still sends on a slot due within this

# Measured lateness (module doc, "Pacing from measured lateness")
LATENESS_SAMPLES = 512  # the recent requests whose wake-up and trip are kept
MIN_SAMPLES = 50  # fewer than this: the assumed lateness is used
LATENESS_PERCENTILE = 0.99
RECOMPUTE_EVERY = 16  # new samples between two computations of the percentiles
MIN_WAKE_TOLERANCE_SECONDS = 0.002  # a wake-up this late is always on time (timer granularity)
# The wake tolerance is chosen among the recent wake-ups from this quantile up: the one that sends
# the most (RateLimiter.wake_tolerance)
TOLERANCE_FROM_QUANTILE = 0.9
# An API counting in whole milliseconds (nginx) may see two arrivals up to 1 ms closer than they were.
CLOCK_GRANULARITY_SECONDS = 0.001
PUBLISH_SECONDS = 5.0  # an invocation writes its measured lateness into the shared item this often
SHARED_FRESH_SECONDS = 3 * PUBLISH_SECONDS  # a published lateness older than this is ignored

# Stack-wide feedback on 429 (module doc, "Feedback"): AIMD on the shared item
DECREASE_FACTOR = 0.9  # a 429 multiplies the stack's rate by this
# Each slot claimed while below the declared rate adds this fraction of it back (in the claim's own
# write): the rate creeps back with requests sent, not with time, so an idle stack does not come
# back at the rate that was refused. 2e-4: a 10% step down is climbed back in 500 requests at R.
INCREASE_PER_SLOT = 0.0002
MIN_RATE_FRACTION = 0.05  # the rate never falls below this fraction of the declared one
# A 429 on a slot within this of the last decrease is the same overshoot (slots claimed ahead at
# the old rate, CLAIM_AHEAD_SECONDS, and requests in flight): it does not step down again.
DECREASE_HOLD_SECONDS = 0.3

# Metrics (names declared here once; monitor and dashboards read them)
PACED_RATE_METRIC = "ApiPacedRate"  # requests/s the stack paces at now (declared, or lower after 429s)
RATE_DECREASE_METRIC = "ApiRateDecreases"  # 429s that stepped the stack's rate down
PACING_LATENESS_METRIC = "ApiPacingLatenessMs"  # the arrival lateness the pacing tolerates
WAKE_LATENESS_METRIC = "ApiWakeLatenessP99Ms"  # measured: slot -> thread awake, p99
TRIP_SPREAD_METRIC = "ApiTripSpreadP99Ms"  # measured: the trip (less Server-Timing), p99 - minimum
FORFEIT_METRIC = "ApiSlotsForfeited"  # slots given up because the caller woke too late for them
LIMITER_METRICS = (  # what the dashboards show of the limiter (tests/unit/test_template.py)
    PACED_RATE_METRIC,
    RATE_DECREASE_METRIC,
    PACING_LATENESS_METRIC,
    WAKE_LATENESS_METRIC,
    TRIP_SPREAD_METRIC,
    FORFEIT_METRIC,
)

MetricSink = Callable[[str, MetricUnit, float], None]

# The forms an API's limit is documented in (template ApiRateForm)
RateForm = Literal["token-bucket", "sliding-window", "fixed-window"]
RATE_FORMS: tuple[str, ...] = get_args(RateForm)
WINDOW_FORMS = ("sliding-window", "fixed-window")


@dataclass(frozen=True, slots=True)
class PacingState:
    """The shared item (`BUCKET_KEY`) as an operator reads it (`sluice monitor`)."""

    rate: float | None  # the stack's rate after 429s; None: never stepped down (the declared one)
    lateness_seconds: float | None  # the measured lateness last published; None: not yet
    decreases: int  # 429s that stepped the rate down, ever
    tat: float | None  # the first free slot (epoch seconds)
    paused_until: float | None = None  # the last pause written (Retry-After, a 429); None: never

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "PacingState":
        """From the item as the boto3 resource returns it (numbers as Decimal)."""

        def number(name: str) -> float | None:
            return float(item[name]) if name in item else None

        return cls(
            rate=number("rate"),
            lateness_seconds=number("lateness"),
            decreases=int(item.get("decreases", 0)),
            tat=number("tat"),
            paused_until=number("paused_until"),
        )


@dataclass(frozen=True, slots=True)
class ApiPolicy:
    """The downstream's limit as its documentation states it (template ApiRateLimit, ApiBurst).

    `rate` requests per second, and never more than `rate` in any one-second window; `burst`
    requests tolerated at once beyond the rate (a token bucket's depth beyond one request, nginx's
    `burst=`, API Gateway's burst minus one); 0 = strict spacing, one request per 1/rate.

    `form` "sliding-window" or "fixed-window": the API counts requests per `window_seconds` W
    instead, at most rate × W (rounded down) in any window (fixed: in any window of its clock's
    grid); `burst` does not apply.
    """

    rate: float
    burst: int = 0
    form: RateForm = "token-bucket"
    window_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 0:
            raise ValueError("limit (rate) must be > 0 and burst >= 0")
        if self.form not in RATE_FORMS:
            raise ValueError(f"form must be one of {', '.join(RATE_FORMS)}, not {self.form!r}")
        if self.window_seconds <= 0 or (self.windowed and self.rate * self.window_seconds < 1):
            raise ValueError("window_seconds must be > 0 and allow one request per window at least")

    @property
    def windowed(self) -> bool:
        return self.form in WINDOW_FORMS

    @property
    def per_window(self) -> int:
        """Requests the API allows per window (window forms): rate × window, rounded down."""
        return math.floor(self.rate * self.window_seconds + 1e-9)


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


def pacing_interval(
    limit: float, lateness_seconds: float, burst: int | None = None, *, window_seconds: float | None = None
) -> float:
    """Seconds between two slots so that arrivals up to `lateness_seconds` late never put more
    than `limit` requests in any one-second window and, with a `burst` (None: the API counts per
    window only), never overflow a token bucket of rate `limit` and depth `burst` (module doc).

    `window_seconds` W (a window form): never more than N = limit × W (rounded down) in any
    W-second window: N slots span at least W + lateness, interval (W + L) / N."""
    if limit <= 0 or lateness_seconds < 0:
        raise ValueError("limit must be > 0 and lateness_seconds >= 0")
    if window_seconds is not None:
        allowed = limit * window_seconds
        per_window = math.floor(allowed + 1e-9) if allowed >= 1 else allowed
        return (window_seconds + lateness_seconds) / per_window
    window = (1.0 + lateness_seconds) / limit
    if burst is None:
        return window
    return max(window, 1.0 / limit + max(0.0, lateness_seconds - burst / limit))


class SharedBucket:
    """The GCRA schedule in the ControlTable (a boto3 DynamoDB Table resource), with the stack's
    measured lateness and its rate after 429s (AIMD) in the same item.

    `tat` is kept as the exact decimal string stored, so the condition compares like with like.
    """

    def __init__(
        self,
        table: Any,
        *,
        limit: float | None = None,
        policy: ApiPolicy | None = None,
        lateness_seconds: float = DEFAULT_LATENESS_SECONDS,
        clock: Clock | None = None,
        key: str = BUCKET_KEY,
        max_ahead_seconds: float = 5.0,
        max_conflicts: int = 100,
    ):
        # `limit` alone: an API that counts per one-second window only (no token bucket beyond it)
        self.window_only = policy is None
        if policy is None:
            if limit is None:
                raise ValueError("a limit or a policy is needed")
            policy = ApiPolicy(rate=limit)
        pacing_interval(policy.rate, lateness_seconds)  # refuses a bad lateness
        self.policy = policy
        self.assumed_lateness = lateness_seconds  # until the limiter has measured its own
        self.lateness = lateness_seconds  # what the next claim tolerates (the limiter updates it)
        self.clock = clock or SystemClock()
        self._table = table
        self._conflict = table.meta.client.exceptions.ConditionalCheckFailedException
        self._key = {"pk": key}
        self.max_ahead = max_ahead_seconds
        self._max_conflicts = max_conflicts
        self._tat: str | None = None  # the last value seen
        self.shared: dict[str, Any] = {}  # the item's other attributes, as last seen
        self.last_interval = self.interval
        self.decreases = 0  # 429s whose write stepped the stack's rate down
        self.viewed_at = float("-inf")  # when the item was last seen (a write's answer or a read)
        self.reads = 0  # consistent reads of the item (refresh)

    # -- what the stack paces at ------------------------------------------------------------

    def rate(self) -> float:
        """The stack's rate now: the declared one, or less after 429s, creeping back by
        INCREASE_PER_SLOT of the declared rate per slot claimed since."""
        if "rate" not in self.shared:
            return self.policy.rate
        return min(self.policy.rate, float(self.shared["rate"]))

    def shared_lateness(self, now: float) -> float:
        """The lateness another invocation published lately (0 when none is fresh)."""
        if "lateness_at" not in self.shared or now - float(self.shared["lateness_at"]) > SHARED_FRESH_SECONDS:
            return 0.0
        return float(self.shared["lateness"])

    def paused_until(self) -> float:
        """The end of the last pause written (Retry-After, a 429): no slot before it is used."""
        return float(self.shared.get("paused_until", float("-inf")))

    def stack_decreases(self) -> int:
        """The stack's 429 step-downs, ever, as the item last said."""
        return int(self.shared.get("decreases", 0))

    @property
    def interval(self) -> float:
        """Seconds between two slots now, at the stack's rate and the lateness tolerated."""
        return self.interval_for(self.lateness)

    def interval_for(self, lateness: float) -> float:
        """Seconds between two slots at the stack's rate, tolerating `lateness`."""
        if self.policy.windowed:
            return pacing_interval(self.rate(), lateness, window_seconds=self.policy.window_seconds)
        burst = None if self.window_only else self.policy.burst
        return pacing_interval(self.rate(), lateness, burst)

    def refresh(self) -> None:
        """Read the item (one consistent read): what other invocations wrote since our last write."""
        answer = self._table.get_item(Key=self._key, ConsistentRead=True)
        self.reads += 1
        self._see(dict(answer.get("Item", {})))

    # -- writes -------------------------------------------------------------------------------

    def claim(
        self,
        count: int,
        stop: threading.Event | None = None,
        *,
        publish: float | None = None,
        publisher: str = "",
    ) -> float:
        """Take `count` consecutive slots; the first one's time. Slots are `last_interval` apart.

        One write in the usual case, whatever the other invocations did meanwhile: a busy bucket
        (tat at or after now) is extended with an atomic ADD, an idle one restarted at now with a
        SET; each is conditional on the bucket being in that case, so only a switch between busy
        and idle since our last look costs a second write. `publish`: a measured lateness to write
        into the item with the claim (no extra write). Every claim reads the item back.
        """
        for _ in range(self._max_conflicts):
            now = self.clock.now()
            seen = float(self._tat) if self._tat is not None else None
            if seen is not None and seen - now > self.max_ahead:
                sleep_until(self.clock, seen - self.max_ahead, stop)
                continue
            interval = self.interval
            sets: list[str] = []
            values: dict[str, Any] = {}
            if publish is not None:
                sets.append("lateness = :lateness, lateness_at = :now, lateness_by = :by")
                values |= {":lateness": Decimal(_micros(publish)), ":by": publisher}
            if self.rate() < self.policy.rate:  # additive increase, in the same write
                sets.append("rate = if_not_exists(rate, :declared) + :increase")
                values[":declared"] = Decimal(_micros(self.policy.rate))
                values[":increase"] = Decimal(_micros(count * INCREASE_PER_SLOT * self.policy.rate))
            extra = ", ".join(sets)
            start = (
                self._extend(now, count, interval, extra, values)
                if seen is not None and seen >= now
                else self._restart(now, count, interval, extra, values)
            )
            if start is not None:
                self.last_interval = interval
                return start
        raise RateLimitContention(f"could not claim a rate slot in {self._max_conflicts} tries")

    def pause(self, until: float) -> None:
        """No slot before `until` for anyone: `paused_until` = until (every limiter drops the slots
        it holds before it, at its next look at the item), and tat = until unless it is later
        already, so no claim starts before it. One write; two when tat is past `until`."""
        value = {":until": Decimal(_micros(until))}
        condition = "attribute_not_exists(tat) OR tat < :until"
        if self._update("SET tat = :until, paused_until = :until", condition, value) is None:
            later = "attribute_not_exists(paused_until) OR paused_until < :until"
            self._update("SET paused_until = :until", later, value)

    def give_back(self, first: float, end: str) -> bool:
        """Slots from `first` on, up to `end` (tat as this bucket's last claim left it, its exact
        string), go back to the stack: tat = `first` if tat is still `end`, i.e. nobody claimed
        after them (one conditional write). Whether they went back."""
        values = {":back": Decimal(_micros(first)), ":end": Decimal(end)}
        return self._update("SET tat = :back", "tat = :end", values) is not None

    @property
    def last_tat(self) -> str | None:
        """tat as last seen (the exact stored string)."""
        return self._tat

    def throttled(self, slot: float, retry_after: float | None = None) -> float:
        """A request sent on `slot` was answered 429: step the stack's rate down (unless a 429
        of the same overshoot did already) and pause the schedule. When the row may go again.

        Multiplicative decrease, one conditional write: `rate = DECREASE_FACTOR × rate(now)` if
        the last decrease was before `slot - DECREASE_HOLD_SECONDS` (requests claimed or in flight
        at the old rate answer 429 too; they are the same overshoot). The pause lets the API's
        bucket drain: Retry-After when given, else one interval at the new rate plus the
        tolerated lateness, so the next arrival finds room.
        """
        now = self.clock.now()
        new_rate = max(self.policy.rate * MIN_RATE_FRACTION, self.rate() * DECREASE_FACTOR)
        values = {
            ":rate": Decimal(_micros(new_rate)),
            ":now": Decimal(_micros(now)),
            ":before": Decimal(_micros(slot - DECREASE_HOLD_SECONDS)),
            ":one": Decimal(1),
        }
        condition = "attribute_not_exists(rate_at) OR rate_at < :before"
        stepped = self._update("SET rate = :rate, rate_at = :now ADD decreases :one", condition, values)
        wait = retry_after or 0.0
        if stepped is not None:
            self.decreases += 1
            wait = max(wait, 1.0 / new_rate + self.lateness)
        until = now + wait
        if wait > 0:
            self.pause(until)
        return until

    def _extend(
        self, now: float, count: int, interval: float, extra: str, values: dict[str, Any]
    ) -> float | None:
        """Busy bucket: tat += count × interval, if tat >= now still. The first slot, or None."""
        delta = Decimal(_micros(count * interval))
        update = "ADD tat :delta" + (f" SET {extra}" if extra else "")
        values = {**values, ":delta": delta, ":now": Decimal(_micros(now))}
        answer = self._update(update, "tat >= :now", values)
        if answer is None:
            return None
        new_tat = answer["tat"]
        self._tat = str(new_tat)
        return float(new_tat - delta)

    def _restart(
        self, now: float, count: int, interval: float, extra: str, values: dict[str, Any]
    ) -> float | None:
        """Idle (or new) bucket: tat = now + count × interval, if tat < now still. Now, or None."""
        new_tat = _micros(now + count * interval)
        condition = "attribute_not_exists(tat) OR tat < :now"
        update = "SET tat = :new" + (f", {extra}" if extra else "")
        values = {**values, ":new": Decimal(new_tat), ":now": Decimal(_micros(now))}
        answer = self._update(update, condition, values)
        if answer is None:
            return None
        self._tat = new_tat
        return now

    def _update(self, update: str, condition: str, values: dict[str, Any]) -> dict[str, Any] | None:
        """The item's attributes after the write, or None when the condition failed (our view of
        the item is refreshed either way)."""
        try:
            answer = self._table.update_item(
                Key=self._key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._conflict as error:
            # The item inside the error is not deserialized by the resource: {"tat": {"N": "..."}}
            raw = error.response.get("Item", {})
            self._see({name: _DESERIALIZE.deserialize(value) for name, value in raw.items()})
            return None
        item = dict(answer.get("Attributes", {}))
        self._see(item)
        return item

    def _see(self, item: dict[str, Any]) -> None:
        self.viewed_at = self.clock.now()
        tat = item.get("tat")
        self._tat = str(tat) if tat is not None else None
        self.shared = {name: value for name, value in item.items() if name not in ("pk", "tat")}


_DESERIALIZE = TypeDeserializer()


def _micros(when: float) -> str:
    """Epoch seconds rounded UP to the microsecond, as an exact decimal string: rounding up
    keeps slots at least `interval` apart, the string round-trips through DynamoDB unchanged."""
    micros = math.ceil(when * 1_000_000)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class LatenessMeter:
    """This invocation's recent wake-up lateness (slot -> thread awake) and trips (send -> first
    byte of the answer), and the arrival lateness the pacing must tolerate from them."""

    def __init__(self, samples: int = LATENESS_SAMPLES) -> None:
        self._wake: deque[float] = deque(maxlen=samples)
        self._trip: deque[float] = deque(maxlen=samples)
        self._lock = threading.Lock()
        # Percentiles are asked for under the limiter's lock by every waiting thread: recomputed
        # once per RECOMPUTE_EVERY new samples, not per question.
        self._added = 0
        self._cached: tuple[float, float] | None = None
        self._wake_sorted: list[float] = []
        self.generation = 0  # bumps at every computation

    def woke(self, seconds: float) -> None:
        with self._lock:
            self._wake.append(max(0.0, seconds))
            self._added += 1

    def answered(self, seconds: float) -> None:
        with self._lock:
            self._trip.append(max(0.0, seconds))
            self._added += 1

    @property
    def measured(self) -> bool:
        return len(self._wake) >= MIN_SAMPLES and len(self._trip) >= MIN_SAMPLES

    def wake_p99(self) -> float:
        return self._percentiles()[0]

    def trip_spread_p99(self) -> float:
        """p99 of the trip minus its minimum: the part every request pays moves all arrivals
        alike and cannot bunch them; only the spread above it can."""
        return self._percentiles()[1]

    def _percentiles(self) -> tuple[float, float]:
        with self._lock:
            if self._cached is None or self._added >= RECOMPUTE_EVERY:
                self._wake_sorted = sorted(self._wake)
                wake = _percentile(self._wake_sorted, LATENESS_PERCENTILE) if self._wake else 0.0
                trips = list(self._trip)
                spread = _percentile(trips, LATENESS_PERCENTILE) - min(trips) if trips else 0.0
                self._cached, self._added = (wake, spread), 0
                self.generation += 1
            return self._cached

    def wake_sorted(self) -> list[float]:
        """The recent wake-ups, sorted (as of the last computation)."""
        self._percentiles()
        return self._wake_sorted


class RateLimiter:
    """Paces the threads of one invocation on the shared bucket; `acquire` before every request,
    `finished` after it.

    Slots are claimed into a local reservoir and handed out earliest first. One thread at a time
    claims: for every thread waiting at that moment, and ahead for what this invocation has been
    using (its hand-outs over the last second × `claim_ahead_seconds`, at most `max_batch`), so a
    busy invocation makes one DynamoDB write per several requests instead of one each. A slot
    is only ever used on time: one that has passed by more than `wake_tolerance` is dropped from
    the reservoir, and a caller that wakes more than `wake_tolerance` after its slot gives it up
    and takes another, however often (module doc). What was claimed and not used is capacity
    the stack does not get back, which is why the reservoir follows the demand.

    `max_in_flight` (0: no cap) bounds this invocation's requests between `acquire` and
    `finished`; a caller takes its permit before its slot, so it never holds a slot waiting for one.
    """

    def __init__(
        self,
        bucket: SharedBucket,
        *,
        wake_tolerance: float | None = None,
        claim_ahead_seconds: float = CLAIM_AHEAD_SECONDS,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = 0,
        metric: MetricSink | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ):
        self._bucket = bucket
        self._clock = bucket.clock
        self._fixed_wake_tolerance = wake_tolerance
        self._tolerance_for: tuple[int, float] | None = None  # (meter generation, rate) it was chosen at
        self._tolerance = MIN_WAKE_TOLERANCE_SECONDS
        self.meter = LatenessMeter()
        self._claim_ahead = claim_ahead_seconds
        self._max_batch = max_batch
        self._lease = lease_seconds
        self._max_in_flight = max_in_flight
        self._in_flight = threading.BoundedSemaphore(max_in_flight) if max_in_flight > 0 else None
        # A thread's cycle: its slot -> its next acquire (the send, the answer, the row's own work)
        self._cycles: deque[float] = deque(maxlen=CYCLE_SAMPLES)
        self._last_by_thread: dict[int, tuple[float, float]] = {}  # thread -> (its last slot, asked at)
        # Slots before this are not sent on: a pause, or claimed before the stack stepped down
        self._void_until = float("-inf")
        self._decreases_seen: int | None = None
        self._tail = float("-inf")  # the last slot claimed
        self._paced_for: dict[float, float] = {}  # slot -> the lateness its claim's interval tolerates
        self._claim_end: str | None = None  # tat right after our last claim (give_back)
        self._view_lock = threading.Lock()
        self._metric = metric
        self._cond = threading.Condition()
        self._slots: deque[float] = deque()  # claimed, not handed out yet, in time order
        self._handed: deque[float] = deque()  # when slots were handed out, the last RATE_WINDOW
        self._waiters = 0
        # Callers waiting for a slot, lowest (order, ticket) first: a segment's rows take slots in
        # file order, so when it stops, the rows that give up their wait come after those that send.
        self._line: list[tuple[int, int]] = []
        self._tickets = itertools.count()
        self._claiming = False
        self._published_at = float("-inf")
        self._id = uuid.uuid4().hex[:12]  # names this invocation's published lateness
        self._forfeits_reported = 0
        self.claims = 0  # writes to the bucket
        self.leases = 0  # claims sized as a lease (a run of LEASE_SECONDS)
        self.given_back = 0  # slots returned to the stack unused (give_back)
        self.claimed = 0  # slots claimed
        self.expired = 0  # claimed ahead, never handed out in time
        self.forfeited = 0  # handed out, given up because the caller woke too late for it

    # -- the lateness the pacing tolerates ----------------------------------------------------

    @property
    def wake_tolerance(self) -> float:
        """How late a caller may wake after its slot and still send on it (later: the slot is
        forfeited); half the assumed lateness until measured. Measured: the recent wake-up
        (from the TOLERANCE_FROM_QUANTILE up, never under MIN_WAKE_TOLERANCE_SECONDS) that sends
        the most: a tolerance t keeps the share of wake-ups <= t and paces slots interval(t +
        trip spread + 1 ms) apart, so the rate sent is share / interval. A burst that absorbs
        lateness makes a larger t cheap (only the window's t/1 s); strict spacing pays t on
        every request and forfeits a few more instead. Whatever t, the pacing tolerates it."""
        if self._fixed_wake_tolerance is not None:
            return self._fixed_wake_tolerance
        if not self.meter.measured:
            return self._assumed / 2
        key = (self.meter.generation, self._bucket.rate())
        if self._tolerance_for != key:
            self._tolerance = self._best_tolerance(self.meter.wake_sorted())
            self._tolerance_for = key
        return self._tolerance

    def _best_tolerance(self, ordered: list[float]) -> float:
        trip = self.meter.trip_spread_p99() + CLOCK_GRANULARITY_SECONDS
        best, chosen = -1.0, MIN_WAKE_TOLERANCE_SECONDS
        for index in range(max(0, math.ceil(TOLERANCE_FROM_QUANTILE * len(ordered)) - 1), len(ordered)):
            tolerance = max(MIN_WAKE_TOLERANCE_SECONDS, ordered[index])
            kept = bisect.bisect_right(ordered, tolerance) / len(ordered)
            sent = kept / self._bucket.interval_for(tolerance + trip)
            if sent > best:
                best, chosen = sent, tolerance
        return chosen

    @property
    def _assumed(self) -> float:
        return self._bucket.assumed_lateness

    def own_lateness(self) -> float:
        """What a request of this invocation can lag its slot: the wake tolerance (enforced) plus
        the trip's measured spread and the API's clock granularity; the assumed lateness until
        measured."""
        if self.meter.measured:
            return self.wake_tolerance + self.meter.trip_spread_p99() + CLOCK_GRANULARITY_SECONDS
        return self._assumed

    def lateness(self) -> float:
        """The arrival lateness slots must tolerate: this invocation's own, never less than the
        one another invocation of the stack published lately."""
        return max(self.own_lateness(), self._bucket.shared_lateness(self._clock.now()))

    # -- callers ------------------------------------------------------------------------------

    def acquire(self, stop: threading.Event | None = None, order: int | None = None) -> float:
        """Block until this caller's slot; its time (epoch seconds). Interrupted once `stop` is set.

        Among callers waiting at once, a lower `order` (a row number) gets the earlier slot. With
        `max_in_flight`, the caller holds a permit from here until `finished`.
        """
        self._take_permit(stop)
        self._asked()
        try:
            while True:
                slot = self._take_slot(stop, order)
                if not self._still_good(slot, stop):
                    continue  # a pause or a step down since it was claimed: counted as expired
                asleep = self._clock.now()
                # A request handed out before its segment stopped still goes out on a slot that is
                # due (the segment's safety margin covers a second); a longer wait, a pause, is given
                # up. Slots go in row order, so the rows that give up come after those that send.
                sleep_until(self._clock, slot, stop, grace_seconds=STOPPED_GRACE_SECONDS)
                late = self._clock.now() - slot
                if asleep < slot:
                    # Only a real sleep measures the wake-up: a slot handed out due already is late
                    # by at most the tolerance by construction, and counting it would ratchet the
                    # tolerance up on its own samples.
                    self.meter.woke(late)
                if late <= self._wake_budget(slot):
                    self._handed_out(slot)
                    return slot
                # Woken too late: sending now could bunch with the next callers' arrivals. The slot
                # is given up, however often; the caller's stop event still ends the wait.
                with self._cond:
                    self.forfeited += 1
        except BaseException:
            self._release_permit()
            raise

    def finished(self, sent_at: float, arrived_by: float | None) -> None:
        """The request sent at `sent_at` had arrived by `arrived_by` (its first byte back, less the
        API's declared time; None: no answer, a timeout or a connection error): its trip is
        measured, its permit returned."""
        if arrived_by is not None:
            self.meter.answered(arrived_by - sent_at)
        self._release_permit()

    def throttled(self, slot: float, retry_after: float | None = None) -> float:
        """The request sent on `slot` was answered 429: the stack steps down and pauses (one or
        two writes to the shared item); when the row may be sent again."""
        before = self._bucket.decreases
        until = self._bucket.throttled(slot, retry_after)
        self._drop_before(until)
        if self._bucket.decreases > before:
            self._emit(RATE_DECREASE_METRIC, MetricUnit.Count, 1)
            self._emit(PACED_RATE_METRIC, MetricUnit.CountPerSecond, round(self._bucket.rate(), 3))
        return until

    def pause(self, until: float) -> None:
        """Nobody in the stack sends before `until` (a Retry-After): one write to the shared item."""
        self._bucket.pause(until)
        self._drop_before(until)

    def give_back(self) -> None:
        """This invocation has nothing more to send for now (its segment ended): the slots it
        holds go back to the stack when nobody claimed after them, so a lease's unused end is
        not lost (one write; none when nothing is held or others claimed after)."""
        with self._cond:
            if not self._slots or self._claim_end is None or self._waiters:
                return
            held, end = list(self._slots), self._claim_end
            self._slots.clear()
        first = max(held[0], self._clock.now())
        if self._bucket.give_back(first, end):
            self.given_back += len(held)
        else:  # others claimed after them: still ours, and sent on if a caller comes in time
            with self._cond:
                self._slots.extendleft(reversed(held))

    def _drop_before(self, until: float) -> None:
        with self._cond:
            self._void_until = max(self._void_until, until)
            while self._slots and self._slots[0] < until:
                self._slots.popleft()
                self.expired += 1

    # -- leases -------------------------------------------------------------------------------

    def _wake_budget(self, slot: float) -> float:
        """How late a caller may wake for `slot`: the wake tolerance, and never more than what the
        slot's claim paced for less the trip's part of it. The measured lateness moves between a
        claim and its slots; an arrival must stay within what its slot's spacing allowed for."""
        tolerance = self.wake_tolerance
        with self._cond:
            paced_for = self._paced_for.get(slot)
        if paced_for is None:
            return tolerance
        trip = (
            self.meter.trip_spread_p99() + CLOCK_GRANULARITY_SECONDS
            if self.meter.measured
            else self._assumed / 2
        )
        return min(tolerance, max(0.0, paced_for - trip))

    def _asked(self) -> None:
        """A thread asks for a slot: the time since its last slot is one sample of its cycle."""
        now, me = self._clock.now(), threading.get_ident()
        with self._cond:
            last = self._last_by_thread.get(me)
            if last is not None and now - last[0] < ACTIVE_THREAD_SECONDS:
                self._cycles.append(max(0.0, now - last[0]))
            self._last_by_thread[me] = (last[0] if last else float("-inf"), now)

    def _handed_out(self, slot: float) -> None:
        me = threading.get_ident()
        with self._cond:
            self._last_by_thread[me] = (slot, self._last_by_thread.get(me, (slot, slot))[1])

    def _senders(self, now: float) -> int:
        """Threads that asked for a slot lately, within the in-flight cap."""
        active = sum(1 for _, asked in self._last_by_thread.values() if now - asked < ACTIVE_THREAD_SECONDS)
        return min(active, self._max_in_flight) if self._max_in_flight else active

    def _lease_slots(self, now: float, interval: float) -> int:
        """Slots of a lease (0: none): LEASE_SECONDS of consecutive slots, if this invocation's
        threads can fill them. Each thread comes back for a slot one cycle after its last; the
        senders keep up with slots `interval` apart when the p90 cycle is within senders × interval.
        Otherwise consecutive slots would go by unused (expired), and the claim follows the use."""
        if self._lease <= 0 or len(self._cycles) < MIN_CYCLE_SAMPLES:
            return 0
        if _percentile(list(self._cycles), 0.9) > self._senders(now) * interval:
            return 0
        return min(self._max_batch, max(1, math.floor(self._lease / interval)))

    def _still_good(self, slot: float, stop: threading.Event | None) -> bool:
        """Whether the slot may still be sent on. When our view of the item would be older than
        VIEW_FRESH_SECONDS at the slot, the item is looked at (one consistent read) half that
        before it, so another invocation's pause or step down reaches this one before it sends
        on a slot that voids. Before the slot, not between the wake-up and the send: a read
        there would make the arrival late by its round trip."""
        look = slot - VIEW_FRESH_SECONDS / 2
        if max(slot, self._clock.now()) - self._bucket.viewed_at > VIEW_FRESH_SECONDS:
            sleep_until(self._clock, look, stop, grace_seconds=STOPPED_GRACE_SECONDS)
            with self._view_lock:  # one look for the threads of this invocation
                if self._clock.now() - self._bucket.viewed_at > VIEW_FRESH_SECONDS / 2:
                    self._bucket.refresh()
        with self._cond:
            self._apply_view()
            if slot >= self._void_until:
                return True
            self.expired += 1
            return False

    def _apply_view(self) -> None:
        """Called holding the lock: drop the slots the item's state voids (a pause; a step down
        since they were claimed at the old rate)."""
        decreases = self._bucket.stack_decreases()
        if self._decreases_seen is not None and decreases > self._decreases_seen:
            self._void_until = max(self._void_until, self._tail + 1e-6)
        self._decreases_seen = decreases
        self._void_until = max(self._void_until, self._bucket.paused_until())
        while self._slots and self._slots[0] < self._void_until:
            self._slots.popleft()
            self.expired += 1

    def _take_permit(self, stop: threading.Event | None) -> None:
        if self._in_flight is None:
            return
        while not self._in_flight.acquire(timeout=WAIT_TICK_SECONDS):
            if stop is not None and stop.is_set():
                raise Interrupted("stopped while waiting for a request in flight to end")

    def _release_permit(self) -> None:
        if self._in_flight is not None:
            # finished() without a permit (a caller outside acquire) holds nothing to return
            with contextlib.suppress(ValueError):
                self._in_flight.release()

    def _take_slot(self, stop: threading.Event | None = None, order: int | None = None) -> float:
        """The next slot, to the waiting caller with the lowest `order` first (then first come)."""
        with self._cond:
            me = (0 if order is None else order, next(self._tickets))
            heapq.heappush(self._line, me)
            self._waiters += 1
            try:
                while True:
                    now = self._clock.now()
                    tolerance = self.wake_tolerance
                    while self._slots and now - self._slots[0] > tolerance:
                        self._slots.popleft()
                        self.expired += 1
                    if self._slots and self._line[0] == me:
                        heapq.heappop(self._line)
                        self._handed.append(now)
                        self._cond.notify_all()  # the next in line takes the next slot
                        return self._slots.popleft()
                    if self._claiming or len(self._slots) >= len(self._line):
                        self._cond.wait(WAIT_TICK_SECONDS)
                    else:
                        # More callers waiting than slots held: claim now, not once the reservoir
                        # is empty, so the claim's round trip does not leave a gap of unused slots.
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
        lease = self._lease_slots(now, self._bucket.interval)
        count = max(self._waiters - len(self._slots), lease or min(self._max_batch, demand))
        own, shared = self.own_lateness(), self._bucket.shared_lateness(now)
        lateness = max(own, shared)
        self._bucket.lateness = lateness
        # Its own lateness, not the max it paces for (that would keep a stall's value alive for
        # ever); and not over a larger fresh one of another invocation, which keeps it until it
        # lowers it itself or stops publishing (SHARED_FRESH_SECONDS).
        mine = self._bucket.shared.get("lateness_by") == self._id
        due = self.meter.measured and now - self._published_at >= PUBLISH_SECONDS
        publish = own if due and (own >= shared or mine) else None
        self._claiming = True
        self._cond.release()
        try:
            start = self._bucket.claim(count, stop, publish=publish, publisher=self._id)
        finally:
            self._cond.acquire()
            self._claiming = False
            self._cond.notify_all()
        self.claims += 1
        self.leases += bool(lease) and count == lease
        interval = self._bucket.last_interval
        self._apply_view()  # before the new slots: a step down voids those claimed at the old rate
        new = [start + index * interval for index in range(count)]
        self.claimed += count
        self._slots.extend(new)
        self._tail = max(self._tail, new[-1])
        # what these slots' spacing tolerates: their wake-up may not use more of it than is left
        for old in [slot for slot in self._paced_for if slot < now - ACTIVE_THREAD_SECONDS]:
            del self._paced_for[old]
        self._paced_for.update(dict.fromkeys(new, lateness))
        self._claim_end = self._bucket.last_tat
        if due:
            self._published_at = now
            self._report(lateness)

    def _report(self, lateness: float) -> None:
        """The pacing's state, every PUBLISH_SECONDS: the rate, the lateness and what it is made of."""
        self._emit(PACED_RATE_METRIC, MetricUnit.CountPerSecond, round(self._bucket.rate(), 3))
        self._emit(PACING_LATENESS_METRIC, MetricUnit.Milliseconds, round(lateness * 1000, 2))
        self._emit(WAKE_LATENESS_METRIC, MetricUnit.Milliseconds, round(self.meter.wake_p99() * 1000, 2))
        self._emit(TRIP_SPREAD_METRIC, MetricUnit.Milliseconds, round(self.meter.trip_spread_p99() * 1000, 2))
        forfeits, self._forfeits_reported = self.forfeited - self._forfeits_reported, self.forfeited
        self._emit(FORFEIT_METRIC, MetricUnit.Count, forfeits)

    def _emit(self, name: str, unit: MetricUnit, value: float) -> None:
        if self._metric is not None:
            self._metric(name, unit, value)

    def stats(self) -> dict[str, float]:
        """What the pacing uses now (for a bench or a log line)."""
        return {
            "rate": round(self._bucket.rate(), 3),
            "interval_ms": round(self._bucket.interval * 1000, 3),
            "lateness_ms": round(self.lateness() * 1000, 3),
            "wake_tolerance_ms": round(self.wake_tolerance * 1000, 3),
            "wake_p99_ms": round(self.meter.wake_p99() * 1000, 3),
            "trip_spread_p99_ms": round(self.meter.trip_spread_p99() * 1000, 3),
            "forfeited": self.forfeited,
            "expired": self.expired,
            "claims": self.claims,
            "leases": self.leases,
            "given_back": self.given_back,
            "claimed": self.claimed,
            "reads": self._bucket.reads,
            "decreases": self._bucket.decreases,
        }


def shared_limiter(
    table: Any,
    *,
    limit: float | None = None,
    policy: ApiPolicy | None = None,
    lateness_seconds: float = DEFAULT_LATENESS_SECONDS,
    clock: Clock | None = None,
    max_in_flight: int = 0,
    metric: MetricSink | None = None,
) -> RateLimiter:
    """A limiter for one invocation, on the stack's bucket in `table` (the ControlTable).

    `policy` (rate and burst) as the API documents it; `limit` alone: an API that counts per
    one-second window only (no token bucket to respect beyond it)."""
    bucket = SharedBucket(
        table,
        limit=limit,
        policy=policy,
        lateness_seconds=lateness_seconds,
        clock=clock,
    )
    return RateLimiter(bucket, max_in_flight=max_in_flight, metric=metric)
