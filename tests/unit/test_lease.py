"""The dispatcher lease: one holder at a time, expiry, renewal budget, release, checked in ControlTable."""

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from handler_support import create_pk_table
from moto import mock_aws
from pydantic import ValidationError

from sluice.lease import (
    END_EVENTS,
    EVENT_BUDGET,
    HISTORY_EVENT_QUOTA,
    LEASE_KEY,
    START_EVENTS,
    DispatcherLease,
    LeaseAnswer,
    LeaseRequest,
    worst_round,
)
from sluice.models import MAX_OUTPUT_CALLS
from sluice.settings import LeaseSettings

T0 = 1_795_316_400  # 2026-11-22T03:00:00Z
SETTINGS = LeaseSettings(
    control_table="ControlTable",
    max_rounds_per_execution=3,
    execution_time_budget_seconds=600,
    lease_margin_seconds=120,
)


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> Iterator[Any]:
    with mock_aws():
        yield create_pk_table("ControlTable")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lease(table: Any, clock: Clock) -> DispatcherLease:
    return DispatcherLease(table, SETTINGS, clock=clock)


def lease_item(table: Any) -> dict[str, Any] | None:
    return table.get_item(Key={"pk": LEASE_KEY}, ConsistentRead=True).get("Item")


def test_free_lease_is_acquired_with_its_deadline_and_expiry(lease: DispatcherLease, table: Any) -> None:
    answer = lease.acquire("exec-a")

    assert answer == LeaseAnswer(acquired=True, budget_left=True, deadline="2026-11-22T03:10:00Z")
    item = lease_item(table)
    assert item == {
        "pk": "lease#dispatcher",
        "holder": "exec-a",
        "acquired_at": "2026-11-22T03:00:00Z",
        "deadline": "2026-11-22T03:10:00Z",
        "expires_at": T0 + 600 + 120,
        "round": 0,
        "events": START_EVENTS,  # the execution's history so far, at its worst
    }


def test_second_execution_is_refused_while_the_lease_is_held(
    lease: DispatcherLease, table: Any, clock: Clock
) -> None:
    lease.acquire("exec-a")
    clock.now += 300

    answer = lease.acquire("exec-b")

    assert answer == LeaseAnswer(acquired=False, budget_left=False, deadline=None)
    assert lease_item(table)["holder"] == "exec-a"


def test_expired_lease_of_a_dead_execution_is_taken_over(
    lease: DispatcherLease, table: Any, clock: Clock
) -> None:
    # GIVEN exec-a acquired the lease and died without releasing it
    lease.acquire("exec-a")
    # WHEN the next execution comes after the expiry (budget + margin)
    clock.now = T0 + 600 + 120

    answer = lease.acquire("exec-b")

    assert answer.acquired
    item = lease_item(table)
    assert item["holder"] == "exec-b"
    assert item["acquired_at"] == "2026-11-22T03:12:00Z"
    assert item["expires_at"] == T0 + 720 + 720
    # and the dead holder cannot renew what it lost
    assert lease.renew("exec-a", 1) == LeaseAnswer(acquired=False, budget_left=False)
    assert lease_item(table)["holder"] == "exec-b"


def test_acquire_retried_by_the_holder_keeps_the_original_deadline(
    lease: DispatcherLease, table: Any, clock: Clock
) -> None:
    lease.acquire("exec-a")
    clock.now += 30

    answer = lease.acquire("exec-a")

    assert answer == LeaseAnswer(acquired=True, budget_left=True, deadline="2026-11-22T03:10:00Z")
    assert lease_item(table)["acquired_at"] == "2026-11-22T03:00:00Z"


def test_renew_extends_the_lease_and_reports_budget(lease: DispatcherLease, table: Any, clock: Clock) -> None:
    lease.acquire("exec-a")
    clock.now += 200

    answer = lease.renew("exec-a", 1)

    assert answer == LeaseAnswer(acquired=True, budget_left=True, deadline="2026-11-22T03:10:00Z")
    item = lease_item(table)
    assert item["expires_at"] == T0 + 200 + 720
    assert item["round"] == 1
    assert item["renewed_at"] == "2026-11-22T03:03:20Z"


def test_no_budget_left_after_the_last_round(lease: DispatcherLease, clock: Clock) -> None:
    lease.acquire("exec-a")
    clock.now += 10

    assert lease.renew("exec-a", 2).budget_left
    assert not lease.renew("exec-a", 3).budget_left  # max_rounds_per_execution = 3


def test_no_budget_left_after_the_deadline(lease: DispatcherLease, clock: Clock) -> None:
    lease.acquire("exec-a")
    clock.now = T0 + 600

    answer = lease.renew("exec-a", 1)

    assert answer.acquired
    assert not answer.budget_left


def test_retried_acquire_after_the_deadline_has_no_budget(lease: DispatcherLease, clock: Clock) -> None:
    lease.acquire("exec-a")
    clock.now = T0 + 650  # past the deadline, before the expiry

    assert lease.acquire("exec-a") == LeaseAnswer(
        acquired=True, budget_left=False, deadline="2026-11-22T03:10:00Z"
    )


def test_release_deletes_only_our_own_lease(lease: DispatcherLease, table: Any) -> None:
    lease.acquire("exec-a")

    assert lease.release("exec-b") == LeaseAnswer(acquired=False, budget_left=False)
    assert lease_item(table)["holder"] == "exec-a"

    lease.release("exec-a")
    assert lease_item(table) is None
    assert lease.acquire("exec-b").acquired


def test_handle_dispatches_each_operation(lease: DispatcherLease, table: Any) -> None:
    assert lease.handle(LeaseRequest(operation="acquire", execution="exec-a")).acquired
    assert lease.handle(LeaseRequest(operation="renew", execution="exec-a", round=1)).budget_left
    assert lease_item(table)["round"] == 1
    lease.handle(LeaseRequest(operation="release", execution="exec-a"))
    assert lease_item(table) is None


@pytest.mark.parametrize(
    "payload",
    [
        {"operation": "steal", "execution": "x"},
        {"operation": "acquire", "execution": ""},
        {"operation": "renew"},
    ],
)
def test_malformed_requests_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LeaseRequest.model_validate(payload)


def test_errors_other_than_a_failed_condition_reach_the_caller() -> None:
    with mock_aws():
        missing = DispatcherLease(boto3.resource("dynamodb").Table("NoSuchTable"), SETTINGS)
        for call in (
            lambda: missing.acquire("x"),
            lambda: missing.renew("x", 1),
            lambda: missing.release("x"),
        ):
            with pytest.raises(ClientError, match="ResourceNotFoundException"):
                call()


def test_rounds_stop_before_the_history_quota_at_the_default_limits(table: Any, clock: Clock) -> None:
    # GIVEN budget for any number of rounds, and the defaults: ConcurrencyMax 10, SegmentsPerTurn 2
    lease = DispatcherLease(
        table, SETTINGS.model_copy(update={"max_rounds_per_execution": 1000}), clock=clock
    )
    lease.acquire("exec-a")
    # every item ran its whole turn (2 segments: progress 1) and then all of WriteOutput's calls
    full_round = [{"segment": 1, "output_calls": MAX_OUTPUT_CALLS - 1}] * 10

    # WHEN rounds of ten long files follow each other
    rounds = 0
    while True:
        rounds += 1
        request = LeaseRequest(
            operation="renew",
            execution="exec-a",
            round=rounds,
            items=full_round,
            concurrency_max=10,
            segments_per_turn=2,
        )
        if not lease.handle(request).budget_left:
            break

    # THEN the execution stops where the worst next round would pass its budget: the events it
    # has counted, plus that round, plus the end, stay within 20,000, under the 25,000 quota
    worst = worst_round(10, 2)
    assert worst == 80 + 10 * (190 + 2 * 70 + 5 * 55) == 6_130
    events = int(lease_item(table)["events"])  # type: ignore[index]
    assert events == START_EVENTS + rounds * worst
    assert events + worst + END_EVENTS > EVENT_BUDGET
    assert events + END_EVENTS <= EVENT_BUDGET  # the last round was allowed: it fitted
    assert events + END_EVENTS == 40 + 3 * 6_130 + 30 == 18_460  # the worst execution
    assert EVENT_BUDGET < HISTORY_EVENT_QUOTA
    assert rounds == 3


def test_a_renewal_inside_an_item_counts_no_events(lease: DispatcherLease, table: Any) -> None:
    lease.acquire("exec-a")

    lease.handle(LeaseRequest(operation="renew", execution="exec-a", round=0))

    assert lease_item(table)["events"] == START_EVENTS  # type: ignore[index]
