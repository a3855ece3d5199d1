"""Sluice end to end on the offline stack: the same template, state machine and handlers as on AWS.

Each test uploads its own files and asserts outcomes where they land: the metadata table,
ProcessedBucket, the queues, what the topics published and what the downstream API received.
"""

from __future__ import annotations

import json
import time

import pytest

from integration.pipeline import (
    API_RATE,
    MAX_RECEIVE_COUNT,
    OVERRIDES,
    PROCESS_TIMEOUT_SECONDS,
    delivery_counts,
    item_of,
    queue_bodies,
    queue_drained,
    results,
    s3_event_body,
    subscribe_queue,
    unique_key,
    upload,
    wait_for_state,
    with_failing_row,
)
from sluice_cli.apisim import UNKNOWN_CUSTOMER_RULE, RejectRule
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.polling import wait_for
from sluice_cli.workload import InvalidKind, RejectKind, generate_invalid_csv, orders_csv_bytes


def test_a_valid_file_is_delivered_row_by_row_exactly_once_and_succeeds(pipeline_stack: OfflineStack) -> None:
    data, _ = orders_csv_bytes(30, seed=1)
    obj = upload(pipeline_stack, unique_key("valid"), data)

    item = wait_for_state(pipeline_stack, obj, {"SUCCEEDED"})

    assert (item["rows_total"], item["rows_delivered"], item["rows_rejected"]) == (30, 30, 0)
    assert set(delivery_counts(pipeline_stack, obj, range(1, 31)).values()) == {1}
    output = results(pipeline_stack, obj)
    assert [line["row"] for line in output["accepted"]] == list(range(1, 31))
    assert all(line["answer"]["idempotency_key"] == line["idempotency_key"] for line in output["accepted"])
    assert output["rejects"] == ["row,reason"]
    assert output["summary"]["rows_delivered"] == 30


def test_rejectable_rows_end_succeeded_with_rejects_naming_row_and_reason(
    pipeline_stack: OfflineStack,
) -> None:
    data, generated = orders_csv_bytes(40, rejects=4, api_rejects=2, seed=2)
    obj = upload(pipeline_stack, unique_key("rejects"), data)

    item = wait_for_state(pipeline_stack, obj, {"SUCCEEDED_WITH_REJECTS"})

    rejected = sorted(generated.rejects)
    assert (item["rows_delivered"], item["rows_rejected"]) == (40 - len(rejected), len(rejected))
    rows = [line.split(",", 1) for line in results(pipeline_stack, obj)["rejects"][1:]]
    assert [int(row) for row, _ in rows] == rejected
    for row, reason in rows:
        kind = generated.rejects[int(row)]
        assert reason, f"row {row} rejected without a reason"
        if kind is RejectKind.UNKNOWN_CUSTOMER:
            assert "api 422" in reason  # the API refused it
    # Rows that fail validation never reach the API; the rest are delivered once.
    counts = delivery_counts(pipeline_stack, obj, range(1, 41))
    assert {row for row, count in counts.items() if count == 0} == set(rejected)
    assert {count for row, count in counts.items() if row not in generated.rejects} == {1}


def test_an_invalid_file_ends_invalid_in_the_invalid_queue_with_an_alert(
    pipeline_stack: OfflineStack,
) -> None:
    alerts = subscribe_queue(
        pipeline_stack, pipeline_stack.outputs["AlertTopicArn"], f"alerts-{time.time_ns()}"
    )
    obj = upload(pipeline_stack, unique_key("invalid"), generate_invalid_csv(InvalidKind.BAD_HEADER, rows=5))

    item = wait_for_state(pipeline_stack, obj, {"INVALID"})

    assert "customer_email" in item["reason"]
    assert pipeline_stack.api is not None
    assert pipeline_stack.api.stats()["requests"] == 0

    def routed() -> list[dict] | None:
        messages = queue_bodies(pipeline_stack, pipeline_stack.outputs["InvalidQueueUrl"])
        return [m for m in messages if json.loads(m["Body"])["detail"]["object"]["key"] == obj.key] or None

    message = wait_for(routed, timeout=20, what=f"{obj.key}'s message in InvalidQueue")[0]
    assert "customer_email" in message["MessageAttributes"]["reason"]["StringValue"]

    def alerted() -> list[dict] | None:
        found = [json.loads(m["Body"]) for m in queue_bodies(pipeline_stack, alerts)]
        return [n for n in found if obj.key in n["Message"]] or None

    notification = wait_for(alerted, timeout=20, what=f"an alert about {obj.key} on AlertTopic")[0]
    assert notification["Subject"] == "Sluice: invalid file"


def test_transient_api_errors_are_retried_to_success(pipeline_stack: OfflineStack) -> None:
    api = pipeline_stack.api
    assert api is not None
    api.configure(error_rate=0.6)  # most calls fail with 503 for a while
    data, _ = orders_csv_bytes(25, seed=3)
    obj = upload(pipeline_stack, unique_key("transient"), data)
    wait_for(
        lambda: api.stats()["responses_by_status"].get("503", 0) >= 10, timeout=30, what="ten 503 answers"
    )
    api.configure(error_rate=0.0)

    item = wait_for_state(pipeline_stack, obj, {"SUCCEEDED"})

    assert item["rows_delivered"] == 25
    counts = delivery_counts(pipeline_stack, obj, range(1, 26))
    assert min(counts.values()) >= 1
    if item["attempts"] == 1:  # no segment had to be retried: no row can have been sent twice
        assert set(counts.values()) == {1}


def test_a_row_the_api_keeps_failing_ends_the_file_failed_and_in_the_dlq(
    pipeline_stack: OfflineStack,
) -> None:
    # The API fails this one row with 503 every time and accepts the others: not an outage.
    data, _ = orders_csv_bytes(10, seed=4)
    obj = upload(pipeline_stack, unique_key("failing"), with_failing_row(data))

    item = wait_for_state(pipeline_stack, obj, {"FAILED"}, attempts=MAX_RECEIVE_COUNT, timeout=90)

    assert "TransientDownstreamError" in item["error"] or "503" in item["error"]

    def in_dlq() -> list[dict] | None:
        messages = queue_bodies(pipeline_stack, pipeline_stack.outputs["IngestDLQUrl"])
        return [m for m in messages if json.loads(m["Body"])["detail"]["object"]["key"] == obj.key] or None

    wait_for(in_dlq, timeout=30, what=f"{obj.key}'s message in IngestDLQ after {MAX_RECEIVE_COUNT} receives")
    assert item_of(pipeline_stack, obj)["state"] == "FAILED"  # not retried again: it waits for a redrive


@pytest.mark.xfail(
    strict=False,
    reason="known defect, open in issue 11: since the merged lease limiter, 21 arrivals in a second "
    "at a limit of 20 in 2 of 4 full runs (make run: 51 at 50); the pacing's p99 lateness is no bound",
)
def test_the_busiest_second_stays_within_the_api_limit(pipeline_stack: OfflineStack) -> None:
    files = [
        upload(pipeline_stack, unique_key(f"rate{n}"), orders_csv_bytes(60, seed=10 + n)[0]) for n in range(3)
    ]

    for obj in files:
        wait_for_state(pipeline_stack, obj, {"SUCCEEDED"}, timeout=90)

    assert pipeline_stack.api is not None
    stats = pipeline_stack.api.stats()
    assert stats["accepted"] >= 180
    assert stats["max_requests_in_any_second"] <= API_RATE, stats["arrivals_per_second"]
    assert stats["throttled"] == 0


def test_a_segment_whose_api_calls_outlive_it_stops_at_its_deadline_and_resumes(
    pipeline_stack: OfflineStack,
) -> None:
    """GIVEN a file being delivered, WHEN the API slows down so much that every call outlives
    ProcessObject's time (15 s answers, an 8 s timeout, ApiTimeoutSeconds 20), THEN no segment is
    killed: each cuts its requests at its stop, checkpoints and hands over to the next; when the API
    is fast again the file succeeds from the stored checkpoint, rows before it never sent again."""
    api = pipeline_stack.api
    assert api is not None
    data, _ = orders_csv_bytes(120, seed=5)
    obj = upload(pipeline_stack, unique_key("slow"), data)
    wait_for(
        lambda: api.stats()["accepted"] >= 30, timeout=30, what="30 rows delivered before slowing the API"
    )
    kills = pipeline_stack.runtime.timeouts.get("ProcessObjectFunction", 0)
    api.configure(latency_min=15.0, latency_max=15.0)  # every call now outlives the function's timeout
    slowed = time.monotonic()
    checkpoints: set[str] = set()

    def stopped_twice() -> bool:
        checkpoints.add(item_of(pipeline_stack, obj)["updated_at"])
        # two function timeouts: the segment running at the slowdown would have been killed by then
        return len(checkpoints) >= 3 and time.monotonic() - slowed > 2 * PROCESS_TIMEOUT_SECONDS

    wait_for(stopped_twice, timeout=60, what="segments to stop and checkpoint while the API is slow")
    assert pipeline_stack.runtime.timeouts.get("ProcessObjectFunction", 0) == kills, "a segment was killed"
    checkpoint = int(item_of(pipeline_stack, obj)["checkpoint"]["next_row"])
    api.configure(latency_min=0.005, latency_max=0.02)

    item = wait_for_state(pipeline_stack, obj, {"SUCCEEDED"}, timeout=90)

    assert checkpoint > 1, "no checkpoint was stored while the API was slow"
    assert "failed_at" not in item, f"an attempt failed: {item.get('error')}"
    assert item["rows_delivered"] == 120
    counts = delivery_counts(pipeline_stack, obj, range(1, 121))
    assert all(counts[row] == 1 for row in range(1, checkpoint)), "a row before the checkpoint was re-sent"
    assert min(counts.values()) >= 1
    assert [line["row"] for line in results(pipeline_stack, obj)["accepted"]] == list(range(1, 121))


def test_a_duplicate_s3_event_for_a_finished_version_is_skipped(pipeline_stack: OfflineStack) -> None:
    data, _ = orders_csv_bytes(10, seed=6)
    obj = upload(pipeline_stack, unique_key("duplicate"), data)
    first = wait_for_state(pipeline_stack, obj, {"SUCCEEDED"})

    pipeline_stack.client("sqs").send_message(
        QueueUrl=pipeline_stack.outputs["IngestQueueUrl"], MessageBody=s3_event_body(obj)
    )
    wait_for(lambda: queue_drained(pipeline_stack), timeout=30, what="the duplicate event to be consumed")

    again = item_of(pipeline_stack, obj)
    assert again["attempts"] == first["attempts"]
    assert again["state"] == "SUCCEEDED"
    assert set(delivery_counts(pipeline_stack, obj, range(1, 11)).values()) == {1}


def test_an_empty_queue_is_a_no_op(pipeline_stack: OfflineStack) -> None:
    sfn = pipeline_stack.client("stepfunctions")
    machine = pipeline_stack.outputs["DispatcherStateMachineArn"]
    assert pipeline_stack.scheduler is not None
    with pipeline_stack.scheduler.paused():
        wait_for(
            lambda: (
                queue_drained(pipeline_stack)
                and not sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING")["executions"]
            ),
            timeout=60,
            what="an empty IngestQueue and no running dispatcher",
        )
        items_before = len(
            pipeline_stack.client("dynamodb").scan(TableName=pipeline_stack.outputs["MetadataTableName"])[
                "Items"
            ]
        )
        assert pipeline_stack.api is not None
        pipeline_stack.api.reset()

        execution = pipeline_stack.start_execution({"source": "test"}, timeout=60)

    assert execution["status"] == "SUCCEEDED"
    assert pipeline_stack.api.stats()["requests"] == 0
    items_after = len(
        pipeline_stack.client("dynamodb").scan(TableName=pipeline_stack.outputs["MetadataTableName"])["Items"]
    )
    assert items_after == items_before


def test_rows_answered_behind_a_row_that_failed_for_good_are_not_sent_again(
    pipeline_stack: OfflineStack,
) -> None:
    """GIVEN row 20 of 40 answered 503 by the API every time, WHEN the first attempt fails on it
    and the file is retried once the row is accepted again, THEN the API accepted every row exactly
    once: the rows it had answered behind row 20 were kept with the checkpoint, not re-sent."""
    api = pipeline_stack.api
    assert api is not None
    data, _ = orders_csv_bytes(40, seed=8)
    api.refuse([RejectRule(field="order_id", pattern="^ORD-000020$", error="row 20 is down", status=503)])
    try:
        obj = upload(pipeline_stack, unique_key("failed-row"), data)
        wait_for(
            lambda: api.stats()["responses_by_status"].get("503", 0) >= int(OVERRIDES["ApiMaxAttempts"]),
            timeout=60,
            what="row 20 to fail every one of its attempts",
        )
    finally:
        api.refuse([UNKNOWN_CUSTOMER_RULE])  # the retry's row 20 is accepted
    kept = wait_for(
        lambda: item_of(pipeline_stack, obj).get("checkpoint", {}).get("ahead"),
        timeout=10,
        interval=0.05,
        what="the failed attempt's checkpoint to keep the rows answered behind row 20",
    )

    item = wait_for_state(pipeline_stack, obj, {"SUCCEEDED"}, timeout=90)

    assert min(kept) > 20
    assert item["attempts"] == 2
    assert item["rows_delivered"] == 40
    assert set(delivery_counts(pipeline_stack, obj, range(1, 41)).values()) == {1}
    assert [line["row"] for line in results(pipeline_stack, obj)["accepted"]] == list(range(1, 41))
