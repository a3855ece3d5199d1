"""Run statemachine/dispatcher.asl.json itself in moto, its Lambda tasks answered by Python fakes.

moto executes ASL (its `stepfunctions.execute_state_machine` setting) and serves the SQS queues,
SNS topics, SSM parameter and DynamoDB table the definition calls. It cannot run Lambda code
without Docker, so the parser's Lambda call is replaced: `lambda_eval_utils._invoke_lambda_function`
is the one place where a `lambda:invoke` task turns into a Lambda Invoke request, and what it
returns (or raises) is mapped by the parser to task output or error names exactly as for AWS:
a `FunctionError` answer becomes the function's `errorType`, a ClientError `Lambda.<Code>`.
The fakes below answer like the real functions (docs/interfaces.md) and keep the metadata item
the way the real ones do, so tests assert outcomes in the table, the queues and on the topics.
"""

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from awslambdaric.bootstrap import build_fault_result
from botocore.exceptions import ClientError

from sluice.ingest import CLAIM_ATTRIBUTE
from sluice.models import MAX_OUTPUT_CALLS

REPO = Path(__file__).resolve().parents[2]
DEFINITION = REPO / "statemachine" / "dispatcher.asl.json"
ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTION_NAMES = (
    "DispatcherLease",
    "PlanBatch",
    "RegisterObject",
    "ValidateObject",
    "ProcessObject",
    "WriteOutput",
)
SUCCEEDED = {"SUCCEEDED", "SUCCEEDED_WITH_REJECTS"}
FINISHED = {*SUCCEEDED, "INVALID"}

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class LambdaServiceError(Exception):
    """Raise in a fake to answer as Lambda's Invoke API does when the service fails (HTTP 500)."""


class FunctionError(Exception):
    """Raise in a fake to answer as an unhandled exception in the handler does."""

    def __init__(self, error_type: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.body = body  # Lambda's whole answer, when a test has the real one (lambda_error_body)


@dataclass
class Call:
    function: str
    payload: dict[str, Any]
    started: float
    ended: float = 0.0


@dataclass
class Functions:
    """The six functions, by name; each test swaps in the behaviour it needs."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def payloads(self, function: str) -> list[dict[str, Any]]:
        return [call.payload for call in self.calls if call.function == function]

    def invoke(self, parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
        """Stands in for the Lambda Invoke call the ASL parser makes for a lambda:invoke task."""
        function = str(parameters["FunctionName"]).rsplit(":function:", 1)[-1].removeprefix("sluice-test-")
        payload = json.loads(parameters.get("Payload") or b"{}")
        call = Call(function, payload, time.monotonic())
        with self._lock:
            self.calls.append(call)
            self.in_flight[function] = self.in_flight.get(function, 0) + 1
            self.max_in_flight[function] = max(self.max_in_flight.get(function, 0), self.in_flight[function])
        try:
            return {"StatusCode": 200, "Payload": self.handlers[function](payload)}
        except LambdaServiceError as error:
            raise ClientError(
                {
                    "Error": {"Code": "ServiceException", "Message": str(error)},
                    "ResponseMetadata": {"HTTPStatusCode": 500, "RequestId": "fake-request"},
                },
                "Invoke",
            ) from None
        except FunctionError as error:
            body = error.body or {"errorType": error.error_type, "errorMessage": str(error), "stackTrace": []}
            return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": body}
        finally:
            call.ended = time.monotonic()
            with self._lock:
                self.in_flight[function] -= 1


def lambda_error_body(handler: Callable[[Any, Any], Any], event: Any) -> FunctionError:
    """What Lambda answers when `handler` raises: its runtime's own error document (awslambdaric)."""
    try:
        handler(event, None)
    except Exception:
        body = build_fault_result(sys.exc_info(), None)
        return FunctionError(body["errorType"], body["errorMessage"], body)
    raise AssertionError("the handler did not raise")


def s3_event_body(key: str, version_id: str = "v1", bucket: str = "sluice-raw-example") -> str:
    """An EventBridge S3 "Object Created" event, as IngestRule delivers it to IngestQueue."""
    event = json.loads((REPO / "events" / "eventbridge-s3-object-created.json").read_text())
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"].update({"key": key, "version-id": version_id, "size": 100})
    return json.dumps(event)


class Stack:
    """The AWS resources the definition calls, in moto, and the fakes that keep their items."""

    def __init__(self, functions: Functions, **substitutions: str) -> None:
        self.functions = functions
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.sns = boto3.client("sns", region_name=REGION)
        self.ssm = boto3.client("ssm", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.dynamodb = boto3.client("dynamodb", region_name=REGION)
        self.table = boto3.resource("dynamodb", region_name=REGION).Table("sluice-test-metadata")
        self.max_receive_count = int(substitutions.get("MaxReceiveCount", "5"))

        self.dlq_url = self.sqs.create_queue(QueueName="sluice-test-ingest-dlq")["QueueUrl"]
        dlq_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:sluice-test-ingest-dlq"
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(self.max_receive_count)}
        self.ingest_url = self.sqs.create_queue(
            QueueName="sluice-test-ingest",
            Attributes={"VisibilityTimeout": "180", "RedrivePolicy": json.dumps(redrive)},
        )["QueueUrl"]
        self.invalid_url = self.sqs.create_queue(QueueName="sluice-test-invalid")["QueueUrl"]
        self.notification_topic = self.sns.create_topic(Name="sluice-test-notifications")["TopicArn"]
        self.alert_topic = self.sns.create_topic(Name="sluice-test-alerts")["TopicArn"]
        self.notifications_url = self._subscribed_queue(self.notification_topic, "notifications")
        self.alerts_url = self._subscribed_queue(self.alert_topic, "alerts")
        self.parameter = "/sluice-test/dispatcher/concurrency"
        self.ssm.put_parameter(Name=self.parameter, Value="3", Type="String")
        self.dynamodb.create_table(
            TableName="sluice-test-metadata",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:sluice-test-{{}}"
        values = {
            "Partition": "aws",
            **{f"{name}FunctionArn": function_arn.format(name) for name in FUNCTION_NAMES},
            "IngestQueueUrl": self.ingest_url,
            "InvalidQueueUrl": self.invalid_url,
            "ConcurrencyParameterName": self.parameter,
            "MetadataTableName": "sluice-test-metadata",
            "NotificationTopicArn": self.notification_topic,
            "AlertTopicArn": self.alert_topic,
            "ConcurrencyMin": "1",
            "ConcurrencyMax": "10",
            "MaxReceiveCount": "5",
            "SegmentsPerTurn": "5",
            "RetryDelaySeconds": "0",
            "SegmentVisibilitySeconds": "60",
            "ReceiveWaitSeconds": "0",
            **substitutions,
        }
        # DefinitionSubstitutions, as CloudFormation applies them: textual ${Name} replacement.
        text = DEFINITION.read_text()
        for name, value in values.items():
            text = text.replace(f"${{{name}}}", value)
        assert "${" not in text, "a placeholder of the definition has no value here"
        self.state_machine = self.sfn.create_state_machine(
            name="sluice-test-dispatcher",
            definition=text,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/sluice-test-dispatcher",
            type="STANDARD",
        )["stateMachineArn"]
        self.segments: dict[str, int] = {}  # key -> segments its processing takes (default 1)
        self.output_calls: dict[str, int] = {}  # key -> WriteOutput calls its merge takes (default 1)
        self.rounds_per_execution = 1
        self.waits: list[int] = []  # PlanBatch's wait_seconds by position in the batch
        functions.handlers.update(
            DispatcherLease=self.lease,
            PlanBatch=self.plan,
            RegisterObject=self.register,
            ValidateObject=self.validate,
            ProcessObject=self.process,
            WriteOutput=self.write_output,
        )

    def _subscribed_queue(self, topic: str, name: str) -> str:
        url = self.sqs.create_queue(QueueName=f"sluice-test-{name}")["QueueUrl"]
        arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:sluice-test-{name}"
        self.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        return url

    # ----------------------------------------------------------------------------- driving

    def send(self, key: str, body: str | None = None) -> str:
        return self.sqs.send_message(QueueUrl=self.ingest_url, MessageBody=body or s3_event_body(key))[
            "MessageId"
        ]

    def run(self, timeout: float = 20.0) -> dict[str, Any]:
        """Start an execution with the schedule event and wait until it ends (or fail at `timeout`)."""
        event = (REPO / "events" / "schedule.json").read_text()
        execution = self.sfn.start_execution(
            stateMachineArn=self.state_machine, name=f"dispatch-{time.monotonic_ns()}", input=event
        )["executionArn"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.05)
        raise AssertionError(f"the dispatcher execution was still running after {timeout} s")

    # ----------------------------------------------------------------------------- reading outcomes

    def queue_depth(self, url: str) -> int:
        """Messages in the queue, visible or in flight."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return sum(int(attributes[name]) for name in names)

    def receive(self, url: str) -> list[dict[str, Any]]:
        """What is visible in `url` now (up to 10), with attributes; it stays in the queue."""
        return self.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])

    def published(self, url: str) -> list[dict[str, Any]]:
        """The JSON messages a topic delivered to its test subscription queue."""
        return [json.loads(json.loads(m["Body"])["Message"]) for m in self.receive(url)]

    def item(self, key: str, version_id: str = "v1") -> dict[str, Any] | None:
        return self.table.get_item(
            Key={"pk": f"sluice-raw-example/{key}#{version_id}"}, ConsistentRead=True
        ).get("Item")

    def put_item(self, key: str, state: str, version_id: str = "v1", *, output: bool = True) -> None:
        """An item in `state`; a success has its results (summary_key) unless `output` is False."""
        item = {"pk": f"sluice-raw-example/{key}#{version_id}", "state": state, "attempts": 1}
        if state in SUCCEEDED and output:
            item["summary_key"] = f"results/{key}/{version_id}/summary.json"
        self.table.put_item(Item=item)

    # ----------------------------------------------------------------------------- the fakes

    def lease(self, payload: dict[str, Any]) -> dict[str, Any]:
        budget_left = payload["round"] < self.rounds_per_execution
        return {"acquired": True, "budget_left": budget_left, "deadline": "2026-11-22T03:14:00Z"}

    def plan(self, payload: dict[str, Any]) -> dict[str, Any]:
        items = []
        for index, message in enumerate(payload["messages"]):
            wait = self.waits[index] if index < len(self.waits) else 0
            receive_count = int(message["Attributes"]["ApproximateReceiveCount"])
            carried = message.get("MessageAttributes", {}).get(CLAIM_ATTRIBUTE, {}).get("StringValue")
            items.append(
                {
                    "message": {
                        "message_id": message["MessageId"],
                        "receipt_handle": message["ReceiptHandle"],
                        "body": message["Body"],
                        "receive_count": receive_count,
                        "claim": carried or message["MessageId"],
                    },
                    "priority": 5,
                    "wait_seconds": wait,
                }
            )
        return {"items": items}

    def register(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            detail = json.loads(message["body"])["detail"]
        except (ValueError, KeyError):
            return {
                "action": "reject",
                "object": None,
                "reason": "not an S3 Object Created event",
                "attempt": 1,
                "defer_seconds": 0,
                "result": None,
            }
        bucket, key, version = (
            detail["bucket"]["name"],
            detail["object"]["key"],
            detail["object"]["version-id"],
        )
        obj = {
            "id": f"{bucket}/{key}#{version}",
            "bucket": bucket,
            "key": key,
            "version_id": version,
            "size": detail["object"]["size"],
            "etag": '"e"',
        }
        existing = self.table.get_item(Key={"pk": obj["id"]}, ConsistentRead=True).get("Item")
        answer = {"object": obj, "reason": None, "defer_seconds": 0, "result": None}
        if existing and existing["state"] in SUCCEEDED and "summary_key" not in existing:
            result = {
                "done": True,
                "segment": 0,
                "outcome": existing["state"],
                **{k: int(existing.get(k, 0)) for k in ("rows_total", "rows_delivered", "rows_rejected")},
            }
            return answer | {
                "action": "complete output",
                "attempt": int(existing["attempts"]),
                "result": result,
            }
        if existing and existing["state"] in FINISHED:
            return answer | {"action": "skip", "attempt": int(existing["attempts"])}
        claimant = message.get("claim") or message["message_id"]
        if existing and existing.get("claimed_by") not in (None, claimant):
            # Another message's live claim (the fake's claims never expire): come back later.
            defer = int(existing["defer_seconds"])
            return answer | {"action": "defer", "attempt": int(existing["attempts"]), "defer_seconds": defer}
        attempt = int(existing["attempts"]) + 1 if existing else 1
        kept = {k: v for k, v in (existing or {}).items() if k in ("rows_total", "checkpoint_segment")}
        self.table.put_item(
            Item={"pk": obj["id"], "state": "RECEIVED", "attempts": attempt, "claimed_by": claimant, **kept}
        )
        return answer | {"action": "process", "attempt": attempt}

    def validate(self, payload: dict[str, Any]) -> dict[str, Any]:
        obj = payload["object"]
        if "invalid" in obj["key"]:
            # Like the real function, it records nothing: the state machine records INVALID.
            return {"valid": False, "header": None, "reason": "header: missing column 'amount'"}
        return {"valid": True, "header": ["order_id", "amount"], "reason": None}

    def process(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One segment, resuming from the item's checkpoint (its count of segments done), like the
        real function: `segment` numbers this attempt's segments, the checkpoint spans attempts."""
        obj, segment = payload["object"], payload["segment"]
        state = {"#s": "state"}
        if segment == 0:
            self.table.update_item(
                Key={"pk": obj["id"]},
                UpdateExpression="SET #s = :processing",
                ExpressionAttributeNames=state,
                ExpressionAttributeValues={":processing": "PROCESSING"},
            )
        checkpoint = self.table.update_item(
            Key={"pk": obj["id"]},
            UpdateExpression="ADD checkpoint_segment :one",
            ExpressionAttributeValues={":one": 1},
            ReturnValues="ALL_NEW",
        )["Attributes"]["checkpoint_segment"]
        done = int(checkpoint) >= self.segments.get(obj["key"], 1)
        rows = 10 * int(checkpoint)
        return {
            "done": done,
            "segment": segment + 1,
            "outcome": "SUCCEEDED_WITH_REJECTS" if done else None,
            "rows_total": rows,
            "rows_delivered": rows - 1,
            "rows_rejected": 1,
            "parts": segment + 1,
            "runs": [[0, payload["attempt"]]],
        }

    def write_output(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Merges over as many calls as `output_calls` says, answering a position as results.py does."""
        prefix = f"results/{payload['object']['key']}/{payload['object']['version_id']}"
        calls = (payload.get("position") or {"calls": 0})["calls"] + 1
        needed = self.output_calls.get(payload["object"]["key"], 1)
        position = {"calls": calls, "output": 0, "upload_id": "u1", "next_piece": calls, "pieces": needed}
        return {
            "done": calls >= needed,
            "calls_left": MAX_OUTPUT_CALLS - calls,
            "position": None if calls >= needed else position,
            "accepted_key": f"{prefix}/accepted.jsonl",
            "rejects_key": f"{prefix}/rejects.csv",
            "summary_key": f"{prefix}/summary.json",
        }
