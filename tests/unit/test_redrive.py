"""sluice.redrive and `sluice redrive` on moto: every dead letter goes back exactly once, a fault
mid-way loses nothing, a dry run moves nothing."""

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import typer
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from sluice.redrive import (
    Pacer,
    Redriver,
    RedriveRequest,
    RedriveSource,
    RedriveTargets,
    is_unsupported,
)
from sluice_cli.redrive_cli import redrive

pytestmark = pytest.mark.timeout(120)

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:sluice-dev-AlertNotifierFunction-X1:$LATEST"


class Clock:
    """A fake monotonic clock that sleeping advances: pacing is asserted without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FaultySqs:
    """The real (moto) SQS client, with chosen calls failing: the faults a redrive must survive."""

    def __init__(
        self, client: Any, *, fail_send_batch: frozenset[int] = frozenset(), fail_deletes: bool = False
    ) -> None:
        self._client = client
        self._fail_send_batch = fail_send_batch  # which send_message_batch calls (1-based) raise
        self._fail_deletes = fail_deletes
        self.send_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.send_calls += 1
        if self.send_calls in self._fail_send_batch:
            raise ClientError(
                {"Error": {"Code": "ServiceUnavailable", "Message": "injected"}}, "SendMessageBatch"
            )
        return self._client.send_message_batch(**kwargs)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        if self._fail_deletes:
            raise ClientError(
                {"Error": {"Code": "ServiceUnavailable", "Message": "injected"}}, "DeleteMessageBatch"
            )
        return self._client.delete_message_batch(**kwargs)


class PartialSqs(FaultySqs):
    """SendMessageBatch that rejects the entry with Id "3" of every batch."""

    def send_message_batch(self, **kwargs: Any) -> Any:
        entries = kwargs["Entries"]
        kept = [e for e in entries if e["Id"] != "3"]
        answer = self._client.send_message_batch(QueueUrl=kwargs["QueueUrl"], Entries=kept)
        if len(kept) < len(entries):
            answer.setdefault("Failed", []).append(
                {"Id": "3", "Code": "InternalError", "Message": "injected"}
            )
        return answer


class MoveTaskSqs(FaultySqs):
    """An SQS that has StartMessageMoveTask (AWS does, moto does not): moves at once, reports COMPLETED."""

    def __init__(self, client: Any, status: str = "COMPLETED") -> None:
        super().__init__(client)
        self.status = status
        self.started: list[dict[str, Any]] = []
        self.listed = 0

    def start_message_move_task(self, **kwargs: Any) -> dict[str, Any]:
        self.started.append(kwargs)
        return {"TaskHandle": "handle-1"}

    def list_message_move_tasks(self, **kwargs: Any) -> dict[str, Any]:
        self.listed += 1
        if self.listed == 1:
            return {"Results": [{"Status": "RUNNING", "ApproximateNumberOfMessagesMoved": 0}]}
        moved = 0
        if self.status == "COMPLETED" and self.listed == 2:
            moved = move_all(self._client, self.started[0])
        return {
            "Results": [
                {"Status": self.status, "ApproximateNumberOfMessagesMoved": moved, "FailureReason": "x"}
            ]
        }


def move_all(client: Any, task: dict[str, Any]) -> int:
    urls = {arn_of(client, url): url for url in client.list_queues()["QueueUrls"]}
    source, destination = urls[task["SourceArn"]], urls[task["DestinationArn"]]
    moved = 0
    while messages := client.receive_message(QueueUrl=source, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            client.send_message(QueueUrl=destination, MessageBody=message["Body"])
            client.delete_message(QueueUrl=source, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
    return moved


class FakeLambda:
    """Records invocations; fails for function names listed in `failing`."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.invocations: list[tuple[str, str, Any]] = []
        self.failing = failing

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        if any(name in FunctionName for name in self.failing):
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "gone"}}, "Invoke")
        self.invocations.append((FunctionName, InvocationType, json.loads(Payload)))
        return {"StatusCode": 202 if "throttled" not in FunctionName else 429}


class FakeSfn:
    """Step Functions with RedriveExecution (moto lacks it); list/describe from a fixed table."""

    def __init__(self, executions: dict[str, str], redrive_status: str = "REDRIVABLE") -> None:
        self.executions = executions  # arn → status
        self.redrive_status = redrive_status
        self.redriven: list[str] = []
        self.started: dict[str, datetime] = {}  # newest first, as ListExecutions answers
        self.described: list[str] = []

    def get_paginator(self, name: str) -> Any:
        fake = self

        class Pages:
            def paginate(self, *, stateMachineArn: str, statusFilter: str) -> list[dict[str, Any]]:
                found = [
                    {"executionArn": a, "startDate": fake.started.get(a, datetime.now(UTC))}
                    for a, s in fake.executions.items()
                    if s == statusFilter
                ]
                return [{"executions": found}]

        return Pages()

    def describe_execution(self, *, executionArn: str) -> dict[str, Any]:
        self.described.append(executionArn)
        return {"executionArn": executionArn, "redriveStatus": self.redrive_status}

    def redrive_execution(self, *, executionArn: str) -> dict[str, Any]:
        if "not-redrivable" in executionArn:
            raise ClientError(
                {"Error": {"Code": "ExecutionNotRedrivable", "Message": "no"}}, "RedriveExecution"
            )
        self.redriven.append(executionArn)
        self.executions[executionArn] = "RUNNING"
        return {}


def arn_of(client: Any, url: str) -> str:
    return client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


@pytest.fixture
def queues() -> Iterator[dict[str, Any]]:
    with mock_aws():
        sqs = boto3.client("sqs")
        urls = {
            name: sqs.create_queue(QueueName=name)["QueueUrl"]
            for name in ("IngestDLQ", "IngestRuleDLQ", "FD")
        }
        redrive_policy = json.dumps(
            {"deadLetterTargetArn": arn_of(sqs, urls["IngestDLQ"]), "maxReceiveCount": 3}
        )
        urls["IngestQueue"] = sqs.create_queue(
            QueueName="IngestQueue", Attributes={"RedrivePolicy": redrive_policy}
        )["QueueUrl"]
        yield {"sqs": sqs, **urls}


def targets(queues: dict[str, Any], **extra: str) -> RedriveTargets:
    return RedriveTargets(
        ingest_queue_url=queues["IngestQueue"],
        ingest_dlq_url=queues["IngestDLQ"],
        ingest_rule_dlq_url=queues["IngestRuleDLQ"],
        failure_destination_queue_url=queues["FD"],
        **extra,
    )


def redriver(queues: dict[str, Any], sqs: Any = None, clock: Clock | None = None, **options: Any) -> Redriver:
    clock = clock or Clock()
    defaults: dict[str, Any] = {
        "sqs": sqs or queues["sqs"],
        "lambda_client": FakeLambda(),
        "sfn": FakeSfn({}),
        "receive_wait_seconds": 0,
        "clock": clock,
        "sleep": clock.sleep,
    }
    if "targets" not in options:
        defaults["targets"] = targets(queues)
    return Redriver(**{**defaults, **options})


def fill(queues: dict[str, Any], queue: str, count: int) -> Counter[str]:
    bodies = Counter[str]()
    for number in range(count):
        body = json.dumps({"detail": {"object": {"key": f"incoming/file-{number:03d}.csv"}}})
        queues["sqs"].send_message(
            QueueUrl=queues[queue],
            MessageBody=body,
            MessageAttributes={"priority": {"DataType": "Number", "StringValue": str(number % 3)}},
        )
        bodies[body] += 1
    return bodies


def drain(queues: dict[str, Any], queue: str) -> list[dict[str, Any]]:
    """Every message in a queue (received and deleted), with its attributes."""
    found = []
    while (
        messages := queues["sqs"]
        .receive_message(QueueUrl=queues[queue], MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        .get("Messages", [])
    ):
        for message in messages:
            found.append(message)
            queues["sqs"].delete_message(QueueUrl=queues[queue], ReceiptHandle=message["ReceiptHandle"])
    return found


def test_every_dlq_message_goes_back_exactly_once_with_body_and_attributes(queues: dict[str, Any]) -> None:
    sent = fill(queues, "IngestDLQ", 23)

    report = redriver(queues).run(RedriveRequest(source=RedriveSource.INGEST_DLQ))

    [source] = report.sources
    assert (source.before, source.after, source.moved) == (23, 0, 23)
    assert (source.destination_before, source.destination_after) == (0, 23)
    assert source.method == "receive-send-delete (StartMessageMoveTask unsupported)"  # moto lacks it
    assert source.status == "done"
    assert report.ok
    moved = drain(queues, "IngestQueue")
    assert Counter(m["Body"] for m in moved) == sent
    priorities = Counter(m["MessageAttributes"]["priority"]["StringValue"] for m in moved)
    assert priorities == {"0": 8, "1": 8, "2": 7}
    assert drain(queues, "IngestDLQ") == []


def test_a_send_failing_mid_way_loses_nothing_and_a_second_run_finishes(queues: dict[str, Any]) -> None:
    sent = fill(queues, "IngestDLQ", 25)
    faulty = FaultySqs(queues["sqs"], fail_send_batch=frozenset({2}))  # the second batch of ten fails

    first = redriver(queues, sqs=faulty).run(RedriveRequest(source=RedriveSource.INGEST_DLQ)).sources[0]

    assert first.status == "partial"
    assert first.moved == 10
    assert "injected" in first.errors[0]
    assert (first.after, first.destination_after) == (15, 10)  # every message in exactly one queue
    second = redriver(queues).run(RedriveRequest(source=RedriveSource.INGEST_DLQ)).sources[0]
    assert (second.before, second.moved, second.after) == (15, 15, 0)
    assert Counter(m["Body"] for m in drain(queues, "IngestQueue")) == sent


def test_one_entry_refused_in_a_batch_stays_in_the_dlq(queues: dict[str, Any]) -> None:
    sent = fill(queues, "IngestDLQ", 12)

    report = redriver(queues, sqs=PartialSqs(queues["sqs"])).run(
        RedriveRequest(source=RedriveSource.INGEST_DLQ)
    )

    source = report.sources[0]
    assert source.status == "partial"
    assert not report.ok
    assert source.moved == 9
    assert source.after == 3
    back = Counter(m["Body"] for m in drain(queues, "IngestQueue"))
    left = Counter(m["Body"] for m in drain(queues, "IngestDLQ"))
    assert back + left == sent
    assert not (back & left)


def test_a_failed_delete_may_duplicate_but_never_loses(queues: dict[str, Any]) -> None:
    sent = fill(queues, "IngestDLQ", 7)
    faulty = FaultySqs(queues["sqs"], fail_deletes=True)

    source = redriver(queues, sqs=faulty, visibility_timeout=0).run(RedriveRequest(max_messages=7)).sources[0]

    assert source.moved == 7
    assert "may be redriven twice" in source.errors[0]
    back = Counter(m["Body"] for m in drain(queues, "IngestQueue"))
    left = Counter(m["Body"] for m in drain(queues, "IngestDLQ"))
    assert back == sent  # the copies arrived...
    assert left == sent  # ...and the originals are still there: duplicated at worst, never lost


def test_dry_run_counts_and_moves_nothing(queues: dict[str, Any]) -> None:
    fill(queues, "IngestDLQ", 4)
    fill(queues, "IngestRuleDLQ", 2)
    queues["sqs"].send_message(QueueUrl=queues["FD"], MessageBody="{}")
    sfn = FakeSfn({"arn:exec:1": "FAILED"})
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:Dispatcher"

    report = redriver(queues, sfn=sfn, targets=targets(queues, dispatcher_state_machine_arn=arn)).run(
        RedriveRequest(dry_run=True)
    )

    counts = {s.source: (s.status, s.before, s.after, s.moved) for s in report.sources}
    assert counts == {
        RedriveSource.INGEST_DLQ: ("dry-run", 4, 4, 0),
        RedriveSource.RULE_DLQ: ("dry-run", 2, 2, 0),
        RedriveSource.FAILURE_DESTINATION: ("dry-run", 1, 1, 0),
    }  # executions only when asked for by name: their Map items carry stale attempts and handles
    assert report.ok
    assert report.moved == 0
    assert len(drain(queues, "IngestDLQ")) == 4
    assert drain(queues, "IngestQueue") == []
    assert sfn.redriven == []


def test_max_messages_bounds_the_move_and_the_rate_paces_it(queues: dict[str, Any]) -> None:
    fill(queues, "IngestRuleDLQ", 30)
    clock = Clock()

    report = redriver(queues, clock=clock, rate_per_second=10).run(
        RedriveRequest(source=RedriveSource.RULE_DLQ, max_messages=25)
    )

    source = report.sources[0]
    assert (source.method, source.moved, source.after) == ("receive-send-delete", 25, 5)
    # 25 messages at 10/s: batches of 10, 10, 5, each waiting for the previous one's second.
    assert clock.sleeps == pytest.approx([1.0, 1.0])


def test_the_move_task_is_used_where_the_endpoint_has_it(queues: dict[str, Any]) -> None:
    sent = fill(queues, "IngestDLQ", 5)
    sqs = MoveTaskSqs(queues["sqs"])

    source = redriver(queues, sqs=sqs, rate_per_second=20, poll_seconds=0.5).run(RedriveRequest()).sources[0]

    assert source.method == "StartMessageMoveTask"
    assert source.status == "done"
    assert sqs.started == [
        {
            "SourceArn": arn_of(queues["sqs"], queues["IngestDLQ"]),
            "DestinationArn": arn_of(queues["sqs"], queues["IngestQueue"]),
            "MaxNumberOfMessagesPerSecond": 20,
        }
    ]
    assert (source.moved, source.after, source.destination_after) == (5, 0, 5)
    assert Counter(m["Body"] for m in drain(queues, "IngestQueue")) == sent


def test_a_move_task_still_running_at_the_deadline_is_reported_running(queues: dict[str, Any]) -> None:
    fill(queues, "IngestDLQ", 3)
    sqs = MoveTaskSqs(queues["sqs"], status="RUNNING")

    report = redriver(queues, sqs=sqs, move_task_wait_seconds=5, poll_seconds=2).run(RedriveRequest())

    source = report.sources[0]
    assert source.status == "running"
    assert source.after == 3
    assert sqs.listed == 4  # at 0, 2, 4 and 6 s of the fake clock
    assert report.ok  # it goes on by itself


def test_a_failed_move_task_or_a_refused_start_is_reported(queues: dict[str, Any]) -> None:
    fill(queues, "IngestDLQ", 2)
    failed = (
        redriver(queues, sqs=MoveTaskSqs(queues["sqs"], status="FAILED")).run(RedriveRequest()).sources[0]
    )
    assert failed.status == "failed"
    assert "move task FAILED" in failed.errors[0]

    class Refusing(FaultySqs):
        def start_message_move_task(self, **kwargs: Any) -> None:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "StartMessageMoveTask")

    refused = redriver(queues, sqs=Refusing(queues["sqs"])).run(RedriveRequest()).sources[0]
    assert refused.status == "failed"
    assert "AccessDenied" in refused.errors[0]
    assert refused.after == 2


def test_the_time_budget_stops_taking_batches(queues: dict[str, Any]) -> None:
    fill(queues, "IngestRuleDLQ", 20)
    clock = Clock()

    report = redriver(queues, clock=clock, rate_per_second=10).run(
        RedriveRequest(source=RedriveSource.RULE_DLQ), time_budget_seconds=0.5
    )

    source = report.sources[0]
    assert source.status == "partial"
    assert source.moved == 10
    assert source.after == 10
    assert "time budget" in source.errors[0]


def failure_record(function_arn: str, payload: Any) -> str:
    return json.dumps(
        {
            "version": "1.0",
            "timestamp": "2026-11-22T03:10:00.000Z",
            "requestContext": {
                "requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
                "functionArn": function_arn,
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3,
            },
            "requestPayload": payload,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {
                "errorMessage": "SMTP 127.0.0.1:25 refused",
                "errorType": "MailDeliveryError",
            },
        }
    )


def test_failure_destination_records_are_reinvoked_and_deleted_after_lambda_accepts(
    queues: dict[str, Any],
) -> None:
    sqs = queues["sqs"]
    payloads = [{"Records": [{"Sns": {"MessageId": f"m-{n}"}}]} for n in range(3)]
    for payload in payloads:
        sqs.send_message(QueueUrl=queues["FD"], MessageBody=failure_record(FUNCTION_ARN, payload))
    sqs.send_message(
        QueueUrl=queues["FD"], MessageBody=failure_record("arn:aws:lambda:::function:gone", {"x": 1})
    )
    sqs.send_message(
        QueueUrl=queues["FD"], MessageBody=failure_record("arn:aws:lambda:::function:throttled", {})
    )
    sqs.send_message(QueueUrl=queues["FD"], MessageBody='{"not": "a lambda failure record"}')
    fake = FakeLambda(failing=("gone",))

    report = redriver(queues, lambda_client=fake).run(
        RedriveRequest(source=RedriveSource.FAILURE_DESTINATION)
    )

    source = report.sources[0]
    assert [(name, kind) for name, kind, _ in fake.invocations[:3]] == [(FUNCTION_ARN, "Event")] * 3
    assert sorted(json.dumps(p) for _, _, p in fake.invocations[:3]) == sorted(
        json.dumps(p) for p in payloads
    )
    assert (source.before, source.moved, source.skipped) == (6, 3, 1)
    assert source.status == "partial"
    assert any("gone" in error for error in source.errors)
    assert any("status 429" in error for error in source.errors)
    # What was not re-invoked is still there (invisible until the receive's timeout passes).
    assert source.after == 3


def test_failed_executions_are_redriven_and_counted(queues: dict[str, Any]) -> None:
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:Dispatcher"
    sfn = FakeSfn(
        {"arn:exec:failed": "FAILED", "arn:exec:timed-out": "TIMED_OUT", "arn:exec:not-redrivable": "FAILED"}
    )

    report = redriver(queues, sfn=sfn, targets=targets(queues, dispatcher_state_machine_arn=arn)).run(
        RedriveRequest(source=RedriveSource.EXECUTIONS)
    )

    source = report.sources[0]
    assert sorted(sfn.redriven) == ["arn:exec:failed", "arn:exec:timed-out"]
    assert (source.before, source.moved, source.after) == (3, 2, 1)
    assert source.status == "partial"
    assert "ExecutionNotRedrivable" in source.errors[0]


def test_executions_aws_calls_not_redrivable_are_not_counted(queues: dict[str, Any]) -> None:
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:Dispatcher"
    sfn = FakeSfn({"arn:exec:old": "FAILED"}, redrive_status="NOT_REDRIVABLE")

    report = redriver(queues, sfn=sfn, targets=targets(queues, dispatcher_state_machine_arn=arn)).run(
        RedriveRequest(source=RedriveSource.EXECUTIONS)
    )

    assert (report.sources[0].status, report.sources[0].before, sfn.redriven) == ("done", 0, [])


def test_moto_lists_a_failed_execution_but_cannot_redrive_it_and_the_report_says_so() -> None:
    # moto runs the state machine (its execute option), so a Fail state really ends FAILED.
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sqs = boto3.client("sqs")
        urls = {n: sqs.create_queue(QueueName=n)["QueueUrl"] for n in ("IngestQueue", "IngestDLQ")}
        sfn = boto3.client("stepfunctions")
        definition = {"StartAt": "Give up", "States": {"Give up": {"Type": "Fail", "Error": "Boom"}}}
        machine = sfn.create_state_machine(
            name="Dispatcher", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/sfn"
        )["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=machine, name="run-1")["executionArn"]
        deadline = time.monotonic() + 10
        while sfn.describe_execution(executionArn=execution)["status"] == "RUNNING":
            assert time.monotonic() < deadline, "moto did not finish the execution within 10 s"
            time.sleep(0.05)
        only = RedriveTargets(
            ingest_queue_url=urls["IngestQueue"],
            ingest_dlq_url=urls["IngestDLQ"],
            dispatcher_state_machine_arn=machine,
        )

        dry = redriver({"sqs": sqs}, sfn=sfn, targets=only).run(
            RedriveRequest(source=RedriveSource.EXECUTIONS, dry_run=True)
        )
        report = redriver({"sqs": sqs}, sfn=sfn, targets=only).run(
            RedriveRequest(source=RedriveSource.EXECUTIONS)
        )

    assert (dry.sources[0].status, dry.sources[0].before) == ("dry-run", 1)
    source = report.sources[0]
    assert (source.status, source.before, source.moved, source.after) == ("unsupported", 1, 0, 1)
    assert "not implemented by this endpoint (moto)" in source.errors[0]
    assert not report.ok


def test_listing_stops_at_executions_too_old_to_redrive(queues: dict[str, Any]) -> None:
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:Dispatcher"
    sfn = FakeSfn({"arn:exec:new": "FAILED", "arn:exec:old": "FAILED", "arn:exec:older": "FAILED"})
    sfn.started = {
        "arn:exec:old": datetime.now(UTC) - timedelta(days=20),
        "arn:exec:older": datetime.now(UTC) - timedelta(days=30),
    }

    report = redriver(queues, sfn=sfn, targets=targets(queues, dispatcher_state_machine_arn=arn)).run(
        RedriveRequest(source=RedriveSource.EXECUTIONS, dry_run=True)
    )

    assert report.sources[0].before == 1
    assert sfn.described == ["arn:exec:new"]  # nothing older was even described


class BrokenReceiveSqs(FaultySqs):
    def receive_message(self, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "KMS.AccessDeniedException", "Message": "no"}}, "ReceiveMessage")


def test_a_receive_that_fails_is_reported_and_moves_nothing(queues: dict[str, Any]) -> None:
    sent = fill(queues, "IngestRuleDLQ", 3)
    queues["sqs"].send_message(QueueUrl=queues["FD"], MessageBody=failure_record(FUNCTION_ARN, {}))
    broken = BrokenReceiveSqs(queues["sqs"])

    report = redriver(queues, sqs=broken).run(RedriveRequest())

    by_source = {s.source: s for s in report.sources}
    for source in (RedriveSource.RULE_DLQ, RedriveSource.FAILURE_DESTINATION):
        assert by_source[source].status == "partial"
        assert "KMS.AccessDeniedException" in by_source[source].errors[0]
    assert Counter(m["Body"] for m in drain(queues, "IngestRuleDLQ")) == sent


def test_unsent_messages_whose_release_fails_still_come_back(queues: dict[str, Any]) -> None:
    class FailingSendAndRelease(FaultySqs):
        def change_message_visibility(self, **kwargs: Any) -> Any:
            raise ClientError({"Error": {"Code": "ReceiptHandleIsInvalid", "Message": "no"}}, "Change")

    sent = fill(queues, "IngestRuleDLQ", 4)
    faulty = FailingSendAndRelease(queues["sqs"], fail_send_batch=frozenset({1}))

    source = (
        redriver(queues, sqs=faulty, visibility_timeout=0)
        .run(RedriveRequest(source=RedriveSource.RULE_DLQ))
        .sources[0]
    )

    assert (source.status, source.moved) == ("partial", 0)
    # Not released by hand, so back after the receive's visibility timeout (0 s here): none lost.
    assert Counter(m["Body"] for m in drain(queues, "IngestRuleDLQ")) == sent


def test_a_record_without_a_function_or_with_a_failed_delete_is_reported(queues: dict[str, Any]) -> None:
    class NoDelete(FaultySqs):
        def delete_message(self, **kwargs: Any) -> Any:
            raise ClientError(
                {"Error": {"Code": "ServiceUnavailable", "Message": "injected"}}, "DeleteMessage"
            )

    no_function = json.loads(failure_record(FUNCTION_ARN, {"x": 1}))
    no_function["requestContext"] = {}
    queues["sqs"].send_message(QueueUrl=queues["FD"], MessageBody=json.dumps(no_function))
    queues["sqs"].send_message(QueueUrl=queues["FD"], MessageBody=failure_record(FUNCTION_ARN, {"y": 2}))
    fake = FakeLambda()

    source = (
        redriver(queues, sqs=NoDelete(queues["sqs"]), lambda_client=fake)
        .run(RedriveRequest(source=RedriveSource.FAILURE_DESTINATION))
        .sources[0]
    )

    assert [payload for _, _, payload in fake.invocations] == [{"y": 2}]
    assert (source.moved, source.skipped, source.status) == (1, 1, "partial")
    assert "may be re-invoked twice" in source.errors[0]


def test_unconfigured_sources_are_skipped_and_a_broken_one_does_not_stop_the_rest(
    queues: dict[str, Any],
) -> None:
    bare = RedriveTargets(
        ingest_queue_url=queues["IngestQueue"], ingest_dlq_url=queues["IngestDLQ"] + "-missing"
    )

    report = redriver(queues, targets=bare).run(RedriveRequest())

    statuses = {s.source: s.status for s in report.sources}
    assert statuses == {
        RedriveSource.INGEST_DLQ: "failed",  # no such queue
        RedriveSource.RULE_DLQ: "skipped",
        RedriveSource.FAILURE_DESTINATION: "skipped",
    }
    assert not report.ok


def test_empty_queues_are_done_without_moving() -> None:
    with mock_aws():
        sqs = boto3.client("sqs")
        urls = {
            n: sqs.create_queue(QueueName=n)["QueueUrl"]
            for n in ("IngestQueue", "IngestDLQ", "IngestRuleDLQ", "FD")
        }
        report = redriver({"sqs": sqs, **urls}).run(RedriveRequest())
    assert all(s.status in ("done", "skipped") and s.moved == 0 for s in report.sources)


@pytest.mark.parametrize(
    ("error", "unsupported"),
    [
        (NotImplementedError("The start_message_move_task action has not been implemented"), True),
        (ClientError({"Error": {"Code": "500", "Message": "<html>"}}, "StartMessageMoveTask"), True),
        (ClientError({"Error": {"Code": "UnknownOperationException"}}, "StartMessageMoveTask"), True),
        (ClientError({"Error": {"Code": "InternalError"}}, "StartMessageMoveTask"), False),
        (ValueError("x"), False),
    ],
)
def test_which_errors_mean_the_api_is_missing(error: Exception, unsupported: bool) -> None:
    assert is_unsupported(error) is unsupported


def test_pacer_spreads_batches_over_time() -> None:
    clock = Clock()
    pacer = Pacer(5, clock, clock.sleep)
    for _ in range(3):
        pacer.wait()
        pacer.spent(5)
    assert clock.sleeps == pytest.approx([1.0, 1.0])


# --- the CLI --------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(redrive)
    app.command("noop")(lambda: None)  # two commands: Typer then wants the command's name, like `sluice`
    return app


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A moto server on 127.0.0.1 standing in for the offline stack, with its outputs.json."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        sqs = boto3.client("sqs", endpoint_url=endpoint)
        urls = {n: sqs.create_queue(QueueName=n)["QueueUrl"] for n in ("IngestQueue", "IngestDLQ", "FD")}
        outputs = tmp_path / "outputs.json"
        outputs.write_text(
            json.dumps(
                {
                    "EndpointUrl": endpoint,
                    "IngestQueueUrl": urls["IngestQueue"],
                    "IngestDLQUrl": urls["IngestDLQ"],
                    "FailureDestinationQueueUrl": urls["FD"],
                }
            )
        )
        yield {"sqs": sqs, "outputs": str(outputs), **urls}
    finally:
        server.stop()


def test_cli_dry_run_then_redrive_against_the_offline_endpoint(offline: dict[str, Any]) -> None:
    sent = fill(offline, "IngestDLQ", 12)
    runner = CliRunner()

    dry = runner.invoke(cli(), ["redrive", "--dry-run", "--outputs", offline["outputs"]], terminal_width=200)
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output
    assert "ingest-dlq" in dry.output

    done = runner.invoke(
        cli(),
        ["redrive", "--source", "ingest-dlq", "--json", "--outputs", offline["outputs"], "--rate", "500"],
    )
    assert done.exit_code == 0, done.output
    [source] = json.loads(done.output)["sources"]
    assert (source["before"], source["after"], source["moved"]) == (12, 0, 12)
    assert source["method"] == "receive-send-delete (StartMessageMoveTask unsupported)"
    assert Counter(m["Body"] for m in drain(offline, "IngestQueue")) == sent


def test_cli_reads_a_deployed_stacks_outputs(queues: dict[str, Any]) -> None:
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "IngestQueueUrl": {"Value": queues["IngestQueue"]},
            "IngestDLQUrl": {"Value": queues["IngestDLQ"]},
            "FailureDestinationQueueUrl": {"Value": queues["FD"]},
        },
    }
    boto3.client("cloudformation").create_stack(StackName="sluice-dev", TemplateBody=json.dumps(template))
    queues["sqs"].send_message(QueueUrl=queues["FD"], MessageBody="not json")

    result = CliRunner().invoke(
        cli(), ["redrive", "--stack-name", "sluice-dev", "--region", "us-east-1"], terminal_width=200
    )

    assert result.exit_code == 0, result.output  # a skipped non-Lambda record is not an error
    assert "1 record(s) left in place" in result.output


def test_cli_exits_non_zero_when_a_source_fails(queues: dict[str, Any]) -> None:
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "IngestQueueUrl": {"Value": queues["IngestQueue"]},
            "IngestDLQUrl": {"Value": queues["IngestDLQ"] + "-gone"},
        },
    }
    boto3.client("cloudformation").create_stack(StackName="broken", TemplateBody=json.dumps(template))

    result = CliRunner().invoke(cli(), ["redrive", "--stack-name", "broken"], terminal_width=200)

    assert result.exit_code == 1
    assert "failed" in result.output


def test_cli_explains_a_missing_outputs_file_or_missing_outputs(tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli(), ["redrive", "--outputs", str(tmp_path / "none.json")])
    assert missing.exit_code == 2
    assert "not found" in missing.output

    with mock_aws():
        template = {
            "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
            "Outputs": {"Other": {"Value": "x"}},
        }
        boto3.client("cloudformation").create_stack(StackName="bare", TemplateBody=json.dumps(template))
        lacking = CliRunner().invoke(cli(), ["redrive", "--stack-name", "bare"])
    assert lacking.exit_code == 2
    assert "IngestQueueUrl" in lacking.output

    both = CliRunner().invoke(cli(), ["redrive", "--stack-name", "x", "--outputs", "y"])
    assert both.exit_code == 2
