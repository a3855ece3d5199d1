"""Redrive handler on moto: events/redrive.json counts without moving; a real run moves the DLQ back."""

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from conftest import load_function
from handler_support import FakeLambdaContext, capture_powertools_output, emitted_metrics, load_event
from moto import mock_aws

pytestmark = pytest.mark.timeout(60)

EVENT = load_event("redrive.json")


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[dict[str, Any]]:
    capture_powertools_output(monkeypatch)
    with mock_aws():
        sqs = boto3.client("sqs")
        urls = {
            n: sqs.create_queue(QueueName=n)["QueueUrl"]
            for n in ("IngestQueue", "IngestDLQ", "FD", "RuleDLQ")
        }
        monkeypatch.setenv("INGEST_QUEUE_URL", urls["IngestQueue"])
        monkeypatch.setenv("INGEST_DLQ_URL", urls["IngestDLQ"])
        monkeypatch.setenv("INGEST_RULE_DLQ_URL", urls["RuleDLQ"])
        monkeypatch.setenv("FAILURE_DESTINATION_QUEUE_URL", urls["FD"])
        monkeypatch.setenv("REDRIVE_RATE_PER_SECOND", "500")
        for number in range(14):
            sqs.send_message(QueueUrl=urls["IngestDLQ"], MessageBody=json.dumps({"n": number}))
        yield {"sqs": sqs, "module": load_function("redrive"), **urls}


def visible(stack: dict[str, Any], queue: str) -> int:
    attributes = stack["sqs"].get_queue_attributes(QueueUrl=stack[queue], AttributeNames=["All"])[
        "Attributes"
    ]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_the_sample_event_is_a_dry_run_that_only_counts(stack: dict[str, Any]) -> None:
    module: ModuleType = stack["module"]

    answer = module.lambda_handler(EVENT, FakeLambdaContext())

    assert answer["dry_run"] is True
    by_source = {s["source"]: s for s in answer["sources"]}
    assert by_source["ingest-dlq"]["before"] == by_source["ingest-dlq"]["after"] == 14
    assert by_source["ingest-dlq"]["status"] == "dry-run"
    assert "executions" not in by_source  # only by name: redriven Map items carry stale handles
    assert visible(stack, "IngestDLQ") == 14
    assert visible(stack, "IngestQueue") == 0


def test_a_redrive_moves_the_dlq_back_and_reports_counts_and_a_metric(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    module: ModuleType = stack["module"]

    answer = module.lambda_handler({"source": "ingest-dlq"}, FakeLambdaContext())

    [source] = answer["sources"]
    assert (source["before"], source["after"], source["moved"]) == (14, 0, 14)
    assert (source["destination_before"], source["destination_after"]) == (0, 14)
    assert visible(stack, "IngestDLQ") == 0
    assert visible(stack, "IngestQueue") == 14
    assert emitted_metrics(capsys.readouterr().out)["MessagesRedriven"] == 14


def test_max_messages_from_the_event_bounds_the_move(stack: dict[str, Any]) -> None:
    answer = stack["module"].lambda_handler({"source": "ingest-dlq", "max_messages": 5}, FakeLambdaContext())

    assert answer["sources"][0]["moved"] == 5
    assert visible(stack, "IngestDLQ") == 9
    assert visible(stack, "IngestQueue") == 5


def test_an_unknown_source_is_refused(stack: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="source"):
        stack["module"].lambda_handler({"source": "everything"}, FakeLambdaContext())
    assert visible(stack, "IngestDLQ") == 14
