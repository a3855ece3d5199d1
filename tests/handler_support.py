"""Test helpers for the ingest-side functions: a pk-keyed table, a Lambda context, what a handler printed."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

EVENTS = Path(__file__).resolve().parents[1] / "events"


def load_event(name: str) -> dict[str, Any]:
    """One of the sample events in events/ (the same files `sam local invoke -e` takes)."""
    return json.loads((EVENTS / name).read_text())


def create_pk_table(name: str) -> Any:
    """A table shaped like MetadataTable / ControlTable: hash key `pk` (S), on-demand. Call under mock_aws."""
    return boto3.resource("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


@dataclass
class FakeLambdaContext:
    """What Powertools' inject_lambda_context reads from Lambda's context object."""

    function_name: str = "sluice-test-function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:sluice-test-function"
    aws_request_id: str = "11111111-2222-3333-4444-555555555555"
    remaining_millis: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_millis


def json_lines(output: str) -> list[dict[str, Any]]:
    """The JSON objects a handler printed (Powertools logs and EMF metric blobs), skipping other lines."""
    records = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def emitted_metrics(output: str) -> dict[str, float]:
    """Metric name → value over every EMF blob printed (CloudWatch's embedded metric format)."""
    values: dict[str, float] = {}
    for record in json_lines(output):
        for directive in record.get("_aws", {}).get("CloudWatchMetrics", []):
            for metric in directive["Metrics"]:
                value = record[metric["Name"]]
                values[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return values


def correlation_ids(output: str) -> set[str]:
    return {record["correlation_id"] for record in json_lines(output) if record.get("correlation_id")}


class _CurrentStdout:
    """Writes to whatever sys.stdout is when a record is written (pytest swaps it between phases)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def capture_powertools_output(monkeypatch: Any) -> None:
    """Point the shared Logger at the current stdout and give Metrics its namespace, for capsys.

    Both singletons are built when `sluice.observability` is first imported, possibly during
    collection: the Logger then holds the stdout of that moment and Metrics the namespace of an
    environment the autouse fixture has not set yet.
    """
    from sluice import observability  # noqa: PLC0415 - not at collection, see above

    monkeypatch.setattr(observability.logger.registered_handler, "stream", _CurrentStdout())
    monkeypatch.setattr(observability.metrics, "namespace", "Sluice")
