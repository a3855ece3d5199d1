"""WakeDispatcher: an arrival (events/eventbridge-s3-object-created.json) or the safety-net schedule
(events/schedule.json) starts a dispatcher execution unless one holds the lease (sluice/wake.py)."""

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import load_function
from handler_support import (
    FakeLambdaContext,
    capture_powertools_output,
    create_pk_table,
    emitted_metrics,
    load_event,
)
from moto import mock_aws

from sluice.lease import LEASE_KEY, DispatcherLease
from sluice.settings import LeaseSettings
from sluice.wake import execution_name

ARRIVAL = load_event("eventbridge-s3-object-created.json")
SCHEDULE = load_event("schedule.json")
ROLE = "arn:aws:iam::123456789012:role/dispatcher"


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, Any, Any, str]]:
    capture_powertools_output(monkeypatch)
    with mock_aws():
        table = create_pk_table("ControlTable")
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        machine = sfn.create_state_machine(
            name="dispatcher",
            definition=json.dumps({"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}),
            roleArn=ROLE,
        )["stateMachineArn"]
        queue = boto3.client("sqs", region_name="us-east-1").create_queue(QueueName="ingest")["QueueUrl"]
        monkeypatch.setenv("CONTROL_TABLE", "ControlTable")
        monkeypatch.setenv("DISPATCHER_STATE_MACHINE_ARN", machine)
        monkeypatch.setenv("INGEST_QUEUE_URL", queue)
        yield load_function("wake_dispatcher"), table, sfn, machine


def queue_a_message() -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    sqs.send_message(QueueUrl=sqs.get_queue_url(QueueName="ingest")["QueueUrl"], MessageBody="{}")


def executions(sfn: Any, machine: str) -> list[str]:
    return [e["name"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]]


def test_an_arrival_with_no_dispatcher_running_starts_one_named_after_the_event(
    stack: tuple[ModuleType, Any, Any, str], capsys: pytest.CaptureFixture[str]
) -> None:
    module, table, sfn, machine = stack

    answer = module.lambda_handler(ARRIVAL, FakeLambdaContext())

    assert answer == {"started": True, "execution": f"wake-{ARRIVAL['id']}", "reason": "started"}
    assert executions(sfn, machine) == [f"wake-{ARRIVAL['id']}"]
    assert emitted_metrics(capsys.readouterr().out)["DispatcherWoken"] == 1
    # the lease is already the started execution's: its own acquire keeps it, another wake is refused
    assert table.get_item(Key={"pk": LEASE_KEY})["Item"]["holder"] == answer["execution"]
    lease = DispatcherLease(table, LeaseSettings(control_table="ControlTable"))
    assert lease.acquire(answer["execution"]).acquired is True
    assert lease.acquire("another").acquired is False


def test_an_arrival_while_an_execution_holds_the_lease_starts_nothing(
    stack: tuple[ModuleType, Any, Any, str], capsys: pytest.CaptureFixture[str]
) -> None:
    module, table, sfn, machine = stack
    DispatcherLease(table, LeaseSettings(control_table="ControlTable")).acquire("draining-now")

    answer = module.lambda_handler(ARRIVAL, FakeLambdaContext())

    assert answer == {"started": False, "execution": None, "reason": "lease held by draining-now"}
    assert executions(sfn, machine) == []
    assert emitted_metrics(capsys.readouterr().out)["WakeSkipped"] == 1


def test_an_expired_lease_of_a_dead_execution_does_not_stop_the_wake(
    stack: tuple[ModuleType, Any, Any, str],
) -> None:
    module, table, sfn, machine = stack
    table.put_item(Item={"pk": "lease#dispatcher", "holder": "died", "expires_at": 1})
    queue_a_message()

    answer = module.lambda_handler(SCHEDULE, FakeLambdaContext())

    assert answer["started"] is True
    assert executions(sfn, machine) == [f"wake-{SCHEDULE['id']}"]


def test_the_safety_net_schedule_starts_nothing_while_the_queue_is_empty(
    stack: tuple[ModuleType, Any, Any, str],
) -> None:
    module, _, sfn, machine = stack

    idle = module.lambda_handler(SCHEDULE, FakeLambdaContext())
    queue_a_message()  # a file whose own wake was lost
    woken = module.lambda_handler({**SCHEDULE, "id": "next-minute"}, FakeLambdaContext())

    assert idle == {"started": False, "execution": None, "reason": "nothing queued"}
    assert woken == {"started": True, "execution": "wake-next-minute", "reason": "started"}
    assert executions(sfn, machine) == ["wake-next-minute"]


def test_the_same_event_delivered_twice_starts_one_execution(stack: tuple[ModuleType, Any, Any, str]) -> None:
    module, _, sfn, machine = stack
    first = module.lambda_handler(ARRIVAL, FakeLambdaContext())

    again = module.lambda_handler(ARRIVAL, FakeLambdaContext())

    assert first["execution"] == f"wake-{ARRIVAL['id']}"
    assert again == {"started": False, "execution": None, "reason": f"lease held by {first['execution']}"}
    assert executions(sfn, machine) == [first["execution"]]


def test_two_wakes_racing_past_the_read_start_one_execution(stack: tuple[ModuleType, Any, Any, str]) -> None:
    module, table, sfn, machine = stack
    # GIVEN another wake took the lease between this wake's read and its write
    real = DispatcherLease(table, LeaseSettings(control_table="ControlTable"))
    module.waker._lease = RacedLease(real)

    answer = module.lambda_handler(ARRIVAL, FakeLambdaContext())

    assert answer == {"started": False, "execution": None, "reason": "lease taken by another wake"}
    assert executions(sfn, machine) == []
    assert table.get_item(Key={"pk": LEASE_KEY})["Item"]["holder"] == "wake-the-other"


def test_a_start_that_fails_gives_the_lease_back(stack: tuple[ModuleType, Any, Any, str]) -> None:
    module, table, _, _ = stack
    module.waker._state_machine_arn += "-gone"  # StartExecution: StateMachineDoesNotExist

    with pytest.raises(ClientError):
        module.lambda_handler(ARRIVAL, FakeLambdaContext())

    assert "Item" not in table.get_item(Key={"pk": LEASE_KEY})


class RacedLease:
    """The real lease, but another wake acquires it right after this one has read it free."""

    def __init__(self, lease: DispatcherLease) -> None:
        self._lease = lease

    def holder(self) -> str | None:
        found = self._lease.holder()
        self._lease.acquire("wake-the-other")
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lease, name)


@pytest.mark.parametrize(
    ("event_id", "name"),
    [
        ("89d1a02d-5ec7-412e-82f5-13505f849b41", "wake-89d1a02d-5ec7-412e-82f5-13505f849b41"),
        ("a:b/c d", "wake-a-b-c-d"),  # only the characters Step Functions accepts
        ("x" * 100, "wake-" + "x" * 75),  # 80 characters at most
    ],
)
def test_execution_name_is_the_event_id_in_what_step_functions_accepts(event_id: str, name: str) -> None:
    assert execution_name(event_id) == name
    assert execution_name(None).startswith("wake-")


def test_an_execution_that_ended_keeps_its_name_and_the_wake_says_so(
    stack: tuple[ModuleType, Any, Any, str],
) -> None:
    module, _, sfn, machine = stack
    name = f"wake-{ARRIVAL['id']}"
    arn = sfn.start_execution(stateMachineArn=machine, name=name, input="{}")["executionArn"]
    sfn.stop_execution(executionArn=arn)

    answer = module.lambda_handler(ARRIVAL, FakeLambdaContext())

    assert answer == {"started": False, "execution": f"wake-{ARRIVAL['id']}", "reason": "already started"}
    assert executions(sfn, machine) == [f"wake-{ARRIVAL['id']}"]
    assert "Item" not in module.waker._lease._table.get_item(Key={"pk": LEASE_KEY})  # given back
