"""Files that look fine to a reader until processed: CR-only line ends and a poison amount.

Before one dialect, a CR-only file passed ValidateObject and failed every ProcessObject attempt
(its reader split on LF only); a 5,000-digit amount failed the segment in a delivery worker on
every attempt. Both must end with every good row delivered.
"""

from __future__ import annotations

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
