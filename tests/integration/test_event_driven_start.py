"""Event-driven start (issue 14): a file's arrival wakes the dispatcher, the lease keeps it single,
the schedule is only the safety net (sluice/wake.py, offline/events_bridge.py).

Every test holds the local scheduler (`scheduler.paused()`), so nothing but the wake under test
starts an execution.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from integration.pipeline import (
    delivery_counts,
    queue_drained,
    unique_key,
    upload,
    wait_for_state,
)
from sluice.lease import LEASE_KEY
from sluice.wake import EXECUTION_PREFIX
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.intrinsics import ACCOUNT_ID
from sluice_cli.offline.polling import wait_for
from sluice_cli.offline.scheduler import scheduled_event
from sluice_cli.workload import orders_csv_bytes

ROWS = 10
PAST_THE_LEASE = "Read concurrency setting"  # the first state after "Did this execution get the lease?"


def executions(stack: OfflineStack) -> list[dict]:
    sfn = stack.client("stepfunctions")
    return sfn.list_executions(stateMachineArn=stack.outputs["DispatcherStateMachineArn"])["executions"]


def idle(stack: OfflineStack) -> None:
    """Wait until earlier tests' work is done: no message, no running execution, no lease."""
    control = stack.client("dynamodb")

    def quiet() -> bool:
        running = [e for e in executions(stack) if e["status"] == "RUNNING"]
        lease = control.get_item(TableName=stack.outputs["ControlTableName"], Key={"pk": {"S": LEASE_KEY}})
        return queue_drained(stack) and not running and "Item" not in lease

    wait_for(quiet, timeout=90, what="an empty IngestQueue, no running dispatcher and no lease")


def drained(stack: OfflineStack, execution_arn: str) -> bool:
    """Did this execution get past the lease (and so drain the queue)?"""
    pages = stack.client("stepfunctions").get_paginator("get_execution_history")
    return any(
        event.get("stateEnteredEventDetails", {}).get("name") == PAST_THE_LEASE
        for page in pages.paginate(executionArn=execution_arn)
        for event in page["events"]
    )


@contextmanager
def wakes_lost(stack: OfflineStack) -> Iterator[None]:
    """The IngestRule's Lambda target gets nothing (EventBridge failed to invoke it)."""
    bridge = stack.events_bridge
    assert bridge is not None
    routes = bridge.routes()
    for arn in routes:
        bridge.route(arn, [])
    try:
        yield
    finally:
        for arn, targets in routes.items():
            bridge.route(arn, targets)


def test_an_upload_starts_the_dispatcher_within_seconds_without_the_schedule(
    pipeline_stack: OfflineStack,
) -> None:
    stack = pipeline_stack
    assert stack.scheduler is not None
    with stack.scheduler.paused():
        idle(stack)
        before = {e["name"] for e in executions(stack)}
        data, _ = orders_csv_bytes(ROWS, seed=41)

        # WHEN a file lands, with no schedule running
        uploaded = time.monotonic()
        obj = upload(stack, unique_key("woken"), data)

        # THEN a wake execution starts within seconds and delivers the file
        started = wait_for(
            lambda: [e for e in executions(stack) if e["name"] not in before] or None,
            timeout=10,
            interval=0.05,
            what=f"an execution started by {obj.key}'s arrival",
        )
        waited = time.monotonic() - uploaded
        item = wait_for_state(stack, obj, {"SUCCEEDED"}, timeout=60)

    assert all(e["name"].startswith(EXECUTION_PREFIX) for e in started), started
    assert waited < 10
    assert (item["attempts"], item["rows_delivered"]) == (1, ROWS)
    assert set(delivery_counts(stack, obj, range(1, ROWS + 1)).values()) == {1}


def test_two_wakes_at_once_start_one_execution_which_drains(pipeline_stack: OfflineStack) -> None:
    stack = pipeline_stack
    assert stack.scheduler is not None
    assert stack.runtime is not None
    runtime = stack.runtime
    wake = stack.outputs["WakeDispatcherFunctionName"]
    with stack.scheduler.paused():
        idle(stack)
        before = {e["name"] for e in executions(stack)}
        # GIVEN a file whose wake was lost (its message waits in IngestQueue)
        with wakes_lost(stack):
            data, _ = orders_csv_bytes(ROWS, seed=42)
            obj = upload(stack, unique_key("two-wakes"), data)

        # WHEN two wakes (two distinct events) run at the same moment
        events = [
            {**scheduled_event(stack.region, ACCOUNT_ID, "rule"), "id": str(uuid.uuid4())} for _ in range(2)
        ]
        barrier = threading.Barrier(len(events))
        answers: list[dict] = []

        def run(event: dict) -> None:
            barrier.wait(timeout=10)
            result = runtime.invoke(wake, json.dumps(event).encode())
            answers.append(json.loads(result.payload))

        threads = [threading.Thread(target=run, args=(event,)) for event in events]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        item = wait_for_state(stack, obj, {"SUCCEEDED"}, timeout=60)
        started = wait_for(
            lambda: (
                new
                if (new := [e for e in executions(stack) if e["name"] not in before])
                and all(e["status"] != "RUNNING" for e in new)
                else None
            ),
            timeout=60,
            what="the woken executions to end",
        )

    # THEN one wake took the lease and started one execution, which drained; the other started none
    assert sorted(answer["started"] for answer in answers) == [False, True], answers
    (execution,) = started
    assert drained(stack, execution["executionArn"])
    assert (item["attempts"], item["rows_delivered"]) == (1, ROWS)
    assert set(delivery_counts(stack, obj, range(1, ROWS + 1)).values()) == {1}


def test_the_schedule_alone_drains_when_the_wake_is_lost(pipeline_stack: OfflineStack) -> None:
    stack = pipeline_stack
    assert stack.scheduler is not None
    with stack.scheduler.paused():
        idle(stack)
        before = {e["name"] for e in executions(stack)}
        with wakes_lost(stack):
            data, _ = orders_csv_bytes(ROWS, seed=43)
            obj = upload(stack, unique_key("wake-lost"), data)
            # GIVEN the file's wake lost: nothing starts on its own
            time.sleep(3)
            assert [e["name"] for e in executions(stack) if e["name"] not in before] == []

        # WHEN the safety-net schedule fires (what EventBridge does once a minute on AWS)
        stack.scheduler.tick()

        # THEN it wakes the dispatcher, which drains the file
        item = wait_for_state(stack, obj, {"SUCCEEDED"}, timeout=60)
    assert (item["attempts"], item["rows_delivered"]) == (1, ROWS)
    assert set(delivery_counts(stack, obj, range(1, ROWS + 1)).values()) == {1}
