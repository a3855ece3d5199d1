"""What `sluice run`, `status` and `logs` compute and show, from plain data (no stack)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import typer
from moto import mock_aws
from typer.testing import CliRunner

from sluice_cli.commands.local import api_settings, parse_latency
from sluice_cli.commands.logs import _Tail, record_fields, select_files
from sluice_cli.commands.run import add_iam_totals
from sluice_cli.commands.runreport import SUCCESS, TrackedFile, percentile, summarize
from sluice_cli.commands.status import file_record
from sluice_cli.main import app
from sluice_cli.offline.iam import Check, IamGate, Lookups, RequestMapper


def tracked(state: str | None, **item: object) -> TrackedFile:
    return TrackedFile(
        key="incoming/a.csv",
        data_size=10,
        rows=10,
        expected_states=frozenset({"SUCCEEDED"}),
        expected_rejects=0,
        expected_delivered=10,
        uploaded_at=1_800_000_000.0,
        version_id="v1",
        item=None if state is None else {"state": state, **item},
    )


def test_a_file_is_ok_only_in_its_expected_state_with_the_expected_counts() -> None:
    assert tracked("SUCCEEDED", rows_delivered=10, rows_rejected=0).ok
    assert not tracked("SUCCEEDED", rows_delivered=9, rows_rejected=1).ok
    assert not tracked("SUCCEEDED_WITH_REJECTS", rows_delivered=10, rows_rejected=0).ok
    assert not tracked(None).ok


def test_failed_is_finished_only_once_no_delivery_is_left() -> None:
    assert not tracked("FAILED", attempts=1).finished(max_receive_count=2)
    assert tracked("FAILED", attempts=2).finished(max_receive_count=2)
    assert tracked("INVALID").finished(max_receive_count=2)
    assert not tracked("PROCESSING").finished(max_receive_count=2)


def test_latency_runs_from_upload_to_the_recorded_finish() -> None:
    file = tracked("SUCCEEDED", finished_at="2027-01-15T08:00:12.500Z")
    file.uploaded_at = file.finished_at - 12.5  # type: ignore[operator]
    assert file.latency_seconds == pytest.approx(12.5)
    seen = tracked("SUCCEEDED")
    seen.seen_finished_at = seen.uploaded_at + 3
    assert seen.latency_seconds == pytest.approx(3)


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert percentile(list(range(1, 21)), 0.95) == 19


def test_the_summary_counts_states_rows_and_names_every_problem() -> None:
    good = tracked(
        "SUCCEEDED", rows_total=10, rows_delivered=10, rows_rejected=0, finished_at="2027-01-15T08:00:10Z"
    )
    good.uploaded_at = good.finished_at - 10  # type: ignore[operator]
    bad = tracked("PROCESSING", rows_total=4, rows_delivered=4, rows_rejected=0)
    bad.key = "incoming/b.csv"
    stats = {
        "requests": 15,
        "accepted": 14,
        "accepted_rate": 9.5,
        "max_requests_in_any_second": 11,
        "throttled": 1,
        "duplicate_deliveries": 0,
        "responses_by_status": {"201": 14, "429": 1},
    }

    summary = summarize([good, bad], stats, rate_limit=10, wall_seconds=42, max_receive_count=2)

    assert not summary.ok
    assert summary.states == {"PROCESSING": 1, "SUCCEEDED": 1}
    assert summary.rows == {"total": 14, "delivered": 14, "rejected": 0}
    assert summary.api["busiest_second"] == 11
    assert summary.api["busiest_second_within_limit"] is False
    assert summary.latency_seconds["p50"] == 10
    assert summary.problems == [
        "incoming/b.csv: PROCESSING, expected SUCCEEDED with 0 rejected rows (got 0)",
        "not finished before the deadline: incoming/b.csv",
    ]
    report = json.loads(json.dumps(summary.as_dict()))
    assert report["files"][0]["ok"] is True
    assert report["wall_seconds"] == 42


def test_a_denied_aws_call_fails_the_run_and_the_summary_says_where_to_read_it(tmp_path: Path) -> None:
    good = tracked(
        "SUCCEEDED", rows_total=10, rows_delivered=10, rows_rejected=0, finished_at="2027-01-15T08:00:10Z"
    )
    summary = summarize([good], None, rate_limit=10, wall_seconds=1, max_receive_count=2)
    gate = IamGate(RequestMapper(Lookups("1", lambda *_: None, lambda *_: None)))
    role = "arn:aws:iam::1:role/r"
    gate.register_role("Role", role, {"Policies": []})
    gate.authorize(role, [Check("sns:Publish", "arn:aws:sns:r:1:t")], "Publish")
    assert summary.ok

    add_iam_totals(summary, SimpleNamespace(iam=gate, state_dir=tmp_path))  # type: ignore[arg-type]

    assert not summary.ok
    assert summary.problems == [f"1 AWS call(s) denied by a role's policies: see {tmp_path / 'iam.json'}"]
    assert summary.as_dict()["iam"]["line"] == "IAM: 1 calls checked, 1 denied (Role sns:Publish)"


def test_files_given_on_the_command_line_may_succeed_with_or_without_rejects() -> None:
    assert frozenset({"SUCCEEDED", "SUCCEEDED_WITH_REJECTS"}) == SUCCESS


def test_status_records_come_from_the_item_or_its_key() -> None:
    item = {
        "pk": "raw/in/a.csv#v1",
        "bucket": "raw",
        "key": "in/a.csv",
        "version_id": "v1",
        "state": "INVALID",
        "reason": "header: missing column 'amount'",
        "attempts": 1,
    }
    record = file_record(item)
    assert (record["bucket"], record["key"], record["version_id"], record["state"]) == (
        "raw",
        "in/a.csv",
        "v1",
        "INVALID",
    )
    assert record["error"] == "header: missing column 'amount'"
    assert (record["rows_total"], record["rows_delivered"], record["rows_rejected"]) == (0, 0, 0)
    bare = file_record({"pk": "raw/x/y.csv#null", "state": "RECEIVED"})
    assert (bare["bucket"], bare["key"], bare["version_id"]) == ("raw", "x/y.csv", None)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"timestamp": "t1", "level": "INFO", "message": "file done", "service": "sluice", "segment": 2},
            ("t1", "INFO", 'file done {"segment":2}'),
        ),
        (
            {
                "timestamp": "t2",
                "level": "ERROR",
                "errorType": "ValueError",
                "errorMessage": "bad",
                "stackTrace": ["  at x\n"],
            },
            ("t2", "ERROR", "ValueError: bad\n  at x"),
        ),
        (
            {
                "_aws": {"Timestamp": 0, "CloudWatchMetrics": [{"Metrics": [{"Name": "RowsDelivered"}]}]},
                "RowsDelivered": [3.0],
            },
            ("1970-01-01T00:00:00Z", "METRIC", "RowsDelivered=[3.0]"),
        ),
        (
            {
                "timestamp": "t3",
                "level": "PLATFORM",
                "message": "REPORT RequestId: r",
                "function": "Fn",
                "request_id": "r",
            },
            ("t3", "PLATFORM", 'REPORT RequestId: r {"request_id":"r"}'),
        ),
    ],
)
def test_log_records_of_every_writer_show_time_level_and_message(
    record: dict, expected: tuple[str, str, str]
) -> None:
    assert record_fields(record) == expected


def test_the_log_tail_reads_only_complete_new_lines_and_restarts_on_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "Fn.log"
    path.write_text('{"message": "one"}\n{"message": "tw')
    tail = _Tail(path)
    assert tail.read() == ['{"message": "one"}']
    with path.open("a") as handle:
        handle.write('o"}\n')
    assert tail.read() == ['{"message": "two"}']
    path.write_text('{"m": 1}\n')  # a new run truncates the file
    assert tail.read() == ['{"m": 1}']


def test_log_files_are_chosen_by_logical_id_or_its_start(tmp_path: Path) -> None:
    for name in ("ProcessObjectFunction", "PlanBatchFunction"):
        (tmp_path / f"{name}.log").write_text("")
    assert [path.stem for path in select_files(tmp_path, "processobject")] == ["ProcessObjectFunction"]
    assert [path.stem for path in select_files(tmp_path, None)] == [
        "PlanBatchFunction",
        "ProcessObjectFunction",
    ]
    with pytest.raises(typer.BadParameter, match="no log for 'Nope'"):
        select_files(tmp_path, "Nope")


def test_api_options_set_the_simulator_and_the_stacks_own_limit() -> None:
    changes, overrides = api_settings(25.0, "0.01-0.05", 0.1, {"Stage": "local"})
    assert changes == {"rate_limit": 25.0, "latency_min": 0.01, "latency_max": 0.05, "error_rate": 0.1}
    assert overrides == {"ApiRateLimit": "25.0", "Stage": "local"}
    assert api_settings(None, None, None, {}) == ({}, {})
    assert parse_latency("0.2") == (0.2, 0.2)
    with pytest.raises(typer.BadParameter):
        parse_latency("slow")
    with pytest.raises(typer.BadParameter):
        parse_latency("2-1")


def test_status_reads_a_deployed_stacks_table_through_its_cloudformation_outputs() -> None:
    """--stack-name: the table comes from the stack's outputs, reached with ordinary credentials."""
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {"MetadataTableName": {"Value": "deployed-metadata"}},
    }
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="sluice-dev", TemplateBody=json.dumps(template))
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(
            TableName="deployed-metadata",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        )
        dynamodb.put_item(
            TableName="deployed-metadata",
            Item={
                "pk": {"S": "raw/in/a.csv#v1"},
                "bucket": {"S": "raw"},
                "key": {"S": "in/a.csv"},
                "version_id": {"S": "v1"},
                "state": {"S": "FAILED"},
                "rows_total": {"N": "10"},
                "rows_delivered": {"N": "4"},
                "error": {"S": "Sandbox.Timedout: Task timed out"},
            },
        )
        result = CliRunner().invoke(
            app, ["status", "--json", "--stack-name", "sluice-dev", "--region", "us-east-1"]
        )

    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)
    assert record["key"] == "in/a.csv"
    assert record["state"] == "FAILED"
    assert (record["rows_total"], record["rows_delivered"], record["rows_rejected"]) == (10, 4, 0)
    assert record["error"] == "Sandbox.Timedout: Task timed out"
