"""RegisterObject handler, run with events/register-object.json against a moto MetadataTable."""

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from conftest import load_function
from handler_support import (
    FakeLambdaContext,
    capture_powertools_output,
    correlation_ids,
    create_pk_table,
    emitted_metrics,
    load_event,
)
from moto import mock_aws

EVENT = load_event("register-object.json")
OBJECT_ID = "sluice-raw-example/incoming/orders-valid.csv#3HL4kqtJlcpXroDTDmJ"


@pytest.fixture
def handler(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[ModuleType, Any]]:
    monkeypatch.setenv("METADATA_TABLE", "MetadataTable")
    monkeypatch.setenv("CLAIM_SECONDS", "120")
    capture_powertools_output(monkeypatch)
    with mock_aws():
        table = create_pk_table("MetadataTable")
        yield load_function("register_object"), table


def item(table: Any) -> dict[str, Any]:
    return table.get_item(Key={"pk": OBJECT_ID}, ConsistentRead=True)["Item"]


def test_sample_event_registers_the_object_version(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    module, table = handler

    answer = module.lambda_handler(EVENT, FakeLambdaContext())

    assert answer == {
        "action": "process",
        "object": {
            "id": OBJECT_ID,
            "bucket": "sluice-raw-example",
            "key": "incoming/orders-valid.csv",
            "version_id": "3HL4kqtJlcpXroDTDmJ",
            "size": 1024,
            "etag": '"9b2cf535f27731c974343645a3985328"',
        },
        "reason": None,
        "attempt": 1,
        "defer_seconds": 0,
        "result": None,
    }
    stored = item(table)
    assert (stored["state"], stored["attempts"], stored["size"]) == ("RECEIVED", 1, 1024)
    assert stored["claimed_by"] == EVENT["message_id"]  # the message carrying the work claims the item
    output = capsys.readouterr().out
    assert emitted_metrics(output)["FilesReceived"] == 1
    assert OBJECT_ID in correlation_ids(output)


def test_redelivered_message_is_attempt_two(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    module, table = handler
    module.lambda_handler(EVENT, FakeLambdaContext())
    capsys.readouterr()

    answer = module.lambda_handler({**EVENT, "receive_count": 2, "priority": 0}, FakeLambdaContext())

    assert (answer["action"], answer["attempt"]) == ("process", 2)
    assert (item(table)["attempts"], item(table)["priority"]) == (2, 0)
    assert emitted_metrics(capsys.readouterr().out)["RetriesRegistered"] == 1


def test_duplicate_event_of_a_finished_version_is_skipped(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    module, table = handler
    module.lambda_handler(EVENT, FakeLambdaContext())
    table.update_item(
        Key={"pk": OBJECT_ID},
        UpdateExpression="SET #s = :s, summary_key = :k",  # as "Record outcome" leaves it
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":s": "SUCCEEDED", ":k": "results/summary.json"},
    )
    capsys.readouterr()

    answer = module.lambda_handler(EVENT, FakeLambdaContext())

    assert (answer["action"], answer["reason"], answer["attempt"]) == ("skip", "already SUCCEEDED", 1)
    assert answer["object"]["id"] == OBJECT_ID
    assert (item(table)["state"], item(table)["attempts"]) == ("SUCCEEDED", 1)
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics["DuplicateEventsSkipped"] == 1
    assert "DuplicateEventsDeferred" not in metrics


def test_second_message_for_a_version_in_flight_is_deferred_to_the_claims_end(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the version registered from one message and not finished yet
    module, table = handler
    registered = module.lambda_handler(EVENT, FakeLambdaContext())
    capsys.readouterr()

    # WHEN another message with the same event arrives in the same batch
    answer = module.lambda_handler(
        {**EVENT, "message_id": "second-copy", "receipt_handle": "AQEBsecond=="}, FakeLambdaContext()
    )

    # THEN it is deferred to the end of the first message's claim (CLAIM_SECONDS 120 + 5 s margin; the
    # state machine hides it that long), naming the message that carries the work
    first = EVENT["message_id"]
    assert 120 <= answer.pop("defer_seconds") <= 125
    assert answer == {
        "action": "defer",
        "object": registered["object"],
        "reason": f"duplicate event: object version in progress under message {first}",
        "attempt": 1,
        "result": None,
    }
    assert (item(table)["attempts"], item(table)["claimed_by"]) == (1, first)
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics["DuplicateEventsDeferred"] == 1
    assert "DuplicateEventsSkipped" not in metrics


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "body is not JSON"),
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}), "not an S3 Object Created event"),
    ],
)
def test_malformed_body_is_rejected_with_a_reason(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str], body: str, reason: str
) -> None:
    module, table = handler

    answer = module.lambda_handler({**EVENT, "body": body}, FakeLambdaContext())

    assert answer["action"] == "reject"
    assert answer["object"] is None
    assert answer["attempt"] == 0
    assert reason in answer["reason"]
    assert table.scan()["Items"] == []
    assert emitted_metrics(capsys.readouterr().out)["MalformedEvents"] == 1


def test_missing_table_name_fails_the_cold_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METADATA_TABLE", raising=False)

    with pytest.raises(RuntimeError, match="METADATA_TABLE"):
        load_function("register_object")


def test_a_continuation_registers_under_the_claim_it_carries(
    handler: tuple[ModuleType, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the first message holds the claim and its file yielded after its turn
    module, table = handler
    module.lambda_handler(EVENT, FakeLambdaContext())
    first = EVENT["message_id"]
    capsys.readouterr()

    # WHEN its continuation (a new message carrying the first one's claim) is registered
    answer = module.lambda_handler(
        {**EVENT, "message_id": "continuation-1", "receipt_handle": "AQEBcont==", "claim": first},
        FakeLambdaContext(),
    )

    # THEN it is let in at once as the claim's holder: a new attempt, not deferred, counted as a
    # continuation rather than a retry
    assert (answer["action"], answer["attempt"]) == ("process", 2)
    assert item(table)["claimed_by"] == first
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics["ContinuationsRegistered"] == 1
    assert "RetriesRegistered" not in metrics


def test_a_success_without_its_output_is_answered_with_the_parts_that_make_the_file(
    handler: tuple[ModuleType, Any],
) -> None:
    # GIVEN a file processed in two runs of parts (attempt 1 wrote parts 0-1, attempt 2 from part 2
    # on), its outcome recorded but no summary_key: WriteOutput had not succeeded
    module, table = handler
    module.lambda_handler(EVENT, FakeLambdaContext())
    table.update_item(
        Key={"pk": OBJECT_ID},
        UpdateExpression=(
            "SET #s = :s, rows_total = :n, rows_delivered = :n, rows_rejected = :z, checkpoint = :c"
        ),
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={
            ":s": "SUCCEEDED",
            ":n": 7,
            ":z": 0,
            ":c": {"next_row": 8, "byte_offset": 300, "parts": 3, "header": ["a"], "runs": [[0, 1], [2, 2]]},
        },
    )

    # WHEN its message comes again
    answer = module.lambda_handler({**EVENT, "message_id": "m-again"}, FakeLambdaContext())

    # THEN the output stage is run again over exactly those parts
    assert answer["action"] == "complete output"
    result = answer["result"]
    assert (result["outcome"], result["rows_delivered"], result["parts"], result["runs"]) == (
        "SUCCEEDED",
        7,
        3,
        [[0, 1], [2, 2]],
    )
