"""ScaleConcurrency handler, run with events/scale-concurrency.json against moto's SSM, SQS and CloudWatch."""

from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
import pytest
from conftest import load_function
from datapath_support import create_tables
from handler_support import FakeLambdaContext, capture_powertools_output, json_lines, load_event
from moto import mock_aws

EVENT = load_event("scale-concurrency.json")
PARAMETER = "/sluice/concurrency"


@dataclass
class Invocation:
    module: ModuleType
    ssm: Any
    sqs: Any
    queue_url: str

    def __call__(self) -> dict[str, Any]:
        return self.module.lambda_handler(EVENT, FakeLambdaContext(function_name="sluice-ScaleConcurrency"))

    def setting(self) -> str:
        return self.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"]


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[Invocation]:
    from sluice.observability import metrics  # noqa: PLC0415 - not at collection (handler_support says why)

    monkeypatch.setenv("CONCURRENCY_PARAMETER", PARAMETER)
    monkeypatch.setenv("CONCURRENCY_MIN", "1")
    monkeypatch.setenv("CONCURRENCY_MAX", "6")
    monkeypatch.setenv("INGEST_QUEUE_NAME", "sluice-ingest")
    # The parameter is created a moment before the run: without this, the run would wait out the
    # cooldown that counts from its LastModifiedDate.
    monkeypatch.setenv("STEP_COOLDOWN_SECONDS", "0")
    capture_powertools_output(monkeypatch)
    metrics.clear_metrics()
    with mock_aws():
        ssm, sqs = boto3.client("ssm"), boto3.client("sqs")
        ssm.put_parameter(Name=PARAMETER, Value="2", Type="String")
        queue_url = sqs.create_queue(QueueName="sluice-ingest")["QueueUrl"]
        monkeypatch.setenv("INGEST_QUEUE_URL", queue_url)
        monkeypatch.setenv("CONTROL_TABLE", create_tables()["ControlTable"].name)
        yield Invocation(load_function("scale_concurrency"), ssm, sqs, queue_url)


def test_sample_event_with_a_backlog_raises_the_setting_and_reports_it(
    handler: Invocation, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN 9 files waiting, the setting at 2, the maximum at 6
    for number in range(9):
        handler.sqs.send_message(QueueUrl=handler.queue_url, MessageBody=f"file {number}")

    # WHEN the schedule fires
    answer = handler()

    # THEN the setting steps up by 4 to 6 (also the maximum), and the decision is logged and counted
    assert answer == {
        "old": 2,
        "new": 6,
        "target": 6,
        "direction": "up",
        "reason": "backlog",
        "detail": "backlog 9, target 6, step 4",
    }
    assert handler.setting() == "6"
    records = json_lines(capsys.readouterr().out)
    log = next(r for r in records if r.get("reason") == "backlog")
    assert log["function_name"] == "sluice-ScaleConcurrency"
    assert (log["old"], log["new"], log["inputs"]["visible"]) == (2, 6, 9)
    decisions = [r for r in records if "ScalingDecisions" in r]
    assert [r["direction"] for r in decisions] == ["up"]
    gauges = [r["ConcurrencySetting"] for r in records if "ConcurrencySetting" in r]
    assert gauges == [[6.0]]  # one gauge blob, one value: this run's


def test_sample_event_with_an_empty_queue_drops_to_the_minimum(
    handler: Invocation, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = handler()

    assert (answer["new"], answer["direction"], answer["reason"]) == (1, "down", "idle")
    assert handler.setting() == "1"
    assert [r["direction"] for r in json_lines(capsys.readouterr().out) if "ScalingDecisions" in r] == [
        "down"
    ]


def test_a_run_that_holds_writes_nothing(handler: Invocation) -> None:
    handler.ssm.put_parameter(Name=PARAMETER, Value="1", Type="String", Overwrite=True)
    version = handler.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Version"]

    answer = handler()

    assert (answer["direction"], answer["reason"]) == ("hold", "idle")
    assert handler.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Version"] == version
