"""The offline stack's SNS → Lambda bridge: moto's SNS, a recording stand-in for the runtime.

What is asserted is what a subscribed function would receive: one asynchronous invocation per
message, with the event SNS sends (the real MessageId and TopicArn, the subscription's ARN).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.sns.models import Subscription

from sluice_cli.offline.sns_bridge import SnsLambdaBridge

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:sluice-local-AlertNotifier-ABC"


class RecordingRuntime:
    """Stands in for LambdaRuntime.invoke_async: keeps what it was asked to run."""

    def __init__(self) -> None:
        self.invocations: list[tuple[str, dict[str, Any]]] = []

    def invoke_async(self, function: str, payload: bytes) -> str:
        self.invocations.append((function, json.loads(payload)))
        return f"request-{len(self.invocations)}"


@pytest.fixture
def runtime() -> RecordingRuntime:
    return RecordingRuntime()


@pytest.fixture
def bridge(runtime: RecordingRuntime) -> Iterator[SnsLambdaBridge]:
    with SnsLambdaBridge(runtime.invoke_async) as installed:
        yield installed


@pytest.fixture
def sns() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sns", region_name="us-east-1")


def lambda_topic(sns: Any, **attributes: str) -> tuple[str, str]:
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    subscription = sns.subscribe(
        TopicArn=topic,
        Protocol="lambda",
        Endpoint=FUNCTION_ARN,
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    return topic, subscription


def test_a_publish_becomes_one_async_invocation_with_the_event_sns_sends(
    sns: Any, runtime: RecordingRuntime, bridge: SnsLambdaBridge
) -> None:
    topic, subscription = lambda_topic(sns)

    message_id = sns.publish(
        TopicArn=topic,
        Message='{"kind": "file_invalid"}',
        Subject="Sluice: invalid file",
        MessageAttributes={"stage": {"DataType": "String", "StringValue": "validate"}},
    )["MessageId"]

    assert len(runtime.invocations) == 1
    function, event = runtime.invocations[0]
    assert function == FUNCTION_ARN
    [record] = event["Records"]
    assert record["EventSource"] == "aws:sns"
    assert record["EventVersion"] == "1.0"
    assert record["EventSubscriptionArn"] == subscription
    sns_part = record["Sns"]
    assert sns_part["MessageId"] == message_id
    assert sns_part["TopicArn"] == topic
    assert sns_part["Type"] == "Notification"
    assert sns_part["Subject"] == "Sluice: invalid file"
    assert sns_part["Message"] == '{"kind": "file_invalid"}'
    assert sns_part["MessageAttributes"] == {"stage": {"Type": "String", "Value": "validate"}}
    sent = datetime.fromisoformat(sns_part["Timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 60
    assert subscription in sns_part["UnsubscribeUrl"]
    assert [(d.message_id, d.request_id) for d in bridge.deliveries()] == [(message_id, "request-1")]


def test_each_publish_carries_its_own_message_id_and_no_subject_is_null(
    sns: Any, runtime: RecordingRuntime, bridge: SnsLambdaBridge
) -> None:
    topic, _ = lambda_topic(sns)

    first = sns.publish(TopicArn=topic, Message="one")["MessageId"]
    second = sns.publish(TopicArn=topic, Message="two")["MessageId"]

    ids = [event["Records"][0]["Sns"]["MessageId"] for _, event in runtime.invocations]
    assert ids == [first, second]
    assert first != second
    assert [event["Records"][0]["Sns"]["Subject"] for _, event in runtime.invocations] == [None, None]


def test_the_subscriptions_filter_policy_is_honoured(
    sns: Any, runtime: RecordingRuntime, bridge: SnsLambdaBridge
) -> None:
    topic, _ = lambda_topic(sns, FilterPolicy=json.dumps({"severity": ["high"]}))

    sns.publish(
        TopicArn=topic,
        Message="ignored",
        MessageAttributes={"severity": {"DataType": "String", "StringValue": "low"}},
    )
    sns.publish(
        TopicArn=topic,
        Message="delivered",
        MessageAttributes={"severity": {"DataType": "String", "StringValue": "high"}},
    )

    assert [event["Records"][0]["Sns"]["Message"] for _, event in runtime.invocations] == ["delivered"]


def test_a_json_message_structure_delivers_the_lambda_or_default_text(
    sns: Any, runtime: RecordingRuntime, bridge: SnsLambdaBridge
) -> None:
    topic, _ = lambda_topic(sns)

    sns.publish(
        TopicArn=topic,
        MessageStructure="json",
        Message=json.dumps({"default": "for everyone", "lambda": "for functions"}),
    )

    assert runtime.invocations[0][1]["Records"][0]["Sns"]["Message"] == "for functions"


def test_other_protocols_keep_motos_delivery(
    sns: Any, runtime: RecordingRuntime, bridge: SnsLambdaBridge
) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="watch")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic, _ = lambda_topic(sns)
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)

    message_id = sns.publish(TopicArn=topic, Message="to both")["MessageId"]

    [received] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)["Messages"]
    body = json.loads(received["Body"])
    assert (body["MessageId"], body["Message"], body["TopicArn"]) == (message_id, "to both", topic)
    assert [event["Records"][0]["Sns"]["MessageId"] for _, event in runtime.invocations] == [message_id]


def test_a_delivery_that_cannot_be_made_does_not_fail_the_publish(sns: Any) -> None:
    def no_such_function(function: str, payload: bytes) -> str:
        raise LookupError(function)

    topic, _ = lambda_topic(sns)
    with SnsLambdaBridge(no_such_function) as failing:
        message_id = sns.publish(TopicArn=topic, Message="lost locally")["MessageId"]

    [delivery] = failing.deliveries()
    assert (delivery.message_id, delivery.request_id) == (message_id, None)
    assert delivery.error is not None
    assert FUNCTION_ARN in delivery.error


def test_uninstall_puts_motos_method_back_and_only_one_bridge_runs_at_a_time(
    runtime: RecordingRuntime,
) -> None:
    original = Subscription.publish
    bridge = SnsLambdaBridge(runtime.invoke_async).install()
    try:
        assert Subscription.publish is not original
        with pytest.raises(RuntimeError, match="already installed"):
            SnsLambdaBridge(runtime.invoke_async).install()
    finally:
        bridge.uninstall()

    assert Subscription.publish is original
    bridge.uninstall()  # a second stop changes nothing
    assert Subscription.publish is original
    with SnsLambdaBridge(runtime.invoke_async):  # and a new one can be installed
        assert Subscription.publish is not original
    assert Subscription.publish is original
