"""The offline stack's EventBridge → Lambda bridge: moto's S3 and EventBridge, a recording runtime.

What is asserted is what a rule's Lambda target would receive: one asynchronous invocation per
matched event, with the event as EventBridge sends it (its own id, ISO time), and that the rule's
other (SQS) target still gets the event from moto.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.events.models import Rule

from sluice_cli.offline.events_bridge import EventsLambdaBridge

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:sluice-local-WakeDispatcher-ABC"
PATTERN = {"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": {"bucket": {"name": ["raw"]}}}


class RecordingRuntime:
    """Stands in for LambdaRuntime.invoke_async: keeps what it was asked to run."""

    def __init__(self) -> None:
        self.invocations: list[tuple[str, dict[str, Any]]] = []

    def invoke_async(self, function: str, payload: bytes) -> str:
        self.invocations.append((function, json.loads(payload)))
        return f"request-{len(self.invocations)}"


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        events = boto3.client("events", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        s3.create_bucket(Bucket="raw")
        s3.put_bucket_notification_configuration(
            Bucket="raw", NotificationConfiguration={"EventBridgeConfiguration": {}}
        )
        queue = sqs.create_queue(QueueName="ingest")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        rule_arn = events.put_rule(Name="ingest", EventPattern=json.dumps(PATTERN))["RuleArn"]
        # what the provisioner does: moto gets the targets it can deliver to, the bridge the rest
        events.put_targets(Rule="ingest", Targets=[{"Id": "queue", "Arn": queue_arn}])
        yield {"s3": s3, "sqs": sqs, "queue": queue, "rule_arn": rule_arn, "events": events}


def test_a_matched_event_invokes_the_lambda_target_and_still_reaches_the_queue(aws: dict[str, Any]) -> None:
    runtime = RecordingRuntime()
    with EventsLambdaBridge(runtime.invoke_async) as bridge:
        bridge.route(aws["rule_arn"], [{"Id": "wake", "Arn": FUNCTION_ARN}])

        aws["s3"].put_object(Bucket="raw", Key="a.csv", Body=b"x")
        aws["s3"].put_object(Bucket="raw", Key="b.csv", Body=b"y")

    assert [function for function, _ in runtime.invocations] == [FUNCTION_ARN, FUNCTION_ARN]
    first, second = (event for _, event in runtime.invocations)
    assert (first["detail-type"], first["detail"]["object"]["key"]) == ("Object Created", "a.csv")
    assert first["time"].endswith("Z")
    # each event its own id (moto gives every S3 event the same one), stable for one event
    assert first["id"] != second["id"]
    assert [d.event_id for d in bridge.deliveries()] == [first["id"], second["id"]]
    messages = aws["sqs"].receive_message(QueueUrl=aws["queue"], MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 2


def test_an_unmatched_event_invokes_nothing_and_uninstall_restores_moto(aws: dict[str, Any]) -> None:
    runtime = RecordingRuntime()
    original = Rule.send_to_targets
    aws["s3"].create_bucket(Bucket="other")
    aws["s3"].put_bucket_notification_configuration(
        Bucket="other", NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    with EventsLambdaBridge(runtime.invoke_async) as bridge:
        bridge.route(aws["rule_arn"], [{"Id": "wake", "Arn": FUNCTION_ARN}])
        aws["s3"].put_object(Bucket="other", Key="a.csv", Body=b"x")
        with pytest.raises(RuntimeError, match="already installed"):
            EventsLambdaBridge(runtime.invoke_async).install()

    assert runtime.invocations == []
    assert Rule.send_to_targets is original
