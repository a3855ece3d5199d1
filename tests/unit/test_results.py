"""Part files and the merge into the final results, in a moto ProcessedBucket."""

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from datapath_support import PROCESSED_BUCKET, create_buckets
from moto import mock_aws

from sluice.models import MAX_OUTPUT_CALLS, FileState, MergePosition, ObjectRef, ProcessResult
from sluice.results import (
    MIN_PART,
    Layout,
    PartWriter,
    ResultKeys,
    accepted_line,
    merge_results,
)

OBJ = ObjectRef(bucket="raw", key="in/orders.csv", version_id="v1", size=100)
RESULT = ProcessResult(
    done=True,
    segment=2,
    outcome=FileState.SUCCEEDED_WITH_REJECTS,
    rows_total=5,
    rows_delivered=3,
    rows_rejected=2,
    parts=2,
    runs=[[0, 1]],
)
PARTS = "parts/" + hashlib.sha256(OBJ.id.encode()).hexdigest() + "/"


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        yield create_buckets()


def merge(*args: Any, **kwargs: Any) -> ResultKeys:
    """One call that finishes the merge (no time bound): the results' keys."""
    answer = merge_results(*args, **kwargs)
    assert answer.done
    return answer.keys


def keys(s3: Any, prefix: str = "") -> list[str]:
    return [
        item["Key"] for item in s3.list_objects_v2(Bucket=PROCESSED_BUCKET, Prefix=prefix).get("Contents", [])
    ]


def text(s3: Any, key: str) -> str:
    return s3.get_object(Bucket=PROCESSED_BUCKET, Key=key)["Body"].read().decode()


def line(row: int) -> str:
    return accepted_line(row, f"key{row}", {"order_id": f"ORD-{row:06d}"}, {"ref": row})


def write_two_parts(s3: Any) -> None:
    parts = PartWriter(s3, PROCESSED_BUCKET, OBJ, attempt=1)
    parts.write(0, [line(1), line(2)], [(3, 'amount: must be >= 0, "really"')])
    parts.write(1, [line(4)], [(5, "api 422: nope")])


def test_parts_are_numbered_jsonl_and_csv_files(s3: Any) -> None:
    write_two_parts(s3)

    assert keys(s3) == [
        f"{PARTS}000000-a1.accepted.jsonl",
        f"{PARTS}000000-a1.rejects.csv",
        f"{PARTS}000001-a1.accepted.jsonl",
        f"{PARTS}000001-a1.rejects.csv",
    ]
    first = [json.loads(row) for row in text(s3, f"{PARTS}000000-a1.accepted.jsonl").splitlines()]
    assert first[0] == {
        "row": 1,
        "idempotency_key": "key1",
        "data": {"order_id": "ORD-000001"},
        "answer": {"ref": 1},
    }
    assert text(s3, f"{PARTS}000000-a1.rejects.csv") == '3,"amount: must be >= 0, ""really"""\n'


def test_the_merge_writes_the_results_in_part_order_and_removes_the_parts(s3: Any) -> None:
    write_two_parts(s3)

    written = merge(s3, PROCESSED_BUCKET, OBJ, RESULT)

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
    written = merge(s3, PROCESSED_BUCKET, OBJ, RESULT)
    before = {key: text(s3, key) for key in keys(s3)}

    again = merge(s3, PROCESSED_BUCKET, OBJ, RESULT)

    assert again == written
    assert {key: text(s3, key) for key in keys(s3)} == before


def test_an_interrupted_clean_up_is_finished_without_merging_the_leftovers(s3: Any) -> None:
    # GIVEN results written, then a crash after deleting only the first part
    write_two_parts(s3)
    written = merge(s3, PROCESSED_BUCKET, OBJ, RESULT)
    accepted = text(s3, written.accepted_key)
    PartWriter(s3, PROCESSED_BUCKET, OBJ, attempt=1).write(1, [line(4)], [(5, "api 422: nope")])

    merge(s3, PROCESSED_BUCKET, OBJ, RESULT)

    assert text(s3, written.accepted_key) == accepted
    assert keys(s3, "parts/") == []


def test_a_file_without_rows_gets_empty_results(s3: Any) -> None:
    empty = ProcessResult(
        done=True, segment=1, outcome=FileState.SUCCEEDED, rows_total=0, rows_delivered=0, rows_rejected=0
    )
    unversioned = ObjectRef(bucket="raw", key="in/empty.csv")

    written = merge(s3, PROCESSED_BUCKET, unversioned, empty)

    assert written.summary_key == "results/in/empty.csv/null/summary.json"
    assert text(s3, written.accepted_key) == ""
    assert text(s3, written.rejects_key) == "row,reason\n"
    assert json.loads(text(s3, written.summary_key))["rows_total"] == 0


def test_reset_forgets_results_and_earlier_attempts_parts_only(s3: Any) -> None:
    write_two_parts(s3)
    merge(s3, PROCESSED_BUCKET, OBJ, RESULT)
    write_two_parts(s3)  # attempt 1's
    PartWriter(s3, PROCESSED_BUCKET, OBJ, attempt=3).write(0, [line(1)], [])  # a later attempt's
    other = OBJ.model_copy(update={"version_id": "v2"})
    PartWriter(s3, PROCESSED_BUCKET, other, attempt=1).write(0, [line(1)], [])

    PartWriter(s3, PROCESSED_BUCKET, OBJ, attempt=2).reset()

    other_parts = "parts/" + hashlib.sha256(other.id.encode()).hexdigest() + "/"
    assert sorted(keys(s3)) == sorted(
        [
            f"{PARTS}000000-a3.accepted.jsonl",
            f"{PARTS}000000-a3.rejects.csv",
            f"{other_parts}000000-a1.accepted.jsonl",
            f"{other_parts}000000-a1.rejects.csv",
        ]
    )


def test_the_merge_takes_exactly_the_parts_the_runs_name(s3: Any) -> None:
    # GIVEN attempt 1 wrote parts 0-2, then a stale runner of attempt 1 rewrote part 2 after
    # attempt 2 took over at part 2 and wrote parts 2 and 3
    first, second = (
        PartWriter(s3, PROCESSED_BUCKET, OBJ, attempt=1),
        PartWriter(s3, PROCESSED_BUCKET, OBJ, attempt=2),
    )
    first.write(0, [line(1)], [])
    first.write(1, [line(2)], [])
    second.write(2, [line(3)], [])
    second.write(3, [line(4)], [])
    first.write(2, [line(99)], [])  # the stale runner: its own name, never attempt 2's
    first.write(3, [line(98)], [])

    written = merge(
        s3, PROCESSED_BUCKET, OBJ, RESULT.model_copy(update={"parts": 4, "runs": [[0, 1], [2, 2]]})
    )

    assert [json.loads(row)["row"] for row in text(s3, written.accepted_key).splitlines()] == [1, 2, 3, 4]
    assert keys(s3, "parts/") == []


def test_a_missing_part_fails_the_merge_instead_of_leaving_rows_out(s3: Any) -> None:
    write_two_parts(s3)

    with pytest.raises(FileNotFoundError, match="missing"):
        merge(s3, PROCESSED_BUCKET, OBJ, RESULT.model_copy(update={"parts": 3}))


def test_nested_keys_keep_their_parts_apart(s3: Any) -> None:
    # GIVEN two files whose keys nest: "in/a.csv" and "in/a.csv/v1/x.csv" (its old parts directory,
    # parts/in/a.csv/v1/x.csv/..., was inside the first one's parts/in/a.csv/v1/)
    outer = ObjectRef(bucket="raw", key="in/a.csv", version_id="v1")
    inner = ObjectRef(bucket="raw", key="in/a.csv/v1/x.csv", version_id="v1")
    PartWriter(s3, PROCESSED_BUCKET, outer, attempt=1).write(0, [line(1)], [])
    PartWriter(s3, PROCESSED_BUCKET, inner, attempt=1).write(0, [line(7)], [])
    PartWriter(s3, PROCESSED_BUCKET, inner, attempt=1).write(1, [line(8)], [])

    # WHEN the outer file starts over and then is merged
    PartWriter(s3, PROCESSED_BUCKET, outer, attempt=2).reset()
    PartWriter(s3, PROCESSED_BUCKET, outer, attempt=2).write(0, [line(1)], [])
    written = merge(s3, PROCESSED_BUCKET, outer, RESULT.model_copy(update={"parts": 1, "runs": [[0, 2]]}))

    # THEN the outer results hold only its row, and the inner file's parts are all still there
    assert [json.loads(row)["row"] for row in text(s3, written.accepted_key).splitlines()] == [1]
    inner_written = merge(s3, PROCESSED_BUCKET, inner, RESULT.model_copy(update={"runs": [[0, 1]]}))
    assert [json.loads(row)["row"] for row in text(s3, inner_written.accepted_key).splitlines()] == [7, 8]


def test_a_1000_byte_key_gets_bounded_part_and_result_keys(s3: Any) -> None:
    long = ObjectRef(bucket="raw", key="in/" + "k" * 993 + ".csv", version_id="3HL4kqtJlcpXroDTDmJ")
    assert len(long.key.encode()) == 1000
    PartWriter(s3, PROCESSED_BUCKET, long, attempt=1).write(0, [line(1)], [(2, "bad")])

    written = merge(s3, PROCESSED_BUCKET, long, RESULT.model_copy(update={"parts": 1}))

    digest = hashlib.sha256(long.id.encode()).hexdigest()
    assert written.accepted_key == f"results-by-id/{digest}/accepted.jsonl"
    assert json.loads(text(s3, written.summary_key))["object"]["key"] == long.key
    assert text(s3, written.rejects_key) == "row,reason\n2,bad\n"
    # a short key keeps its readable results
    assert Layout(OBJ).results.accepted_key == "results/in/orders.csv/v1/accepted.jsonl"


def test_large_outputs_are_joined_into_parts_and_big_sources_copied_by_s3(s3: Any) -> None:
    # GIVEN 10 parts of ~1 MiB, then one of ~6 MiB, then 2 small ones
    parts = PartWriter(s3, PROCESSED_BUCKET, OBJ, attempt=1)
    payload = "x" * 1000
    for part in range(10):
        parts.write(
            part, [accepted_line(part * 1000 + i, "k", {"p": payload}, None) for i in range(1000)], []
        )
    parts.write(10, [accepted_line(10_000 + i, "k", {"p": payload}, None) for i in range(6000)], [(5, "r")])
    parts.write(11, [accepted_line(16_000 + i, "k", {"p": payload}, None) for i in range(10)], [])
    parts.write(12, [accepted_line(16_010, "k", {"p": payload}, None)], [(7, "s")])
    big = s3.head_object(Bucket=PROCESSED_BUCKET, Key=Layout(OBJ).part_keys(10, 1)[0])["ContentLength"]

    written = merge(
        s3, PROCESSED_BUCKET, OBJ, RESULT.model_copy(update={"parts": 13}), workers=3, target_part=MIN_PART
    )

    # THEN every row is there once, in order, in 4 parts: 5 + 5 small ones joined (≥ 5 MiB each),
    # the big one copied as it is, the 2 small ones last
    rows = [json.loads(row)["row"] for row in text(s3, written.accepted_key).splitlines()]
    assert rows == list(range(16_011))
    sizes = [
        s3.head_object(Bucket=PROCESSED_BUCKET, Key=written.accepted_key, PartNumber=n)["ContentLength"]
        for n in range(1, 5)
    ]
    assert s3.head_object(Bucket=PROCESSED_BUCKET, Key=written.accepted_key, PartNumber=1)["PartsCount"] == 4
    assert min(sizes[:2]) >= MIN_PART
    assert sizes[2] == big
    assert text(s3, written.rejects_key) == "row,reason\n5,r\n7,s\n"


def test_the_layout_names_parts_by_hash_part_and_attempt() -> None:
    layout = Layout(OBJ)

    assert layout.parts_prefix == PARTS
    assert layout.part_keys(12, 3) == (f"{PARTS}000012-a3.accepted.jsonl", f"{PARTS}000012-a3.rejects.csv")
    assert layout.manifest(3, [[0, 1], [2, 4]]) == [
        layout.part_keys(0, 1),
        layout.part_keys(1, 1),
        layout.part_keys(2, 4),
    ]


# A merge spread over WriteOutput calls (the largest file's output does not fit one call's time).

SPREAD = ObjectRef(bucket="raw", key="in/big.csv", version_id="v2")
ONE_PASS = ObjectRef(bucket="raw", key="in/big.csv", version_id="v1")
SPREAD_PARTS = 24


class Budget:
    """A call's `time_left`: 120 s at its start, then plenty for `pieces` checks (one before each
    piece or delete batch), then none."""

    def __init__(self, pieces: int) -> None:
        self.checks = pieces
        self.started = False

    def __call__(self) -> float:
        if not self.started:
            self.started = True
            return 120.0
        self.checks -= 1
        return 100.0 if self.checks >= 0 else 0.0


def write_big_parts(s3: Any, obj: ObjectRef) -> ProcessResult:
    """24 parts of ~0.5 MiB accepted and ~0.25 MiB rejects each: several 5 MiB pieces of both outputs."""
    parts = PartWriter(s3, PROCESSED_BUCKET, obj, attempt=1)
    for part in range(SPREAD_PARTS):
        rows = range(part * 500, part * 500 + 500)
        parts.write(
            part,
            [accepted_line(row, f"k{row}", {"p": "x" * 1000}, {"ref": row}) for row in rows],
            [(row, "reason " + "y" * 1000) for row in rows if row % 2],
        )
    return RESULT.model_copy(update={"parts": SPREAD_PARTS, "segment": 1})


def outputs(s3: Any, written: ResultKeys) -> tuple[bytes, bytes]:
    def read(key: str) -> bytes:
        return bytes(s3.get_object(Bucket=PROCESSED_BUCKET, Key=key)["Body"].read())

    return read(written.accepted_key), read(written.rejects_key)


def one_pass(s3: Any) -> tuple[bytes, bytes]:
    return outputs(
        s3, merge(s3, PROCESSED_BUCKET, ONE_PASS, write_big_parts(s3, ONE_PASS), target_part=MIN_PART)
    )


def test_a_merge_over_several_calls_writes_exactly_what_one_pass_writes(s3: Any) -> None:
    # GIVEN a file whose outputs are several pieces each, and calls with time for 2 pieces each
    expected = one_pass(s3)
    result = write_big_parts(s3, SPREAD)

    # WHEN WriteOutput is called again with each answer's position until it is done
    answers = [merge_results(s3, PROCESSED_BUCKET, SPREAD, result, time_left=Budget(2), target_part=MIN_PART)]
    while not answers[-1].done:
        assert len(answers) < MAX_OUTPUT_CALLS
        position = MergePosition.model_validate(answers[-1].as_payload()["position"])  # through JSON
        answers.append(
            merge_results(
                s3, PROCESSED_BUCKET, SPREAD, result, position, time_left=Budget(2), target_part=MIN_PART
            )
        )

    # THEN it took several calls, each answered where it stopped, and the bytes are one pass's
    assert len(answers) >= 3
    assert [a.position.calls for a in answers] == list(range(1, len(answers) + 1))
    assert [a.calls_left for a in answers] == [MAX_OUTPUT_CALLS - n for n in range(1, len(answers) + 1)]
    assert {a.position.output for a in answers[:-1]} >= {0, 1}  # both outputs were resumed
    assert outputs(s3, answers[-1].keys) == expected
    rows = [json.loads(row)["row"] for row in expected[0].splitlines()]
    assert rows == list(range(SPREAD_PARTS * 500))
    assert keys(s3, Layout(SPREAD).parts_prefix) == []
    assert json.loads(text(s3, answers[-1].keys.summary_key))["parts"] == SPREAD_PARTS


def test_a_call_that_dies_midway_is_resumed_without_losing_or_doubling_a_part(s3: Any) -> None:
    # GIVEN a merge stopped after its first call
    expected = one_pass(s3)
    result = write_big_parts(s3, SPREAD)
    first = merge_results(s3, PROCESSED_BUCKET, SPREAD, result, time_left=Budget(1), target_part=MIN_PART)
    assert not first.done
    # WHEN the second call dies after uploading 2 more pieces (a timeout: no answer, no clean-up)
    uploads = 0

    def die_on_the_third_upload(**_: Any) -> None:
        nonlocal uploads
        uploads += 1
        if uploads == 3:
            raise TimeoutError("Task timed out after 120.00 seconds")

    s3.meta.events.register("before-call.s3.UploadPart", die_on_the_third_upload)
    with pytest.raises(TimeoutError):
        merge_results(
            s3,
            PROCESSED_BUCKET,
            SPREAD,
            result,
            first.position,
            time_left=Budget(5),
            target_part=MIN_PART,
            workers=1,
        )
    s3.meta.events.unregister("before-call.s3.UploadPart", die_on_the_third_upload)
    # and Step Functions retries it with the same input, then calls on until done
    answer = merge_results(
        s3, PROCESSED_BUCKET, SPREAD, result, first.position, time_left=Budget(3), target_part=MIN_PART
    )
    while not answer.done:
        answer = merge_results(
            s3, PROCESSED_BUCKET, SPREAD, result, answer.position, time_left=Budget(3), target_part=MIN_PART
        )

    # THEN the output is one pass's, byte for byte, in as many parts as planned
    assert outputs(s3, answer.keys) == expected
    planned = s3.head_object(Bucket=PROCESSED_BUCKET, Key=Layout(ONE_PASS).results.accepted_key, PartNumber=1)
    resumed = s3.head_object(Bucket=PROCESSED_BUCKET, Key=answer.keys.accepted_key, PartNumber=1)
    assert resumed["PartsCount"] == planned["PartsCount"] > 2


def test_a_completed_output_whose_answer_was_lost_is_not_written_again(s3: Any) -> None:
    # GIVEN a call that completed the accepted output, but its answer never reached the state machine
    expected = one_pass(s3)
    result = write_big_parts(s3, SPREAD)
    first = merge_results(s3, PROCESSED_BUCKET, SPREAD, result, time_left=Budget(1), target_part=MIN_PART)
    lost = merge_results(
        s3, PROCESSED_BUCKET, SPREAD, result, first.position, time_left=Budget(2), target_part=MIN_PART
    )
    assert lost.position.output == 1  # accepted.jsonl complete, the rejects not yet
    creates = 0

    def count(**_: Any) -> None:
        nonlocal creates
        creates += 1

    s3.meta.events.register("before-call.s3.CreateMultipartUpload", count)

    # WHEN the retry runs from the position the lost call was given
    answer = merge_results(
        s3, PROCESSED_BUCKET, SPREAD, result, first.position, time_left=Budget(50), target_part=MIN_PART
    )

    # THEN it recognises the completed upload, writes the rest, and the bytes are one pass's
    assert answer.done
    assert creates == 1  # the rejects' upload only: accepted.jsonl was not written again
    assert outputs(s3, answer.keys) == expected


def test_a_merge_that_would_need_more_calls_than_allowed_says_none_are_left(s3: Any) -> None:
    result = write_big_parts(s3, SPREAD)
    answer = merge_results(s3, PROCESSED_BUCKET, SPREAD, result, time_left=Budget(0), target_part=MIN_PART)
    for _ in range(MAX_OUTPUT_CALLS - 1):
        answer = merge_results(
            s3, PROCESSED_BUCKET, SPREAD, result, answer.position, time_left=Budget(0), target_part=MIN_PART
        )

    assert not answer.done
    assert answer.as_payload()["calls_left"] == 0  # the state machine's loop ends on this


def test_a_call_shorter_than_the_reserve_still_merges(s3: Any) -> None:
    # GIVEN a WriteOutput whose Timeout is set below CALL_RESERVE_SECONDS (6 s left throughout)
    result = write_big_parts(s3, SPREAD)

    answer = merge_results(s3, PROCESSED_BUCKET, SPREAD, result, time_left=lambda: 6.0, target_part=MIN_PART)

    # THEN it keeps a third of its time in reserve, not 40 s, and gets the work done
    assert answer.done
    assert keys(s3, Layout(SPREAD).parts_prefix) == []
