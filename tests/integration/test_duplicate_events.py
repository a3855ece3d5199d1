"""Two messages for one object version in the same dispatcher round (docs/metadata.md, The claim).

S3 and EventBridge deliver at least once, and moto's CompleteMultipartUpload emits two events, so
two messages for one version can land in one batch and run side by side in the Map. The first to
register claims the item; the other is deferred until the claim expires (ClaimSeconds, 20 s in the
test stack), then registered again, found SUCCEEDED and deleted; the rows go downstream once.
"""

from __future__ import annotations

import json
import time

from integration import pipeline
from integration.pipeline import (
    delivery_counts,
    queue_bodies,
    queue_drained,
    s3_event_body,
    unique_key,
    upload,
    wait_for_state,
)
from sluice.lease import LEASE_KEY
from sluice.metadata import DEFER_MARGIN_SECONDS
from sluice.models import ObjectRef
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.polling import wait_for
from sluice_cli.workload import orders_csv_bytes

ROWS = 20


def visible_messages(stack: OfflineStack) -> int:
    """IngestQueue's visible messages, read from its attributes: peeking would bump receive counts."""
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.outputs["IngestQueueUrl"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def second_copy(stack: OfflineStack, obj: ObjectRef) -> str:
    """The Object Created event S3 sent for this version, as a second delivery of it would carry it."""
    event = json.loads(s3_event_body(obj))
    head = stack.client("s3").head_object(Bucket=obj.bucket, Key=obj.key, VersionId=obj.version_id)
    event["detail"]["object"]["etag"] = head["ETag"].strip('"')  # S3 sends it unquoted
    return json.dumps(event)


def register_answers(stack: OfflineStack, execution_arn: str, obj: ObjectRef) -> list[dict]:
    """What RegisterObject answered for this version during the execution (from its history)."""
    answers = []
    pages = stack.client("stepfunctions").get_paginator("get_execution_history")
    for page in pages.paginate(executionArn=execution_arn):
        for event in page["events"]:
            if event["type"] != "TaskSucceeded":
                continue
            payload = json.loads(event["taskSucceededEventDetails"]["output"]).get("Payload")
            if (
                isinstance(payload, dict)
                and "action" in payload
                and (payload["object"] or {}).get("id") == obj.id
            ):
                answers.append(payload)
    return answers


def test_a_version_arriving_twice_in_one_round_is_delivered_once(pipeline_stack: OfflineStack) -> None:
    stack = pipeline_stack
    scheduler, runtime = stack.scheduler, stack.runtime
    assert scheduler is not None
    assert runtime is not None
    assert stack.api is not None
    sfn = stack.client("stepfunctions")
    machine = stack.outputs["DispatcherStateMachineArn"]
    ssm = stack.client("ssm")
    concurrency = stack.outputs["ConcurrencyParameterName"]

    # GIVEN the dispatcher held, and nothing of earlier tests left in IngestQueue or in flight
    with scheduler.paused():
        wait_for(
            lambda: (
                queue_drained(stack)
                and not sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING")["executions"]
            ),
            timeout=60,
            what="an empty IngestQueue and no running dispatcher",
        )
        # One round receives as many messages as the live concurrency: both must be in one Map.
        # ScaleConcurrency (invoked asynchronously on the same schedule) sets it to 1 while the queue
        # is idle: let a run that the last tick started finish first, or it could overwrite our value.
        time.sleep(scheduler.period_seconds)
        wait_for(
            lambda: runtime.pool_stats()["ScaleConcurrencyFunction"]["busy"] == 0,
            timeout=60,
            what="ScaleConcurrency to be idle",
        )
        if int(ssm.get_parameter(Name=concurrency)["Parameter"]["Value"]) < 2:
            ssm.put_parameter(Name=concurrency, Value="2", Overwrite=True)

        # A file's arrival wakes the dispatcher (sluice/wake.py) unless an execution holds the
        # lease: the test holds it, as a draining execution would, so that both copies wait.
        before = {e["name"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]}
        control, lease = stack.client("dynamodb"), {"pk": {"S": LEASE_KEY}}
        control.put_item(
            TableName=stack.outputs["ControlTableName"],
            Item={**lease, "holder": {"S": "the-test"}, "expires_at": {"N": str(int(time.time()) + 300)}},
        )

        try:
            # WHEN a file lands (S3 → EventBridge → IngestQueue) and a second copy of its event follows
            data, _ = orders_csv_bytes(ROWS, seed=21)
            obj = upload(stack, unique_key("twice"), data)
            wait_for(
                lambda: visible_messages(stack) == 1, timeout=20, what=f"{obj.key}'s event in IngestQueue"
            )
            stack.client("sqs").send_message(
                QueueUrl=stack.outputs["IngestQueueUrl"], MessageBody=second_copy(stack, obj)
            )
            assert visible_messages(stack) == 2
            assert int(ssm.get_parameter(Name=concurrency)["Parameter"]["Value"]) >= 2
            # (its wake ran, found the lease held and started nothing)
            wake_log = stack.log_dir / "WakeDispatcherFunction.log"
            wait_for(
                lambda: '"reason":"lease held by the-test"' in wake_log.read_text(encoding="utf-8"),
                timeout=20,
                what="the upload's wake to find the lease held",
            )
            assert {e["name"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]} == before
        finally:
            # ... and the dispatcher, once the lease is free, takes both in one round
            control.delete_item(TableName=stack.outputs["ControlTableName"], Key=lease)
        execution = stack.start_execution({"source": "test"}, timeout=90)

    # THEN the file succeeded in one attempt: one message claimed it, the other was deferred while
    # it was in flight (in the same round: not skipped as "already SUCCEEDED" later),
    assert execution["status"] == "SUCCEEDED"
    item = wait_for_state(stack, obj, {"SUCCEEDED"})
    assert (item["attempts"], item["rows_delivered"]) == (1, ROWS)
    answers = register_answers(stack, execution["executionArn"], obj)
    assert sorted(answer["action"] for answer in answers) == ["defer", "process"]
    deferred = next(answer for answer in answers if answer["action"] == "defer")
    holder = item["claimed_by"]
    assert deferred["reason"] == f"duplicate event: object version in progress under message {holder}"
    assert 0 < deferred["defer_seconds"] <= int(pipeline.OVERRIDES["ClaimSeconds"]) + DEFER_MARGIN_SECONDS
    # every row's Idempotency-Key reached the API exactly once,
    assert set(delivery_counts(stack, obj, range(1, ROWS + 1)).values()) == {1}
    # the deferred message is kept, hidden, not deleted,
    assert visible_messages(stack) == 0
    assert not queue_drained(stack)
    # and once the claim has expired a later round registers it again, finds the file finished
    # and deletes it: neither processed again nor dead-lettered.
    wait_for(
        lambda: queue_drained(stack),
        timeout=deferred["defer_seconds"] + 60,
        what="the deferred copy to come back and be deleted",
    )
    item = wait_for_state(stack, obj, {"SUCCEEDED"})
    assert (item["attempts"], item["rows_delivered"]) == (1, ROWS)
    assert set(delivery_counts(stack, obj, range(1, ROWS + 1)).values()) == {1}
    dead = queue_bodies(stack, stack.outputs["IngestDLQUrl"])
    assert [m for m in dead if json.loads(m["Body"])["detail"]["object"]["key"] == obj.key] == []
