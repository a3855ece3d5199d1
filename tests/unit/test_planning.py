"""Batch planning: priorities, order, and the stagger formula of sluice.planning's docstring."""

import copy
import json
from typing import Any

import pytest
from handler_support import load_event

from sluice.planning import (
    LOWEST_PRIORITY,
    PlanRequest,
    Policy,
    QueueDepth,
    ReceivedMessage,
    parse_priority_prefixes,
    plan_batch,
    priority_of,
    wait_seconds,
)
from sluice.settings import PlanSettings

POLICY = Policy(
    stagger_seconds=2.0,
    max_stagger_seconds=60,
    priority_prefixes=(("urgent/", 0), ("bulk/", 9)),
    default_priority=5,
)


def s3_body(key: str) -> str:
    event = copy.deepcopy(load_event("eventbridge-s3-object-created.json"))
    event["detail"]["object"]["key"] = key
    return json.dumps(event)


def message(
    n: int, key: str = "incoming/a.csv", *, priority: str | None = None, body: str | None = None
) -> dict:
    entry: dict[str, Any] = {
        "MessageId": f"m{n}",
        "ReceiptHandle": f"rh{n}",
        "Body": s3_body(key) if body is None else body,
        "Attributes": {"ApproximateReceiveCount": "1"},
    }
    if priority is not None:
        entry["MessageAttributes"] = {"priority": {"StringValue": priority, "DataType": "Number"}}
    return entry


def request(*messages: dict, concurrency: int = 3, visible: int = 0, in_flight: int = 0) -> PlanRequest:
    return PlanRequest.model_validate(
        {
            "messages": list(messages),
            "queue": {
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(in_flight),
            },
            "concurrency": concurrency,
            "round": 0,
        }
    )


def test_priority_prefixes_are_parsed_in_order() -> None:
    assert parse_priority_prefixes(" urgent/=0, bulk/=9 ,") == (("urgent/", 0), ("bulk/", 9))
    assert parse_priority_prefixes("a=b/=3") == (("a=b/", 3),)
    assert parse_priority_prefixes("") == ()


@pytest.mark.parametrize("spec", ["urgent/", "urgent/=high", "urgent/=10", "=3", "bulk/=-1"])
def test_bad_priority_prefix_fails_with_the_entry(spec: str) -> None:
    with pytest.raises(ValueError, match="PRIORITY_PREFIXES"):
        parse_priority_prefixes(spec)


def test_policy_from_settings() -> None:
    settings = PlanSettings(
        stagger_seconds=3, max_stagger_seconds=9, priority_prefixes="x/=1", default_priority=4
    )

    assert Policy.from_settings(settings) == Policy(3.0, 9, (("x/", 1),), 4)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (message(1, "urgent/a.csv"), 0),  # prefix
        (message(1, "bulk/a.csv"), 9),
        (message(1, "incoming/a.csv"), 5),  # default
        (message(1, "bulk/a.csv", priority="2"), 2),  # the attribute wins over the prefix
        (message(1, "bulk/a.csv", priority="12"), 9),  # out of range: ignored
        (message(1, "urgent/a.csv", priority="soon"), 0),  # not a number: ignored
        (message(1, "urgent/a.csv", priority="0", body="not json"), LOWEST_PRIORITY),  # unparseable: last
    ],
)
def test_priority_rules(entry: dict, expected: int) -> None:
    priority, _ = priority_of(ReceivedMessage.model_validate(entry), POLICY)

    assert priority == expected


def test_batch_is_ordered_by_priority_then_receive_order() -> None:
    plan = plan_batch(
        request(
            message(1, "bulk/a.csv"),
            message(2, "incoming/b.csv"),
            message(3, body='{"not": "s3"}'),
            message(4, "urgent/c.csv"),
            message(5, "incoming/d.csv"),
            message(6, "incoming/e.csv", priority="0"),
        ),
        POLICY,
    )

    order = [(item.message.message_id, item.priority) for item in plan.items]
    assert order == [("m4", 0), ("m6", 0), ("m2", 5), ("m5", 5), ("m1", 9), ("m3", 9)]
    assert plan.malformed == 1


def test_planned_item_carries_the_message_as_received() -> None:
    entry = message(7, "incoming/a.csv")
    entry["Attributes"]["ApproximateReceiveCount"] = "3"

    (item,) = plan_batch(request(entry), POLICY).items

    assert item.model_dump() == {
        "message": {
            "message_id": "m7",
            "receipt_handle": "rh7",
            "body": entry["Body"],
            "receive_count": 3,
            "claim": "m7",  # its own id: not a continuation
        },
        "priority": 5,
        "wait_seconds": 0,
    }


@pytest.mark.parametrize(
    ("index", "priority", "shallow", "medium", "deep"),
    [(0, 0, 0, 0, 0), (1, 5, 1, 0, 0), (2, 5, 2, 1, 0), (3, 5, 3, 1, 0), (4, 9, 5, 1, 1), (5, 9, 7, 2, 1)],
)
def test_stagger_matches_the_documented_table(
    index: int, priority: int, shallow: int, medium: int, deep: int
) -> None:
    waits = [
        wait_seconds(index, priority, concurrency=3, depth=depth, policy=POLICY) for depth in (3, 12, 30)
    ]

    assert waits == [shallow, medium, deep]


def test_stagger_is_clamped_to_the_maximum() -> None:
    policy = Policy(stagger_seconds=30, max_stagger_seconds=45, priority_prefixes=(), default_priority=5)

    assert wait_seconds(9, 9, concurrency=1, depth=1, policy=policy) == 45
    assert wait_seconds(0, 9, concurrency=1, depth=1, policy=policy) == 0


def test_deeper_queue_and_higher_priority_never_wait_longer() -> None:
    for index in range(10):
        for depth in range(1, 40):
            shallower = wait_seconds(index, 5, concurrency=3, depth=depth, policy=POLICY)
            deeper = wait_seconds(index, 5, concurrency=3, depth=depth + 1, policy=POLICY)
            assert deeper <= shallower
        assert wait_seconds(index, 0, concurrency=3, depth=5, policy=POLICY) <= wait_seconds(
            index, 9, concurrency=3, depth=5, policy=POLICY
        )


def test_waits_in_a_sorted_batch_never_decrease() -> None:
    plan = plan_batch(request(*(message(n, f"incoming/{n}.csv") for n in range(10)), concurrency=2), POLICY)

    waits = [item.wait_seconds for item in plan.items]
    assert waits == sorted(waits)
    assert waits[0] == 0
    assert waits[-1] > 0


def test_empty_receive_plans_nothing() -> None:
    plan = plan_batch(PlanRequest.model_validate({"concurrency": 2}), POLICY)

    assert plan.items == []
    assert plan.malformed == 0


def test_queue_depth_counts_visible_and_in_flight() -> None:
    depth = QueueDepth.model_validate(
        {"ApproximateNumberOfMessages": "12", "ApproximateNumberOfMessagesNotVisible": "3"}
    )

    assert depth.total == 15
