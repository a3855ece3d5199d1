"""WakeDispatcher: an arrival (events/eventbridge-s3-object-created.json) or the safety-net schedule
(events/schedule.json) starts a dispatcher execution unless one holds the lease (sluice/wake.py)."""

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from conftest import load_function
from handler_support import (
    FakeLambdaContext,
    capture_powertools_output,
    create_pk_table,
    emitted_metrics,
    load_event,
)
from moto import mock_aws

from sluice.lease import DispatcherLease
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
    module, _, sfn, machine = stack

    answer = module.lambda_handler(ARRIVAL, FakeLambdaContext())

    assert answer == {"started": True, "execution": f"wake-{ARRIVAL['id']}", "reason": "started"}
    assert executions(sfn, machine) == [f"wake-{ARRIVAL['id']}"]
    assert emitted_metrics(capsys.readouterr().out)["DispatcherWoken"] == 1


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

    # (Step Functions answers the same name and input idempotently while it runs, and
    # ExecutionAlreadyExists once it has ended: either way no second execution.)
    again = module.lambda_handler(ARRIVAL, FakeLambdaContext())

    assert again["execution"] == first["execution"] == f"wake-{ARRIVAL['id']}"
    assert executions(sfn, machine) == [first["execution"]]


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
