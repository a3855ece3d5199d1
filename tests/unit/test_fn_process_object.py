"""ProcessObject handler with events/process-object.json: moto AWS, a loopback API, Powertools idempotency."""

import csv
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from conftest import SAMPLES, load_function
from datapath_support import (
    PROCESSED_BUCKET,
    RAW_BUCKET,
    ApiServer,
    Received,
    Reply,
    accept_all,
    create_buckets,
    create_tables,
)
from handler_support import (
    FakeLambdaContext,
    capture_powertools_output,
    correlation_ids,
    emitted_metrics,
    load_event,
)
from moto import mock_aws
from pydantic import ValidationError

from sluice.downstream import idempotency_key
from sluice.metadata import MetadataStore
from sluice.models import ObjectRef
from sluice.settings import IDEMPOTENCY_KEY_PREFIXES

EVENT = load_event("process-object.json")
SAMPLE = (SAMPLES / "orders-with-rejects.csv").read_bytes()
REJECTED_ROWS = {9, 17, 24, 31, 38, 45}


@dataclass
class Stack:
    module: ModuleType
    s3: Any
    tables: dict[str, Any]
    store: MetadataStore
    obj: ObjectRef

    def event(self, **changes: Any) -> dict[str, Any]:
        return {**EVENT, "object": {**EVENT["object"], **self.obj.as_payload()}, **changes}

    def invoke(self, context: FakeLambdaContext | None = None, **changes: Any) -> dict[str, Any]:
        return self.module.lambda_handler(self.event(**changes), context or FakeLambdaContext())


def deploy(monkeypatch: pytest.MonkeyPatch, api_url: str, api_mode: str = "http") -> Stack:
    """Environment, resources and the sample with rejects, registered; then the handler's cold start."""
    for name, value in {
        "STAGE": "local",  # the test API listens on http://127.0.0.1
        "API_MODE": api_mode,
        "METADATA_TABLE": "MetadataTable",
        "CONTROL_TABLE": "ControlTable",
        "IDEMPOTENCY_TABLE": "IdempotencyTable",
        "PROCESSED_BUCKET": PROCESSED_BUCKET,
        "API_URL": api_url,
        "API_RATE_LIMIT": "2000",
        "API_CONCURRENCY": "4",
        "CHECKPOINT_EVERY_ROWS": "10",
        "SEGMENT_SAFETY_SECONDS": "5",
        "SIMULATED_LATENCY_MIN_SECONDS": "0",
        "SIMULATED_LATENCY_MAX_SECONDS": "0.01",
        "SIMULATED_FAILURE_RATE": "0",
    }.items():
        monkeypatch.setenv(name, value)
    tables = create_tables()
    s3 = create_buckets()
    version = s3.put_object(Bucket=RAW_BUCKET, Key="incoming/orders.csv", Body=SAMPLE)["VersionId"]
    obj = ObjectRef(bucket=RAW_BUCKET, key="incoming/orders.csv", version_id=version, size=len(SAMPLE))
    store = MetadataStore(tables["MetadataTable"])
    store.register(obj)
    return Stack(load_function("process_object"), s3, tables, store, obj)


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, api: ApiServer) -> Iterator[Stack]:
    capture_powertools_output(monkeypatch)
    with mock_aws():
        yield deploy(monkeypatch, api.url)


def test_the_sample_is_delivered_and_answered_in_the_documented_shape(
    stack: Stack, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = stack.invoke()

    assert answer == {
        "done": True,
        "segment": 1,
        "outcome": "SUCCEEDED_WITH_REJECTS",
        "rows_total": 50,
        "rows_delivered": 44,
        "rows_rejected": 6,
        "parts": 5,  # 50 rows, a part every 10
        "runs": [[0, 1]],  # all written by attempt 1
    }
    records = enumerate(csv.DictReader(io.StringIO(SAMPLE.decode())), start=1)
    expected = {idempotency_key(stack.obj, n, record) for n, record in records if n not in REJECTED_ROWS}
    assert Counter(api.keys()) == Counter(dict.fromkeys(expected, 1))
    parts = stack.s3.list_objects_v2(Bucket=PROCESSED_BUCKET, Prefix="parts/")["Contents"]
    assert len(parts) == 2 * 5  # 50 rows, a part every 10
    output = capsys.readouterr().out
    emitted = emitted_metrics(output)
    assert (emitted["RowsDelivered"], emitted["RowsRejected"]) == (44, 6)
    assert emitted["ApiLatency"] > 0
    assert "SimulatedDeliveries" not in emitted
    assert stack.obj.id in correlation_ids(output)
    assert stack.store.get(stack.obj.id)["api_mode"] == "http"  # type: ignore[index]


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the cached answer adds none
def test_a_retried_segment_gets_the_first_answer_without_sending_again(stack: Stack, api: ApiServer) -> None:
    first = stack.invoke()
    sent = len(api.received)

    again = stack.invoke(context=FakeLambdaContext(aws_request_id="another-request"))

    assert again == first
    assert len(api.received) == sent
    records = stack.tables["IdempotencyTable"].scan()["Items"]
    assert [record["status"] for record in records] == ["COMPLETED"]
    # its own key prefix: the template's dynamodb:LeadingKeys condition admits only these
    assert records[0]["id"].startswith(IDEMPOTENCY_KEY_PREFIXES["ProcessObjectFunction"] + "#")


def test_another_attempt_runs_again_and_resumes_at_the_stored_checkpoint(
    stack: Stack, api: ApiServer
) -> None:
    first = stack.invoke()

    # a new attempt (the state machine's retry of the file, registered again) is a new idempotency
    # key: it runs for real, finds the checkpoint at the end of the file, and has nothing left to send
    assert stack.store.register(stack.obj).attempt == 2
    second = stack.invoke(attempt=2)

    assert second == first
    assert len(api.received) == 44
    assert len(stack.tables["IdempotencyTable"].scan()["Items"]) == 2


def test_a_segment_without_time_left_pauses_at_once(stack: Stack, api: ApiServer) -> None:
    answer = stack.invoke(context=FakeLambdaContext(remaining_millis=4_000))  # under SEGMENT_SAFETY_SECONDS

    assert (answer["done"], answer["segment"], answer["rows_total"]) == (False, 1, 0)
    assert api.received == []
    assert stack.store.get(stack.obj.id)["state"] == "PROCESSING"  # type: ignore[index]


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the refused run adds none
def test_two_concurrent_runs_of_one_segment_cannot_happen(stack: Stack, api: ApiServer) -> None:
    release = threading.Event()

    def hold_first_request(request: Received, seen: int) -> Reply:
        release.wait(timeout=10)
        return accept_all(request, seen)

    api.respond = hold_first_request
    answers: list[dict[str, Any]] = []
    first = threading.Thread(target=lambda: answers.append(stack.invoke()), daemon=True)
    first.start()
    deadline = time.monotonic() + 10
    while not api.received:
        assert time.monotonic() < deadline, "the first run never reached the API"
        time.sleep(0.01)

    try:
        with pytest.raises(IdempotencyAlreadyInProgressError):
            stack.invoke(context=FakeLambdaContext(aws_request_id="the-duplicate"))
    finally:
        release.set()
        first.join(timeout=30)
    assert not first.is_alive(), "the first run did not finish within 30 s"
    assert answers[0]["done"] is True
    assert len(api.received) == 44


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_payload_without_a_segment_is_refused(stack: Stack) -> None:
    event = stack.event()
    del event["segment"]

    with pytest.raises(ValidationError, match="segment"):
        stack.module.lambda_handler(event, FakeLambdaContext())


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_negative_segment_is_refused(stack: Stack) -> None:
    with pytest.raises(ValidationError, match="segment"):
        stack.invoke(segment=-1)


def test_in_simulated_mode_the_simulated_api_answers_and_every_record_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capture_powertools_output(monkeypatch)
    with mock_aws():
        stack = deploy(monkeypatch, api_url="", api_mode="simulated")

        answer = stack.invoke()
        item = stack.store.get(stack.obj.id)

    assert (answer["done"], answer["rows_delivered"], answer["rows_rejected"]) == (True, 44, 6)
    assert item is not None
    assert item["api_mode"] == "simulated"
    emitted = emitted_metrics(capsys.readouterr().out)
    assert (emitted["RowsDelivered"], emitted["SimulatedDeliveries"]) == (44, 44)


@pytest.mark.parametrize(
    ("environment", "refusal"),
    [
        # GIVEN what a stack deployed as the README said got before issue 9: no ApiUrl, no mode
        ({"STAGE": "dev", "API_URL": ""}, "API_URL is empty with API_MODE=http"),
        (
            {"STAGE": "prod", "API_MODE": "simulated", "API_URL": ""},
            "API_MODE=simulated is refused on stage prod",
        ),
        ({"STAGE": "staging", "API_URL": "http://api.example.com/rows"}, "it must start with https://"),
    ],
)
def test_a_cold_start_with_an_api_choice_the_stage_refuses_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], refusal: str
) -> None:
    for name, value in {
        "METADATA_TABLE": "MetadataTable",
        "CONTROL_TABLE": "ControlTable",
        "IDEMPOTENCY_TABLE": "IdempotencyTable",
        "PROCESSED_BUCKET": PROCESSED_BUCKET,
        **environment,
    }.items():
        monkeypatch.setenv(name, value)
    if "API_MODE" not in environment:  # the template's default, http
        monkeypatch.delenv("API_MODE", raising=False)

    with mock_aws(), pytest.raises(RuntimeError, match=refusal):
        load_function("process_object")
