"""Concurrency that follows the queue: how many files the dispatcher works on at once.

ScaleConcurrency runs every minute. It observes

* the backlog: IngestQueue's visible plus in-flight messages (SQS GetQueueAttributes), the files
  not finished yet;
* how late we are: the age of the oldest message (CloudWatch AWS/SQS ApproximateAgeOfOldestMessage);
* the downstream's breaker (sluice/health.py, ControlTable item `health#downstream`): open means
  ProcessObject's rows wait for the API and one probe at a time tests it;
* the downstream's health since the last change (CloudWatch, the `Sluice` namespace, dimension
  `service`): ApiThrottles (429 answers), ApiRetries (every retried attempt: 429, 5xx, timeout,
  connection error) and RowsDelivered, all emitted by ProcessObject. Errors are the retries that
  were not throttles; attempts are rows delivered plus retries;

and sets ConcurrencyParameter, the Map concurrency the dispatcher reads, with `decide`. The first
rule that matches wins (docs/scaling.md has the worked table):

1. *unreadable* or *out-of-bounds*: the value is not an integer within min..max → clamp it at once.
   *downstream-unhealthy*: the breaker is open → the minimum at once, whatever the queue says:
   one file is enough to carry the probe, and every other file would hold a dispatcher slot (and
   its segments) waiting for an API that is not there. Once it closes, the rules below resume
   (the step cooldown counts from the drop, as from any change).
2. *idle*: nothing visible, nothing in flight → the minimum at once; nothing runs, nothing to protect.
3. *throttled*: at least `min_attempts` attempts and throttles/attempts ≥ `throttle_decrease_ratio`
   → multiply by `throttle_decrease_factor` (halve), once `backoff_cooldown_seconds` have passed
   since the last change (what we measure is then the current setting's doing).
4. *errors*: errors/attempts ≥ `error_decrease_ratio` → multiply by `error_decrease_factor`. A
   downstream answering 5xx or timing out is sick, and less load is what helps it recover; but 5xx
   may have nothing to do with load, so the cut is gentler than for a 429.
5. The target is ceil(backlog / `files_per_worker`) within min..max, and never above the useful
   concurrency, ceil(`api_rate_limit` × the API's mean latency ÷ `api_concurrency`) invocations
   (issue 14): that many, each with `api_concurrency` requests in flight, already use the whole
   rate; another one would only wait for rate slots, billed. Above the current setting:
   *unhealthy* (any throttle, or errors ≥ `error_hold_ratio`) or *saturated* (attempts/s already at
   `saturation_ratio` of the stack's API rate limit, so more workers would only queue on the rate
   limiter) or *cooldown* (less than `step_cooldown_seconds` since the last change) → hold;
   else *backlog*: add max(`max_step_up`, `step_up_ratio` × current), times `age_boost_factor`
   when the oldest message is `age_boost_seconds` old (*backlog-late*), never past the target.
6. *drained*: the target is more than `down_hysteresis` below the setting → after the cooldown,
   remove max(`max_step_down`, `step_down_ratio` × current), never below the target.
7. *on-target*: hold.

This is additive increase (with a step that grows with the setting, so a large stack does not take
an hour to ramp) and multiplicative decrease. The API rate limiter already caps requests per
second stack-wide; concurrency decides how many files are worked on at once, which helps while the
API is latency-bound, and throttles or errors mean we are over what the downstream can take.

State: the only state is the parameter itself. Its LastModifiedDate (GetParameter returns it, on AWS
and on moto) is the time of the last change, which drives both cooldowns and the health window, so
there is no second item to keep consistent and nothing to read but the one parameter. A duplicate
scheduled invocation observes the same things and writes the same value.
"""

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from aws_lambda_powertools.metrics import single_metric
from botocore.client import BaseClient

from sluice.health import breaker_open
from sluice.observability import MetricUnit, logger, metrics
from sluice.settings import ScaleSettings

PERIOD_SECONDS = 60  # CloudWatch's standard resolution; SQS publishes its metrics every minute
# SQS metrics reach CloudWatch a minute or two late; an older datapoint says nothing about now.
AGE_LOOKBACK_SECONDS = 300
QUEUE_DEPTH_ATTRIBUTES = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
# The health of a stack with nothing queued or in flight, without asking CloudWatch.
IDLE_HEALTH = {
    "delivered": 0,
    "retries": 0,
    "throttles": 0,
    "attempt_rate": 0.0,
    "oldest_age_seconds": None,
    "api_latency_seconds": None,
}


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


class Reason(StrEnum):
    UNREADABLE = "unreadable"
    DOWNSTREAM_UNHEALTHY = "downstream-unhealthy"
    OUT_OF_BOUNDS = "out-of-bounds"
    IDLE = "idle"
    THROTTLED = "throttled"
    ERRORS = "errors"
    UNHEALTHY = "unhealthy"
    SATURATED = "saturated"
    COOLDOWN = "cooldown"
    BACKLOG = "backlog"
    BACKLOG_LATE = "backlog-late"
    DRAINED = "drained"
    ON_TARGET = "on-target"


@dataclass(frozen=True)
class Observation:
    """What one run saw. Counts cover the time since the last change (at most the health window)."""

    current: int | None  # the parameter's value; None when it is not an integer
    visible: int
    in_flight: int
    oldest_age_seconds: float | None = None  # None: no datapoint (offline, or a queue idle for long)
    delivered: float = 0.0
    retries: float = 0.0
    throttles: float = 0.0
    attempt_rate: float = 0.0  # API attempts per second over the same time
    api_latency_seconds: float | None = None  # mean answer time over the same time; None: no data
    seconds_since_change: float | None = None  # None: unknown, as if long ago
    downstream_unhealthy: bool = False  # the breaker is open (health.breaker_open)

    @property
    def backlog(self) -> int:
        return self.visible + self.in_flight

    @property
    def attempts(self) -> float:
        return self.delivered + self.retries

    @property
    def errors(self) -> float:
        """Retries that were not throttles: 5xx, timeouts, connection errors."""
        return max(0.0, self.retries - self.throttles)

    @property
    def throttle_ratio(self) -> float:
        # A row that exhausted its attempts on 429s was throttled more often than retried.
        return self.throttles / max(self.attempts, self.throttles) if self.throttles else 0.0

    @property
    def error_ratio(self) -> float:
        return self.errors / self.attempts if self.attempts else 0.0

    def as_log(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "backlog": self.backlog,
            "attempts": self.attempts,
            "errors": self.errors,
            "throttle_ratio": round(self.throttle_ratio, 4),
            "error_ratio": round(self.error_ratio, 4),
        }


@dataclass(frozen=True)
class Decision:
    old: int | None
    new: int
    target: int
    reason: Reason
    detail: str

    @property
    def direction(self) -> Direction:
        if self.new == self.old:
            return Direction.HOLD
        return Direction.UP if self.old is not None and self.new > self.old else Direction.DOWN

    def as_payload(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "target": self.target,
            "direction": self.direction.value,
            "reason": self.reason.value,
            "detail": self.detail,
        }


def decide(seen: Observation, policy: ScaleSettings) -> Decision:
    """The new concurrency setting: a pure function of what was observed and the policy's knobs."""
    low, high = policy.concurrency_min, policy.concurrency_max
    wanted = math.ceil(seen.backlog / policy.files_per_worker)
    cap = useful(seen, policy)
    target = _clamp(wanted if cap is None else min(wanted, cap), low, high)
    if seen.current is None:
        detail = "the parameter is not an integer: reset to the minimum"
        return Decision(old=None, new=low, target=target, reason=Reason.UNREADABLE, detail=detail)
    since = math.inf if seen.seconds_since_change is None else seen.seconds_since_change
    case = _Case(seen=seen, policy=policy, current=seen.current, target=target, since=since)
    for rule in (_downstream_unhealthy, _out_of_bounds, _idle, _back_off, _step_up, _drain):
        decision = rule(case)
        if decision is not None:
            return decision
    return case.hold(Reason.ON_TARGET, f"backlog {seen.backlog}, target {target}")


def useful(seen: Observation, policy: ScaleSettings) -> int | None:
    """Invocations the rate can use: rate × latency ÷ requests in flight per invocation (None: unknown)."""
    if not policy.api_rate_limit or not seen.api_latency_seconds:
        return None
    return math.ceil(policy.api_rate_limit * seen.api_latency_seconds / policy.api_concurrency)


@dataclass(frozen=True)
class _Case:
    """One decision's inputs, as the rules below read them."""

    seen: Observation
    policy: ScaleSettings
    current: int
    target: int
    since: float  # seconds since the last change

    def to(self, new: int, reason: Reason, detail: str) -> Decision:
        return Decision(old=self.current, new=new, target=self.target, reason=reason, detail=detail)

    def hold(self, reason: Reason, detail: str) -> Decision:
        return self.to(self.current, reason, detail)


def _downstream_unhealthy(case: _Case) -> Decision | None:
    if not case.seen.downstream_unhealthy:
        return None
    detail = f"the downstream's breaker is open: one file carries the probe (backlog {case.seen.backlog})"
    return case.to(case.policy.concurrency_min, Reason.DOWNSTREAM_UNHEALTHY, detail)


def _out_of_bounds(case: _Case) -> Decision | None:
    low, high = case.policy.concurrency_min, case.policy.concurrency_max
    if low <= case.current <= high:
        return None
    return case.to(
        _clamp(case.current, low, high), Reason.OUT_OF_BOUNDS, f"{case.current} is outside {low}..{high}"
    )


def _idle(case: _Case) -> Decision | None:
    if case.seen.backlog:
        return None
    return case.to(case.policy.concurrency_min, Reason.IDLE, "queue empty, nothing in flight")


def _back_off(case: _Case) -> Decision | None:
    seen, policy = case.seen, case.policy
    if seen.attempts < policy.min_attempts:
        return None  # too few attempts for a ratio to mean anything (_step_up still holds on them)
    for ratio, limit, factor, reason in (
        (
            seen.throttle_ratio,
            policy.throttle_decrease_ratio,
            policy.throttle_decrease_factor,
            Reason.THROTTLED,
        ),
        (seen.error_ratio, policy.error_decrease_ratio, policy.error_decrease_factor, Reason.ERRORS),
    ):
        if ratio >= limit:
            why = f"{reason} {ratio:.1%} of {seen.attempts:.0f} attempts (limit {limit:.0%})"
            if case.since < policy.backoff_cooldown_seconds:
                return case.hold(reason, f"{why}; cooling down, {case.since:.0f}s since the last change")
            return case.to(
                max(policy.concurrency_min, math.floor(case.current * factor)), reason, f"{why}: x{factor:g}"
            )
    return None


def _step_up(case: _Case) -> Decision | None:
    seen, policy, current, target = case.seen, case.policy, case.current, case.target
    if target <= current:
        return None
    if seen.throttles > 0 or (seen.attempts and seen.error_ratio >= policy.error_hold_ratio):
        return case.hold(
            Reason.UNHEALTHY,
            f"target {target}, but {seen.throttles:.0f} throttles and {seen.errors:.0f} errors "
            f"in {seen.attempts:.0f} attempts",
        )
    saturation = policy.saturation_ratio * policy.api_rate_limit
    if policy.api_rate_limit and seen.attempt_rate >= saturation:
        return case.hold(
            Reason.SATURATED,
            f"target {target}, but {seen.attempt_rate:.1f} attempts/s already reach {saturation:.1f}/s",
        )
    if case.since < policy.step_cooldown_seconds:
        return case.hold(Reason.COOLDOWN, f"target {target}; {case.since:.0f}s since the last change")
    step = max(policy.max_step_up, math.ceil(current * policy.step_up_ratio))
    late = seen.oldest_age_seconds is not None and seen.oldest_age_seconds >= policy.age_boost_seconds
    if late:
        step = math.ceil(step * policy.age_boost_factor)
    detail = f"backlog {seen.backlog}, target {target}, step {step}"
    return case.to(min(target, current + step), Reason.BACKLOG_LATE if late else Reason.BACKLOG, detail)


def _drain(case: _Case) -> Decision | None:
    policy, current, target = case.policy, case.current, case.target
    if current - target <= policy.down_hysteresis:
        return None
    if case.since < policy.step_cooldown_seconds:
        return case.hold(Reason.COOLDOWN, f"target {target}; {case.since:.0f}s since the last change")
    step = max(policy.max_step_down, math.ceil(current * policy.step_down_ratio))
    return case.to(
        max(target, current - step), Reason.DRAINED, f"backlog {case.seen.backlog}, target {target}"
    )


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


class ConcurrencyScaler:
    """One scheduled run: observe, decide, write the parameter, log and count the decision.

    The boto3 clients and the ControlTable resource are passed in (created once per cold start by
    the handler, or by a test under moto). The clock is the caller's: `run(now)`.
    """

    def __init__(
        self,
        settings: ScaleSettings,
        *,
        ssm: BaseClient,
        sqs: BaseClient,
        cloudwatch: BaseClient,
        control: Any,
    ):
        self._settings = settings
        self._ssm = ssm
        self._sqs = sqs
        self._cloudwatch = cloudwatch
        self._control = control  # ControlTable (a boto3 Table resource): the breaker's item

    def run(self, now: datetime) -> Decision:
        seen = self.observe(now)
        decision = decide(seen, self._settings)
        if decision.new != seen.current:
            # Powertools' parameters utility caches reads and does not return LastModifiedDate,
            # which is the state the policy runs on: plain boto3 here.
            self._ssm.put_parameter(
                Name=self._settings.concurrency_parameter,
                Value=str(decision.new),
                Type="String",
                Overwrite=True,
            )
        record(decision, seen)
        return decision

    def observe(self, now: datetime) -> Observation:
        parameter = self._ssm.get_parameter(Name=self._settings.concurrency_parameter)["Parameter"]
        changed_at: datetime | None = parameter.get("LastModifiedDate")
        depth = self._sqs.get_queue_attributes(
            QueueUrl=self._settings.ingest_queue_url, AttributeNames=QUEUE_DEPTH_ATTRIBUTES
        )["Attributes"]
        visible = int(depth.get("ApproximateNumberOfMessages", 0))
        in_flight = int(depth.get("ApproximateNumberOfMessagesNotVisible", 0))
        # Idle, no rule reads the health (rules 1 and 2 decide): no GetMetricData, which is what an
        # idle minute would otherwise cost most (4 metrics; docs/performance.md, Fixed cost).
        health = self._health(now, changed_at) if visible + in_flight else dict(IDLE_HEALTH)
        return Observation(
            current=_as_int(parameter["Value"]),
            visible=visible,
            in_flight=in_flight,
            seconds_since_change=max(0.0, (now - changed_at).total_seconds()) if changed_at else None,
            downstream_unhealthy=breaker_open(self._control),
            **health,
        )

    def _health(self, now: datetime, changed_at: datetime | None) -> dict[str, Any]:
        """The Sluice metrics since the last change (within the window) and the queue's oldest age.

        One GetMetricData call with five queries: CloudWatch bills per metric queried, and the
        oldest-message age comes from the same call instead of a GetMetricStatistics of its own.
        Only whole one-minute periods that began after the last change count: a period that
        straddles it mixes in the old setting's traffic. No datapoints (offline, or nothing ran)
        reads as zero.
        """
        since = now - timedelta(seconds=self._settings.health_window_seconds)
        if changed_at is not None and changed_at > since:
            since = changed_at
        cut = _ceil_minute(since)
        start = _floor_minute(min(cut, now - timedelta(seconds=AGE_LOOKBACK_SECONDS)))
        # Four short series of one-minute points: far below one page of results (no NextToken).
        answer = self._cloudwatch.get_metric_data(
            MetricDataQueries=self._queries(), StartTime=start, EndTime=now, ScanBy="TimestampDescending"
        )
        series = {
            r["Id"]: list(zip(r["Timestamps"], r["Values"], strict=True)) for r in answer["MetricDataResults"]
        }

        counted = {
            query_id: [(stamp, value) for stamp, value in series.get(query_id, []) if stamp >= cut]
            for query_id in ("delivered", "retries", "throttles")
        }
        delivered, retries, throttles = (sum(value for _, value in counted[q]) for q in counted)
        # The rate over the minutes that have reported: the newest minute or two are usually not
        # in CloudWatch yet, and dividing by them too would keep the stack from ever reading as
        # saturated. Needs ProcessObject to flush its metrics every minute or so (docs/scaling.md).
        stamps = [stamp for points in counted.values() for stamp, _ in points]
        span = (max(stamps) - cut).total_seconds() + PERIOD_SECONDS if stamps else PERIOD_SECONDS
        ages = series.get("age", [])
        return {
            "delivered": delivered,
            "retries": retries,
            "throttles": throttles,
            "attempt_rate": round((delivered + retries) / span, 3),
            "oldest_age_seconds": max(ages)[1] if ages else None,
            "api_latency_seconds": _mean_seconds(counted_latency)
            if (counted_latency := [value for stamp, value in series.get("latency", []) if stamp >= cut])
            else None,
        }

    def _queries(self) -> list[dict[str, Any]]:
        service = [{"Name": "service", "Value": self._settings.powertools_service_name}]
        queue = [{"Name": "QueueName", "Value": self._settings.ingest_queue_name}]
        sluice = self._settings.metrics_namespace
        return [
            _query("throttles", sluice, "ApiThrottles", service, "Sum"),
            _query("retries", sluice, "ApiRetries", service, "Sum"),
            _query("delivered", sluice, "RowsDelivered", service, "Sum"),
            _query("age", "AWS/SQS", "ApproximateAgeOfOldestMessage", queue, "Maximum"),
            _query("latency", sluice, "ApiLatency", service, "Average"),  # ms
        ]


def record(decision: Decision, seen: Observation) -> None:
    """Log the decision with its inputs; gauge the setting; count the decision by direction."""
    logger.info(
        f"Concurrency {decision.direction}: {decision.old} -> {decision.new} ({decision.reason})",
        extra={**decision.as_payload(), "inputs": seen.as_log()},
    )
    metrics.add_metric(name="ConcurrencySetting", unit=MetricUnit.Count, value=decision.new)
    # Its own EMF blob: a `direction` dimension on the shared Metrics would split the gauge too.
    with single_metric(
        name="ScalingDecisions", unit=MetricUnit.Count, value=1, namespace=metrics.namespace
    ) as metric:
        metric.add_dimension(name="direction", value=decision.direction.value)


def _query(query_id: str, namespace: str, name: str, dimensions: list[dict[str, str]], stat: str) -> dict:
    metric = {"Namespace": namespace, "MetricName": name, "Dimensions": dimensions}
    return {"Id": query_id, "MetricStat": {"Metric": metric, "Period": PERIOD_SECONDS, "Stat": stat}}


def _mean_seconds(minutes_ms: list[float]) -> float:
    """One-minute averages in ms → one mean in seconds (each minute weighs the same)."""
    return round(sum(minutes_ms) / len(minutes_ms) / 1000, 4)


def _as_int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _ceil_minute(moment: datetime) -> datetime:
    floor = _floor_minute(moment)
    return floor if floor == moment else floor + timedelta(minutes=1)
