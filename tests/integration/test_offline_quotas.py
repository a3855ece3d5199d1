"""The offline stack fails where AWS fails: each quota, crossed and just not crossed.

Through the emulator endpoint with real boto3 clients, as the stack serves it: the request gate
(`QuotaGate`) in front of moto and the Step Functions quotas (`StepFunctionsQuotas`) installed on
moto's interpreter. Where moto already refuses as AWS does, the test shows it; docs/offline.md
("Quotas enforced offline") lists which is which.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from integration.stacks import stop_all
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.clients import emulator_client
from sluice_cli.offline.lambda_runtime import LambdaRuntime
from sluice_cli.offline.polling import wait_for
from sluice_cli.offline.quotas import (
    HISTORY_MAX_EVENTS,
    PAYLOAD_MAX_BYTES,
    S3_KEY_MAX_BYTES,
    SNS_MESSAGE_MAX_BYTES,
    SQS_MESSAGE_MAX_BYTES,
    QuotaGate,
    StepFunctionsQuotas,
    history_limit_cause,
    moto_queue_size,
)
from sluice_cli.offline.server import EmulatorServer, enable_state_machine_execution

pytestmark = pytest.mark.integration

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/quota-tests"
# `pass_loop(rounds)` records 6 + 4 × rounds events (counted on moto's history, as AWS would).
LOOP_EVENTS_FIXED = 6  # ExecutionStarted, Init ×2, Done ×2, ExecutionSucceeded
LOOP_EVENTS_PER_ROUND = 4  # Inc ×2, Check ×2


class Emulator:
    """The emulator endpoint with the quotas on, and boto3 clients for it."""

    def __init__(self, server: EmulatorServer, quotas: StepFunctionsQuotas) -> None:
        self.server = server
        self.quotas = quotas

    def client(self, service: str) -> Any:
        return emulator_client(service, self.server.url, REGION, max_attempts=1)

    def run(self, definition: dict[str, Any], execution_input: Any = None) -> dict[str, Any]:
        """Create a state machine, run it once with `execution_input`, return its description."""
        sfn = self.client("stepfunctions")
        name = f"quota-{uuid.uuid4().hex[:10]}"
        arn = sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=ROLE)[
            "stateMachineArn"
        ]
        execution = sfn.start_execution(
            stateMachineArn=arn,
            name=name,
            input=json.dumps(execution_input or {}, separators=(",", ":"), ensure_ascii=False),
        )["executionArn"]

        def ended() -> dict[str, Any] | None:
            described: dict[str, Any] = sfn.describe_execution(executionArn=execution)
            return described if described["status"] != "RUNNING" else None

        return wait_for(ended, timeout=120, what=f"execution {name} to end")

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.client("stepfunctions").get_execution_history(
            executionArn=execution_arn, maxResults=1000
        )["events"]
        return events


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    stop_all()  # moto's backends are process-wide: no shared stack may run beside this server
    quotas = StepFunctionsQuotas().install()
    server = EmulatorServer(
        LambdaRuntime(endpoint_url="http://127.0.0.1:1", log_dir=tmp_path),
        quota_gate=QuotaGate(moto_queue_size),
    )
    server.bind()
    previous_port = os.environ.get("MOTO_PORT")
    os.environ["MOTO_PORT"] = str(server.port)  # moto's ASL tasks call this endpoint
    previous_execution = enable_state_machine_execution()
    server.start()
    try:
        yield Emulator(server, quotas)
    finally:
        server.stop()
        enable_state_machine_execution(previous_execution)
        if previous_port is None:
            os.environ.pop("MOTO_PORT", None)
        else:
            os.environ["MOTO_PORT"] = previous_port
        quotas.uninstall()


def error_of(call: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    error: dict[str, Any] = raised.value.response["Error"]
    return error


# -- Step Functions: 25,000 history events -----------------------------------------------------------


def pass_loop(rounds: int) -> dict[str, Any]:
    return {
        "StartAt": "Init",
        "States": {
            "Init": {"Type": "Pass", "Result": {"i": 0}, "Next": "Inc"},
            "Inc": {"Type": "Pass", "Parameters": {"i.$": "States.MathAdd($.i, 1)"}, "Next": "Check"},
            "Check": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.i", "NumericLessThan": rounds, "Next": "Inc"}],
                "Default": "Done",
            },
            "Done": {"Type": "Succeed"},
        },
    }


def test_history_quota_is_awss_by_default() -> None:
    assert StepFunctionsQuotas().history_event_limit == HISTORY_MAX_EVENTS == 25_000


def test_an_execution_whose_last_allowed_event_is_its_success_succeeds(emulator: Emulator) -> None:
    """GIVEN a history limit of L events and a loop whose history is exactly L events,
    THEN it succeeds: on AWS event 25,000 may be ExecutionSucceeded."""
    rounds = 40
    emulator.quotas.history_event_limit = LOOP_EVENTS_FIXED + LOOP_EVENTS_PER_ROUND * rounds
    described = emulator.run(pass_loop(rounds))
    assert described["status"] == "SUCCEEDED", described
    events = emulator.history(described["executionArn"])
    assert len(events) == emulator.quotas.history_event_limit
    assert emulator.quotas.history_event_count(described["executionArn"]) == len(events)
    assert events[-1]["type"] == "ExecutionSucceeded"


def test_an_execution_that_would_record_one_event_more_fails_as_on_aws(emulator: Emulator) -> None:
    """GIVEN the same limit and one round more,
    THEN event number L is ExecutionFailed, States.Runtime, AWS's cause, and nothing after it."""
    rounds = 40
    limit = emulator.quotas.history_event_limit = LOOP_EVENTS_FIXED + LOOP_EVENTS_PER_ROUND * rounds
    described = emulator.run(pass_loop(rounds + 1))
    assert described["status"] == "FAILED"
    assert described["error"] == "States.Runtime"
    assert described["cause"] == history_limit_cause(limit)
    assert (
        history_limit_cause(25_000) == "The execution reached the maximum number of history events (25000)."
    )
    events = emulator.history(described["executionArn"])
    assert [event["id"] for event in events] == list(range(1, limit + 1))
    assert events[-1]["type"] == "ExecutionFailed"
    counts = emulator.quotas.history(described["executionArn"])
    assert counts["ExecutionFailed"] == 1
    assert sum(counts.values()) == limit


def test_a_failing_task_inside_a_catch_cannot_outlive_the_history_quota(emulator: Emulator) -> None:
    """GIVEN a loop whose task fails and is caught every round (Catch on States.ALL),
    THEN the quota still ends the execution: the catcher does not take the quota's failure."""
    emulator.quotas.history_event_limit = 120
    definition = {
        "StartAt": "Fail to read",
        "States": {
            "Fail to read": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:ssm:getParameter",
                "Parameters": {"Name": "/no/such/parameter"},
                "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Again"}],
                "End": True,
            },
            "Again": {"Type": "Pass", "Result": {}, "Next": "Fail to read"},
        },
    }
    described = emulator.run(definition)
    assert (described["status"], described["error"]) == ("FAILED", "States.Runtime")
    assert emulator.quotas.history_event_count(described["executionArn"]) == 120


# -- Step Functions: 256 KiB payloads ----------------------------------------------------------------


def test_a_state_output_of_exactly_256_kib_passes(emulator: Emulator) -> None:
    """moto refused 262,144 bytes (it checks `<`); AWS's quota is 262,144 bytes inclusive."""
    filler = PAYLOAD_MAX_BYTES - len('{"a":""}')
    definition = {
        "StartAt": "Echo",
        "States": {"Echo": {"Type": "Pass", "Parameters": {"a.$": "$.s"}, "End": True}},
    }
    assert emulator.run(definition, {"s": "x" * filler})["status"] == "SUCCEEDED"


def test_a_state_output_over_256_kib_fails_the_execution(emulator: Emulator) -> None:
    definition = {
        "StartAt": "Double",
        "States": {"Double": {"Type": "Pass", "Parameters": {"a.$": "$.s", "b.$": "$.s"}, "End": True}},
    }
    described = emulator.run(definition, {"s": "x" * (PAYLOAD_MAX_BYTES // 2)})
    assert (described["status"], described["error"]) == ("FAILED", "States.DataLimitExceeded")
    assert "Double" in described["cause"]


def test_payloads_are_measured_in_utf8_bytes_of_compact_json(emulator: Emulator) -> None:
    """GIVEN 60,000 'é' (120,000 bytes of UTF-8; moto measured 360,000 as \\u00e9 escapes),
    THEN the state passes; 140,000 of them (280,000 bytes) do not."""
    definition = {
        "StartAt": "Echo",
        "States": {"Echo": {"Type": "Pass", "Parameters": {"a.$": "$.s"}, "End": True}},
    }
    assert emulator.run(definition, {"s": "é" * 60_000})["status"] == "SUCCEEDED"
    described = emulator.run(
        {
            "StartAt": "Grow",
            "States": {
                "Grow": {"Type": "Pass", "Parameters": {"a.$": "$.s", "b.$": "$.s"}, "End": True},
            },
        },
        {"s": "é" * 70_000},
    )
    assert described["error"] == "States.DataLimitExceeded"


def test_an_sdk_result_holding_a_datetime_is_measured_not_failed(emulator: Emulator) -> None:
    """ssm:getParameter answers with LastModifiedDate, a datetime: the size check must measure it
    as moto writes it (the dispatcher's "Read concurrency setting" failed on it once)."""
    emulator.client("ssm").put_parameter(Name="/quota/setting", Value="4", Type="String")
    definition = {
        "StartAt": "Read",
        "States": {
            "Read": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:ssm:getParameter",
                "Parameters": {"Name": "/quota/setting"},
                "ResultSelector": {"value.$": "$.Parameter.Value"},
                "End": True,
            }
        },
    }
    described = emulator.run(definition)
    assert described["status"] == "SUCCEEDED", described.get("cause")
    assert json.loads(described["output"]) == {"value": "4"}


def test_execution_input_over_256_kib_is_refused_by_start_execution(emulator: Emulator) -> None:
    sfn = emulator.client("stepfunctions")
    arn = sfn.create_state_machine(
        name="input-limit",
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        roleArn=ROLE,
    )["stateMachineArn"]
    at_limit = json.dumps({"s": "x" * (PAYLOAD_MAX_BYTES - len('{"s": ""}'))})
    assert len(at_limit.encode()) == PAYLOAD_MAX_BYTES
    sfn.start_execution(stateMachineArn=arn, name="at-limit", input=at_limit)
    error = error_of(sfn.start_execution, stateMachineArn=arn, name="over", input=at_limit[:-2] + 'x"}')
    assert error["Code"] == "ValidationException"
    assert "Member must have length less than or equal to 262144" in error["Message"]


def big_message_queue(emulator: Emulator) -> str:
    """A queue holding a 300,000-byte message (SQS takes 1 MiB): receiving it is a result over 256 KiB."""
    sqs = emulator.client("sqs")
    queue_url: str = sqs.create_queue(QueueName=f"big-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="x" * 300_000)
    return queue_url


def receive_big_message(queue_url: str, catch: list[str]) -> dict[str, Any]:
    return {
        "StartAt": "Read",
        "States": {
            "Read": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:sqs:receiveMessage",
                "Parameters": {"QueueUrl": queue_url, "VisibilityTimeout": 0},
                "ResultSelector": {"size": "small"},
                "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 2, "IntervalSeconds": 1}],
                "Catch": [{"ErrorEquals": catch, "ResultPath": "$.error", "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Pass", "Result": "caught", "End": True},
        },
    }


def test_states_all_does_not_catch_a_task_result_over_256_kib(emulator: Emulator) -> None:
    """AWS: "States.ALL ... can't catch the States.DataLimitExceeded terminal error": the
    execution fails, neither retried nor caught (moto's States.ALL caught it)."""
    described = emulator.run(receive_big_message(big_message_queue(emulator), ["States.ALL"]))
    assert (described["status"], described["error"]) == ("FAILED", "States.DataLimitExceeded")
    assert (
        "returned a result with a size exceeding the maximum number of bytes service limit"
        in described["cause"]
    )
    types = [event["type"] for event in emulator.history(described["executionArn"])]
    assert types.count("TaskScheduled") == 1, "a DataLimitExceeded task must not be retried by States.ALL"


def test_a_catcher_naming_data_limit_exceeded_catches_it(emulator: Emulator) -> None:
    """The docs say States.ALL does not match it; a catcher that names it does."""
    described = emulator.run(receive_big_message(big_message_queue(emulator), ["States.DataLimitExceeded"]))
    assert described["status"] == "SUCCEEDED"
    events = emulator.history(described["executionArn"])
    failed = [event["taskFailedEventDetails"]["error"] for event in events if event["type"] == "TaskFailed"]
    assert failed == ["States.DataLimitExceeded"]
    assert [
        event["stateEnteredEventDetails"]["name"] for event in events if event["type"] == "PassStateEntered"
    ] == ["Caught"]


def test_a_task_input_over_256_kib_fails_when_the_task_is_scheduled(emulator: Emulator) -> None:
    """GIVEN Parameters that build a 300,000-byte message (SQS would take it: 1 MiB),
    THEN the task fails with States.DataLimitExceeded before SQS sees it."""
    sqs = emulator.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    definition = {
        "StartAt": "Send",
        "States": {
            "Send": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sqs:sendMessage",
                "Parameters": {"QueueUrl": queue_url, "MessageBody.$": "States.Format('{}{}', $.s, $.s)"},
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Pass", "End": True},
        },
    }
    described = emulator.run(definition, {"s": "x" * 150_000})
    assert (described["status"], described["error"]) == ("FAILED", "States.DataLimitExceeded")
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_a_map_item_state_over_256_kib_fails_the_execution(emulator: Emulator) -> None:
    """The dispatcher's shape: a Map item's state grows past 256 KiB (a long reason copied into
    it twice); the execution fails with States.DataLimitExceeded, the Map's States.ALL catcher
    does not take it. Just under the quota, the same machine succeeds."""
    definition = {
        "StartAt": "Each item",
        "States": {
            "Each item": {
                "Type": "Map",
                "ItemsPath": "$.items",
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "INLINE"},
                    "StartAt": "Note reason",
                    "States": {
                        "Note reason": {
                            "Type": "Pass",
                            "Parameters": {"reason.$": "$.reason", "again.$": "$.reason"},
                            "ResultPath": "$.invalid",
                            "End": True,
                        }
                    },
                },
                "ResultPath": None,
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Item failed"}],
                "End": True,
            },
            "Item failed": {"Type": "Pass", "End": True},
        },
    }
    overhead = len('{"reason":"","invalid":{"reason":"","again":""}}')
    under = (PAYLOAD_MAX_BYTES - overhead) // 3
    assert emulator.run(definition, {"items": [{"reason": "r" * under}]})["status"] == "SUCCEEDED"
    described = emulator.run(definition, {"items": [{"reason": "r" * (under + 1)}]})
    assert (described["status"], described["error"]) == ("FAILED", "States.DataLimitExceeded")


# -- SQS -------------------------------------------------------------------------------------------


def test_sqs_message_size_counts_utf8_bytes(emulator: Emulator) -> None:
    sqs = emulator.client("sqs")
    queue_url = sqs.create_queue(QueueName="sizes")["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="x" * SQS_MESSAGE_MAX_BYTES)
    # moto counted characters: 524,289 'é' are 1,048,578 bytes.
    error = error_of(sqs.send_message, QueueUrl=queue_url, MessageBody="é" * (SQS_MESSAGE_MAX_BYTES // 2 + 1))
    assert error["Code"] == "InvalidParameterValue"
    assert "Message must be shorter than 1048576 bytes" in error["Message"]


def test_sqs_message_attributes_count_toward_the_queue_size(emulator: Emulator) -> None:
    sqs = emulator.client("sqs")
    queue_url = sqs.create_queue(QueueName="small", Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="x" * 1024)
    attribute = {"why": {"DataType": "String", "StringValue": "y" * 10}}
    error = error_of(
        sqs.send_message, QueueUrl=queue_url, MessageBody="x" * 1010, MessageAttributes=attribute
    )
    assert error["Code"] == "InvalidParameterValue"


def test_sqs_limits_moto_already_enforces(emulator: Emulator) -> None:
    """ReceiveMessage takes 1..10 messages; ChangeMessageVisibility at most 12 h (43,200 s)."""
    sqs = emulator.client("sqs")
    queue_url = sqs.create_queue(QueueName="limits")["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="m")
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert (
        error_of(sqs.receive_message, QueueUrl=queue_url, MaxNumberOfMessages=11)["Code"]
        == "InvalidParameterValue"
    )
    handle = received[0]["ReceiptHandle"]
    sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=43_000)
    error = error_of(
        sqs.change_message_visibility, QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=43_201
    )
    assert error["Code"] == "InvalidParameterValue"


# -- SNS -------------------------------------------------------------------------------------------


def test_sns_message_size_counts_utf8_bytes(emulator: Emulator) -> None:
    sns = emulator.client("sns")
    topic = sns.create_topic(Name="sizes")["TopicArn"]
    sns.publish(TopicArn=topic, Message="x" * SNS_MESSAGE_MAX_BYTES)
    error = error_of(sns.publish, TopicArn=topic, Message="é" * (SNS_MESSAGE_MAX_BYTES // 2 + 1))
    assert (error["Code"], error["Message"]) == ("InvalidParameter", "Invalid parameter: Message too long")


def test_sns_subject_rules(emulator: Emulator) -> None:
    """At most 100 characters (moto), no line breaks or control characters, not empty (the gate)."""
    sns = emulator.client("sns")
    topic = sns.create_topic(Name="subjects")["TopicArn"]
    sns.publish(TopicArn=topic, Message="m", Subject="s" * 100)
    assert error_of(sns.publish, TopicArn=topic, Message="m", Subject="s" * 101)["Code"] == "InvalidParameter"
    for subject in ("two\nlines", "tab\there", ""):
        error = error_of(sns.publish, TopicArn=topic, Message="m", Subject=subject)
        assert (error["Code"], error["Message"]) == ("InvalidParameter", "Invalid parameter: Subject"), (
            subject
        )


# -- S3 --------------------------------------------------------------------------------------------


def test_s3_keys_over_1024_utf8_bytes_are_refused(emulator: Emulator) -> None:
    s3 = emulator.client("s3")
    s3.create_bucket(Bucket="keys")
    longest = "k" * S3_KEY_MAX_BYTES
    s3.put_object(Bucket="keys", Key=longest, Body=b"x")
    too_long = ["k" * (S3_KEY_MAX_BYTES + 1), "é" * (S3_KEY_MAX_BYTES // 2 + 1)]
    for key in too_long:
        error = error_of(s3.put_object, Bucket="keys", Key=key, Body=b"x")
        assert (error["Code"], error["Message"]) == ("KeyTooLongError", "Your key is too long.")
        copy = error_of(s3.copy_object, Bucket="keys", Key=key, CopySource={"Bucket": "keys", "Key": longest})
        assert copy["Code"] == "KeyTooLongError"
        assert error_of(s3.create_multipart_upload, Bucket="keys", Key=key)["Code"] == "KeyTooLongError"
    listed = s3.list_objects_v2(Bucket="keys")["Contents"]
    assert [item["Key"] for item in listed] == [longest]


# -- DynamoDB --------------------------------------------------------------------------------------


def test_dynamodb_items_over_400_kb_are_refused_by_moto(emulator: Emulator) -> None:
    dynamodb = emulator.client("dynamodb")
    dynamodb.create_table(
        TableName="items",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.put_item(TableName="items", Item={"pk": {"S": "a"}, "v": {"S": "x" * 399_000}})
    error = error_of(dynamodb.put_item, TableName="items", Item={"pk": {"S": "b"}, "v": {"S": "x" * 410_000}})
    assert (error["Code"], error["Message"]) == (
        "ValidationException",
        "Item size has exceeded the maximum allowed size",
    )


# -- the stack itself --------------------------------------------------------------------------------


def test_the_stack_counts_history_events_as_moto_records_them(engine_stack: OfflineStack) -> None:
    """GIVEN the engine fixture app with one message in its inbox,
    WHEN its pump state machine runs once,
    THEN `stack.quotas` counted exactly the events GetExecutionHistory returns, per type, and the
    stack's endpoint refuses an over-long S3 key (the quotas are on while a stack runs)."""
    sfn = engine_stack.client("stepfunctions")
    pump = engine_stack.state_machine_arn("PumpStateMachine")

    def idle() -> bool:
        return not sfn.list_executions(stateMachineArn=pump, statusFilter="RUNNING")["executions"]

    assert engine_stack.scheduler is not None
    with engine_stack.scheduler.paused():
        wait_for(idle, timeout=60, what="the pump's scheduled executions to end")
        body = json.dumps({"detail": {"object": {"key": f"counted-{uuid.uuid4().hex[:8]}"}}})
        engine_stack.client("sqs").send_message(QueueUrl=engine_stack.outputs["QueueUrl"], MessageBody=body)
        described = engine_stack.start_execution({}, state_machine="PumpStateMachine")
    assert described["status"] == "SUCCEEDED"
    events = sfn.get_execution_history(executionArn=described["executionArn"], maxResults=1000)["events"]
    counts = engine_stack.quotas.history(described["executionArn"])
    assert counts == Counter(event["type"] for event in events)
    assert counts["MapIterationStarted"] == counts["MapIterationSucceeded"] == 1
    assert counts["TaskScheduled"] == counts["TaskStarted"] == counts["TaskSucceeded"]

    s3 = engine_stack.client("s3")
    error = error_of(s3.put_object, Bucket=engine_stack.outputs["BucketName"], Key="k" * 1025, Body=b"x")
    assert error["Code"] == "KeyTooLongError"
