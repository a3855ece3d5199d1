"""`sluice logs` merges two timestamp formats into one timeline and narrows it; `sluice status`
keeps every column readable at 80 columns; `sluice invoke` refuses an event for another stack's
bucket and explains a call that went nowhere."""

from __future__ import annotations

import io
import json
from pathlib import Path
from unittest.mock import patch

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sluice_cli.commands.invoke import event_buckets
from sluice_cli.commands.logs import record_time
from sluice_cli.commands.status import status_table
from sluice_cli.main import app

POWERTOOLS_STAMP = "2026-12-02 15:22:18,009+0000"
RUNTIME_STAMP = "2026-12-02T15:22:17.859Z"


def test_both_writers_timestamps_are_read_as_instants() -> None:
    assert record_time(RUNTIME_STAMP) < record_time(POWERTOOLS_STAMP)
    assert record_time(POWERTOOLS_STAMP) - record_time(RUNTIME_STAMP) == pytest.approx(0.15)
    assert record_time("not a time") == 0.0


def _write(path: Path, *records: dict) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_logs_merge_functions_by_instant_hide_the_idle_noise_and_filter(tmp_path: Path) -> None:
    # GIVEN two functions' logs whose records interleave in time, in the two formats, with the
    # runtime's START/END lines and a metric document between them
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(
        logs / "AFunction.log",
        {"timestamp": "2026-12-02T15:22:17.000Z", "level": "PLATFORM", "message": "START RequestId: 1"},
        {"timestamp": "2026-12-02 15:22:18,500+0000", "level": "INFO", "message": "a second"},
        {"_aws": {"Timestamp": 1796224938018, "CloudWatchMetrics": [{"Metrics": [{"Name": "M"}]}]}, "M": [1]},
    )
    _write(
        logs / "BFunction.log",
        {"timestamp": "2026-12-02T15:22:18.100Z", "level": "INFO", "message": "b first"},
        {"timestamp": "2026-12-02T15:22:19.000Z", "level": "ERROR", "message": "b third failed"},
    )
    runner = CliRunner()

    def lines(*args: str) -> list[str]:
        result = runner.invoke(app, ["logs", "--state-dir", str(tmp_path), *args], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return [line for line in result.output.splitlines() if line.strip()]

    # WHEN / THEN the timeline is by instant (the ISO "b first" sorts before Powertools' "a second")
    assert [line.split()[-1] for line in lines()] == ["first", "second", "failed"]
    assert len(lines("--all")) == 5  # START and the metric document too
    assert [line.split()[-1] for line in lines("--level", "error")] == ["failed"]
    assert [line.split()[-1] for line in lines("--filter", "SECOND")] == ["second"]
    assert lines("--since", "1m") == []  # every record is older than a minute (the year 2026, fixed)
    bad = runner.invoke(app, ["logs", "--state-dir", str(tmp_path), "--since", "soon"])
    assert bad.exit_code != 0


def test_status_keeps_the_key_and_the_error_at_80_columns() -> None:
    record = {
        "key": "incoming/orders-2026-11-22-bad-header.csv",
        "version_id": "c1511da9-aaaa-bbbb",
        "state": "SUCCEEDED_WITH_REJECTS",
        "rows_total": 400,
        "rows_delivered": 380,
        "rows_rejected": 20,
        "attempts": 1,
        "error": "header: unexpected column customer_mail",
        "api_mode": "simulated",
    }
    console = Console(width=80, file=io.StringIO(), force_terminal=False)
    console.print(status_table([record]))
    shown = console.file.getvalue()  # type: ignore[attr-defined]

    assert max(len(line) for line in shown.splitlines()) <= 80
    # each column's folded cell, read back line by line between the borders
    rows = [line.split("│")[1:-1] for line in shown.splitlines() if line.startswith("│")]
    columns = ["".join(row[i].strip() for row in rows).replace(" ", "") for i in range(5)]
    assert columns[0] == f"{record['key']}{record['version_id']}"
    assert columns[1:4] == ["SUCCEEDED_WITH_REJECTSsimulatedAPI", "380/20/400", "1"]
    assert columns[4] == str(record["error"]).replace(" ", "")


def test_the_buckets_an_event_names_are_found_in_every_event_shape() -> None:
    sqs_message = {"body": json.dumps({"detail": {"bucket": {"name": "raw-a"}, "object": {"key": "k"}}})}
    assert event_buckets(sqs_message) == {"raw-a"}
    assert event_buckets({"object": {"bucket": "raw-b", "key": "k"}}) == {"raw-b"}
    assert event_buckets({"Records": [{"s3": {"bucket": {"name": "raw-c"}}}]}) == {"raw-c"}
    assert event_buckets({"marker": 1}) == set()


def test_invoke_refuses_an_event_naming_a_bucket_the_running_stack_does_not_have(tmp_path: Path) -> None:
    # GIVEN a running stack's outputs (the endpoint check is what a live stack passes)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"RawBucketName": "stack-raw", "EndpointUrl": "http://127.0.0.1:1"}))
    (tmp_path / "functions.json").write_text("{}")
    event = Path(__file__).resolve().parents[2] / "events" / "validate-object.json"

    with patch("sluice_cli.commands.invoke.endpoint_alive", return_value=True):
        result = CliRunner().invoke(
            app, ["invoke", "ValidateObjectFunction", "-e", str(event), "--outputs", str(outputs)]
        )

    # THEN nothing runs (nothing could be written to the stack's table), and the user is told why
    assert result.exit_code == 2, result.output
    assert "sluice-raw-example" in result.output
    assert "stack-raw" in result.output
