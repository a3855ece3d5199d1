"""The concurrency policy (pure) and one scheduled run against moto's SSM, SQS and CloudWatch."""

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from datapath_support import create_tables
from handler_support import capture_powertools_output, json_lines
from moto import mock_aws

from sluice.health import HEALTH_KEY, BreakerState
from sluice.scaling import ConcurrencyScaler, Decision, Direction, Observation, Reason, decide
from sluice.settings import ScaleSettings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
PARAMETER = "/sluice/concurrency"
QUEUE = "sluice-ingest"


def policy(**overrides: Any) -> ScaleSettings:
    """The documented defaults, with min 1 and max 20 (the worked table's bounds)."""
    values: dict[str, Any] = {
        "concurrency_parameter": PARAMETER,
        "control_table": "ControlTable",
        "concurrency_min": 1,
        "concurrency_max": 20,
        "ingest_queue_url": f"https://sqs.us-east-1.amazonaws.com/123456789012/{QUEUE}",
        "ingest_queue_name": QUEUE,
    }
    return ScaleSettings.model_validate(values | overrides)


def seen(**fields: Any) -> Observation:
    """A healthy system at 5, changed 10 minutes ago, unless told otherwise."""
    defaults: dict[str, Any] = {"current": 5, "visible": 0, "in_flight": 0, "seconds_since_change": 600.0}
    return Observation(**(defaults | fields))


def health(attempts: float, throttles: float = 0, errors: float = 0) -> dict[str, float]:
    """Observation counts for `attempts` API calls of which some were throttled or failed."""
    return {"delivered": attempts - throttles - errors, "retries": throttles + errors, "throttles": throttles}


# --- the policy -------------------------------------------------------------------------------


def test_idle_queue_goes_to_the_minimum_at_once() -> None:
    decision = decide(seen(current=7, seconds_since_change=5.0), policy())

    assert (decision.new, decision.direction, decision.reason) == (1, Direction.DOWN, Reason.IDLE)
    assert decide(seen(current=1), policy()).direction is Direction.HOLD


@pytest.mark.parametrize("since", [5.0, 600.0])
def test_an_open_breaker_drops_to_the_minimum_at_once_whatever_the_backlog(since: float) -> None:
    # GIVEN 50 files waiting at 8, changed `since` seconds ago (inside and past every cooldown)
    backlog = seen(current=8, visible=50, seconds_since_change=since)

    # WHEN the downstream's breaker is open: THEN the minimum, one probe's worth
    decision = decide(replace(backlog, downstream_unhealthy=True), policy(concurrency_min=2))
    assert (decision.new, decision.direction) == (2, Direction.DOWN)
    assert decision.reason == Reason.DOWNSTREAM_UNHEALTHY
    assert decide(replace(backlog, current=2, downstream_unhealthy=True), policy(concurrency_min=2)).new == 2

    # WHEN it has closed: THEN the queue leads again (a step up once the cooldown has passed)
    recovered = decide(replace(backlog, current=2), policy(concurrency_min=2))
    assert recovered.reason == (Reason.COOLDOWN if since < 120 else Reason.BACKLOG)
    assert recovered.new == (2 if since < 120 else 6)


def test_in_flight_messages_are_not_idle() -> None:
    decision = decide(seen(current=5, in_flight=5), policy())

    assert (decision.new, decision.reason) == (5, Reason.ON_TARGET)


@pytest.mark.parametrize(
    ("current", "visible", "maximum", "expected"),
    [
        (1, 100, 20, 5),  # additive: +max_step_up (4)
        (12, 100, 40, 18),  # the step grows with the setting: +50% of 12
        (18, 100, 20, 20),  # never past the maximum
        (1, 3, 20, 3),  # never past the target
    ],
)
def test_backlog_steps_up_within_the_cap(current: int, visible: int, maximum: int, expected: int) -> None:
    decision = decide(seen(current=current, visible=visible), policy(concurrency_max=maximum))

    assert (decision.new, decision.direction, decision.reason) == (expected, Direction.UP, Reason.BACKLOG)


def test_files_per_worker_sets_the_target() -> None:
    decision = decide(seen(current=1, visible=9), policy(files_per_worker=4))

    assert (decision.target, decision.new) == (3, 3)


def test_an_old_message_doubles_the_step() -> None:
    late = decide(seen(current=1, visible=100, oldest_age_seconds=400.0), policy())
    fresh = decide(seen(current=1, visible=100, oldest_age_seconds=299.0), policy())

    assert (late.new, late.reason) == (9, Reason.BACKLOG_LATE)
    assert (fresh.new, fresh.reason) == (5, Reason.BACKLOG)


@pytest.mark.parametrize(
    ("current", "minimum", "expected"),
    [(16, 1, 8), (3, 1, 1), (3, 2, 2), (19, 1, 9)],
)
def test_throttling_halves_but_not_below_the_minimum(current: int, minimum: int, expected: int) -> None:
    observed = seen(current=current, visible=50, **health(1000, throttles=60))

    decision = decide(observed, policy(concurrency_min=minimum))

    assert (decision.new, decision.direction, decision.reason) == (expected, Direction.DOWN, Reason.THROTTLED)


def test_throttled_at_the_minimum_holds() -> None:
    decision = decide(seen(current=2, visible=50, **health(1000, throttles=500)), policy(concurrency_min=2))

    assert (decision.new, decision.direction, decision.reason) == (2, Direction.HOLD, Reason.THROTTLED)


def test_throttling_right_after_a_change_waits_for_the_backoff_cooldown() -> None:
    observed = seen(current=16, visible=50, seconds_since_change=30.0, **health(1000, throttles=100))

    decision = decide(observed, policy())

    assert (decision.new, decision.reason) == (16, Reason.THROTTLED)
    assert "cooling down" in decision.detail


def test_a_throttle_below_the_ratio_blocks_increases_only() -> None:
    wants_more = decide(seen(current=5, visible=50, **health(1000, throttles=10)), policy())
    on_target = decide(seen(current=5, visible=5, **health(1000, throttles=10)), policy())

    assert (wants_more.new, wants_more.reason) == (5, Reason.UNHEALTHY)
    assert (on_target.new, on_target.reason) == (5, Reason.ON_TARGET)


def test_few_attempts_are_not_a_ratio_but_still_block_increases() -> None:
    # 5 of 10 attempts throttled: 50%, yet 10 attempts is too few to halve on.
    decision = decide(seen(current=8, visible=50, **health(10, throttles=5)), policy())

    assert (decision.new, decision.reason) == (8, Reason.UNHEALTHY)


def test_server_errors_cut_by_a_quarter() -> None:
    decision = decide(seen(current=12, visible=50, **health(1000, errors=150)), policy())

    assert (decision.new, decision.direction, decision.reason) == (9, Direction.DOWN, Reason.ERRORS)


def test_some_server_errors_hold_increases() -> None:
    decision = decide(seen(current=5, visible=50, **health(1000, errors=50)), policy())

    assert (decision.new, decision.reason) == (5, Reason.UNHEALTHY)


def test_throttling_wins_over_errors() -> None:
    decision = decide(seen(current=12, visible=50, **health(1000, throttles=100, errors=300)), policy())

    assert (decision.new, decision.reason) == (6, Reason.THROTTLED)


def test_rows_that_ran_out_of_attempts_on_429s_count_as_throttled() -> None:
    # 40 rows each throttled 5 times and retried 4 times: more throttles than retries.
    observed = seen(current=8, visible=50, throttles=200.0, retries=160.0, delivered=0.0)

    assert observed.throttle_ratio == 1.0
    assert observed.errors == 0.0
    assert decide(observed, policy()).new == 4


def test_at_the_api_rate_limit_more_workers_would_only_wait() -> None:
    observed = seen(current=5, visible=50, attempt_rate=46.0, **health(2760))

    assert decide(observed, policy(api_rate_limit=50)).reason is Reason.SATURATED
    assert decide(observed, policy(api_rate_limit=100)).reason is Reason.BACKLOG
    assert decide(observed, policy(api_rate_limit=0)).reason is Reason.BACKLOG  # 0: no known limit


@pytest.mark.parametrize(("visible", "moved"), [(50, 5), (0, 5)])
def test_backlog_steps_wait_for_the_step_cooldown(visible: int, moved: int) -> None:
    observed = seen(current=5, visible=visible, in_flight=1 if not visible else 0, seconds_since_change=60.0)

    decision = decide(observed, policy())

    assert (decision.new, decision.reason) == (moved, Reason.COOLDOWN)


def test_an_unknown_last_change_counts_as_long_ago() -> None:
    decision = decide(seen(current=1, visible=50, seconds_since_change=None), policy())

    assert decision.new == 5


@pytest.mark.parametrize(
    ("current", "backlog", "expected", "reason"),
    [
        (10, 4, 7, Reason.DRAINED),  # -max(2, 25% of 10)
        (5, 2, 3, Reason.DRAINED),  # -2
        (4, 2, 2, Reason.DRAINED),  # never below the target
        (10, 9, 10, Reason.ON_TARGET),  # one too many is within the hysteresis
    ],
)
def test_a_draining_queue_steps_down_gently(
    current: int, backlog: int, expected: int, reason: Reason
) -> None:
    decision = decide(seen(current=current, in_flight=backlog), policy())

    assert (decision.new, decision.reason) == (expected, reason)


@pytest.mark.parametrize(
    ("current", "expected", "direction"), [(50, 20, Direction.DOWN), (0, 1, Direction.UP)]
)
def test_a_value_out_of_bounds_is_clamped_at_once(current: int, expected: int, direction: Direction) -> None:
    decision = decide(seen(current=current, visible=3, seconds_since_change=1.0), policy())

    assert (decision.new, decision.direction, decision.reason) == (expected, direction, Reason.OUT_OF_BOUNDS)


def test_an_unreadable_value_is_reset_to_the_minimum() -> None:
    decision = decide(seen(current=None, visible=30), policy(concurrency_min=2))

    assert decision == Decision(old=None, new=2, target=20, reason=Reason.UNREADABLE, detail=decision.detail)
    assert decision.direction is Direction.DOWN


def test_every_decision_stays_within_bounds_and_says_which_way_it_went() -> None:
    rng = random.Random(4)  # fixed seed: a failure reproduces
    for _ in range(3000):
        low = rng.randint(1, 5)
        knobs = policy(
            concurrency_min=low,
            concurrency_max=rng.randint(low, 40),
            files_per_worker=rng.choice([0.5, 1, 3]),
        )
        attempts = rng.choice([0, 5, 50, 5000])
        observed = seen(
            current=rng.choice([None, 0, 1, 2, 7, 19, 45]),
            visible=rng.choice([0, 1, 8, 300]),
            in_flight=rng.choice([0, 3, 10]),
            oldest_age_seconds=rng.choice([None, 10.0, 900.0]),
            attempt_rate=rng.choice([0.0, 30.0, 60.0]),
            seconds_since_change=rng.choice([None, 0.0, 70.0, 3600.0]),
            **health(
                attempts, throttles=rng.choice([0, attempts // 10]), errors=rng.choice([0, attempts // 4])
            ),
        )

        decision = decide(observed, knobs)

        assert knobs.concurrency_min <= decision.new <= knobs.concurrency_max, (observed, decision)
        expected = (
            Direction.HOLD
            if decision.new == observed.current
            else Direction.UP
            if observed.current is not None and decision.new > observed.current
            else Direction.DOWN
        )
        assert decision.direction is expected


@dataclass(frozen=True)
class TableRow:
    minute: int
    observation: Observation
    new: int
    reason: str


def worked_table() -> list[TableRow]:
    """The rows of docs/scaling.md's worked table (its header starts `| t |`)."""
    rows: list[TableRow] = []
    lines = iter(DOCS.read_text().splitlines())
    for line in lines:
        if line.startswith("| t |"):
            break
    next(lines)  # the |---| line
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [re.sub(r"[*`]", "", cell).strip() for cell in line.strip("|").split("|")]
        t, visible, in_flight, oldest, attempts, rate, throttles, errors, since, old, new, reason = cells[:12]
        observation = Observation(
            current=int(old),
            visible=int(visible),
            in_flight=int(in_flight),
            oldest_age_seconds=None if oldest == "–" else float(oldest),
            attempt_rate=float(rate),
            seconds_since_change=float(since),
            **health(float(attempts), throttles=float(throttles), errors=float(errors)),
        )
        rows.append(TableRow(int(t), observation, int(new), reason))
    return rows


def test_the_worked_table_in_the_docs_is_what_the_policy_does() -> None:
    rows = worked_table()

    assert len(rows) >= 15
    for row in rows:
        decision = decide(row.observation, policy(concurrency_max=10))
        assert (decision.new, decision.reason.value) == (row.new, row.reason), f"t={row.minute}: {decision}"
    # Each row's "old" is the row before's "new", except where the table says someone set it by hand.
    chained = [(before.new, after.observation.current) for before, after in itertools.pairwise(rows)]
    assert sum(new != old for new, old in chained) <= 1


# --- settings -----------------------------------------------------------------------------------


def test_settings_refuse_a_minimum_above_the_maximum() -> None:
    with pytest.raises(RuntimeError, match=r"CONCURRENCY_MIN \(5\) is above CONCURRENCY_MAX \(3\)"):
        policy(concurrency_min=5, concurrency_max=3)


def test_settings_name_the_missing_variable() -> None:
    with pytest.raises(RuntimeError, match="CONCURRENCY_PARAMETER"):
        ScaleSettings.from_env(
            {"CONCURRENCY_MIN": "1", "CONCURRENCY_MAX": "3", "INGEST_QUEUE_URL": "u", "CONTROL_TABLE": "c"}
        )


def test_settings_read_the_knobs_from_the_environment() -> None:
    env = {
        "CONCURRENCY_PARAMETER": PARAMETER,
        "CONTROL_TABLE": "ControlTable",
        "CONCURRENCY_MIN": "2",
        "CONCURRENCY_MAX": "30",
        "INGEST_QUEUE_URL": "u",
        "INGEST_QUEUE_NAME": QUEUE,
        "THROTTLE_DECREASE_FACTOR": "0.7",
        "STEP_COOLDOWN_SECONDS": "0",
    }

    settings = ScaleSettings.from_env(env)

    assert (settings.concurrency_max, settings.throttle_decrease_factor, settings.step_cooldown_seconds) == (
        30,
        0.7,
        0,
    )


# --- one scheduled run against moto -----------------------------------------------------------


@dataclass
class Stack:
    ssm: Any
    sqs: Any
    cloudwatch: Any
    queue_url: str
    created_at: datetime  # when the parameter was last written: LastModifiedDate is the real clock
    control: Any = None  # ControlTable: the downstream's breaker

    def scaler(self, **overrides: Any) -> ConcurrencyScaler:
        settings = policy(ingest_queue_url=self.queue_url, **overrides)
        return ConcurrencyScaler(
            settings, ssm=self.ssm, sqs=self.sqs, cloudwatch=self.cloudwatch, control=self.control
        )

    def breaker(self, state: BreakerState) -> None:
        """The item ProcessObject's DownstreamHealth keeps (sluice/health.py)."""
        self.control.put_item(Item={"pk": HEALTH_KEY, "state": state.value, "reason": "api 401: expired"})

    def setting(self) -> str:
        return self.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"]

    def set(self, value: str) -> None:
        self.ssm.put_parameter(Name=PARAMETER, Value=value, Type="String", Overwrite=True)
        self.created_at = datetime.now(UTC)

    def enqueue(self, count: int) -> None:
        for start in range(0, count, 10):
            entries = [
                {"Id": str(i), "MessageBody": f"file {i}"} for i in range(start, min(count, start + 10))
            ]
            self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)

    def take_in_flight(self, count: int) -> None:
        received = 0
        while received < count:
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=min(10, count - received), VisibilityTimeout=900
            )
            assert answer.get("Messages"), f"only {received} of {count} messages to receive"
            received += len(answer["Messages"])

    def report(self, at: datetime, *, throttles: float = 0, errors: float = 0, delivered: float = 0) -> None:
        """What ProcessObject's EMF metrics become on AWS: Sluice metrics with service=sluice."""
        service = [{"Name": "service", "Value": "sluice"}]
        data = [
            {"MetricName": "ApiThrottles", "Value": throttles},
            {"MetricName": "ApiRetries", "Value": throttles + errors},
            {"MetricName": "RowsDelivered", "Value": delivered},
        ]
        self.cloudwatch.put_metric_data(
            Namespace="Sluice",
            MetricData=[d | {"Dimensions": service, "Timestamp": at, "Unit": "Count"} for d in data],
        )

    def oldest_message(self, at: datetime, age_seconds: float) -> None:
        """What SQS publishes for the queue every minute on AWS."""
        self.cloudwatch.put_metric_data(
            Namespace="AWS/SQS",
            MetricData=[
                {
                    "MetricName": "ApproximateAgeOfOldestMessage",
                    "Dimensions": [{"Name": "QueueName", "Value": QUEUE}],
                    "Timestamp": at,
                    "Value": age_seconds,
                    "Unit": "Seconds",
                }
            ],
        )


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    from sluice.observability import metrics  # noqa: PLC0415 - not at collection (handler_support says why)

    capture_powertools_output(monkeypatch)
    metrics.clear_metrics()  # outside a handler nothing flushes the shared Metrics between tests
    with mock_aws():
        ssm, sqs = boto3.client("ssm"), boto3.client("sqs")
        ssm.put_parameter(Name=PARAMETER, Value="3", Type="String")
        queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
        control = create_tables()["ControlTable"]
        yield Stack(ssm, sqs, boto3.client("cloudwatch"), queue_url, datetime.now(UTC), control)
    metrics.clear_metrics()


def test_growing_backlog_raises_the_setting_step_by_step_up_to_the_maximum(stack: Stack) -> None:
    stack.enqueue(30)
    scaler = stack.scaler(concurrency_max=10)
    later = stack.created_at + timedelta(minutes=10)

    first = scaler.run(later)
    assert (first.old, first.new, first.reason) == (3, 7, Reason.BACKLOG)  # +4, not all the way to 10
    assert stack.setting() == "7"

    second = scaler.run(later + timedelta(minutes=10))
    assert (second.new, stack.setting()) == (10, "10")  # +4 would be 11: capped at the maximum

    third = scaler.run(later + timedelta(minutes=20))
    assert (third.direction, stack.setting()) == (Direction.HOLD, "10")


def test_the_step_cooldown_counts_from_the_parameters_last_write(stack: Stack) -> None:
    stack.enqueue(30)

    decision = stack.scaler().run(stack.created_at + timedelta(seconds=30))

    assert (decision.reason, stack.setting()) == (Reason.COOLDOWN, "3")


def test_messages_in_flight_are_backlog(stack: Stack) -> None:
    stack.enqueue(5)
    stack.take_in_flight(5)
    scaler = stack.scaler()
    later = stack.created_at + timedelta(minutes=10)

    observed = scaler.observe(later)
    decision = scaler.run(later)

    assert (observed.visible, observed.in_flight) == (0, 5)
    assert (decision.target, stack.setting()) == (5, "5")


def test_no_metrics_at_all_reads_as_a_quiet_healthy_downstream(stack: Stack) -> None:
    observed = stack.scaler().observe(stack.created_at + timedelta(minutes=10))

    assert (observed.delivered, observed.retries, observed.throttles, observed.attempt_rate) == (0, 0, 0, 0)
    assert observed.oldest_age_seconds is None
    assert observed.current == 3


def test_throttling_halves_the_setting_then_stops_at_the_minimum(stack: Stack) -> None:
    stack.set("8")
    stack.enqueue(40)
    scaler = stack.scaler(concurrency_min=3)
    first_run = stack.created_at + timedelta(minutes=10)
    stack.report(first_run - timedelta(minutes=2), throttles=60, delivered=940)

    first = scaler.run(first_run)
    assert (first.new, first.reason, stack.setting()) == (4, Reason.THROTTLED, "4")
    assert scaler.observe(first_run).throttle_ratio == pytest.approx(0.06)

    second_run = first_run + timedelta(minutes=10)
    stack.report(second_run - timedelta(minutes=2), throttles=100, delivered=900)
    second = scaler.run(second_run)
    assert (second.new, stack.setting()) == (3, "3")  # half of 4 is 2: held at the minimum

    stack.report(second_run + timedelta(minutes=8), throttles=100, delivered=900)
    third = scaler.run(second_run + timedelta(minutes=10))
    assert (third.direction, third.reason, stack.setting()) == (Direction.HOLD, Reason.THROTTLED, "3")


def test_server_errors_reported_as_retries_cut_the_setting(stack: Stack) -> None:
    stack.set("12")
    stack.enqueue(40)
    run_at = stack.created_at + timedelta(minutes=10)
    stack.report(run_at - timedelta(minutes=3), errors=100, delivered=400)
    stack.report(run_at - timedelta(minutes=2), errors=50, delivered=450)

    decision = stack.scaler().run(run_at)

    assert (decision.new, decision.reason, stack.setting()) == (9, Reason.ERRORS, "9")


@pytest.mark.parametrize(
    ("reported_at", "expected"),
    [
        (timedelta(seconds=-60), "7"),  # throttled under the old setting: not this one's doing
        (timedelta(seconds=150), "1"),  # throttled since the change: halve
    ],
)
def test_only_metrics_since_the_last_change_count(
    stack: Stack, reported_at: timedelta, expected: str
) -> None:
    stack.enqueue(40)
    stack.report(stack.created_at + reported_at, throttles=500, delivered=500)

    stack.scaler().run(stack.created_at + timedelta(minutes=3))

    assert stack.setting() == expected


def test_an_old_message_in_cloudwatch_makes_the_step_bigger(stack: Stack) -> None:
    stack.enqueue(40)
    run_at = stack.created_at + timedelta(minutes=10)
    stack.oldest_message(run_at - timedelta(minutes=4), 200)
    stack.oldest_message(run_at - timedelta(minutes=1), 420)  # the latest datapoint is what counts

    decision = stack.scaler().run(run_at)

    assert decision.reason is Reason.BACKLOG_LATE
    assert stack.setting() == "11"  # 3 + 2 x 4


def test_the_api_rate_seen_in_cloudwatch_holds_at_saturation(stack: Stack) -> None:
    stack.enqueue(40)
    run_at = stack.created_at.replace(second=30, microsecond=0) + timedelta(minutes=10)
    # 48 attempts/s, against a limit of 50, in the four whole minutes of the window; the minute
    # running now has not reported yet, as on AWS, and does not dilute the rate.
    for minutes_ago in range(1, 5):
        stack.report(run_at - timedelta(minutes=minutes_ago), delivered=48 * 60)

    decision = stack.scaler(api_rate_limit=50).run(run_at)

    assert decision.reason is Reason.SATURATED
    assert stack.setting() == "3"


def test_an_empty_queue_drops_to_the_minimum(stack: Stack) -> None:
    stack.set("6")

    decision = stack.scaler(concurrency_min=2).run(stack.created_at + timedelta(seconds=5))

    assert (decision.new, decision.reason, stack.setting()) == (2, Reason.IDLE, "2")


def test_an_unreadable_parameter_is_rewritten(stack: Stack) -> None:
    stack.set("three")

    stack.scaler().run(stack.created_at + timedelta(minutes=1))

    assert stack.setting() == "1"


def test_while_the_breaker_is_open_the_setting_stays_at_the_minimum_then_follows_the_queue_again(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN 30 files waiting at 7, and a downstream marked unhealthy by ProcessObject
    stack.set("7")
    stack.enqueue(30)
    stack.breaker(BreakerState.OPEN)

    # WHEN the scaler runs, again a minute later: THEN the minimum, logged with its reason and input
    down = stack.scaler(concurrency_max=10).run(stack.created_at + timedelta(seconds=5))
    assert (down.new, down.reason) == (1, Reason.DOWNSTREAM_UNHEALTHY)
    assert stack.scaler(concurrency_max=10).run(stack.created_at + timedelta(minutes=1)).new == 1
    assert stack.setting() == "1"
    log = next(r for r in json_lines(capsys.readouterr().out) if r.get("reason") == "downstream-unhealthy")
    assert (log["old"], log["new"], log["direction"]) == (7, 1, "down")
    assert log["inputs"]["downstream_unhealthy"] is True

    # WHEN the breaker has closed and the cooldown passed: THEN it steps up with the backlog again
    stack.breaker(BreakerState.CLOSED)
    up = stack.scaler(concurrency_max=10).run(datetime.now(UTC) + timedelta(minutes=10))
    assert (up.old, up.new, up.reason) == (1, 5, Reason.BACKLOG)


def test_each_decision_is_logged_with_its_inputs_and_counted_by_direction(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    from sluice.observability import metrics  # noqa: PLC0415 - the singleton, after capture is set up

    stack.enqueue(12)
    stack.scaler().run(stack.created_at + timedelta(minutes=10))
    metrics.flush_metrics()

    records = json_lines(capsys.readouterr().out)
    log = next(r for r in records if r.get("reason") == "backlog")
    assert (log["old"], log["new"], log["direction"]) == (3, 7, "up")
    assert log["inputs"]["visible"] == 12
    assert log["inputs"]["backlog"] == 12
    decisions = [r for r in records if "ScalingDecisions" in r]
    assert [(r["direction"], r["ScalingDecisions"]) for r in decisions] == [("up", [1.0])]
    assert set(decisions[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]) == {"direction", "service"}
    gauge = next(r for r in records if "ConcurrencySetting" in r)
    assert gauge["ConcurrencySetting"] == [7.0]  # one value: this run's
    assert "direction" not in gauge  # the gauge is one series, whatever the decision


class NoCloudWatch:
    """A CloudWatch client no idle run may call (GetMetricData is billed per metric, issue 14)."""

    def get_metric_data(self, **_: Any) -> dict:
        raise AssertionError("an idle run read CloudWatch")


def test_an_idle_run_reads_no_cloudwatch_and_a_busy_one_does(stack: Stack) -> None:
    stack.set("6")
    idle = ConcurrencyScaler(
        policy(ingest_queue_url=stack.queue_url, concurrency_min=2),
        ssm=stack.ssm,
        sqs=stack.sqs,
        cloudwatch=NoCloudWatch(),
        control=stack.control,
    )

    decision = idle.run(stack.created_at + timedelta(seconds=5))

    assert (decision.new, decision.reason, stack.setting()) == (2, Reason.IDLE, "2")
    stack.enqueue(1)
    with pytest.raises(AssertionError, match="read CloudWatch"):
        idle.run(stack.created_at + timedelta(minutes=10))


def test_the_target_is_never_more_invocations_than_the_rate_can_use() -> None:
    # GIVEN 30 files waiting, a 50/s limit, answers in 0.2 s, 4 requests in flight per invocation:
    # 3 invocations already keep 60 requests/s in flight (ceil(50 × 0.2 / 4) = 3)
    seen = Observation(current=2, visible=30, in_flight=0, api_latency_seconds=0.2)
    settings = policy(api_rate_limit=50, api_concurrency=4, concurrency_max=10)

    decision = decide(seen, settings)

    # THEN the target is 3, not 10: a fourth would only wait for rate slots
    assert (decision.target, decision.new, decision.reason) == (3, 3, Reason.BACKLOG)
    # and without a latency measured (offline, or nothing delivered yet) the backlog alone decides
    assert decide(Observation(current=2, visible=30, in_flight=0), settings).target == 10


def test_a_setting_above_the_useful_concurrency_drains_to_it() -> None:
    seen = Observation(current=8, visible=30, in_flight=0, api_latency_seconds=0.2)

    decision = decide(seen, policy(api_rate_limit=50, api_concurrency=4, concurrency_max=10))

    assert (decision.target, decision.reason) == (3, Reason.DRAINED)
    assert decision.new < 8


def test_the_api_latency_is_read_from_cloudwatch_with_the_health(stack: Stack) -> None:
    stack.enqueue(30)
    run_at = stack.created_at.replace(second=30, microsecond=0) + timedelta(minutes=10)
    for minutes_ago, latency_ms in ((1, 180.0), (2, 220.0)):
        stack.cloudwatch.put_metric_data(
            Namespace="Sluice",
            MetricData=[
                {
                    "MetricName": "ApiLatency",
                    "Dimensions": [{"Name": "service", "Value": "sluice"}],
                    "Timestamp": run_at - timedelta(minutes=minutes_ago),
                    "Value": latency_ms,
                    "Unit": "Milliseconds",
                }
            ],
        )

    seen = stack.scaler().observe(run_at)

    assert seen.api_latency_seconds == pytest.approx(0.2)
