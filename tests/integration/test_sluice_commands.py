"""The `sluice` commands against the offline stack: status, logs, invoke, run."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from integration.pipeline import item_of, unique_key, upload, wait_for_state
from integration.stacks import ENGINE_APP, REPO, stop_all
from sluice_cli.main import app
from sluice_cli.offline import OfflineStack
from sluice_cli.workload import InvalidKind, generate_invalid_csv, orders_csv_bytes

runner = CliRunner()


def test_status_lists_every_object_version_with_its_state(pipeline_stack: OfflineStack) -> None:
    obj = upload(pipeline_stack, unique_key("status"), orders_csv_bytes(5, seed=20)[0])
    wait_for_state(pipeline_stack, obj, {"SUCCEEDED"})

    result = runner.invoke(app, ["status", "--json", "--outputs", str(pipeline_stack.outputs_path)])

    assert result.exit_code == 0, result.output
    records = {record["key"]: record for record in json.loads(result.stdout)}
    record = records[obj.key]
    assert record["bucket"] == obj.bucket
    assert record["version_id"] == obj.version_id
    assert (record["state"], record["rows_total"], record["rows_delivered"], record["rows_rejected"]) == (
        "SUCCEEDED",
        5,
        5,
        0,
    )
    assert record["error"] is None
    assert record["api_mode"] == "http"  # the offline default: the simulator over real HTTP
    table = runner.invoke(app, ["status", "--outputs", str(pipeline_stack.outputs_path)])
    assert table.exit_code == 0
    assert "SUCCEEDED" in table.stdout


def test_status_without_a_running_stack_says_how_to_start_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--outputs", str(tmp_path / "outputs.json")])
    assert result.exit_code != 0
    assert "sluice local up" in result.output


def test_logs_show_the_functions_structured_lines(pipeline_stack: OfflineStack) -> None:
    obj = upload(pipeline_stack, unique_key("logs"), orders_csv_bytes(3, seed=21)[0])
    wait_for_state(pipeline_stack, obj, {"SUCCEEDED"})

    result = runner.invoke(
        app, ["logs", "RegisterObject", "--all", "--state-dir", str(pipeline_stack.state_dir)]
    )

    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "RegisterObjectFunction" in line]
    assert any("START RequestId" in line for line in lines)
    raw = runner.invoke(
        app, ["logs", "RegisterObject", "--json", "--state-dir", str(pipeline_stack.state_dir)]
    )
    assert all(isinstance(json.loads(line), dict) for line in raw.stdout.splitlines())


def test_invoke_runs_a_handler_against_the_running_stack(
    pipeline_stack: OfflineStack, tmp_path: Path
) -> None:
    """With a stack up, the function runs with the stack's own configuration and reaches it."""
    data = orders_csv_bytes(2, seed=22)[0]
    # Not a .csv: the ingest rule ignores it, so only this invocation registers it.
    obj = upload(pipeline_stack, unique_key("invoke").replace(".csv", ".txt"), data)
    event = tmp_path / "register.json"
    message = {
        "message_id": "m1",
        "receipt_handle": "r1",
        "receive_count": 1,
        "body": json.dumps(
            {
                "source": "aws.s3",
                "detail-type": "Object Created",
                "detail": {
                    "bucket": {"name": obj.bucket},
                    "object": {"key": obj.key, "size": len(data), "etag": "e", "version-id": obj.version_id},
                },
            }
        ),
    }
    event.write_text(json.dumps(message))

    result = runner.invoke(
        app,
        ["invoke", "RegisterObjectFunction", "-e", str(event), "--outputs", str(pipeline_stack.outputs_path)],
    )

    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["action"], answer["object"]["id"]) == ("process", obj.id)
    assert "Using the running offline stack" in result.stderr
    assert item_of(pipeline_stack, obj)["state"] == "RECEIVED"  # registered in the stack's own table


def test_invoke_without_a_stack_runs_the_handler_with_calls_going_nowhere(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"marker": 1}))
    common = [
        "--outputs",
        str(tmp_path / "none.json"),
        "--template",
        str(ENGINE_APP / "template.yaml"),
        "--env",
        "none",
    ]

    ok = runner.invoke(app, ["invoke", "echo", "-e", str(event), *common])

    assert ok.exit_code == 0, ok.output
    answer = json.loads(ok.stdout)
    assert answer["event"] == {"marker": 1}
    assert answer["greet"] == "greetings, layer"
    assert answer["function_name"].startswith("sluice-local-EchoFunction-")
    assert "calls go nowhere" in ok.stderr
    assert "START RequestId" in ok.stderr
    assert "REPORT RequestId" in ok.stderr

    event.write_text(json.dumps({"fail": "no good"}))
    failed = runner.invoke(app, ["invoke", "EchoFunction", "-e", str(event), *common])
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["errorType"] == "ValueError"


def test_invoke_runs_sluices_own_handler_on_its_sample_event(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "invoke",
            "PlanBatchFunction",
            "-e",
            str(REPO / "events" / "plan-batch.json"),
            "--outputs",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "items" in json.loads(result.stdout)


def test_run_processes_given_files_and_exits_zero_when_each_ends_as_its_content_calls_for(
    tmp_path: Path,
) -> None:
    stop_all()  # `sluice run` starts its own stack; one per process
    valid, invalid = tmp_path / "valid.csv", tmp_path / "invalid.csv"
    valid.write_bytes(orders_csv_bytes(12, seed=23)[0])
    invalid.write_bytes(generate_invalid_csv(InvalidKind.BAD_HEADER, rows=3))
    report = tmp_path / "report.json"

    result = runner.invoke(
        app,
        [
            "run",
            "--files",
            str(valid),
            "--files",
            str(invalid),
            "--report",
            str(report),
            "--state-dir",
            str(tmp_path / "state"),
            "--timeout",
            "90",
            "--template",
            str(REPO / "template.yaml"),
        ],
    )

    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["ok"] is True
    assert {file["key"].rsplit("/", 1)[-1]: file["state"] for file in summary["files"]} == {
        "valid.csv": "SUCCEEDED",
        "invalid.csv": "INVALID",
    }
    assert summary["rows"] == {"total": 12, "delivered": 12, "rejected": 0}
    assert summary["api"]["duplicate_deliveries"] == 0
