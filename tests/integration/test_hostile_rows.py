"""Files that look fine to a reader until processed: CR-only line ends and a poison amount.

Before one dialect, a CR-only file passed ValidateObject and failed every ProcessObject attempt
(its reader split on LF only); a 5,000-digit amount failed the segment in a delivery worker on
every attempt. Both must end with every good row delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from integration.pipeline import delivery_counts, results, unique_key, upload, wait_for_state
from sluice_cli.offline import OfflineStack
from sluice_cli.workload import orders_csv_bytes

ROWS = 12
POISON_ROW = 5


def test_a_cr_only_file_succeeds_with_every_row_delivered(pipeline_stack: OfflineStack) -> None:
    data, _ = orders_csv_bytes(ROWS, seed=11)
    obj = upload(pipeline_stack, unique_key("cr-only"), data.replace(b"\n", b"\r"))

    item = wait_for_state(pipeline_stack, obj, {"SUCCEEDED"})

    assert (item["rows_total"], item["rows_delivered"], item["rows_rejected"]) == (ROWS, ROWS, 0)
    assert set(delivery_counts(pipeline_stack, obj, range(1, ROWS + 1)).values()) == {1}
    output = results(pipeline_stack, obj)
    assert [line["row"] for line in output["accepted"]] == list(range(1, ROWS + 1))
    assert output["rejects"] == ["row,reason"]


def test_a_poison_amount_is_one_reject_and_the_rows_around_it_are_delivered(
    pipeline_stack: OfflineStack,
) -> None:
    data, _ = orders_csv_bytes(ROWS, seed=12)
    lines = data.split(b"\n")
    fields = lines[POISON_ROW].split(b",")
    fields[2] = b"9" * 5_000  # the amount: past Python's 4,300-digit int-to-str limit
    lines[POISON_ROW] = b",".join(fields)
    obj = upload(pipeline_stack, unique_key("poison"), b"\n".join(lines))

    item = wait_for_state(pipeline_stack, obj, {"SUCCEEDED_WITH_REJECTS"})

    assert (item["rows_total"], item["rows_delivered"], item["rows_rejected"]) == (ROWS, ROWS - 1, 1)
    good = [row for row in range(1, ROWS + 1) if row != POISON_ROW]
    counts = delivery_counts(pipeline_stack, obj, range(1, ROWS + 1))
    assert {row: count for row, count in counts.items() if count} == dict.fromkeys(good, 1)
    output = results(pipeline_stack, obj)
    assert [line["row"] for line in output["accepted"]] == good
    assert output["rejects"] == [
        "row,reason",
        f"{POISON_ROW},amount: must have at most 14 significant digits",
    ]


def test_a_hostile_header_is_invalid_and_no_dispatcher_execution_dies_of_it(
    pipeline_stack: OfflineStack,
) -> None:
    # GIVEN a header of 13,000 unexpected columns: before the reason was bounded, its listing was
    # copied into the Map item's state past 256 KiB (States.DataLimitExceeded at 12,570 columns,
    # which the offline stack now enforces as AWS does), killing the execution and its whole batch;
    # and a good file uploaded beside it, so that both may be in the same batch
    hostile = (",".join(f"c{index}" for index in range(13_000)) + "\n1\n").encode()
    began = datetime.now(UTC) - timedelta(seconds=1)
    bad = upload(pipeline_stack, unique_key("hostile-header"), hostile)
    good = upload(pipeline_stack, unique_key("beside-hostile"), orders_csv_bytes(ROWS, seed=12)[0])

    # WHEN the dispatcher has handled both
    invalid = wait_for_state(pipeline_stack, bad, {"INVALID"})
    wait_for_state(pipeline_stack, good, {"SUCCEEDED"})

    # THEN the file is INVALID with a short reason, and no execution failed
    assert len(invalid["reason"]) <= 1024
    assert invalid["reason"].startswith("header: ")
    sfn = pipeline_stack.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=pipeline_stack.outputs["DispatcherStateMachineArn"])
    failed = [
        e["name"]
        for e in executions["executions"]
        if e["startDate"] >= began and e["status"] in {"FAILED", "TIMED_OUT", "ABORTED"}
    ]
    assert failed == []
