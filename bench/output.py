"""WriteOutput's merge on the parts of a big file: its time, calls, requests and output size.

ProcessObject flushes a part every CHECKPOINT_EVERY_ROWS rows (500 by default), so a 2 M-row file
leaves 4,000 parts (8,000 objects: accepted lines and rejects). This part writes exactly those
into a moto ProcessedBucket (in-process `mock_aws`) — accepted lines shaped like real ones (an
orders-v1 row, its key and the API simulator's answer), 1 % of rows rejected — and runs
`merge_results` as the state machine runs WriteOutput: calls of WriteOutput's Timeout (read from
template.yaml), each given the position the one before answered, until done, with the settings
WriteOutput uses (MERGE_WORKERS threads, an S3 client with as many pooled connections). It checks
that the output holds every row once, in order, and no part is left.

The largest file Sluice accepts (WORST_ROWS) is modelled from that measurement, not run: its
bytes at the measured bytes per row, its calls at the measured rate (moto on this machine) and at
an assumed rate for Lambda on AWS (AWS_ASSUMED_MB_PER_SECOND), against MAX_OUTPUT_CALLS.

What the figure is: moto on this machine, where a request costs CPU of the same two cores the
merge runs on (moto's own handling is most of it), not a forecast of AWS. `latency_ms` adds a
fixed wait before every S3 call (S3's first-byte latency, which moto has none of), so the figure
also shows what the merge's threads do about latency.
"""

from __future__ import annotations

import functools
import io
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from moto import mock_aws
from samtranslator.yaml_helper import yaml_parse

from sluice.csvstream import CsvStream
from sluice.downstream import idempotency_key
from sluice.models import MAX_OUTPUT_CALLS, FileState, MergePosition, ObjectRef, ProcessResult
from sluice.results import (
    CALL_RESERVE_SECONDS,
    MERGE_CONNECTIONS,
    MERGE_WORKERS,
    Layout,
    MergeAnswer,
    PartWriter,
    merge_results,
)
from sluice.schemas import get_schema
from sluice.settings import ProcessSettings
from sluice_cli.workload import orders_csv_bytes

BUCKET = "bench-processed"
DEFAULT_ROWS = 2_000_000
CHECKPOINT_EVERY = ProcessSettings.model_fields["checkpoint_every_rows"].default  # rows per part
REJECT_EVERY = 100  # 1 % of rows rejected
TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"
# The largest file Sluice accepts, in rows (issue 9: MaxFileBytes 5 GiB, ~17 M rows).
WORST_ROWS = 17_000_000
# What one WriteOutput call on Lambda (1,024 MB) is assumed to move, reading small parts on 16
# threads and uploading 8 MiB parts on 16: a low figure for S3 within a region (not measured here:
# no AWS account); the model states the rate each call count needs, too.
AWS_ASSUMED_MB_PER_SECOND = 25.0


def write_output_timeout() -> float:
    template = yaml_parse(TEMPLATE.read_text())
    return float(template["Resources"]["WriteOutputFunction"]["Properties"]["Timeout"])


def _line_tails(obj: ObjectRef, rows: int) -> list[str]:
    """Accepted lines after their row number: real orders-v1 payloads, keys and answers."""
    data, _ = orders_csv_bytes(rows, seed=5)
    stream = CsvStream(io.BytesIO(data))
    schema = get_schema("orders-v1")
    tails = []
    for row in stream:
        record = dict(zip(stream.header, row.fields or [], strict=True))
        payload = schema.parse(record).payload or record
        key = idempotency_key(obj, row.number, record)
        answer = {"id": f"{row.number:032x}", "received_at": 1795317551.123456, "idempotency_key": key}
        line = json.dumps({"row": 0, "idempotency_key": key, "data": payload, "answer": answer})
        tails.append(line.removeprefix('{"row": 0'))
    return tails


def _write_parts(s3: Any, obj: ObjectRef, rows: int, per_part: int) -> int:
    tails = _line_tails(obj, per_part)
    writer = PartWriter(s3, BUCKET, obj, attempt=1)
    parts = -(-rows // per_part)

    def write(part: int) -> None:
        first = part * per_part + 1
        numbers = range(first, min(first + per_part, rows + 1))
        accepted = [f'{{"row": {n}{tails[n % per_part]}' for n in numbers if n % REJECT_EVERY]
        rejects = [(n, "amount: must be >= 0") for n in numbers if not n % REJECT_EVERY]
        writer.write(part, accepted, rejects)

    with ThreadPoolExecutor(MERGE_WORKERS) as pool:
        list(pool.map(write, range(parts)))
    return parts


def measure(
    rows: int = DEFAULT_ROWS,
    per_part: int = CHECKPOINT_EVERY,
    latency_ms: float = 0,
    call_seconds: float | None = None,
) -> dict[str, Any]:
    """`call_seconds`: each call's time instead of WriteOutput's Timeout (shorter: more calls)."""
    with mock_aws():
        s3 = boto3.client(
            "s3", region_name="us-east-1", config=Config(max_pool_connections=MERGE_CONNECTIONS)
        )
        s3.create_bucket(Bucket=BUCKET)
        obj = ObjectRef(bucket="bench-raw", key="big/orders.csv", version_id="v1")
        began = time.monotonic()
        parts = _write_parts(s3, obj, rows, per_part)
        setup = time.monotonic() - began
        if latency_ms:
            s3.meta.events.register("before-call.s3.*", lambda **_: time.sleep(latency_ms / 1000))
        rejected = rows // REJECT_EVERY
        result = ProcessResult(
            done=True,
            segment=1,
            outcome=FileState.SUCCEEDED_WITH_REJECTS,
            rows_total=rows,
            rows_delivered=rows - rejected,
            rows_rejected=rejected,
            parts=parts,
            runs=[[0, 1]],
        )
        timeout = call_seconds or write_output_timeout()
        began = time.monotonic()
        answers, lengths = _calls(s3, obj, result, timeout)
        seconds = time.monotonic() - began
        keys = answers[-1].keys
        accepted = s3.get_object(Bucket=BUCKET, Key=keys.accepted_key)["Body"].read()
        rejects = s3.get_object(Bucket=BUCKET, Key=keys.rejects_key)["Body"].read()
        head = s3.head_object(Bucket=BUCKET, Key=keys.accepted_key, PartNumber=1)
        lines = accepted.splitlines()
        numbers = [json.loads(lines[i])["row"] for i in (0, len(lines) // 2, -1)]
        expected = [n for n in range(1, rows + 1) if n % REJECT_EVERY]
        assert len(lines) == len(expected), f"{len(lines)} accepted lines, expected {len(expected)}"
        assert numbers == [expected[0], expected[len(expected) // 2], expected[-1]], numbers
        assert rejects.count(b"\n") == rejected + 1  # and the header
        left = s3.list_objects_v2(Bucket=BUCKET, Prefix=Layout(obj).parts_prefix).get("KeyCount", 0)
        assert left == 0, f"{left} parts left after the merge"
    return {
        "rows": rows,
        "rows_per_part": per_part,
        "parts": parts,
        "objects_merged": 2 * parts,
        "accepted_bytes": len(accepted),
        "upload_parts": head.get("PartsCount", 1),
        "workers": MERGE_WORKERS,
        "latency_ms": latency_ms,
        "setup_seconds": round(setup, 1),
        "merge_seconds": round(seconds, 1),
        "calls": len(answers),
        "call_seconds": [round(length, 1) for length in lengths],
        "call_timeout_seconds": timeout,
        "mib_per_second": round(len(accepted) / 1024**2 / seconds, 1),
        "worst_case": model_worst(rows, len(accepted) + len(rejects), seconds, write_output_timeout()),
    }


def _calls(
    s3: Any, obj: ObjectRef, result: ProcessResult, timeout: float
) -> tuple[list[MergeAnswer], list[float]]:
    """WriteOutput's calls, as the state machine makes them: each with `timeout` to spend, the
    position through JSON from one to the next, at most MAX_OUTPUT_CALLS. Their answers and lengths."""
    answers: list[MergeAnswer] = []
    seconds: list[float] = []
    position: MergePosition | None = None
    while not answers or not answers[-1].done:
        if len(answers) == MAX_OUTPUT_CALLS:
            raise AssertionError(f"not done in {MAX_OUTPUT_CALLS} calls of {timeout:.0f} s")
        began = time.monotonic()
        deadline = began + timeout
        answer = merge_results(
            s3, BUCKET, obj, result, position, time_left=functools.partial(_left, deadline)
        )
        seconds.append(time.monotonic() - began)
        answers.append(answer)
        position = MergePosition.model_validate(answer.as_payload()["position"]) if not answer.done else None
    return answers, seconds


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def model_worst(rows: int, output_bytes: int, seconds: float, timeout: float) -> dict[str, Any]:
    """The largest file's merge, from this measurement: modelled, not run."""
    per_row = output_bytes / rows
    worst_bytes = WORST_ROWS * per_row
    working = timeout - CALL_RESERVE_SECONDS  # what a call spends moving bytes
    measured_rate = output_bytes / seconds / 1e6  # MB/s of results, moto on this machine
    aws_rate = AWS_ASSUMED_MB_PER_SECOND
    return {
        "rows": WORST_ROWS,
        "bytes_per_row": round(per_row, 1),
        "output_gb": round(worst_bytes / 1e9, 2),
        "call_working_seconds": working,
        "max_calls": MAX_OUTPUT_CALLS,
        "moto_mb_per_second": round(measured_rate, 1),
        "moto_seconds": round(worst_bytes / 1e6 / measured_rate),
        "moto_calls": math.ceil(worst_bytes / 1e6 / measured_rate / working),
        "aws_assumed_mb_per_second": aws_rate,
        "aws_seconds": round(worst_bytes / 1e6 / aws_rate),
        "aws_calls": math.ceil(worst_bytes / 1e6 / aws_rate / working),
        "rate_needed_mb_per_second": round(worst_bytes / 1e6 / (MAX_OUTPUT_CALLS * working), 1),
    }


if __name__ == "__main__":  # python -m bench.output [rows [latency_ms [call_seconds]]]
    import sys

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ROWS
    latency = float(sys.argv[2]) if len(sys.argv) > 2 else 0
    call = float(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(measure(rows, latency_ms=latency, call_seconds=call), indent=2))
