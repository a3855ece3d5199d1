"""The local Lambda runtime's pure parts: lookup, environment, error documents, log lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sluice_cli.offline.lambda_runtime import (
    FunctionSpec,
    InvokeResult,
    LambdaRuntime,
    lambda_error,
    spec_from_json,
    spec_to_json,
)
from sluice_cli.offline.logsink import ConsoleSink, LogSink, wrap_line

SPEC = FunctionSpec(
    logical_id="ProcessObjectFunction",
    name="sluice-local-ProcessObjectFunction-ABC",
    arn="arn:aws:lambda:us-east-1:123456789012:function:sluice-local-ProcessObjectFunction-ABC",
    handler="app.lambda_handler",
    code_dir=Path("/code/process_object"),
    layer_dirs=(Path("/code/layer"),),
    timeout_seconds=8,
    memory_mb=256,
    environment={"METADATA_TABLE": "t", "AWS_ENDPOINT_URL": "http://elsewhere", "AWS_REGION": "eu-west-1"},
)


@pytest.fixture
def runtime(tmp_path: Path) -> LambdaRuntime:
    subject = LambdaRuntime(endpoint_url="http://127.0.0.1:4566", log_dir=tmp_path)
    subject.address = "127.0.0.1:9999"  # not started: no socket in unit tests
    subject.register(SPEC)
    return subject


@pytest.mark.parametrize(
    "name",
    [
        "sluice-local-ProcessObjectFunction-ABC",
        "arn:aws:lambda:us-east-1:123456789012:function:sluice-local-ProcessObjectFunction-ABC",
        "arn:aws:lambda:us-east-1:123456789012:function:sluice-local-ProcessObjectFunction-ABC:$LATEST",
        "123456789012:function:sluice-local-ProcessObjectFunction-ABC",
        "sluice-local-ProcessObjectFunction-ABC:$LATEST",
        "ProcessObjectFunction",
    ],
)
def test_a_function_is_found_by_every_name_lambda_accepts(runtime: LambdaRuntime, name: str) -> None:
    assert runtime.find(name) is SPEC


def test_an_unknown_function_is_not_found(runtime: LambdaRuntime) -> None:
    assert runtime.find("arn:aws:lambda:us-east-1:123456789012:function:other") is None


def test_a_worker_gets_lambdas_variables_its_environment_and_the_local_endpoint(
    runtime: LambdaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "real-account")  # must never reach a worker
    monkeypatch.setenv("COVERAGE_PROCESS_START", "/x/.coveragerc")  # coverage of the handlers may
    environ = runtime.worker_environment(SPEC, "w1")
    assert environ["PYTHONPATH"] == "/code/process_object:/code/layer"
    assert environ["LAMBDA_TASK_ROOT"] == "/code/process_object"
    assert environ["_HANDLER"] == "app.lambda_handler"
    assert environ["AWS_LAMBDA_FUNCTION_NAME"] == SPEC.name
    assert environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert environ["AWS_LAMBDA_LOG_GROUP_NAME"] == f"/aws/lambda/{SPEC.name}"
    assert environ["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9999/w/w1"
    assert environ["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.13"
    assert environ["METADATA_TABLE"] == "t"
    assert environ["AWS_REGION"] == "eu-west-1"  # the template's value
    assert environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"  # never somewhere else
    assert environ["AWS_ACCESS_KEY_ID"] == "testing"
    assert environ["POWERTOOLS_TRACE_DISABLED"] == "true"
    assert environ["COVERAGE_PROCESS_START"] == "/x/.coveragerc"
    assert "AWS_PROFILE" not in environ


def test_lambda_errors_and_results_read_like_lambdas() -> None:
    body = json.loads(lambda_error("req-1", "Sandbox.Timedout", "Task timed out after 8.00 seconds"))
    assert body == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "RequestId: req-1 Error: Task timed out after 8.00 seconds",
    }
    result = InvokeResult("req-1", json.dumps(body).encode(), "Unhandled")
    assert result.error_type == "Sandbox.Timedout"
    assert InvokeResult("req-2", b'{"ok": true}').json() == {"ok": True}
    assert InvokeResult("req-2", b'{"ok": true}').error_type is None


def test_a_function_spec_survives_the_functions_file() -> None:
    assert spec_from_json(json.loads(json.dumps(spec_to_json(SPEC)))) == SPEC


def test_log_lines_are_kept_as_json_or_wrapped(tmp_path: Path) -> None:
    powertools = '{"level":"INFO","message":"file done","timestamp":"2026-11-22 03:00:00,000+0000"}\n'
    assert wrap_line(powertools, "Fn", "r1") == json.loads(powertools)
    wrapped = wrap_line("[ERROR] ValueError: bad\rTraceback (most recent call last):\r  File x\n", "Fn", "r1")
    assert wrapped["level"] == "ERROR"
    assert wrapped["function"] == "Fn"
    assert wrapped["request_id"] == "r1"
    assert wrapped["message"] == "[ERROR] ValueError: bad\nTraceback (most recent call last):\n  File x"
    assert wrap_line("plain print\n", "Fn", None)["level"] == "INFO"

    sink = LogSink(tmp_path)
    sink.line("Fn", powertools, "r1")
    sink.platform("Fn", "START RequestId: r1 Version: $LATEST", "r1")
    sink.close()
    records = [json.loads(line) for line in (tmp_path / "Fn.log").read_text().splitlines()]
    assert [record["message"] for record in records] == ["file done", "START RequestId: r1 Version: $LATEST"]


def test_the_console_sink_shows_lines_as_printed() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream)
    sink.line("Fn", "one\rtwo\n", None)
    sink.platform("Fn", "REPORT RequestId: r1")
    assert stream.getvalue() == "one\ntwo\nREPORT RequestId: r1\n"
