"""statemachine/dispatcher.asl.json, executed by moto's ASL interpreter, with fake functions.

Every test runs the file itself (DefinitionSubstitutions applied as CloudFormation would) against
queues, topics, a parameter and a table in moto, and asserts what the dispatcher left behind:
messages deleted or not, items' states, what reached InvalidQueue, IngestDLQ and the topics.
The harness (asl_harness.py) explains how the Lambda tasks reach the fakes.
"""

import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asl_harness import (
    DEFINITION,
    SUCCEEDED,
    FunctionError,
    Functions,
    LambdaServiceError,
    Stack,
    lambda_error_body,
    s3_event_body,
)
from moto import mock_aws
from moto.core.config import default_user_config
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from sam_transform import load_sam_template

from sluice.bounds import MAX_REASON_CHARS
from sluice.filecheck import SAMPLE_BYTES, check_sample
from sluice.ingest import CLAIM_ATTRIBUTE
from sluice.lease import END_EVENTS, OUTPUT_CALL_EVENTS, ROUND_EVENTS, START_EVENTS, worst_item
from sluice.models import MAX_OUTPUT_CALLS
from sluice.observability import bounded_errors
from sluice.schemas import get_schema
from sluice_cli.offline.polling import wait_for

StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[StackFactory]:
    """Build the stack with optional DefinitionSubstitutions overrides, inside one mock_aws."""
    monkeypatch.setitem(default_user_config["stepfunctions"], "execute_state_machine", True)
    functions = Functions()
    monkeypatch.setattr(lambda_eval_utils, "_invoke_lambda_function", functions.invoke)
    with mock_aws():
        yield lambda **substitutions: Stack(functions, **substitutions)


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    return make_stack()


def template_function_timeout(logical_id: str) -> int:
    """A function's Timeout in template.yaml."""
    return int(load_sam_template()["Resources"][logical_id]["Properties"]["Timeout"])


def called(stack: Stack) -> list[str]:
    return [call.function for call in stack.functions.calls]


def test_happy_path_delivers_records_announces_and_deletes(stack: Stack) -> None:
    # GIVEN a file whose processing takes two segments
    stack.segments["incoming/orders-valid.csv"] = 2
    stack.send("incoming/orders-valid.csv")

    # WHEN the dispatcher runs
    execution = stack.run()

    # THEN the message is gone, the item holds the outcome and counts, and the outcome is announced
    assert execution["status"] == "SUCCEEDED"
    assert stack.queue_depth(stack.ingest_url) == 0
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "SUCCEEDED_WITH_REJECTS"
    assert (item["rows_total"], item["rows_delivered"], item["rows_rejected"]) == (20, 19, 1)
    assert item["finished_at"]
    assert "error" not in item
    (notification,) = stack.published(stack.notifications_url)
    assert notification["event"] == "file.finished"
    assert notification["outcome"] == "SUCCEEDED_WITH_REJECTS"
    assert notification["object"]["id"] == "sluice-raw-example/incoming/orders-valid.csv#v1"
    assert notification["rows_delivered"] == 19
    assert stack.published(stack.alerts_url) == []
    # each segment resumed where the previous one said; the output saw the last answer
    assert [p["segment"] for p in stack.functions.payloads("ProcessObject")] == [0, 1]
    (output,) = stack.functions.payloads("WriteOutput")
    assert output["result"]["done"] is True
    assert output["object"]["key"] == "incoming/orders-valid.csv"
    # the lease was taken, renewed before each segment, the output call and after the round, and given back
    operations = [p["operation"] for p in stack.functions.payloads("DispatcherLease")]
    assert operations == ["acquire", "renew", "renew", "renew", "renew", "release"]


def test_empty_queue_ends_at_once_touching_nothing_but_the_lease(stack: Stack) -> None:
    execution = stack.run()

    assert execution["status"] == "SUCCEEDED"
    assert called(stack) == ["DispatcherLease", "DispatcherLease"]
    assert [p["operation"] for p in stack.functions.payloads("DispatcherLease")] == ["acquire", "release"]


def test_lease_held_by_another_execution_ends_at_once(stack: Stack) -> None:
    # GIVEN a message waiting and another dispatcher holding the lease
    stack.functions.handlers["DispatcherLease"] = lambda _: {
        "acquired": False,
        "budget_left": False,
        "deadline": None,
    }
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN this execution received nothing: the message is still visible, never delivered
    assert execution["status"] == "SUCCEEDED"
    assert called(stack) == ["DispatcherLease"]
    (message,) = stack.receive(stack.ingest_url)
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"  # this receive is its first


def test_transient_lambda_error_is_retried_after_two_seconds_then_succeeds(stack: Stack) -> None:
    # GIVEN ProcessObject's first invocation fails in the Lambda service
    failures = iter([LambdaServiceError("Lambda is having a moment")])
    real = stack.process

    def flaky(payload: dict) -> dict:
        if error := next(failures, None):
            raise error
        return real(payload)

    stack.functions.handlers["ProcessObject"] = flaky
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN the segment is retried (2 s later) and the file finishes as if nothing happened
    assert execution["status"] == "SUCCEEDED"
    first, second = [c for c in stack.functions.calls if c.function == "ProcessObject"]
    assert (first.payload, second.payload) == (second.payload, first.payload)  # the same segment
    assert second.started - first.ended >= 1.9
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "SUCCEEDED_WITH_REJECTS"
    assert stack.queue_depth(stack.ingest_url) == 0


def test_retries_exhausted_on_the_last_delivery_fail_the_file_and_leave_the_message_to_the_dlq(
    make_stack: StackFactory,
) -> None:
    # GIVEN a queue that moves a message to its DLQ after one delivery, and a Lambda service that
    # keeps failing
    stack = make_stack(MaxReceiveCount="1")
    stack.functions.handlers["ProcessObject"] = lambda _: (_ for _ in ()).throw(LambdaServiceError("down"))
    stack.send("incoming/orders-valid.csv")

    execution = stack.run(timeout=60)  # 14 s of backoff, and the failure path on a busy machine

    # THEN ProcessObject was tried 1 + 3 times (2, 4, 8 s apart), the item is FAILED with the cause,
    assert execution["status"] == "SUCCEEDED"  # a failed file does not fail the dispatcher
    attempts = [c for c in stack.functions.calls if c.function == "ProcessObject"]
    assert len(attempts) == 4
    gaps = [b.started - a.ended for a, b in itertools.pairwise(attempts)]
    for gap, backoff in zip(gaps, [2, 4, 8], strict=True):
        assert backoff - 0.1 <= gap < backoff + 1.5, gaps  # upper bound: slack for a busy machine
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "FAILED"
    assert "Lambda.ServiceException" in item["error"]
    assert item["failed_at"]
    # the failure is announced on both topics (it was the last delivery),
    (alert,) = stack.published(stack.alerts_url)
    assert alert["event"] == "file.failed_for_good"
    assert alert["error"] == "Lambda.ServiceException"
    (notification,) = stack.published(stack.notifications_url)
    assert notification["event"] == "file.failed"
    assert notification["outcome"] == "FAILED"
    # and the message was not deleted but released: SQS moves it to the DLQ on the next receive
    assert stack.receive(stack.ingest_url) == []
    (dead,) = stack.receive(stack.dlq_url)
    assert "incoming/orders-valid.csv" in dead["Body"]


def test_permanent_function_error_releases_the_message_for_a_later_retry(stack: Stack) -> None:
    # GIVEN ProcessObject fails with an error the state machine does not retry
    stack.functions.handlers["ProcessObject"] = lambda _: (_ for _ in ()).throw(
        FunctionError("TransientDownstreamError", "row 7: api 503 after 5 attempts")
    )
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN there was one attempt, the item is FAILED, and the message is visible again at once
    # (RetryDelaySeconds 0 here) for its second delivery: not the last one, so no alert
    assert execution["status"] == "SUCCEEDED"
    assert len(stack.functions.payloads("ProcessObject")) == 1
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "FAILED"
    assert item["error"].startswith("TransientDownstreamError: ")
    assert "row 7: api 503" in item["error"]
    (message,) = stack.receive(stack.ingest_url)
    assert message["Attributes"]["ApproximateReceiveCount"] == "2"
    assert stack.published(stack.alerts_url) == []
    (notification,) = stack.published(stack.notifications_url)
    assert (notification["event"], notification["receive_count"], notification["max_receive_count"]) == (
        "file.failed",
        1,
        5,
    )


def test_invalid_file_goes_to_the_invalid_queue_is_announced_and_deleted(stack: Stack) -> None:
    # GIVEN a file whose header ValidateObject refuses
    body = s3_event_body("incoming/orders-invalid.csv")
    stack.send("incoming/orders-invalid.csv", body=body)

    execution = stack.run()

    # THEN the original body sits in InvalidQueue with the reason, the alert topic says so,
    assert execution["status"] == "SUCCEEDED"
    (invalid,) = stack.receive(stack.invalid_url)
    assert invalid["Body"] == body
    assert invalid["MessageAttributes"]["reason"]["StringValue"] == "header: missing column 'amount'"
    (alert,) = stack.published(stack.alerts_url)
    assert alert["event"] == "file.invalid"
    assert alert["object"]["key"] == "incoming/orders-invalid.csv"
    # the item stays INVALID (not FAILED), nothing was delivered, and the message is gone
    item = stack.item("incoming/orders-invalid.csv")
    assert item is not None
    assert item["state"] == "INVALID"
    assert "ProcessObject" not in called(stack)
    assert stack.queue_depth(stack.ingest_url) == 0


def test_message_that_is_not_an_s3_event_is_rejected_to_the_invalid_queue(stack: Stack) -> None:
    stack.send("", body='{"hello": "world"}')

    execution = stack.run()

    assert execution["status"] == "SUCCEEDED"
    (invalid,) = stack.receive(stack.invalid_url)
    assert invalid["Body"] == '{"hello": "world"}'
    assert invalid["MessageAttributes"]["reason"]["StringValue"] == "not an S3 Object Created event"
    (alert,) = stack.published(stack.alerts_url)
    assert alert["object"] is None
    assert "ValidateObject" not in called(stack)
    assert stack.queue_depth(stack.ingest_url) == 0


def test_duplicate_event_of_a_finished_version_is_deleted_without_processing(stack: Stack) -> None:
    # GIVEN the object version already SUCCEEDED and its S3 event arrives again
    stack.put_item("incoming/orders-valid.csv", "SUCCEEDED")
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    assert execution["status"] == "SUCCEEDED"
    assert stack.queue_depth(stack.ingest_url) == 0
    assert "ValidateObject" not in called(stack)
    assert "ProcessObject" not in called(stack)
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "SUCCEEDED"
    assert stack.published(stack.notifications_url) == []


def test_a_finished_version_without_its_output_is_completed_not_skipped(stack: Stack) -> None:
    # GIVEN a version whose outcome was recorded while WriteOutput failed (the old order)
    stack.put_item("incoming/orders-valid.csv", "SUCCEEDED", output=False)
    stack.table.update_item(
        Key={"pk": "sluice-raw-example/incoming/orders-valid.csv#v1"},
        UpdateExpression="SET rows_total = :t, rows_delivered = :t, rows_rejected = :z",
        ExpressionAttributeValues={":t": 7, ":z": 0},
    )
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN its output stage runs from the recorded counts, the item gets its results and the
    # message is deleted; nothing is processed again
    assert execution["status"] == "SUCCEEDED"
    assert "ProcessObject" not in called(stack)
    (output,) = stack.functions.payloads("WriteOutput")
    assert (output["result"]["outcome"], output["result"]["rows_delivered"]) == ("SUCCEEDED", 7)
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "SUCCEEDED"
    assert item["summary_key"] == "results/incoming/orders-valid.csv/v1/summary.json"
    assert stack.queue_depth(stack.ingest_url) == 0


def test_an_event_for_a_version_another_message_holds_is_deferred_not_deleted(stack: Stack) -> None:
    # GIVEN the version in progress under another message's claim (an aborted attempt, a duplicate)
    pk = "sluice-raw-example/incoming/orders-valid.csv#v1"
    stack.table.put_item(
        Item={"pk": pk, "state": "PROCESSING", "attempts": 1, "claimed_by": "m-0", "defer_seconds": 2}
    )
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN the file was not touched, and the message is hidden for the claim's remainder, not gone
    assert execution["status"] == "SUCCEEDED"
    assert "ValidateObject" not in called(stack)
    assert "ProcessObject" not in called(stack)
    assert stack.item("incoming/orders-valid.csv")["state"] == "PROCESSING"
    assert stack.receive(stack.ingest_url) == []
    assert stack.queue_depth(stack.ingest_url) == 1
    # ... and comes back when the claim has expired, to be registered again
    (again,) = wait_for(lambda: stack.receive(stack.ingest_url), timeout=10, what="the deferred message")
    assert json.loads(again["Body"])["detail"]["object"]["key"] == "incoming/orders-valid.csv"
    assert stack.queue_depth(stack.ingest_url) == 1


@pytest.mark.parametrize(("setting", "bound"), [("2", 2), ("50", 3), ("0", 2)])
def test_files_in_flight_never_exceed_the_live_concurrency_within_its_bounds(
    make_stack: StackFactory, setting: str, bound: int
) -> None:
    # GIVEN four files, the live setting, bounds 2..3, and files that stay in flight until the
    # bound is reached once (or 5 s): how far the Map goes is then its concurrency, not the timing
    # of a busy machine
    stack = make_stack(ConcurrencyMin="2", ConcurrencyMax="3")
    stack.ssm.put_parameter(Name=stack.parameter, Value=setting, Type="String", Overwrite=True)
    stack.rounds_per_execution = 10
    real = stack.process

    def slow(payload: dict) -> dict:
        deadline = time.monotonic() + 5
        while stack.functions.max_in_flight["ProcessObject"] < bound and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # a Map over its bound would start another one meanwhile
        return real(payload)

    stack.functions.handlers["ProcessObject"] = slow
    for index in range(4):
        stack.send(f"incoming/orders-{index}.csv")

    execution = stack.run()

    # THEN every file finished, in rounds, never more than the bound at once, and the bound reached
    assert execution["status"] == "SUCCEEDED"
    assert stack.queue_depth(stack.ingest_url) == 0
    assert len(stack.functions.payloads("WriteOutput")) == 4
    assert stack.functions.max_in_flight["ProcessObject"] == bound
    assert all(p["concurrency"] == bound for p in stack.functions.payloads("PlanBatch"))
    assert [p["round"] for p in stack.functions.payloads("PlanBatch")] == list(range(-(-4 // bound)))


def test_each_item_waits_for_its_stagger_slot(stack: Stack) -> None:
    # GIVEN a batch of three planned 0, 1 and 2 seconds apart
    stack.waits = [0, 1, 2]
    for index in range(3):
        stack.send(f"incoming/orders-{index}.csv")

    started = time.monotonic()
    execution = stack.run()

    # THEN no item registered before its slot, and all of them ran in the one batch
    assert execution["status"] == "SUCCEEDED"
    plan_done = next(c.ended for c in stack.functions.calls if c.function == "PlanBatch")
    registered = {
        c.payload["message_id"]: c.started - plan_done
        for c in stack.functions.calls
        if c.function == "RegisterObject"
    }
    (plan,) = stack.functions.payloads("PlanBatch")
    slots = {m["MessageId"]: wait for m, wait in zip(plan["messages"], stack.waits, strict=True)}
    for message_id, wait in slots.items():
        assert registered[message_id] >= wait - 0.05, (wait, registered[message_id])
    assert max(registered.values()) < 4  # no slot waited much longer than planned
    assert time.monotonic() - started < 10
    assert stack.queue_depth(stack.ingest_url) == 0


def test_a_long_file_yields_after_its_turn_and_goes_on_from_its_checkpoint_without_spending_receives(
    make_stack: StackFactory,
) -> None:
    # GIVEN a file of 5 segments and 2 segments per item per execution
    stack = make_stack(SegmentsPerTurn="2")
    stack.segments["incoming/huge.csv"] = 5
    stack.send("incoming/huge.csv")

    # WHEN the dispatcher runs three times
    executions = [stack.run() for _ in range(3)]

    # THEN each execution ran at most its turn, the last one finished the file, and every message
    # was a first delivery: a continuation spends no receive and nothing failed
    assert [e["status"] for e in executions] == ["SUCCEEDED"] * 3
    assert [p["segment"] for p in stack.functions.payloads("ProcessObject")] == [0, 1, 0, 1, 0]
    assert [p["attempt"] for p in stack.functions.payloads("ProcessObject")] == [1, 1, 2, 2, 3]
    plans = stack.functions.payloads("PlanBatch")
    assert [m["Attributes"]["ApproximateReceiveCount"] for p in plans for m in p["messages"]] == ["1"] * 3
    first = plans[0]["messages"][0]["MessageId"]
    # the continuations carry the first message's claim, so registration lets them in at once
    claims = [m["MessageAttributes"]["sluice_claim"]["StringValue"] for p in plans[1:] for m in p["messages"]]
    assert claims == [first, first]
    item = stack.item("incoming/huge.csv")
    assert item is not None
    assert item["state"] == "SUCCEEDED_WITH_REJECTS"
    assert item["rows_total"] == 50  # resumed from the checkpoint: 5 segments of 10 rows, not 2 + 2 + 1
    assert len(stack.functions.payloads("WriteOutput")) == 1
    assert stack.queue_depth(stack.ingest_url) == 0
    assert stack.queue_depth(stack.dlq_url) == 0
    assert [n["event"] for n in stack.published(stack.notifications_url)] == ["file.finished"]


def test_the_continuation_uses_the_claim_attribute_registration_reads() -> None:
    definition = json.loads(DEFINITION.read_text())
    item = definition["States"]["Process batch"]["ItemProcessor"]["States"]
    assert list(item["Send continuation"]["Parameters"]["MessageAttributes"]) == [CLAIM_ATTRIBUTE]


def test_write_output_failing_twice_records_no_outcome_and_releases_the_message(
    make_stack: StackFactory,
) -> None:
    # GIVEN the last delivery of a file whose WriteOutput times out on both tries
    stack = make_stack(MaxReceiveCount="1")
    stack.functions.handlers["WriteOutput"] = lambda _: (_ for _ in ()).throw(
        FunctionError("Sandbox.Timedout", "Task timed out after 120.00 seconds")
    )
    stack.send("incoming/orders-valid.csv")

    execution = stack.run(timeout=30)

    # THEN the file is FAILED, not SUCCEEDED without its results; the message is left to SQS (the
    # DLQ here) and the failure is announced on both topics
    assert execution["status"] == "SUCCEEDED"
    assert len(stack.functions.payloads("WriteOutput")) == 2
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "FAILED"
    assert item["error"].startswith("Sandbox.Timedout")
    assert "finished_at" not in item
    (alert,) = stack.published(stack.alerts_url)
    assert (alert["event"], alert["error"]) == ("file.failed_for_good", "Sandbox.Timedout")
    assert "Task timed out" in alert["cause"]
    assert [n["event"] for n in stack.published(stack.notifications_url)] == ["file.failed"]
    assert stack.receive(stack.ingest_url) == []
    (dead,) = stack.receive(stack.dlq_url)
    assert "incoming/orders-valid.csv" in dead["Body"]


def test_an_invalid_file_whose_send_to_the_invalid_queue_fails_is_not_recorded_invalid(
    make_stack: StackFactory,
) -> None:
    # GIVEN an InvalidQueue that cannot be reached
    stack = make_stack(InvalidQueueUrl="https://sqs.us-east-1.amazonaws.com/123456789012/sluice-test-gone")
    stack.send("incoming/orders-invalid.csv")

    execution = stack.run(timeout=40)

    # THEN the file is not INVALID (nothing holds its message for a person), no invalid-file alert
    # went out, and the message comes back to try again
    assert execution["status"] == "SUCCEEDED"
    item = stack.item("incoming/orders-invalid.csv")
    assert item is not None
    assert item["state"] == "FAILED"
    assert "reason" not in item
    assert [a["event"] for a in stack.published(stack.alerts_url)] == []
    (message,) = stack.receive(stack.ingest_url)
    assert message["Attributes"]["ApproximateReceiveCount"] == "2"


def largest_state_payload(stack: Stack, execution_arn: str) -> int:
    """The largest input or output of any state in the execution's history, in bytes (not the
    execution's own input, the schedule event, which the first state drops)."""
    sizes = [0]
    for event in history(stack, execution_arn):
        if event["type"] == "ExecutionStarted" or event["id"] <= 3:  # the event and the first state's input
            continue
        for details in event.values():
            if isinstance(details, dict):
                for key in ("input", "output"):
                    if isinstance(details.get(key), str):
                        sizes.append(len(details[key].encode()))
    return max(sizes)


def test_a_hostile_header_is_invalid_with_a_short_reason_and_the_state_stays_small(stack: Stack) -> None:
    # GIVEN ValidateObject's real checks on a header of 50,000 columns, and two more files
    header = ",".join(f"c{index}" for index in range(50_000)).encode()

    def validate(payload: dict) -> dict:
        if "hostile" not in payload["object"]["key"]:
            return {"valid": True, "header": ["order_id"], "reason": None}
        check = check_sample(header[:SAMPLE_BYTES] + b"\n", get_schema("orders-v1"), truncated=True)
        return {"valid": check.valid, "header": check.header, "reason": check.reason}

    stack.functions.handlers["ValidateObject"] = validate
    for key in ("incoming/hostile.csv", "incoming/orders-0.csv", "incoming/orders-1.csv"):
        stack.send(key)

    execution = stack.run()

    # THEN the file is INVALID with a reason of at most 1 KiB, the batch's other files finished,
    # and no state's input or output came near the 256 KiB quota
    assert execution["status"] == "SUCCEEDED"
    item = stack.item("incoming/hostile.csv")
    assert item is not None
    assert item["state"] == "INVALID"
    assert len(item["reason"].encode()) <= 1024
    (invalid,) = stack.receive(stack.invalid_url)
    assert invalid["MessageAttributes"]["reason"]["StringValue"] == item["reason"]
    assert [stack.item(f"incoming/orders-{i}.csv")["state"] for i in range(2)] == [
        "SUCCEEDED_WITH_REJECTS"
    ] * 2
    assert largest_state_payload(stack, execution["executionArn"]) < 16 * 1024


def test_a_lost_lease_stops_the_item_before_its_segment_without_recording_a_failure(stack: Stack) -> None:
    # GIVEN another execution took the lease over: renewals inside the item answer "not ours"
    real = stack.lease

    def lease(payload: dict) -> dict:
        if payload["operation"] == "renew" and "items" not in payload:
            return {"acquired": False, "budget_left": False, "deadline": None}
        return real(payload)

    stack.functions.handlers["DispatcherLease"] = lease
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN no segment ran, nothing was recorded or announced, and the message is visible again
    assert execution["status"] == "SUCCEEDED"
    assert "ProcessObject" not in called(stack)
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "RECEIVED"
    assert stack.published(stack.notifications_url) == []
    assert stack.published(stack.alerts_url) == []
    (message,) = stack.receive(stack.ingest_url)
    assert message["Attributes"]["ApproximateReceiveCount"] == "2"


def test_a_stale_item_does_not_record_its_outcome(stack: Stack) -> None:
    # GIVEN a later attempt took the file over while this item ran its last segment
    real = stack.process

    def taken_over(payload: dict) -> dict:
        answer = real(payload)
        stack.table.update_item(
            Key={"pk": payload["object"]["id"]},
            UpdateExpression="SET attempts = attempts + :one",
            ExpressionAttributeValues={":one": 1},
        )
        return answer

    stack.functions.handlers["ProcessObject"] = taken_over
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN the item's outcome record is refused (fenced on the attempt): the file stays with the
    # later attempt, nothing is announced, and this item does not delete the message
    assert execution["status"] == "SUCCEEDED"
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "PROCESSING"
    assert stack.published(stack.notifications_url) == []
    assert stack.queue_depth(stack.ingest_url) == 1


def test_waiting_for_a_segment_in_progress_outlasts_process_objects_timeout() -> None:
    # A retried invocation refused with IdempotencyAlreadyInProgressError must wait for the first
    # one, which may run until ProcessObject's timeout
    definition = json.loads(DEFINITION.read_text())
    transform = definition["States"]["Process batch"]["ItemProcessor"]["States"]["Transform and deliver"]
    (retrier,) = [r for r in transform["Retry"] if "IdempotencyAlreadyInProgressError" in r["ErrorEquals"]]
    interval, rate = retrier["IntervalSeconds"], retrier["BackoffRate"]
    span = sum(interval * rate**n for n in range(retrier["MaxAttempts"]))
    timeout = template_function_timeout("ProcessObjectFunction")
    assert span >= timeout, (span, timeout)


def test_a_failing_round_fails_the_execution_and_releases_the_lease(stack: Stack) -> None:
    # GIVEN PlanBatch fails with an error no retry fixes
    stack.functions.handlers["PlanBatch"] = lambda _: (_ for _ in ()).throw(
        FunctionError("ValidationError", "messages: field required")
    )
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN the execution fails with that error, after giving the lease back; the message stays queued
    assert execution["status"] == "FAILED"
    assert execution["error"] == "ValidationError"
    assert "messages: field required" in execution["cause"]
    assert [p["operation"] for p in stack.functions.payloads("DispatcherLease")] == ["acquire", "release"]
    assert stack.queue_depth(stack.ingest_url) == 1


def test_rounds_continue_while_the_lease_has_budget(stack: Stack) -> None:
    # GIVEN more files than one round takes (concurrency 1) and budget for two rounds only
    stack.ssm.put_parameter(Name=stack.parameter, Value="1", Type="String", Overwrite=True)
    stack.rounds_per_execution = 2
    for index in range(3):
        stack.send(f"incoming/orders-{index}.csv")

    execution = stack.run()

    # THEN two files were processed, the lease saw rounds 1 and 2, and one file waits for the next run
    assert execution["status"] == "SUCCEEDED"
    assert len(stack.functions.payloads("WriteOutput")) == 2
    renewals = [p["round"] for p in stack.functions.payloads("DispatcherLease") if p["operation"] == "renew"]
    assert renewals[-1] == 2
    assert stack.queue_depth(stack.ingest_url) == 1


def history(stack: Stack, execution_arn: str) -> list[dict]:
    pages = stack.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
    return [event for page in pages for event in page["events"]]


def test_history_events_stay_under_the_worst_cases_the_lease_counts(make_stack: StackFactory) -> None:
    # GIVEN rounds of one, three and ten items, with 1 to 3 segments, and a merge over every
    # WriteOutput call allowed
    measured = {}
    stack = make_stack(SegmentsPerTurn="3")
    stack.ssm.put_parameter(Name=stack.parameter, Value="10", Type="String", Overwrite=True)
    # (10, 3, 1): a full round, ten files each running its whole turn (3 of its 4 segments) and
    # yielding: last, as their continuations stay queued
    cases = ((1, 1, 1), (1, 1, MAX_OUTPUT_CALLS), (3, 2, 3), (1, 3, 1), (3, 1, 1), (10, 3, 1))
    for files, segments, calls in cases:
        for index in range(files):
            key = f"incoming/history-{files}-{segments}-{calls}-{index}.csv"
            stack.segments[key] = segments if files < 10 else 4
            stack.output_calls[key] = calls
            stack.send(key)
        execution = stack.run()
        assert execution["status"] == "SUCCEEDED"
        measured[(files, segments, calls)] = len(history(stack, execution["executionArn"]))

    # THEN each execution's history is within what sluice/lease.py charges for it
    print(measured)
    for (files, segments, calls), events in measured.items():
        charged = START_EVENTS + ROUND_EVENTS + files * worst_item(segments, calls - 1) + END_EVENTS
        assert events <= charged, (files, segments, calls, events, charged)
    # and an output call costs what the lease charges for it, and no more
    extra = (measured[(1, 1, MAX_OUTPUT_CALLS)] - measured[(1, 1, 1)]) / (MAX_OUTPUT_CALLS - 1)
    assert extra <= OUTPUT_CALL_EVENTS


class IdempotencyAlreadyInProgressError(Exception):
    """Named as Powertools' error: the state machine retries it by this name."""


class TransientDownstreamError(Exception):
    """Named as sluice.delivery's error: the state machine catches it (States.ALL), no retry."""


def _raising(error: Exception) -> Callable[[Any, Any], Any]:
    @bounded_errors
    def lambda_handler(event: Any, context: Any) -> Any:
        raise error

    return lambda_handler


def test_a_100_kb_error_message_reaches_the_state_bounded_and_routed_by_its_name(stack: Stack) -> None:
    # GIVEN ProcessObject's handler (bounded_errors, as every handler) raising an error whose message
    # is 100 KB, answered as Lambda's runtime answers it (message, type, stack)
    failure = lambda_error_body(_raising(TransientDownstreamError("row 7: " + "x" * 100_000)), {})
    stack.functions.handlers["ProcessObject"] = lambda _: (_ for _ in ()).throw(failure)
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN the Cause the state carried is at most ~1.5 KiB, says how much was cut, and the name
    # routed the item as before: caught, the file FAILED, its message released
    assert execution["status"] == "SUCCEEDED"
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "FAILED"
    assert item["error"].startswith("TransientDownstreamError: ")
    cause = json.loads(item["error"].removeprefix("TransientDownstreamError: "))
    assert cause["errorMessage"].endswith(f"…(+{100_007 - (MAX_REASON_CHARS - 32)} more characters)")
    assert len(item["error"]) <= MAX_REASON_CHARS + 512
    (notification,) = stack.published(stack.notifications_url)
    assert notification["cause"] == item["error"].removeprefix("TransientDownstreamError: ")
    assert len(stack.receive(stack.ingest_url)) == 1


def test_a_bounded_error_is_still_retried_by_its_name(stack: Stack) -> None:
    # GIVEN ProcessObject refused once with IdempotencyAlreadyInProgressError and a 100 KB message
    default = stack.functions.handlers["ProcessObject"]
    failure = lambda_error_body(_raising(IdempotencyAlreadyInProgressError("y" * 100_000)), {})
    assert len(json.dumps(failure.body)) <= MAX_REASON_CHARS + 512
    calls = itertools.count()
    stack.functions.handlers["ProcessObject"] = lambda payload: (
        (_ for _ in ()).throw(failure) if next(calls) == 0 else default(payload)
    )
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN the Retry on that name ran the segment again and the file succeeded
    assert execution["status"] == "SUCCEEDED"
    assert len(stack.functions.payloads("ProcessObject")) == 2
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] in SUCCEEDED


def test_a_merge_over_several_write_output_calls_loops_until_done(stack: Stack) -> None:
    # GIVEN a file whose merge takes three WriteOutput calls
    stack.output_calls["incoming/orders-valid.csv"] = 3
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN WriteOutput was called three times, each with the position the call before answered,
    # each call after a lease renewal; the outcome was recorded once, after the last call
    assert execution["status"] == "SUCCEEDED"
    calls = stack.functions.payloads("WriteOutput")
    assert [c["position"] and c["position"]["calls"] for c in calls] == [None, 1, 2]
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] in SUCCEEDED
    assert item["summary_key"].endswith("/summary.json")
    operations = [p["operation"] for p in stack.functions.payloads("DispatcherLease")]
    assert operations == ["acquire", "renew", "renew", "renew", "renew", "renew", "release"]
    # and the item's progress told the round's renewal of the two extra calls it made
    (renewal,) = [p for p in stack.functions.payloads("DispatcherLease") if p.get("items") is not None]
    assert renewal["items"] == [{"segment": 0, "output_calls": 2}]
    assert stack.queue_depth(stack.ingest_url) == 0


def test_a_merge_that_spends_its_calls_fails_the_file_and_releases_its_message(stack: Stack) -> None:
    # GIVEN a merge that would need more calls than MAX_OUTPUT_CALLS
    stack.output_calls["incoming/orders-valid.csv"] = MAX_OUTPUT_CALLS + 1
    stack.send("incoming/orders-valid.csv")

    execution = stack.run()

    # THEN the loop stopped at its bound: the file is FAILED with OutputCallsSpent, no outcome, and
    # its message is visible again for a later delivery
    assert execution["status"] == "SUCCEEDED"
    assert len(stack.functions.payloads("WriteOutput")) == MAX_OUTPUT_CALLS
    item = stack.item("incoming/orders-valid.csv")
    assert item is not None
    assert item["state"] == "FAILED"
    assert item["error"].startswith("OutputCallsSpent: ")
    assert "summary_key" not in item
    assert len(stack.receive(stack.ingest_url)) == 1
