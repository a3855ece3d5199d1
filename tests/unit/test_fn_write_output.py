"""WriteOutput handler with events/write-output.json, and the three data-path stages chained."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SAMPLES, load_function
from datapath_support import PROCESSED_BUCKET, RAW_BUCKET, ApiServer, create_buckets, create_tables
from handler_support import (
    FakeLambdaContext,
    capture_powertools_output,
    correlation_ids,
    emitted_metrics,
    load_event,
)
from moto import mock_aws

from sluice.metadata import MetadataStore
from sluice.models import MAX_OUTPUT_CALLS, ObjectRef
from sluice.results import PartWriter, accepted_line

EVENT = load_event("write-output.json")
OBJ = ObjectRef.model_validate(EVENT["object"])


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("PROCESSED_BUCKET", PROCESSED_BUCKET)
    capture_powertools_output(monkeypatch)
    with mock_aws():
        yield create_buckets()


def read(s3: Any, key: str) -> str:
    return s3.get_object(Bucket=PROCESSED_BUCKET, Key=key)["Body"].read().decode()


def test_the_parts_become_the_results(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    parts = PartWriter(s3, PROCESSED_BUCKET, OBJ, attempt=1)
    parts.write(0, [accepted_line(n, f"k{n}", {"n": n}, {"ok": True}) for n in range(1, 11)], [])
    parts.write(1, [accepted_line(n, f"k{n}", {"n": n}, {"ok": True}) for n in range(11, 21)], [])
    module = load_function("write_output")

    answer = module.lambda_handler(EVENT, FakeLambdaContext())

    base = "results/incoming/orders-valid.csv/3HL4kqtJlcpXroDTDmJ"
    assert answer == {
        "done": True,
        "calls_left": MAX_OUTPUT_CALLS - 1,
        "position": None,
        "accepted_key": f"{base}/accepted.jsonl",
        "rejects_key": f"{base}/rejects.csv",
        "summary_key": f"{base}/summary.json",
    }
    assert [json.loads(line)["row"] for line in read(s3, answer["accepted_key"]).splitlines()] == list(
        range(1, 21)
    )
    assert read(s3, answer["rejects_key"]) == "row,reason\n"
    assert json.loads(read(s3, answer["summary_key"]))["outcome"] == "SUCCEEDED"
    assert "Contents" not in s3.list_objects_v2(Bucket=PROCESSED_BUCKET, Prefix="parts/")
    output = capsys.readouterr().out
    assert emitted_metrics(output)["FilesWritten"] == 1
    assert OBJ.id in correlation_ids(output)


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_file_that_is_not_done_has_no_output_yet(s3: Any) -> None:
    module = load_function("write_output")
    event = {**EVENT, "result": {**EVENT["result"], "done": False, "outcome": None}}

    with pytest.raises(ValueError, match="not done after segment 1"):
        module.lambda_handler(event, FakeLambdaContext())


def test_validate_process_and_write_the_sample_with_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the three stages deployed against one moto account and a loopback API
    for name, value in {
        "METADATA_TABLE": "MetadataTable",
        "CONTROL_TABLE": "ControlTable",
        "IDEMPOTENCY_TABLE": "IdempotencyTable",
        "PROCESSED_BUCKET": PROCESSED_BUCKET,
        "API_RATE_LIMIT": "2000",
        "CHECKPOINT_EVERY_ROWS": "20",
        "STAGE": "local",  # the test API listens on http://127.0.0.1
    }.items():
        monkeypatch.setenv(name, value)
    capture_powertools_output(monkeypatch)
    body = (SAMPLES / "orders-with-rejects.csv").read_bytes()
    with mock_aws(), ApiServer() as api:
        monkeypatch.setenv("API_URL", api.url)
        tables, s3 = create_tables(), create_buckets()
        version = s3.put_object(Bucket=RAW_BUCKET, Key="incoming/orders.csv", Body=body)["VersionId"]
        obj = ObjectRef(bucket=RAW_BUCKET, key="incoming/orders.csv", version_id=version, size=len(body))
        MetadataStore(tables["MetadataTable"]).register(obj)
        context = FakeLambdaContext()

        # WHEN the state machine's data path runs: Validate, Transform and deliver, Output
        validation = load_function("validate_object").lambda_handler({"object": obj.as_payload()}, context)
        result = load_function("process_object").lambda_handler(
            {"object": obj.as_payload(), "attempt": 1, "segment": 0}, context
        )
        written = load_function("write_output").lambda_handler(
            {"object": obj.as_payload(), "result": result}, context
        )

        accepted = [json.loads(line) for line in read(s3, written["accepted_key"]).splitlines()]
        rejects = read(s3, written["rejects_key"]).splitlines()
        summary = json.loads(read(s3, written["summary_key"]))

    # THEN 44 rows reached the API and the results, and the 6 rejects say why
    assert validation["valid"] is True
    assert len(api.received) == 44
    assert [row["data"]["order_id"] for row in accepted][:2] == ["ORD-200001", "ORD-200002"]
    assert accepted[0]["data"]["customer_email"] == accepted[0]["data"]["customer_email"].lower()
    assert rejects == [
        "row,reason",
        "9,amount: must be >= 0",
        '17,"currency: must be one of USD, EUR, GBP, JPY, CAD, AUD, CHF"',
        "24,order_date: is not a calendar date",
        "31,customer_email: must be an email address like name@example.com",
        "38,amount: must have at most 2 decimal places; quantity: must be >= 1",
        '45,"expected 6 columns, found 5"',
    ]
    assert (summary["rows_total"], summary["rows_delivered"], summary["rows_rejected"]) == (50, 44, 6)
    assert summary["outcome"] == "SUCCEEDED_WITH_REJECTS"
