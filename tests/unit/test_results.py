"""Part files and the merge into the final results, in a moto ProcessedBucket."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from datapath_support import PROCESSED_BUCKET, create_buckets
from moto import mock_aws

from sluice.models import FileState, ObjectRef, ProcessResult
from sluice.results import Layout, PartWriter, accepted_line, merge_results

OBJ = ObjectRef(bucket="raw", key="in/orders.csv", version_id="v1", size=100)
RESULT = ProcessResult(
    done=True,
    segment=2,
    outcome=FileState.SUCCEEDED_WITH_REJECTS,
    rows_total=5,
    rows_delivered=3,
    rows_rejected=2,
)


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        yield create_buckets()


def keys(s3: Any, prefix: str = "") -> list[str]:
    return [
        item["Key"] for item in s3.list_objects_v2(Bucket=PROCESSED_BUCKET, Prefix=prefix).get("Contents", [])
    ]


def text(s3: Any, key: str) -> str:
    return s3.get_object(Bucket=PROCESSED_BUCKET, Key=key)["Body"].read().decode()


def line(row: int) -> str:
    return accepted_line(row, f"key{row}", {"order_id": f"ORD-{row:06d}"}, {"ref": row})


def write_two_parts(s3: Any) -> None:
    parts = PartWriter(s3, PROCESSED_BUCKET, OBJ)
    parts.write(0, [line(1), line(2)], [(3, 'amount: must be >= 0, "really"')])
    parts.write(1, [line(4)], [(5, "api 422: nope")])


def test_parts_are_numbered_jsonl_and_csv_files(s3: Any) -> None:
    write_two_parts(s3)

    assert keys(s3) == [
        "parts/in/orders.csv/v1/000000.accepted.jsonl",
        "parts/in/orders.csv/v1/000000.rejects.csv",
        "parts/in/orders.csv/v1/000001.accepted.jsonl",
        "parts/in/orders.csv/v1/000001.rejects.csv",
    ]
    first = [json.loads(row) for row in text(s3, "parts/in/orders.csv/v1/000000.accepted.jsonl").splitlines()]
    assert first[0] == {
        "row": 1,
        "idempotency_key": "key1",
        "data": {"order_id": "ORD-000001"},
        "answer": {"ref": 1},
    }
    assert text(s3, "parts/in/orders.csv/v1/000000.rejects.csv") == '3,"amount: must be >= 0, ""really"""\n'


def test_the_merge_writes_the_results_in_part_order_and_removes_the_parts(s3: Any) -> None:
    write_two_parts(s3)

    written = merge_results(s3, PROCESSED_BUCKET, OBJ, RESULT)

    assert written.accepted_key == "results/in/orders.csv/v1/accepted.jsonl"
    assert [json.loads(row)["row"] for row in text(s3, written.accepted_key).splitlines()] == [1, 2, 4]
    assert (
        text(s3, written.rejects_key) == 'row,reason\n3,"amount: must be >= 0, ""really"""\n5,api 422: nope\n'
    )
    summary = json.loads(text(s3, written.summary_key))
    assert summary["object"] == OBJ.as_payload()
    assert summary["outcome"] == "SUCCEEDED_WITH_REJECTS"
    assert (summary["rows_total"], summary["rows_delivered"], summary["rows_rejected"]) == (5, 3, 2)
    assert summary["parts"] == 2
    assert keys(s3, "parts/") == []


def test_running_the_merge_again_changes_nothing(s3: Any) -> None:
    write_two_parts(s3)
    written = merge_results(s3, PROCESSED_BUCKET, OBJ, RESULT)
    before = {key: text(s3, key) for key in keys(s3)}

    again = merge_results(s3, PROCESSED_BUCKET, OBJ, RESULT)

    assert again == written
    assert {key: text(s3, key) for key in keys(s3)} == before


def test_an_interrupted_clean_up_is_finished_without_merging_the_leftovers(s3: Any) -> None:
    # GIVEN results written, then a crash after deleting only the first part
    write_two_parts(s3)
    written = merge_results(s3, PROCESSED_BUCKET, OBJ, RESULT)
    accepted = text(s3, written.accepted_key)
    PartWriter(s3, PROCESSED_BUCKET, OBJ).write(1, [line(4)], [(5, "api 422: nope")])

    merge_results(s3, PROCESSED_BUCKET, OBJ, RESULT)

    assert text(s3, written.accepted_key) == accepted
    assert keys(s3, "parts/") == []


def test_a_file_without_rows_gets_empty_results(s3: Any) -> None:
    empty = ProcessResult(
        done=True, segment=1, outcome=FileState.SUCCEEDED, rows_total=0, rows_delivered=0, rows_rejected=0
    )
    unversioned = ObjectRef(bucket="raw", key="in/empty.csv")

    written = merge_results(s3, PROCESSED_BUCKET, unversioned, empty)

    assert written.summary_key == "results/in/empty.csv/null/summary.json"
    assert text(s3, written.accepted_key) == ""
    assert text(s3, written.rejects_key) == "row,reason\n"
    assert json.loads(text(s3, written.summary_key))["rows_total"] == 0


def test_reset_forgets_an_earlier_processing(s3: Any) -> None:
    write_two_parts(s3)
    merge_results(s3, PROCESSED_BUCKET, OBJ, RESULT)
    write_two_parts(s3)
    PartWriter(s3, PROCESSED_BUCKET, OBJ.model_copy(update={"version_id": "v2"})).write(0, [line(1)], [])

    PartWriter(s3, PROCESSED_BUCKET, OBJ).reset()

    assert keys(s3) == [
        "parts/in/orders.csv/v2/000000.accepted.jsonl",
        "parts/in/orders.csv/v2/000000.rejects.csv",
    ]


def test_large_outputs_are_streamed_as_a_multipart_upload_of_full_size_parts(s3: Any) -> None:
    # GIVEN 12 parts of ~1 MiB: an output above the (lowered) multipart threshold
    parts = PartWriter(s3, PROCESSED_BUCKET, OBJ)
    payload = "x" * 1000
    for part in range(12):
        parts.write(
            part, [accepted_line(part * 1000 + i, "k", {"p": payload}, None) for i in range(1000)], []
        )
    written = merge_results(
        s3,
        PROCESSED_BUCKET,
        OBJ,
        RESULT,
        transfer=TransferConfig(
            multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2, use_threads=False
        ),
    )

    rows = [json.loads(row)["row"] for row in text(s3, written.accepted_key).splitlines()]
    assert rows == list(range(12_000))
    first_part = s3.head_object(Bucket=PROCESSED_BUCKET, Key=written.accepted_key, PartNumber=1)
    assert first_part["PartsCount"] == 3  # ~12 MiB in 5 MiB parts
    assert first_part["ContentLength"] == 5 * 1024**2


def test_the_layout_names_everything_under_key_and_version() -> None:
    layout = Layout(OBJ)

    assert layout.parts_prefix == "parts/in/orders.csv/v1/"
    assert layout.part_keys(12) == (
        "parts/in/orders.csv/v1/000012.accepted.jsonl",
        "parts/in/orders.csv/v1/000012.rejects.csv",
    )
