"""A downstream that is down is not bad data (issue 10, cases 7 and 10), on the offline stack.

The API refuses every request for a while, with 401 (a revoked credential) or by dropping every
connection (a server that is gone). The stack must mark the downstream unhealthy, hold every row
(neither rejected nor failed, no SQS receive spent), announce it, and deliver every row exactly
once when the API is back, announcing that too.
"""

from __future__ import annotations

import json
import time
from typing import Any

from integration.pipeline import delivery_counts, item_of, queue_bodies, unique_key, upload, wait_for_state
from sluice.health import HEALTH_KEY
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.polling import wait_for
from sluice_cli.workload import orders_csv_bytes

UNHEALTHY = "[Sluice] Downstream unhealthy"
RECOVERED = "[Sluice] Downstream recovered"


def breaker_state(stack: OfflineStack) -> str:
    table = stack.outputs["ControlTableName"]
    item = stack.client("dynamodb").get_item(
        TableName=table, Key={"pk": {"S": HEALTH_KEY}}, ConsistentRead=True
    )
    return item.get("Item", {}).get("state", {}).get("S", "closed")


def mail_since(stack: OfflineStack, subject: str, since: float) -> float | None:
    """When the first email with `subject` received after `since` arrived (epoch seconds)."""
    assert stack.smtp is not None
    times = [mail.received_at for mail in stack.smtp.received() if mail.subject == subject]
    return min((t for t in times if t >= since), default=None)


def outage(
    stack: OfflineStack, label: str, down: dict[str, Any], *, files: int, rows: int, seconds: float
) -> dict:
    """Upload `files` files, keep the API down (`down`, apisim's /config) for `seconds` from its first
    refusal, then up; wait for every file. The timeline, seconds from the outage's start."""
    api = stack.api
    assert api is not None
    started = time.time()
    api.configure(**down)
    uploaded = [
        upload(stack, unique_key(f"{label}{n}"), orders_csv_bytes(rows, seed=40 + n)[0]) for n in range(files)
    ]
    wait_for(lambda: breaker_state(stack) == "open", timeout=30, what="the downstream marked unhealthy")
    opened = time.time()
    alarm = wait_for(
        lambda: mail_since(stack, UNHEALTHY, started), timeout=30, what=f"the email {UNHEALTHY!r}"
    )
    time.sleep(max(0.0, started + seconds - time.time()))
    # Down all along: not a row delivered, not a file finished or failed (some still queued)
    states = {(item_of(stack, obj) or {}).get("state", "queued") for obj in uploaded}
    errors = [(item_of(stack, obj) or {}).get("error") for obj in uploaded]
    assert states <= {"queued", "RECEIVED", "PROCESSING"}, errors
    assert not any(any(delivery_counts(stack, obj, range(1, rows + 1)).values()) for obj in uploaded)
    up = time.time()
    api.configure(down_status=0, drop_connections=False)
    items = [wait_for_state(stack, obj, {"SUCCEEDED"}, timeout=90) for obj in uploaded]
    done = time.time()
    recovered = wait_for(
        lambda: mail_since(stack, RECOVERED, up), timeout=30, what=f"the email {RECOVERED!r}"
    )

    # THEN every row was delivered exactly once, after the recovery; nothing rejected, failed or dead-lettered
    for obj, item in zip(uploaded, items, strict=True):
        assert (item["rows_delivered"], item["rows_rejected"]) == (rows, 0)
        counts = delivery_counts(stack, obj, range(1, rows + 1))
        assert set(counts.values()) == {1}, {row: n for row, n in counts.items() if n != 1}
        # attempts also counts the long file's continuations (a new message each, no receive spent):
        # what an outage must not cost is a failed attempt, the receive that goes towards the DLQ
        assert "failed_at" not in item, f"an attempt failed during the outage: {item.get('error')}"
    keys = {obj.key for obj in uploaded}
    dead = [m for m in queue_bodies(stack, stack.outputs["IngestDLQUrl"]) if _key(m) in keys]
    assert dead == []
    assert breaker_state(stack) == "closed"
    timeline = {
        "down": 0.0,
        "marked_unhealthy": opened - started,
        "unhealthy_email": alarm - started,
        "api_back": up - started,
        "recovered_email": recovered - started,
        "all_files_succeeded": done - started,
    }
    print(f"\noutage timeline ({label}): {json.dumps(timeline, indent=1, default=str)}")
    return timeline


def _key(message: dict) -> str:
    return json.loads(message["Body"])["detail"]["object"]["key"]


def test_a_revoked_credential_pauses_delivery_until_it_works_again(pipeline_stack: OfflineStack) -> None:
    # GIVEN an API answering 401 to everything for ~20 s
    timeline = outage(pipeline_stack, "unauthorized", {"down_status": 401}, files=2, rows=30, seconds=20)

    assert timeline["unhealthy_email"] < timeline["api_back"] < timeline["recovered_email"]


def test_an_api_that_is_gone_for_a_minute_dead_letters_nothing(pipeline_stack: OfflineStack) -> None:
    # GIVEN several files queued and an API dropping every connection for ~60 s
    timeline = outage(pipeline_stack, "gone", {"drop_connections": True}, files=4, rows=40, seconds=60)

    assert timeline["unhealthy_email"] < timeline["api_back"] < timeline["recovered_email"]
