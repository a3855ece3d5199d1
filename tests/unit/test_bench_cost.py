"""The benchmark's pure parts: the price table and cost model, what the request counter and the
REPORT parser count, the utilization figures and the table rows built from them."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    """The bench package (repo root, not on pytest's pythonpath): registered from its directory, as
    conftest's load_function imports a handler from its file."""
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bench", REPO / "bench" / "__init__.py", submodule_search_locations=[str(REPO / "bench")]
        )
        assert spec, "bench/__init__.py not found"
        assert spec.loader, "bench/__init__.py has no loader"
        package = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = package
        spec.loader.exec_module(package)
    return sys.modules["bench"]


_bench()
from bench.__main__ import carried_over  # noqa: E402
from bench.cost import (  # noqa: E402 - the package is registered just above
    MINUTES_PER_MONTH,
    SEGMENT_STATES,
    SEGMENT_USAGE,
    US_EAST_1,
    RowLambda,
    Usage,
    api_destinations_usage,
    billing_class,
    by_file_rows,
    cost,
    distributed_map_usage,
    fixed_monthly,
    gb_seconds,
    per_million_rows,
    usage_from_requests,
)
from bench.counting import (  # noqa: E402
    BENCH_USER_AGENT,
    RequestCounter,
    identify,
    invocations,
    overlapping,
    parse_report,
    state_transitions,
    utilization_figures,
)
from bench.load import locust_summary, seconds_of  # noqa: E402
from bench.memory_worker import peak_rss_mb  # noqa: E402
from bench.summary import costs, latency, table_rows  # noqa: E402

# -- prices and the cost model ---------------------------------------------------------------------


def test_the_price_table_is_us_east_1_on_demand() -> None:
    assert US_EAST_1.state_transition * 1000 == pytest.approx(0.025)
    assert US_EAST_1.lambda_gb_second == pytest.approx(0.0000133334)
    assert US_EAST_1.lambda_request * 1e6 == pytest.approx(0.20)
    assert US_EAST_1.sqs_request * 1e6 == pytest.approx(0.40)
    assert US_EAST_1.dynamodb_write_unit * 1e6 == pytest.approx(0.625)
    assert US_EAST_1.dynamodb_read_unit * 1e6 == pytest.approx(0.125)
    assert US_EAST_1.s3_put_class * 1000 == pytest.approx(0.005)
    assert US_EAST_1.s3_get_class * 1000 == pytest.approx(0.0004)


def test_cost_per_million_rows_adds_every_component() -> None:
    # GIVEN what 10,000 rows used
    usage = Usage(
        rows=10_000,
        state_transitions=2_000,  # $0.05
        lambda_requests=100,  # $0.00002
        lambda_gb_seconds=1_000,  # $0.0133334
        sqs_requests=500,  # $0.0002
        dynamodb_write_units=10_000,  # $0.00625
        dynamodb_read_units=1_000,  # $0.000125
        s3_put_requests=100,  # $0.0005
        s3_get_requests=1_000,  # $0.0004
        sns_publishes=10,  # $0.000005
    )

    dollars = per_million_rows(usage)

    # THEN each component is scaled by a million / 10,000 = 100, and the total is their sum
    assert dollars["Step Functions transitions"] == pytest.approx(5.0)
    assert dollars["Lambda duration"] == pytest.approx(1.33334)
    assert dollars["DynamoDB writes"] == pytest.approx(0.625)
    assert dollars["S3 GET/HEAD"] == pytest.approx(0.04)
    assert dollars["total"] == pytest.approx(100 * sum(cost(usage).values()))
    assert dollars["total"] == pytest.approx(7.08334)


def test_no_rows_is_not_a_cost_per_row() -> None:
    with pytest.raises(ValueError, match="no rows"):
        per_million_rows(Usage(rows=0, state_transitions=5))


def test_gb_seconds_is_billed_time_times_configured_memory() -> None:
    assert gb_seconds(1000, 256) == pytest.approx(0.25)
    assert gb_seconds(1, 1024) == pytest.approx(0.001)


def test_usages_add_and_scale() -> None:
    one = Usage(rows=10, state_transitions=3, sqs_requests=2)

    assert one + one == Usage(rows=20, state_transitions=6, sqs_requests=4)
    assert one.scaled(0.5) == Usage(rows=5, state_transitions=1.5, sqs_requests=1)


@pytest.mark.parametrize(
    ("service", "operation", "kind"),
    [
        ("sqs", "ReceiveMessage", "sqs"),
        ("sqs", "GetQueueAttributes", "sqs"),
        ("dynamodb", "UpdateItem", "dynamodb_write"),
        ("dynamodb", "PutItem", "dynamodb_write"),
        ("dynamodb", "GetItem", "dynamodb_read"),
        ("dynamodb", "DescribeTable", None),
        ("s3", "PutObject", "s3_put"),
        ("s3", "UploadPart", "s3_put"),
        ("s3", "ListObjectsV2", "s3_put"),
        ("s3", "GetObject", "s3_get"),
        ("s3", "HeadObject", "s3_get"),
        ("s3", "DeleteObject", None),
        ("sns", "Publish", "sns"),
        ("lambda", "Invoke", None),  # priced from the runtime's REPORT lines
        ("states", "StartExecution", None),  # priced from the histories' transitions
        ("ssm", "GetParameter", None),  # standard parameters: free
        ("monitoring", "GetMetricData", "cloudwatch_metrics"),
    ],
)
def test_each_request_is_priced_in_its_class(service: str, operation: str, kind: str | None) -> None:
    assert billing_class(service, operation) == kind


def test_usage_from_request_counts() -> None:
    requests = {
        ("sqs", "ReceiveMessage"): 3,
        ("dynamodb", "UpdateItem"): 10,
        ("dynamodb", "TransactWriteItems"): 2,  # two units each
        ("s3", "GetObject"): 4,
        ("monitoring", "GetMetricData"): 1,  # five metrics asked each
        ("states", "StartExecution"): 99,
    }

    usage = usage_from_requests(
        requests, rows=100, state_transitions=40, lambda_requests=5, lambda_gb_seconds=1.5
    )

    assert usage == Usage(
        rows=100,
        state_transitions=40,
        lambda_requests=5,
        lambda_gb_seconds=1.5,
        sqs_requests=3,
        dynamodb_write_units=14,
        s3_get_requests=4,
        cloudwatch_metric_reads=5,
    )


def test_a_distributed_map_pays_a_child_execution_and_an_invocation_per_row() -> None:
    # GIVEN per file what Sluice does around the rows, and a per-row function of 200.4 ms
    per_file = Usage(rows=0, state_transitions=30, lambda_requests=4, lambda_gb_seconds=0.5, sqs_requests=3)

    usage = distributed_map_usage(per_file, files=2, rows=1_000, row_lambda=RowLambda(200.4, 128))

    assert usage.rows == 1_000
    assert usage.state_transitions == 2 * 30 + 1_000
    assert usage.lambda_requests == 2 * 4 + 1_000
    # billed to the millisecond, rounded up: 201 ms at 128 MB each
    assert usage.lambda_gb_seconds == pytest.approx(2 * 0.5 + 1_000 * 0.201 * 0.125)
    assert usage.sqs_requests == 6
    # The transitions alone cost $25 a million rows.
    assert per_million_rows(usage)["Step Functions transitions"] >= 25.0


def test_a_schedule_costs_the_same_every_month_whatever_the_rows() -> None:
    idle_run = Usage(rows=0, state_transitions=8, lambda_requests=2, lambda_gb_seconds=0.05)

    monthly = fixed_monthly(idle_run, MINUTES_PER_MONTH)

    expected = MINUTES_PER_MONTH * (8 * 0.025 / 1000 + 2 * 0.2 / 1e6 + 0.05 * 0.0000133334)
    assert monthly == pytest.approx(expected)


def test_api_destinations_pay_an_event_and_an_invocation_per_row() -> None:
    # GIVEN 1,000 rows in 2 files, a splitter spending 50 µs a row
    usage = api_destinations_usage(files=2, rows=1_000, splitter_seconds_per_row=0.00005)

    dollars = per_million_rows(usage)

    # THEN a million rows are a million events ($1.00) and invocations ($0.20), plus the splitter
    assert dollars["EventBridge events"] == pytest.approx(1.00)
    assert dollars["API destination invocations"] == pytest.approx(0.20)
    assert dollars["Lambda duration"] == pytest.approx(1e6 * 0.00005 * 0.125 * 0.0000133334)
    assert 1.20 < dollars["total"] < 1.22  # the issue's ≈ $1.21


def test_a_file_size_that_was_not_run_adds_segments_beyond_what_one_delivers() -> None:
    # GIVEN $0.001 a file and $0.000001 a row, 13,500 rows a segment
    sizes = by_file_rows(0.001, 0.000001, (400, 10_000, 100_000), rows_per_segment=13_500)

    segment = sum(cost(SEGMENT_USAGE).values())
    assert sizes["400"] == pytest.approx(1e6 * (0.001 + 400 * 1e-6) / 400)  # one segment: as measured
    assert sizes["10000"] == pytest.approx(1e6 * (0.001 + 10_000 * 1e-6) / 10_000)
    # 100,000 rows: 8 segments, 7 more than the measured file's
    assert sizes["100000"] == pytest.approx(1e6 * (0.001 + 7 * segment + 100_000 * 1e-6) / 100_000)


def test_the_segment_states_are_the_item_loop_of_the_state_machine() -> None:
    definition = json.loads((Path(__file__).parents[2] / "statemachine" / "dispatcher.asl.json").read_text())
    (item,) = [s for s in definition["States"].values() if s["Type"] == "Map"]
    states = item["ItemProcessor"]["States"]

    def successors(name: str) -> set[str]:
        state = states[name]
        return {state.get("Next"), state.get("Default"), *(c["Next"] for c in state.get("Choices", []))}

    # each leads to the next, and the last back to the first: one loop per extra segment
    loop = (*SEGMENT_STATES, SEGMENT_STATES[0])
    for name, following in itertools.pairwise(loop):
        assert following in successors(name), (name, following)


def _design(files: int, rows: int, transitions: float) -> dict[str, Any]:
    usage = Usage(
        rows=rows, state_transitions=transitions, lambda_requests=files * 6, lambda_gb_seconds=rows * 0.01
    )
    return {
        "files_processed": files,
        "usage": usage.__dict__,
        "api": {"accepted": rows, "api_latency_ms": {"p50": 150.0}},
        "process_object": {"invocations": files, "billed_seconds": rows * 0.02, "memory_mb": 256},
        "counts": {"rate_bucket_writes": 0},
        "fixed": {"safety_net_wake": Usage(rows=0, lambda_requests=1, sqs_requests=1).__dict__},
    }


def test_the_cost_part_prices_every_file_size_the_fixed_cost_and_the_alternatives() -> None:
    utilization = {
        "workload": {"rate_limit": 50, "rows": 400},
        "sluice": _design(6, 2_400, 6 * 17),
        "seed": _design(3, 1_200, 3 * 21),
    }
    cpu = {"bare_loop_seconds_per_row": 0.0003}

    result = costs(utilization, cpu)

    assert list(result["per_million_rows_by_file_rows"]) == ["400", "10000", "100000"]
    assert result["per_million_rows_by_file_rows_how"]["400"] == "measured"
    assert result["per_million_rows_by_file_rows_how"]["100000"] == "modelled from the measured counts"
    # the 400-row figure is the run's own total
    assert result["per_million_rows_by_file_rows"]["400"] == pytest.approx(
        result["per_million_rows"]["sluice"]["total"], abs=1e-4
    )
    # one scheduled wake a minute: a Lambda request and an SQS request, 43,200 times
    assert result["fixed_monthly"] == pytest.approx(MINUTES_PER_MONTH * (0.2 + 0.4) / 1e6, abs=1e-4)
    assert set(result["alternatives"]) == {"api_destinations", "seed", "distributed_map"}
    for alternative in result["alternatives"].values():
        assert list(alternative["per_million_rows_by_file_rows"]) == ["400", "10000", "100000"]
        assert alternative["model"]
    # a row costs an API destination at least its event and invocation, whatever the file size
    assert min(result["alternatives"]["api_destinations"]["per_million_rows_by_file_rows"].values()) > 1.20


def test_latency_percentiles_come_from_the_files_timed_one_at_a_time() -> None:
    run = {"first_delivery_seconds": [0.5, 0.7, 2.0, 0.6], "latency_seconds": [1.0, 1.2, 3.0, 1.1]}

    figures = latency(run)

    assert (figures["first_delivery_p50_seconds"], figures["first_delivery_p95_seconds"]) == (0.6, 2.0)
    assert (figures["finished_p50_seconds"], figures["finished_p95_seconds"]) == (1.1, 3.0)


# -- counting what the stack did -------------------------------------------------------------------


def environ(
    method: str,
    path: str,
    *,
    service: str,
    target: str = "",
    query: str = "",
    body: bytes = b"",
    content_type: str = "",
    agent: str = "Boto3/1.40 exec-env/AWS_Lambda_python3.13",
) -> dict[str, Any]:
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_USER_AGENT": agent,
        "HTTP_AUTHORIZATION": (
            f"AWS4-HMAC-SHA256 Credential=testing/20261122/us-east-1/{service}/aws4_request, Signature=x"
        ),
        "wsgi.input": io.BytesIO(body),
    }
    if target:
        env["HTTP_X_AMZ_TARGET"] = target
    return env


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            environ("POST", "/", service="dynamodb", target="DynamoDB_20120810.UpdateItem"),
            ("dynamodb", "UpdateItem"),
        ),
        (environ("POST", "/", service="sqs", target="AmazonSQS.ReceiveMessage"), ("sqs", "ReceiveMessage")),
        (environ("GET", "/raw/in/a.csv", service="s3"), ("s3", "GetObject")),
        (environ("HEAD", "/raw/in/a.csv", service="s3"), ("s3", "HeadObject")),
        (environ("PUT", "/out/parts/1.jsonl", service="s3"), ("s3", "PutObject")),
        (environ("PUT", "/raw/big.csv", service="s3", query="partNumber=2&uploadId=u"), ("s3", "UploadPart")),
        (environ("POST", "/raw/big.csv", service="s3", query="uploads"), ("s3", "CreateMultipartUpload")),
        (
            environ("POST", "/raw/big.csv", service="s3", query="uploadId=u"),
            ("s3", "CompleteMultipartUpload"),
        ),
        (environ("GET", "/out", service="s3", query="list-type=2&prefix=parts%2F"), ("s3", "ListObjectsV2")),
        (environ("DELETE", "/out/parts/1.jsonl", service="s3"), ("s3", "DeleteObject")),
        (
            environ(
                "POST",
                "/",
                service="sns",
                body=b"Action=Publish&TopicArn=arn",
                content_type="application/x-www-form-urlencoded",
            ),
            ("sns", "Publish"),
        ),
        (
            environ("POST", "/2015-03-31/functions/arn%3Aaws/invocations", service="lambda"),
            ("lambda", "Invoke"),
        ),
    ],
)
def test_requests_are_identified_by_service_and_operation(
    env: dict[str, Any], expected: tuple[str, str]
) -> None:
    body = env["wsgi.input"].read()
    assert identify(env, body) == expected


def test_the_counter_counts_the_stack_apart_from_the_bench_and_leaves_bodies_intact() -> None:
    seen_bodies: list[bytes] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen_bodies.append(env["wsgi.input"].read(int(env["CONTENT_LENGTH"] or 0)))
        start_response("200 OK", [])
        return [b"{}"]

    counter = RequestCounter(app)
    update = json.dumps({"TableName": "sluice-ControlTable", "Key": {}}).encode()
    publish = b"Action=Publish&Message=hi"
    calls = [
        environ("POST", "/", service="dynamodb", target="DynamoDB_20120810.UpdateItem", body=update),
        environ("POST", "/", service="dynamodb", target="DynamoDB_20120810.UpdateItem", body=update),
        environ("POST", "/", service="sns", body=publish, content_type="application/x-www-form-urlencoded"),
        environ("GET", "/raw/a.csv", service="s3", agent=f"Boto3/1.40 {BENCH_USER_AGENT}"),
    ]
    for env in calls:
        counter(env, lambda *_: None)

    assert counter.counts() == {("dynamodb", "UpdateItem"): 2, ("sns", "Publish"): 1}
    assert counter.bench_counts() == {("s3", "GetObject"): 1}
    assert counter.table_counts() == {("UpdateItem", "sluice-ControlTable"): 2}
    assert seen_bodies == [update, update, publish, b""]  # the emulator still gets every body

    counter.reset()
    assert not counter.counts()
    assert not counter.table_counts()


def test_lambda_report_lines_give_invocations_and_billed_time(tmp_path: Path) -> None:
    report = "\t".join(
        [
            "REPORT RequestId: r1",
            "Duration: 1233.40 ms",
            "Billed Duration: 1234 ms",
            "Memory Size: 256 MB",
            "Max Memory Used: 90 MB",
        ]
    )
    function = "ProcessObjectFunction"
    lines = [
        {"level": "INFO", "message": "file done", "function": function},
        {"level": "PLATFORM", "message": "START RequestId: r1 Version: $LATEST", "function": function},
        {"level": "PLATFORM", "message": report, "function": function, "timestamp": "t"},
    ]
    (tmp_path / "ProcessObjectFunction.log").write_text(
        "\n".join(json.dumps(line) for line in lines) + "\nnot json\n", encoding="utf-8"
    )

    found = list(invocations(tmp_path))

    assert [(i.function, i.billed_ms, i.memory_mb) for i in found] == [("ProcessObjectFunction", 1234, 256)]
    assert parse_report(lines[1]) is None


def test_state_transitions_are_the_states_entered_plus_task_retries() -> None:
    events = [
        {"type": "ExecutionStarted"},
        {"type": "TaskStateEntered"},
        {"type": "TaskScheduled"},
        {"type": "TaskFailed"},
        {"type": "TaskScheduled"},  # the Retry: billed as one more transition
        {"type": "TaskSucceeded"},
        {"type": "TaskStateExited"},
        {"type": "MapStateEntered"},
        {"type": "PassStateEntered"},
        {"type": "ChoiceStateEntered"},
        {"type": "SucceedStateEntered"},
        {"type": "ExecutionSucceeded"},
    ]

    assert state_transitions(events) == 6


# -- the figures -------------------------------------------------------------------------------------


def test_utilization_figures_count_whole_seconds_from_the_first_request() -> None:
    stats = {
        "requests": 250,
        "accepted": 249,
        "accepted_rate": 46.5,
        "active_seconds": 5.3,
        "max_requests_in_any_second": 50,
        "throttled": 1,
        "duplicate_deliveries": 0,
        # idle before the first request, then five whole seconds, then the last partial one
        "arrivals_per_second": [0, 0, 40, 48, 47, 30, 48, 12],
        "latency_ms": {"p50": 201.0},
    }

    figures = utilization_figures(stats, limit=50)

    assert figures["utilization"] == pytest.approx(0.93)
    assert figures["median_per_second"] == 47
    assert figures["share_of_seconds_at_90_percent"] == pytest.approx(3 / 5)
    assert (figures["busiest_second"], figures["throttled_429"]) == (50, 1)


# -- make load's pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("45s", 45), ("2m", 120), ("1h30m", 5400), ("90", 90)])
def test_locust_run_times_read_as_seconds(text: str, seconds: float) -> None:
    assert seconds_of(text) == seconds


def test_the_locust_stats_file_is_summarised_per_request_type(tmp_path: Path) -> None:
    header = (
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
        "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
    )
    rows = [
        "s3,put_object,40,0,12,14,8,60,3000,0.9,0.0,12,13,14,15,20,25,40,60,60,60,60",
        "sluice,upload→terminal,38,1,2100,2300,900,9000,3000,0.8,0.02,2100,2400,2600,2800,3500,4200,8000,9000,9000,9000,9000",
        ",Aggregated,78,1,60,1100,8,9000,3000,1.7,0.02,60,1900,2200,2400,3000,3900,6000,9000,9000,9000,9000",
    ]
    stats = tmp_path / "load_stats.csv"
    stats.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")

    summary = locust_summary(stats)

    terminal = next(row for row in summary if row["name"] == "upload→terminal")
    assert (terminal["requests"], terminal["failures"]) == (38, 1)
    assert (terminal["median_ms"], terminal["p95_ms"]) == (2100.0, 4200.0)
    assert [row["name"] for row in summary] == ["put_object", "upload→terminal", "Aggregated"]


def test_a_skipped_part_keeps_the_previous_runs_figures_and_samples(tmp_path: Path) -> None:
    # GIVEN a previous run with every part
    previous = {
        "machine": {"date": "2026-11-22T04:23:00+00:00"},
        "cpu": {"ratio_to_bare_loop": 1.4},
        "utilization": {"workload": {}, "sluice": {}, "seed": {}},
        "cost": {"total": 1},
        "memory": {"peak_rss_mb": 116},
    }
    (tmp_path / "latest.json").write_text(json.dumps(previous))
    samples = [
        {"kind": "rss", "run": "ProcessObject", "rss_mb": 90},
        {"kind": "snapshot", "run": "sluice"},
        {"kind": "latency", "run": "seed", "seconds": 1},
    ]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")

    # WHEN only the memory part is skipped THEN only its figures and samples are kept, dated
    kept = carried_over(tmp_path, ["memory"])
    assert kept.results == {"memory": {"peak_rss_mb": 116}}
    assert [json.loads(line)["run"] for line in kept.samples] == ["ProcessObject"]
    assert kept.date == "2026-11-22T04:23:00+00:00"

    # and skipping the utilization keeps its cost and every design's samples
    kept = carried_over(tmp_path, ["utilization"])
    assert set(kept.results) == {"utilization", "cost"}  # (and its latency figures, when there)
    assert sorted(json.loads(line)["run"] for line in kept.samples) == ["seed", "sluice"]

    # a first run has nothing to keep
    assert carried_over(tmp_path / "none", ["memory"]).results == {}


def _api(rate: float) -> dict[str, object]:
    return {
        "achieved_rate": rate,
        "utilization": rate / 50,
        "busy_seconds": 60,
        "median_per_second": round(rate),
        "share_of_seconds_at_90_percent": 0.8,
        "busiest_second": 50,
        "throttled_429": 0,
        "duplicates": 0,
    }


def test_the_table_shows_the_ramp_run_and_dates_a_carried_memory_figure() -> None:
    # GIVEN a run with the three designs and a memory figure carried from an earlier run
    design = {"concurrency_seen": [1, 2, 4], "files_processed": 10}
    results = {
        "utilization": {
            "workload": {"rate_limit": 50, "files": 10, "latency_rows": 20},
            "sluice": {**design, "api": _api(47.0)},
            "sluice-ramp": {**design, "api": _api(45.5)},
            "seed": {**design, "api": _api(13.0)},
        },
        "memory": {
            "file_bytes": 1024**3,
            "peak_rss_mb": 120.4,
            "memory_size_mb": 256,
            "segments": 9,
            "rows_processed": 16_974_276,
            "process_seconds": 7200,
            "rows_per_second": 2357,
        },
        "carried_over": {"memory": "2026-11-22T06:00:00+00:00"},
    }

    # WHEN the table is made
    rows = {figure: (value, how) for figure, value, how in table_rows(results)}

    # THEN the ramp run has its own row with the settings it went through
    ramp_value, ramp_how = rows["Sluice, concurrency rising mid-run"]
    assert ramp_value.startswith("45.5/s = 91.0%; busiest 50; 429s 0")
    assert ramp_how == "setting 1 → 2 → 4, limit 50"
    # and the ratio to the seed is of the main run
    assert rows["Sluice ÷ seed (rate)"][0] == "3.6×"
    # and the memory figure says which run it came from
    value, how = rows["Memory: peak RSS, 1.00 GiB file"]
    assert value == "120 MB of 256 MB"
    assert how.endswith("VmHWM; the run of 2026-11-22T06:00:00+00:00")


def test_an_execution_counts_when_it_ran_during_the_window_even_if_it_started_before() -> None:
    # GIVEN the uploads at t=100 and the drain's end at t=200
    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    executions = [
        {"name": "idle-before", "startDate": at(40), "stopDate": at(42)},
        {"name": "started-just-before", "startDate": at(97), "stopDate": at(180)},  # did the work
        {"name": "inside", "startDate": at(120), "stopDate": at(130)},
        {"name": "still-running", "startDate": at(150)},
        {"name": "after", "startDate": at(205), "stopDate": at(206)},
    ]

    # THEN only those that ran between the two count
    counted = [e["name"] for e in overlapping(executions, (100.0, 200.0))]
    assert counted == ["started-just-before", "inside", "still-running"]


def test_the_peak_is_read_from_the_processs_own_high_water_mark(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 1212272 kB\nVmHWM:\t   93272 kB\nVmRSS:\t   90000 kB\n")

    assert peak_rss_mb(status) == pytest.approx(91.1, abs=0.05)


def test_a_worker_does_not_report_its_parents_memory_as_its_own() -> None:
    # GIVEN a parent holding 300 MB when it starts the worker (as the bench process holds its own)
    ballast = b"x" * (300 * 1024**2)
    code = "from bench.memory_worker import peak_rss_mb; print(peak_rss_mb())"

    # WHEN the child reads its peak
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )

    # THEN it is the child's own few MB, not the parent's 300 (ru_maxrss said 300+ here)
    assert len(ballast) == 300 * 1024**2
    assert float(child.stdout) < 100
