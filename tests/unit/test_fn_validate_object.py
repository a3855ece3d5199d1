"""ValidateObject handler with events/validate-object.json, on moto S3 and the metadata table."""

from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from conftest import SAMPLES, load_function
from datapath_support import RAW_BUCKET, create_buckets, create_tables
from handler_support import (
    FakeLambdaContext,
    capture_powertools_output,
    correlation_ids,
    emitted_metrics,
    load_event,
)
from moto import mock_aws
from pydantic import ValidationError

from sluice.metadata import MetadataStore
from sluice.models import ObjectRef

EVENT = load_event("validate-object.json")


@dataclass
class Stack:
    module: ModuleType
    s3: Any
    store: MetadataStore

    def invoke_with(self, body: bytes, key: str = "incoming/orders.csv") -> tuple[dict[str, Any], ObjectRef]:
        version = self.s3.put_object(Bucket=RAW_BUCKET, Key=key, Body=body)["VersionId"]
        obj = ObjectRef(
            bucket=RAW_BUCKET, key=key, version_id=version, size=len(body), etag=EVENT["object"]["etag"]
        )
        self.store.register(obj)
        event = {"object": {**EVENT["object"], **obj.as_payload()}}
        return self.module.lambda_handler(event, FakeLambdaContext()), obj


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv("METADATA_TABLE", "MetadataTable")
    monkeypatch.setenv("MAX_FILE_BYTES", "1000000")
    capture_powertools_output(monkeypatch)
    with mock_aws():
        tables = create_tables()
        s3 = create_buckets()
        yield Stack(load_function("validate_object"), s3, MetadataStore(tables["MetadataTable"]))


def test_a_valid_file_answers_its_header_and_stays_registered(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    answer, obj = stack.invoke_with((SAMPLES / "orders-valid.csv").read_bytes())

    assert answer == {
        "valid": True,
        "header": ["order_id", "customer_email", "amount", "currency", "order_date", "quantity"],
        "reason": None,
    }
    assert stack.store.get(obj.id)["state"] == "RECEIVED"  # type: ignore[index]
    output = capsys.readouterr().out
    assert emitted_metrics(output)["FilesValid"] == 1
    assert obj.id in correlation_ids(output)


def test_an_invalid_file_is_answered_with_the_reason_and_not_recorded(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    answer, obj = stack.invoke_with((SAMPLES / "orders-invalid.csv").read_bytes())

    assert answer["valid"] is False
    assert answer["header"] is None
    assert answer["reason"].startswith("header: missing columns 'customer_email', 'order_date', 'quantity'")
    # the state machine records INVALID once the message is in InvalidQueue, not the function
    item = stack.store.get(obj.id)
    assert item is not None
    assert item["state"] == "RECEIVED"
    assert emitted_metrics(capsys.readouterr().out)["FilesInvalid"] == 1


def test_an_empty_file_is_invalid(stack: Stack) -> None:
    answer, obj = stack.invoke_with(b"")

    assert answer == {"valid": False, "header": None, "reason": "empty file"}
    assert "reason" not in stack.store.get(obj.id)  # type: ignore[operator]


def test_a_file_over_max_file_bytes_is_invalid(stack: Stack) -> None:
    answer, _ = stack.invoke_with((SAMPLES / "orders-valid.csv").read_bytes() * 400)

    assert answer["reason"].endswith("more than MAX_FILE_BYTES (1000000)")


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_payload_without_an_object_is_refused(stack: Stack) -> None:
    with pytest.raises(ValidationError, match="object"):
        stack.module.lambda_handler({"objet": {}}, FakeLambdaContext())
