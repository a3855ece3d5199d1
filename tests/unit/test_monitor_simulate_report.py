"""`sluice simulate`, `sluice monitor` and `sluice report`.

simulate and monitor's snapshot run against moto's in-process mock; `monitor --once` against a
moto server on 127.0.0.1 (the command finds the stack through an outputs file and checks its
endpoint answers); report draws PNGs from a small synthetic samples file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
import typer
from moto import mock_aws
from moto.server import ThreadedMotoServer
from rich.console import Console
from typer.testing import CliRunner

from sluice import ratelimit
from sluice_cli.monitor import Snapshot, monitor, render, take_snapshot
from sluice_cli.report import load_samples, make_charts
from sluice_cli.simulate import upload_files

REGION = "us-east-1"
DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_stack(client: Any) -> dict[str, str]:
    """The resources monitor reads, as a stack would have them; the outputs naming them."""
    s3, sqs, dynamodb, ssm, sfn = (client(name) for name in ("s3", "sqs", "dynamodb", "ssm", "stepfunctions"))
    s3.create_bucket(Bucket="raw")
    s3.put_bucket_versioning(Bucket="raw", VersioningConfiguration={"Status": "Enabled"})
    queue = sqs.create_queue(QueueName="ingest")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="ingest-dlq")["QueueUrl"]
    dynamodb.create_table(
        TableName="metadata",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.create_table(
        TableName="control",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ssm.put_parameter(Name="/sluice/dispatcher/concurrency", Value="4", Type="String")
    role = "arn:aws:iam::123456789012:role/sfn"
    machine = sfn.create_state_machine(name="dispatcher", definition=DEFINITION, roleArn=role)[
        "stateMachineArn"
    ]
    return {
        "RawBucketName": "raw",
        "IngestQueueUrl": queue,
        "IngestDLQUrl": dlq,
        "MetadataTableName": "metadata",
        "ControlTableName": "control",
        "ConcurrencyParameterName": "/sluice/dispatcher/concurrency",
        "DispatcherStateMachineArn": machine,
    }


def fill(client: Any, outputs: dict[str, str]) -> None:
    """5 waiting messages, 2 in flight, 1 dead letter; files in three states."""
    sqs, dynamodb = client("sqs"), client("dynamodb")
    for number in range(7):
        sqs.send_message(QueueUrl=outputs["IngestQueueUrl"], MessageBody=f"m{number}")
    sqs.receive_message(QueueUrl=outputs["IngestQueueUrl"], MaxNumberOfMessages=2, VisibilityTimeout=300)
    sqs.send_message(QueueUrl=outputs["IngestDLQUrl"], MessageBody="dead")
    for number, state in enumerate(["SUCCEEDED", "SUCCEEDED", "PROCESSING", "FAILED"]):
        item = {"pk": {"S": f"raw/f{number}.csv#v"}, "state": {"S": state}}
        dynamodb.put_item(TableName=outputs["MetadataTableName"], Item=item)
    # the stack's pacing after three 429s stepped it down (sluice/ratelimit.py's shared item)
    pacing = {
        "rate": "31.5",
        "lateness": "0.0121",
        "decreases": "3",
        "tat": "1800000000.5",
        "paused_until": "1800000030",
    }
    item = {"pk": {"S": ratelimit.BUCKET_KEY}, **{name: {"N": value} for name, value in pacing.items()}}
    dynamodb.put_item(TableName=outputs["ControlTableName"], Item=item)


@pytest.fixture
def mocked() -> Iterator[Any]:
    with mock_aws():
        clients: dict[str, Any] = {}

        def client(name: str) -> Any:
            if name not in clients:
                clients[name] = boto3.client(name, region_name=REGION)
            return clients[name]

        yield client


SIMULATOR_STATS = {
    "requests": 1_234,
    "throttled": 0,
    "rate_limit": 50.0,
    "max_requests_in_any_second": 50,
    "arrivals_per_second": [0, 40, 48, 47, 12],  # the last second is still going
}


def test_a_snapshot_reads_queue_dead_letters_executions_files_concurrency_and_api(mocked: Any) -> None:
    outputs = make_stack(mocked)
    fill(mocked, outputs)

    snapshot = take_snapshot(mocked, outputs, api_stats=lambda: SIMULATOR_STATS, now=lambda: 1_800_000_000.0)

    assert snapshot.errors == []
    assert (snapshot.queue_visible, snapshot.queue_in_flight, snapshot.dlq_visible) == (5, 2, 1)
    assert snapshot.running_executions == 0
    assert snapshot.files_by_state == {"FAILED": 1, "PROCESSING": 1, "SUCCEEDED": 2}
    assert snapshot.concurrency == 4
    # the rate of the last whole second, not of the one in progress
    assert (snapshot.api_rate, snapshot.api_limit, snapshot.api_requests) == (47.0, 50.0, 1_234)
    assert (snapshot.paced_rate, snapshot.pacing_lateness_ms, snapshot.rate_decreases) == (31.5, 12.1, 3)
    assert snapshot.paused_for_seconds == 30  # a Retry-After written into the shared item
    assert snapshot.as_record("bench")["kind"] == "snapshot"


def test_a_reading_that_fails_is_reported_and_the_others_still_shown(mocked: Any) -> None:
    outputs = make_stack(mocked)
    del outputs["IngestDLQUrl"]

    def broken_api() -> dict[str, Any]:
        raise ConnectionRefusedError("simulator gone")

    snapshot = take_snapshot(mocked, outputs, api_stats=broken_api)

    assert snapshot.queue_visible == 0
    assert snapshot.dlq_visible is None
    assert snapshot.api_rate is None
    assert any(error.startswith("IngestDLQ: KeyError") for error in snapshot.errors)
    assert any("simulator gone" in error for error in snapshot.errors)


def test_the_view_shows_every_reading() -> None:
    snapshot = Snapshot(
        t=1_800_000_000.0,
        queue_visible=5,
        queue_in_flight=2,
        dlq_visible=1,
        running_executions=1,
        files_by_state={"PROCESSING": 1, "SUCCEEDED": 2},
        concurrency=4,
        api_rate=47.0,
        api_limit=50.0,
        api_throttled=0,
        api_busiest_second=50,
        paced_rate=31.5,
        pacing_lateness_ms=12.1,
        rate_decreases=3,
        paused_for_seconds=12.5,
        errors=["files: throttled"],
    )
    console = Console(record=True, width=100)

    console.print(render(snapshot, "sluice-local"))

    text = console.export_text()
    assert "sluice-local at" in text
    for line in (
        "queue visible",
        "queue in flight",
        "dead letters (IngestDLQ)",
        "concurrency setting",
        "47.0/s of 50/s (94%)",
        "busiest second so far",
        "31.5/s",
        "12.1 ms",
        "rate steps down (429s)",
        "12.5 s more",
        "SUCCEEDED",
        "! files: throttled",
    ):
        assert line in text, f"{line!r} missing from:\n{text}"


def test_monitor_once_against_a_stack_behind_an_endpoint(tmp_path: Path) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"

        def client(name: str) -> Any:
            return boto3.client(
                name,
                region_name=REGION,
                endpoint_url=endpoint,
                aws_access_key_id="t",
                aws_secret_access_key="t",
            )

        outputs = make_stack(client)
        fill(client, outputs)
        outputs_file = tmp_path / "outputs.json"
        outputs_file.write_text(json.dumps({**outputs, "EndpointUrl": endpoint, "Region": REGION}))
        record = tmp_path / "samples.jsonl"
        app = typer.Typer()
        app.command()(monitor)

        result = CliRunner().invoke(
            app, ["--outputs", str(outputs_file), "--once", "--record", str(record)], env={"COLUMNS": "100"}
        )
    finally:
        server.stop()

    assert result.exit_code == 0, result.output
    assert "queue visible" in result.output
    assert "SUCCEEDED" in result.output
    recorded = json.loads(record.read_text())
    assert (recorded["queue_visible"], recorded["queue_in_flight"], recorded["concurrency"]) == (5, 2, 4)
    # no simulator behind an offline stack's outputs without ApiUrl: no rate, and no error for it
    assert recorded["api_rate"] is None


def test_simulate_uploads_every_file_in_parallel(mocked: Any) -> None:
    s3 = mocked("s3")
    s3.create_bucket(Bucket="raw")
    s3.put_bucket_versioning(Bucket="raw", VersioningConfiguration={"Status": "Enabled"})

    result = upload_files(s3, "raw", files=5, rows=20, workers=3, prefix="incoming/sim/", run_id="r1")

    keys = sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket="raw")["Contents"])
    assert keys == [f"incoming/sim/r1/{n:05d}.csv" for n in range(1, 6)]
    assert [u.key for u in result.files] == keys  # in order, each with its version
    assert all(u.version_id for u in result.files)
    first = s3.get_object(Bucket="raw", Key=keys[0])["Body"].read().decode()
    assert first.splitlines()[0].startswith("order_id,")
    assert len(first.splitlines()) == 21  # header + 20 rows
    assert result.rows == 100
    assert result.bytes == sum(u.bytes for u in result.files) > 0
    # files differ: each has its own seed
    assert first != s3.get_object(Bucket="raw", Key=keys[1])["Body"].read().decode()


def test_simulate_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="files >= 1"):
        upload_files(object(), "raw", files=0, rows=1, workers=1)


def synthetic_samples(path: Path) -> None:
    t0 = time.time()
    lines: list[dict[str, Any]] = []
    for second in range(20):
        lines.append(
            {
                "kind": "snapshot",
                "run": "sluice",
                "t": t0 + second,
                "queue_visible": max(0, 6 - second),
                "queue_in_flight": 2 if second < 18 else 0,
                "concurrency": 2 if second < 5 else 6,
            }
        )
    lines.append(
        {
            "kind": "api_seconds",
            "run": "sluice",
            "rate_limit": 50,
            "arrivals_per_second": [0, 40, *([48] * 15), 20],
            "accepted_per_second": [0, 40, *([48] * 15), 20],
        }
    )
    lines += [{"kind": "latency", "run": "sluice", "seconds": s} for s in (2.1, 2.4, 2.2, 3.5, 2.9)]
    lines += [
        {
            "kind": "rss",
            "run": "ProcessObject",
            "t": t0 + i,
            "rss_mb": 80 + (i % 3),
            "rows_done": i * 1000,
            "limit_mb": 256,
        }
        for i in range(10)
    ]
    lines += [
        {"kind": "event", "run": "ProcessObject", "t": t0 + 5, "text": "invocation 1 ends"},
        {"kind": "event", "run": "sluice", "t": t0 + 10, "text": "3 files taken off the queue"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_report_draws_every_chart_from_the_samples(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    synthetic_samples(samples)

    written = make_charts(samples, tmp_path / "charts")

    assert sorted(path.name for path in written) == [
        "api-rate.png",
        "latency.png",
        "memory.png",
        "queue-concurrency.png",
    ]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC), f"{path.name} is not a PNG"
        assert len(data) > 10_000, f"{path.name} looks empty ({len(data)} bytes)"


def test_report_draws_only_what_the_samples_hold(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"kind": "latency", "run": "r", "seconds": 1.0}) + "\n\n")

    written = make_charts(samples, tmp_path)

    assert [path.name for path in written] == ["latency.png"]
    assert load_samples(["", json.dumps({"kind": "other"})]).latencies == {}


def test_the_api_rate_is_the_last_complete_second_before_now_zero_once_quiet(mocked: Any) -> None:
    outputs = make_stack(mocked)
    busy = {**SIMULATOR_STATS, "elapsed_seconds": 4.5}  # now is in the fifth second: the fourth is done
    quiet = {**SIMULATOR_STATS, "elapsed_seconds": 300.0}  # the last request was minutes ago

    assert take_snapshot(mocked, outputs, api_stats=lambda: busy).api_rate == 47.0
    assert take_snapshot(mocked, outputs, api_stats=lambda: quiet).api_rate == 0.0


def test_monitor_without_a_terminal_prints_a_line_per_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([Snapshot(t=1_800_000_000.0, queue_visible=3, files_by_state={"SUCCEEDED": 2})])

    def take() -> Snapshot:
        try:
            return next(readings)
        except StopIteration:
            raise KeyboardInterrupt from None  # the user's Ctrl-C after one reading

    monkeypatch.setattr("sluice_cli.monitor.resolve_target", lambda *args: SimpleNamespace(outputs={}))
    monkeypatch.setattr("sluice_cli.monitor.snapshot_source", lambda target: take)
    app = typer.Typer()
    app.command()(monitor)

    result = CliRunner().invoke(app, ["--interval", "0.2"])  # CliRunner's output is not a terminal

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "08:00:00 queue=3 in_flight=? dlq=? running=? concurrency=? api=? 429s=? paced=? lateness=? "
        "steps_down=? files: SUCCEEDED=2"
    ]
