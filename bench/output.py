"""WriteOutput's merge on the parts of a big file: its time, requests and output size.

ProcessObject flushes a part every CHECKPOINT_EVERY_ROWS rows (500 by default), so a 2 M-row file
leaves 4,000 parts (8,000 objects: accepted lines and rejects). This part writes exactly those
into a moto ProcessedBucket (in-process `mock_aws`) — accepted lines shaped like real ones (an
orders-v1 row, its key and the API simulator's answer), 1 % of rows rejected — and times
`merge_results` with the settings WriteOutput uses (MERGE_WORKERS threads, an S3 client with as
many pooled connections). It checks that the output holds every row once, in order.

What the figure is: moto on this machine, where a request costs CPU of the same two cores the
merge runs on (moto's own handling is most of it), not a forecast of AWS. `latency_ms` adds a
fixed wait before every S3 call (S3's first-byte latency, which moto has none of), so the figure
also shows what the merge's threads do about latency.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from moto import mock_aws

from sluice.csvstream import CsvStream
from sluice.downstream import idempotency_key
from sluice.models import FileState, ObjectRef, ProcessResult
from sluice.results import MERGE_CONNECTIONS, MERGE_WORKERS, Layout, PartWriter, merge_results
from sluice.schemas import get_schema
from sluice.settings import ProcessSettings
from sluice_cli.workload import orders_csv_bytes

BUCKET = "bench-processed"
DEFAULT_ROWS = 2_000_000
CHECKPOINT_EVERY = ProcessSettings.model_fields["checkpoint_every_rows"].default  # rows per part
REJECT_EVERY = 100  # 1 % of rows rejected


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
    rows: int = DEFAULT_ROWS, per_part: int = CHECKPOINT_EVERY, latency_ms: float = 0
) -> dict[str, Any]:
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
        began = time.monotonic()
        keys = merge_results(s3, BUCKET, obj, result)
        seconds = time.monotonic() - began
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
        "mib_per_second": round(len(accepted) / 1024**2 / seconds, 1),
    }


if __name__ == "__main__":  # python -m bench.output [rows]
    import sys

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ROWS
    print(json.dumps(measure(rows, latency_ms=float(sys.argv[2]) if len(sys.argv) > 2 else 0), indent=2))
