"""The downstream's health, shared by the whole stack: a circuit breaker in the ControlTable (seed 003).

Some answers say nothing about the row and everything about the API: 401/403 (the credential
expired), 404/405/410 (the route moved), or every request failing with 5xx or no connection.
Rejecting rows for these would finish files with every row rejected; failing them would spend
SQS receives until the backlog sits in the DLQ. So they mark the downstream *unhealthy* instead,
for every invocation at once, and rows simply wait.

Item `pk = "health#downstream"` beside the rate limiter's (ratelimit.py):

    state       "closed" (healthy; also when the item is absent) or "open" (unhealthy)
    reason      what opened it, e.g. "api 401: {...}"
    opened_at   epoch seconds
    probe_at    epoch seconds: the next probe may be sent from then on
    backoff     seconds until the probe after the next one (doubles, at most probe_max_seconds)

Transitions, each one conditional UpdateItem, so exactly one invocation makes each of them:

    closed --(systemic 4xx; `failure_threshold` failed attempts in a row over >= 2 rows; or a row
              using up its attempts while other rows fail too)--> open
    open   --(claim: probe_at <= now, probe_at unchanged since read)--> open, probe_at += backoff
    open   --(the claimed probe is answered by the API: 2xx or a row's own 4xx)--> closed

The invocation whose write opened or closed the breaker publishes it (`notify`: AlertTopic), so
each transition is announced once. While open, every request waits in `admit` (the stop event
ends the wait) except the single one whose invocation claimed the probe: half-open is "one
request at a time, stack-wide, every `backoff` seconds". A probe that fails leaves it open; the
next probe is already scheduled by the claim.

Each invocation reads the item at most every `refresh_seconds` (one strongly consistent read),
so the others learn of a transition within that; the invocation that makes it knows at once.
"""

import json
import threading
from collections.abc import Callable
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sluice.alerting import DownstreamNotice
from sluice.observability import MetricUnit, logger
from sluice.ratelimit import WAIT_TICK_SECONDS, Clock, Interrupted, SystemClock, _micros
from sluice.settings import ProcessSettings

HEALTH_KEY = "health#downstream"
# Answers that say the API (its credential, its route), not the row, is wrong.
SYSTEMIC_STATUSES = frozenset({401, 403, 404, 405, 410})
UNHEALTHY_METRIC = "DownstreamUnhealthy"  # 1 when opened or a probe failed, 0 when closed
DEFAULT_FAILURE_THRESHOLD = 8
DEFAULT_PROBE_SECONDS = 5.0
DEFAULT_PROBE_MAX_SECONDS = 60.0
DEFAULT_REFRESH_SECONDS = 1.0

Notify = Callable[[str, dict[str, Any]], None]  # (subject, message) -> publish
MetricSink = Callable[[str, MetricUnit, float], None]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class DownstreamHealth:
    """One invocation's view of the shared breaker; thread-safe (its worker threads share it)."""

    def __init__(
        self,
        table: Any,
        *,
        clock: Clock | None = None,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        probe_seconds: float = DEFAULT_PROBE_SECONDS,
        probe_max_seconds: float = DEFAULT_PROBE_MAX_SECONDS,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        notify: Notify | None = None,
        metric: MetricSink | None = None,
        key: str = HEALTH_KEY,
    ):
        self.clock = clock or SystemClock()
        self._table = table
        self._conflict = table.meta.client.exceptions.ConditionalCheckFailedException
        self._key = {"pk": key}
        self._threshold = failure_threshold
        self._probe_seconds = probe_seconds
        self._probe_max = max(probe_max_seconds, probe_seconds)
        self._refresh_seconds = refresh_seconds
        self._notify = notify
        self._metric = metric
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # wakes every waiter when it closes
        self._item: dict[str, Any] = {}
        self._read_at = float("-inf")
        self._streak = 0  # failed attempts since the last answer from the API
        self._streak_keys: set[str] = set()
        self.transitions = 0  # opened or closed by this invocation
        self._pending: list[tuple[str, dict[str, Any]]] = []  # transitions to announce

    # -- what the client asks -------------------------------------------------------------

    def is_open(self) -> bool:
        with self._lock:
            self._refresh_if_stale()
            return self._item.get("state") == BreakerState.OPEN

    @property
    def seen_open(self) -> bool:
        """What this invocation last saw, without waiting for the lock or DynamoDB (for the reader)."""
        return self._item.get("state") == BreakerState.OPEN

    def admit(self, stop: threading.Event | None = None) -> bool:
        """Return when a request may go out: False when healthy, True when it is the probe.

        While open and not our turn to probe, waits (re-reading the item every refresh_seconds);
        ratelimit.Interrupted once `stop` is set.
        """
        with self._lock:
            while True:
                self._refresh_if_stale()
                if self._item.get("state") != BreakerState.OPEN:
                    return False
                if stop is not None and stop.is_set():
                    raise Interrupted("stopped while the downstream is unhealthy")
                now = self.clock.now()
                probe_at = float(self._item.get("probe_at", 0))
                if now >= probe_at and self._claim_probe(now):
                    return True
                wake = min(max(probe_at, now + 0.001), now + self._refresh_seconds)
                if isinstance(self.clock, SystemClock):
                    # Woken at once when this invocation sees it close; the stop is looked at each tick.
                    self._changed.wait(min(wake - now, WAIT_TICK_SECONDS))
                else:  # a test clock moves only when slept on
                    self.clock.sleep_until(min(wake, now + WAIT_TICK_SECONDS))

    def answered(self, *, probe: bool) -> None:
        """The API answered as an API does (2xx, or a 4xx about the row): healthy."""
        with self._lock:
            self._streak = 0
            self._streak_keys.clear()
            if probe or self._item.get("state") == BreakerState.OPEN:
                self._close()
        self._announce()

    def refused(self, problem: str) -> None:
        """A systemic 4xx: the downstream is unhealthy now."""
        with self._lock:
            self._open(problem)
        self._announce()

    def failed(self, problem: str, key: str, *, probe: bool) -> bool:
        """A 5xx, timeout or connection error; True when the breaker is open (the attempt does
        not count against the row: it waits for the downstream instead)."""
        with self._lock:
            self._streak += 1
            self._streak_keys.add(key)
            if probe:
                self._emit(1)  # still down; the next probe was scheduled by the claim
            elif self._streak >= self._threshold and len(self._streak_keys) >= 2:
                self._open(f"{self._streak} failed attempts in a row, the last: {problem}")
            else:
                self._refresh_if_stale()
            is_open = self._item.get("state") == BreakerState.OPEN
        self._announce()
        return is_open

    def gave_up(self, problem: str) -> bool:
        """A row used up its attempts. With other rows failing since the last answer too, that is
        an outage, not the row: open (True) and the row waits. Alone, the row fails (False)."""
        with self._lock:
            if len(self._streak_keys) >= 2:
                self._open(
                    f"a row failed {problem}; {self._streak} failed attempts in a row over several rows"
                )
            else:
                self._refresh_if_stale()
            is_open = self._item.get("state") == BreakerState.OPEN
        self._announce()
        return is_open

    def _announce(self) -> None:
        """Publish the transitions this invocation made, outside the lock: a slow SNS call must
        not hold up the other threads (nor the reader, nor the segment's deadline)."""
        while self._notify is not None:
            try:
                subject, message = self._pending.pop(0)  # atomic: each one is published once
            except IndexError:
                return
            try:
                self._notify(subject, message)
            except Exception:  # an alert that cannot be sent must not stop delivery
                logger.exception("could not publish the downstream health alert")

    # -- the item (called holding the lock) ------------------------------------------------

    def _refresh_if_stale(self) -> None:
        if self.clock.now() - self._read_at >= self._refresh_seconds:
            self._read()

    def _read(self) -> None:
        self._item = self._table.get_item(Key=self._key, ConsistentRead=True).get("Item", {})
        self._read_at = self.clock.now()
        if self._item.get("state") != BreakerState.OPEN:
            self._changed.notify_all()

    def _open(self, reason: str) -> None:
        now = self.clock.now()
        values = {
            ":open": BreakerState.OPEN.value,
            ":closed": BreakerState.CLOSED.value,
            ":now": Decimal(_micros(now)),
            ":probe_at": Decimal(_micros(now + self._probe_seconds)),
            ":backoff": Decimal(_micros(min(self._probe_max, 2 * self._probe_seconds))),
            ":reason": reason[:500],
        }
        update = (
            "SET #s = :open, opened_at = :now, probe_at = :probe_at, backoff = :backoff, reason = :reason"
        )
        if self._write(update, "attribute_not_exists(#s) OR #s = :closed", values):
            self._transition(BreakerState.OPEN, reason, now)

    def _claim_probe(self, now: float) -> bool:
        seen_probe_at = self._item.get("probe_at", Decimal(0))
        backoff = float(self._item.get("backoff", self._probe_seconds))
        values = {
            ":open": BreakerState.OPEN.value,
            ":seen": seen_probe_at,
            ":next": Decimal(_micros(now + backoff)),
            ":backoff": Decimal(_micros(min(self._probe_max, 2 * backoff))),
        }
        condition = "#s = :open AND probe_at = :seen"
        return self._write("SET probe_at = :next, backoff = :backoff", condition, values)

    def _close(self) -> None:
        now = self.clock.now()
        values = {
            ":open": BreakerState.OPEN.value,
            ":closed": BreakerState.CLOSED.value,
            ":now": Decimal(_micros(now)),
        }
        update = "SET #s = :closed, closed_at = :now REMOVE probe_at, backoff"
        if self._write(update, "#s = :open", values):
            self._transition(BreakerState.CLOSED, str(self._item.get("reason", "")), now)
        self._changed.notify_all()

    def _write(self, update: str, condition: str, values: dict[str, Any]) -> bool:
        """One conditional UpdateItem; our view of the item afterwards is what it holds."""
        try:
            answer = self._table.update_item(
                Key=self._key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except self._conflict:
            self._read()  # someone else moved it: take their view
            return False
        self._item = dict(answer.get("Attributes", {}))
        self._read_at = self.clock.now()
        return True

    def _transition(self, state: BreakerState, reason: str, now: float) -> None:
        self.transitions += 1
        self._emit(1 if state == BreakerState.OPEN else 0)
        opened = state == BreakerState.OPEN
        logger.warning(
            "downstream unhealthy: delivery paused stack-wide" if opened else "downstream recovered",
            extra={"breaker": state.value, "reason": reason},
        )
        notice = DownstreamNotice.model_validate(
            {
                "event": f"downstream.{'unhealthy' if opened else 'recovered'}",
                "reason": reason,
                "at": round(now, 3),
            }
        )
        self._pending.append((notice.subject, notice.model_dump()))

    def _emit(self, value: float) -> None:
        if self._metric is not None:
            self._metric(UNHEALTHY_METRIC, MetricUnit.Count, value)


def breaker_open(table: Any, key: str = HEALTH_KEY) -> bool:
    """Whether the breaker is open now (one strongly consistent read), for a reader that takes no
    part in it: ScaleConcurrency keeps the dispatcher at its minimum while it is (scaling.py)."""
    item = table.get_item(Key={"pk": key}, ConsistentRead=True).get("Item", {})
    return item.get("state") == BreakerState.OPEN


def health_from_settings(
    settings: ProcessSettings, control_table: Any, *, sns_client: Any = None, metric: MetricSink | None = None
) -> DownstreamHealth:
    """ProcessObject's view of the breaker in `control_table`, announcing transitions on
    ALERT_TOPIC_ARN through `sns_client` (AlertNotifier turns them into emails)."""
    notify: Notify | None = None
    if settings.alert_topic_arn and sns_client is not None:
        topic = settings.alert_topic_arn

        def notify(subject: str, message: dict[str, Any]) -> None:
            sns_client.publish(TopicArn=topic, Subject=subject, Message=json.dumps(message))

    return DownstreamHealth(
        control_table,
        failure_threshold=settings.downstream_failure_threshold,
        probe_seconds=settings.downstream_probe_seconds,
        probe_max_seconds=settings.downstream_probe_max_seconds,
        notify=notify,
        metric=metric,
    )
