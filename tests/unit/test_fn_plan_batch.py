"""PlanBatch handler, run with events/plan-batch.json."""

import copy
from types import ModuleType
from typing import Any

import pytest
from conftest import load_function
from handler_support import (
    FakeLambdaContext,
    capture_powertools_output,
    correlation_ids,
    emitted_metrics,
    load_event,
)

EVENT = load_event("plan-batch.json")


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> ModuleType:
    monkeypatch.setenv("STAGGER_SECONDS", "10")
    monkeypatch.setenv("MAX_STAGGER_SECONDS", "30")
    monkeypatch.setenv("PRIORITY_PREFIXES", "urgent/=0,bulk/=9")
    monkeypatch.setenv("DEFAULT_PRIORITY", "5")
    capture_powertools_output(monkeypatch)
    return load_function("plan_batch")


def test_sample_batch_is_ordered_and_staggered(
    handler: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = handler.lambda_handler(EVENT, FakeLambdaContext())

    first, second = EVENT["messages"]
    # The second message carries the priority attribute 0, so it goes first, at once.
    assert answer == {
        "items": [
            {
                "message": {
                    "message_id": second["MessageId"],
                    "receipt_handle": second["ReceiptHandle"],
                    "body": second["Body"],
                    "receive_count": 2,
                    "claim": second["MessageId"],  # not a continuation: its own id
                },
                "priority": 0,
                "wait_seconds": 0,
            },
            {
                "message": {
                    "message_id": first["MessageId"],
                    "receipt_handle": first["ReceiptHandle"],
                    "body": first["Body"],
                    "receive_count": 1,
                    "claim": first["MessageId"],
                },
                "priority": 5,
                # depth 15, concurrency 3: 10 s * 3/15 * (1 + 5/9) * 1/3 = 1.04 → 1
                "wait_seconds": 1,
            },
        ]
    }
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics["BatchSize"] == 2
    assert metrics["QueueDepth"] == 15
    assert "MalformedEvents" not in metrics


def test_malformed_body_is_planned_last_not_dropped(
    handler: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    event = copy.deepcopy(EVENT)
    junk = {"MessageId": "junk", "ReceiptHandle": "rh-junk", "Body": "{not json", "Attributes": {}}
    event["messages"].insert(0, junk)
    event["execution"] = "dispatch-20261122T030000Z-7f3a"

    answer = handler.lambda_handler(event, FakeLambdaContext())

    assert [item["message"]["message_id"] for item in answer["items"]][-1] == "junk"
    assert answer["items"][-1]["priority"] == 9
    assert len(answer["items"]) == 3
    output = capsys.readouterr().out
    assert emitted_metrics(output)["MalformedEvents"] == 1
    assert "dispatch-20261122T030000Z-7f3a" in correlation_ids(output)


def test_key_prefix_sets_the_priority(handler: ModuleType) -> None:
    event: dict[str, Any] = copy.deepcopy(EVENT)
    message = event["messages"][0]
    message["Body"] = message["Body"].replace("incoming/orders-valid.csv", "bulk/orders.csv")
    event["messages"] = [message]

    (item,) = handler.lambda_handler(event, FakeLambdaContext())["items"]

    assert item["priority"] == 9


def test_bad_priority_prefixes_fail_the_cold_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIORITY_PREFIXES", "urgent/=high")

    with pytest.raises(ValueError, match="urgent/=high"):
        load_function("plan_batch")
