"""Rows per second through ProcessObject's per-row work, against bare `csv.reader` on the same bytes.

The per-row path is what a ProcessObject invocation does for each row, minus the waiting: the
CSV stream (byte offsets, per-line UTF-8), the schema's validation and transform, the
Idempotency-Key, the downstream client (JSON body, the pacer, the answer parsed, its metrics)
against an instant API, and the accepted line written to the part. No threads, no sockets, no
S3: the CPU cost of a row, which is what remains when the API answers at once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sluice.csvstream import CsvStream
from sluice.downstream import ApiResponse, DownstreamClient, idempotency_key
from sluice.models import ObjectRef
from sluice.observability import metrics
from sluice.results import accepted_line
from sluice.schemas import RowSchema, get_schema
from sluice_cli.workload import orders_csv_bytes

_ANSWER = b'{"status":"accepted","id":"bench"}'


class InstantApi:
    """The downstream answering 200 at once, without a socket."""

    def send(
        self, body: bytes, headers: Mapping[str, str], url: str | None = None, timeout: float | None = None
    ) -> ApiResponse:
        return ApiResponse(200, {"Content-Type": "application/json"}, _ANSWER)


class NoPacing:
    def acquire(self, stop: threading.Event | None = None, order: int | None = None) -> float:
        return 0.0

    def pause(self, until: float) -> None:
        pass

    def throttled(self, slot: float, retry_after: float | None = None) -> float:
        return 0.0

    def finished(self, sent_at: float, written_at: float | None) -> None:
        pass

    def give_back(self) -> None:
        pass


def sluice_rows(data: bytes, schema: RowSchema, client: DownstreamClient, obj: ObjectRef) -> int:
    """Delivery.Segment's per-row work (_prepare, deliver, _record), in one thread."""
    stream = CsvStream(io.BytesIO(data))
    header = stream.header
    delivered = 0
    for row in stream:
        if row.fields is None:
            continue
        record = dict(zip(header, row.fields, strict=True))
        parsed = schema.parse(record)
        if parsed.payload is None:
            continue
        key = idempotency_key(obj, row.number, record)
        delivery = client.deliver(parsed.payload, key)
        accepted_line(row.number, key, parsed.payload, delivery.answer)
        delivered += 1
    return delivered


def bare_rows(data: bytes) -> int:
    """The floor: the standard library's CSV reader over the same bytes, nothing else."""
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=""))
    return sum(1 for _ in reader) - 1  # the header is not a row


def _seconds(work: Callable[[], int]) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def measure(rows: int = 20_000, repeats: int = 5, schema_name: str = "orders-v1") -> dict[str, Any]:
    """Medians of `repeats` runs each; both paths alternate, so a busy moment hits both."""
    data, _ = orders_csv_bytes(rows, seed=11)
    schema = get_schema(schema_name)
    obj = ObjectRef(bucket="bench-raw", key="cpu/orders.csv", version_id="v1", size=len(data))
    client = DownstreamClient(InstantApi(), NoPacing())
    bare, full = [], []
    # Powertools prints an EMF blob every 100 metric values: real work in Lambda, noise here.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        sluice_rows(data, schema, client, obj)  # warm-up: imports, pydantic's first validations
        for _ in range(repeats):
            bare.append(_seconds(lambda: bare_rows(data)))
            full.append(_seconds(lambda: sluice_rows(data, schema, client, obj)))
        metrics.clear_metrics()  # what is left unflushed would be printed as a warning at exit
    sluice_rate, bare_rate = rows / statistics.median(full), rows / statistics.median(bare)
    return {
        "rows": rows,
        "bytes": len(data),
        "repeats": repeats,
        "sluice_rows_per_second": round(sluice_rate),
        "csv_reader_rows_per_second": round(bare_rate),
        "ratio": round(sluice_rate / bare_rate, 4),
        "sluice_seconds": [round(s, 4) for s in full],
        "csv_reader_seconds": [round(s, 4) for s in bare],
    }
