"""Dollars per million rows on AWS, from the counts a run measured. Pure: no I/O, no clock.

The bench counts what the stack did (state transitions from execution histories, Lambda
invocations and billed milliseconds from the offline runtime's REPORT lines, SQS / DynamoDB /
S3 / SNS requests at the emulator's door) into a `Usage`; `cost` prices it. Designs that were
not run (one Step Functions execution per row, a Distributed Map; EventBridge API destinations)
are modelled from the same counts by `distributed_map_usage` and `api_destinations_usage`, and
file sizes that were not run by `by_file_rows`.

Prices: us-east-1, on-demand, first tier, no free tier (it would flatter small runs), checked
2026-11 against aws.amazon.com/step-functions/pricing, aws.amazon.com/lambda/pricing (Arm),
the AWS whitepaper "How AWS Pricing Works" (DynamoDB on-demand), aws.amazon.com/eventbridge/pricing
(custom events, API destinations), and 2026 pricing summaries of SQS, S3 and SNS (cloudburn.io
2026-03, c3x.dev, factualminds.com 2026-06).

What is *not* priced: KMS requests (SSE with the stack's key; SQS and S3 cache data keys),
CloudWatch Logs ingestion, data transfer, storage, Lambda's billed INIT of cold starts (rare per
row), EventBridge (S3's events to the default bus are free), SSM standard parameters (free). The
schedules' cost, which does not grow with rows, is `fixed_monthly`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

PRICES_CHECKED = "2026-11"
MILLION = 1_000_000


@dataclass(frozen=True)
class Prices:
    """Dollars per unit."""

    state_transition: float = 0.025 / 1_000  # Step Functions Standard
    lambda_gb_second: float = 0.0000133334  # Arm, first 7.5 billion GB-s a month
    lambda_request: float = 0.20 / MILLION
    sqs_request: float = 0.40 / MILLION  # standard queue, per 64 KB chunk of a request
    dynamodb_write_unit: float = 0.625 / MILLION  # on-demand WRU: a write of up to 1 KB
    dynamodb_read_unit: float = 0.125 / MILLION  # on-demand RRU: a consistent read of up to 4 KB
    s3_put_class: float = 0.005 / 1_000  # PUT, COPY, POST, LIST
    s3_get_class: float = 0.0004 / 1_000  # GET, HEAD and the rest (DELETE is free)
    sns_publish: float = 0.50 / MILLION  # standard topic; SQS and Lambda deliveries are free
    cloudwatch_metric_read: float = 0.01 / 1_000  # GetMetricData, per metric requested
    # EventBridge (aws.amazon.com/eventbridge/pricing): custom events put, per 64 KB chunk; API
    # destination invocations. The API destinations alternative pays both per row.
    eventbridge_event: float = 1.00 / MILLION
    api_destination_invocation: float = 0.20 / MILLION


US_EAST_1 = Prices()


@dataclass(frozen=True)
class Usage:
    """What a run used, for `rows` rows delivered."""

    rows: int
    state_transitions: float = 0
    lambda_requests: float = 0
    lambda_gb_seconds: float = 0.0
    sqs_requests: float = 0
    dynamodb_write_units: float = 0
    dynamodb_read_units: float = 0
    s3_put_requests: float = 0
    s3_get_requests: float = 0
    sns_publishes: float = 0
    cloudwatch_metric_reads: float = 0
    eventbridge_events: float = 0
    api_destination_invocations: float = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        )

    def scaled(self, factor: float) -> Usage:
        """Every count × factor (rows too): the same work done `factor` times."""
        return Usage(**{f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)})


COMPONENTS = (
    "Step Functions transitions",
    "Lambda requests",
    "Lambda duration",
    "SQS requests",
    "DynamoDB writes",
    "DynamoDB reads",
    "S3 PUT/LIST",
    "S3 GET/HEAD",
    "SNS publishes",
    "CloudWatch metric reads",
    "EventBridge events",
    "API destination invocations",
)


def cost(usage: Usage, prices: Prices = US_EAST_1) -> dict[str, float]:
    """Dollars per component for the whole usage."""
    values = (
        usage.state_transitions * prices.state_transition,
        usage.lambda_requests * prices.lambda_request,
        usage.lambda_gb_seconds * prices.lambda_gb_second,
        usage.sqs_requests * prices.sqs_request,
        usage.dynamodb_write_units * prices.dynamodb_write_unit,
        usage.dynamodb_read_units * prices.dynamodb_read_unit,
        usage.s3_put_requests * prices.s3_put_class,
        usage.s3_get_requests * prices.s3_get_class,
        usage.sns_publishes * prices.sns_publish,
        usage.cloudwatch_metric_reads * prices.cloudwatch_metric_read,
        usage.eventbridge_events * prices.eventbridge_event,
        usage.api_destination_invocations * prices.api_destination_invocation,
    )
    return dict(zip(COMPONENTS, values, strict=True))


def per_million_rows(usage: Usage, prices: Prices = US_EAST_1) -> dict[str, float]:
    """Dollars per million rows, per component and `total`."""
    if usage.rows <= 0:
        raise ValueError("no rows: nothing to divide the cost by")
    factor = MILLION / usage.rows
    dollars = {name: value * factor for name, value in cost(usage, prices).items()}
    dollars["total"] = sum(dollars.values())
    return dollars


def gb_seconds(billed_ms: float, memory_mb: float) -> float:
    """Lambda's duration unit: billed time × configured memory (1 GB = 1024 MB)."""
    return billed_ms / 1000 * memory_mb / 1024


# -- requests at the emulator's door -> billing classes ---------------------------------------------

DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"})
DYNAMODB_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem"})
DYNAMODB_TRANSACTIONS = frozenset({"TransactWriteItems", "TransactGetItems"})
S3_PUT_CLASS = frozenset(
    {
        "PutObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "ListObjects",
        "ListObjectsV2",
        "ListObjectVersions",
        "ListParts",
        "DeleteObjects",  # a POST: priced as one, to err on the dear side
    }
)
S3_FREE = frozenset({"DeleteObject", "AbortMultipartUpload"})
# ScaleConcurrency's one GetMetricData call asks for five metrics (sluice/scaling.py `_queries`);
# the emulator sees the call, not its body.
METRICS_PER_GET_METRIC_DATA = 5


def billing_class(service: str, operation: str) -> str | None:
    """Which priced unit one request is, or None when it is free or priced from other counts.

    Step Functions (transitions come from histories) and Lambda (invocations and durations come
    from the runtime) are None here. DynamoDB requests count one unit each: Sluice's items are
    under 1 KB (writes) and 4 KB (reads), reads are consistent (a conservative unit each);
    a transaction counts two. Control-plane calls (CreateTable, ...) are free.
    """
    kind: str | None = None
    if service == "sqs":
        kind = "sqs"
    elif service == "dynamodb":
        if operation in DYNAMODB_WRITES or operation == "TransactWriteItems":
            kind = "dynamodb_write"
        elif operation in DYNAMODB_READS or operation == "TransactGetItems":
            kind = "dynamodb_read"
    elif service == "s3" and operation not in S3_FREE:
        kind = "s3_put" if operation in S3_PUT_CLASS else "s3_get"
    elif service == "sns" and operation == "Publish":
        kind = "sns"
    elif service == "monitoring" and operation == "GetMetricData":
        kind = "cloudwatch_metrics"
    return kind


def usage_from_requests(
    requests: Mapping[tuple[str, str], int],
    *,
    rows: int,
    state_transitions: int,
    lambda_requests: int,
    lambda_gb_seconds: float,
) -> Usage:
    """A Usage from request counts by (service, operation) plus the separately counted parts."""
    kinds = ("sqs", "dynamodb_write", "dynamodb_read", "s3_put", "s3_get", "sns", "cloudwatch_metrics")
    units = dict.fromkeys(kinds, 0.0)
    for (service, operation), count in requests.items():
        kind = billing_class(service, operation)
        if kind == "cloudwatch_metrics":
            units[kind] += count * METRICS_PER_GET_METRIC_DATA
        elif kind is not None:
            units[kind] += count * (2 if operation in DYNAMODB_TRANSACTIONS else 1)
    return Usage(
        rows=rows,
        state_transitions=state_transitions,
        lambda_requests=lambda_requests,
        lambda_gb_seconds=lambda_gb_seconds,
        sqs_requests=units["sqs"],
        dynamodb_write_units=units["dynamodb_write"],
        dynamodb_read_units=units["dynamodb_read"],
        s3_put_requests=units["s3_put"],
        s3_get_requests=units["s3_get"],
        sns_publishes=units["sns"],
        cloudwatch_metric_reads=units["cloudwatch_metrics"],
    )


# -- designs that were not run ------------------------------------------------------------------


@dataclass(frozen=True)
class RowLambda:
    """The per-row function of a one-execution-per-row design: one invocation per row."""

    duration_ms: float  # billed per invocation: the API's answer time plus the row's CPU
    memory_mb: int = 128  # the smallest Lambda: one POST needs no more


def distributed_map_usage(
    per_file: Usage, *, files: int, rows: int, row_lambda: RowLambda, transitions_per_row: int = 1
) -> Usage:
    """A Distributed Map over each file's rows, one child workflow execution per row.

    Per file it keeps what Sluice does around the rows (`per_file`: register, validate, output,
    the dispatcher's share; measured, ProcessObject left out). Per row: a child execution of
    `transitions_per_row` states (1: a single Task that calls the per-row Lambda, the cheapest
    child there is; retries of the 429s it gets without a shared limiter would add more) and
    one Lambda invocation of `row_lambda.duration_ms` (rounded up to the ms, as Lambda bills).
    """
    billed_ms = math.ceil(row_lambda.duration_ms)
    rows_part = Usage(
        rows=rows,
        state_transitions=rows * transitions_per_row,
        lambda_requests=rows,
        lambda_gb_seconds=rows * gb_seconds(billed_ms, row_lambda.memory_mb),
        # The Map's ItemReader reads each file from S3 (about one GET per file, in per_file).
    )
    around_the_rows = dataclasses.replace(per_file.scaled(files), rows=0)
    return around_the_rows + rows_part


def fixed_monthly(per_run: Usage, runs_per_month: float, prices: Prices = US_EAST_1) -> float:
    """Dollars a month of something that runs on a schedule whatever the load (rows are ignored)."""
    return sum(cost(per_run.scaled(runs_per_month), prices).values())


MINUTES_PER_MONTH = 60 * 24 * 30


def api_destinations_usage(*, files: int, rows: int, splitter_seconds_per_row: float) -> Usage:
    """EventBridge API destinations, the managed alternative: a function reads each file and puts
    one event per row (PutEvents, 10 entries a call), a rule sends each to an API destination
    whose own invocation rate limit paces the API.

    Per row: one event put, one API destination invocation, and the splitter's time for the row
    (`splitter_seconds_per_row`: the bench's bare loop, a CSV row read and a JSON body sent, at
    128 MB). Per file: one invocation and one GET. No schedule, no shared state: no fixed cost.
    """
    return Usage(
        rows=rows,
        lambda_requests=files,  # one splitter invocation per file (its PutEvents calls are not requests)
        lambda_gb_seconds=gb_seconds(rows * splitter_seconds_per_row * 1000, 128),
        s3_get_requests=files,
        eventbridge_events=rows,
        api_destination_invocations=rows,
    )


# -- file sizes that were not run ---------------------------------------------------------------

# The states one more segment of a file adds on the happy path (statemachine/dispatcher.asl.json,
# the item's segment loop; tests/unit/test_bench_cost.py checks they form it).
SEGMENT_STATES = (
    "Extend message visibility",
    "Keep dispatcher lease",
    "Is the lease still ours?",
    "Transform and deliver",
    "Is the file done?",
    "Continue with the next segment",
)
# What else one more segment does: ProcessObject's and DispatcherLease's invocations, the
# visibility extension, the lease renewal and ProcessObject's checkpoint and idempotency writes.
SEGMENT_USAGE = Usage(
    rows=0,
    state_transitions=len(SEGMENT_STATES),
    lambda_requests=2,
    sqs_requests=1,
    dynamodb_write_units=4,
)


def by_file_rows(
    per_file: float,
    per_row: float,
    sizes: tuple[int, ...],
    *,
    rows_per_segment: float,
    prices: Prices = US_EAST_1,
) -> dict[str, float]:
    """Dollars per million rows for files of `sizes` rows, from a file's fixed dollars and a row's.

    A file of more rows than one segment delivers (ProcessObject's time budget × the rate) runs
    more segments, each adding `SEGMENT_USAGE`; the rest grows with the rows.
    """
    segment = sum(cost(SEGMENT_USAGE, prices).values())
    result = {}
    for rows in sizes:
        extra_segments = max(0, math.ceil(rows / rows_per_segment) - 1)
        dollars = per_file + extra_segments * segment + rows * per_row
        result[str(rows)] = MILLION * dollars / rows
    return result
