"""CPU time per delivered row: ProcessObject's per-row path against the Python floor (issue 14).

Both paths post every row to the same local API (bench/answer_server.py, a process of its own,
HTTP/1.1 keep-alive, answering at once), and what is measured is this process's CPU time
(`time.process_time`), not the wall clock: the server's work and the waiting are not counted.

- Sluice: what a ProcessObject invocation does for each row, minus the pacing: the CSV stream
  (byte offsets, per-line UTF-8), the schema's validation and transform, the Idempotency-Key, the
  downstream client (JSON body, headers, urllib3 POST through HttpTransport, the answer parsed,
  its metrics) and the accepted line written to the part.
- The bare loop, the floor: `csv.reader` → `json.dumps` → urllib3 POST on one keep-alive
  connection, nothing else.

`ratio_to_bare_loop` = Sluice's CPU seconds per row ÷ the bare loop's (medians of the repeats).
The old ratio to a bare `csv.reader` (no HTTP at all) is retired: it compared a row's whole
delivery with parsing alone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3

from bench.procs import Background
from sluice.csvstream import CsvStream
from sluice.downstream import DownstreamClient, HttpTransport, idempotency_key
from sluice.models import ObjectRef
from sluice.observability import metrics
from sluice.results import accepted_line
from sluice.schemas import RowSchema, get_schema
from sluice_cli.workload import orders_csv_bytes

JSON_HEADERS = {"Content-Type": "application/json"}


class NoPacing:
    def acquire(self, stop: threading.Event | None = None, order: int | None = None) -> float:
        return 0.0

    def pause(self, until: float) -> None:
        pass

    def throttled(self, slot: float, retry_after: float | None = None) -> float:
        return 0.0

    def finished(self, sent_at: float, arrived_by: float | None) -> None:
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


def bare_rows(data: bytes, url: str) -> int:
    """The floor: csv.reader → json.dumps → urllib3 POST on one keep-alive connection."""
    pool = urllib3.connection_from_url(url, maxsize=1)
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=""))
    header = next(reader)
    delivered = 0
    for row in reader:
        body = json.dumps(dict(zip(header, row, strict=True))).encode()
        response = pool.request("POST", url, body=body, headers=JSON_HEADERS, retries=False)
        delivered += response.status == 200
    pool.close()
    return delivered


def _cpu_seconds(work: Callable[[], int]) -> tuple[float, int]:
    began = time.process_time()
    rows = work()
    return time.process_time() - began, rows


@contextlib.contextmanager
def answer_server(log_path: Path) -> Iterator[str]:
    server = Background([sys.executable, "-m", "bench.answer_server"], log_path=log_path)
    server.start()
    try:
        yield server.wait_for(r"answering on (http://\S+)", timeout=30, what="the answer server").group(1)
    finally:
        server.stop()


def measure(
    rows: int = 20_000, repeats: int = 5, schema_name: str = "orders-v1", *, log_dir: Path | None = None
) -> dict[str, Any]:
    """Medians of `repeats` runs each; both paths alternate, so a busy moment hits both."""
    data, _ = orders_csv_bytes(rows, seed=11)
    schema = get_schema(schema_name)
    obj = ObjectRef(bucket="bench-raw", key="cpu/orders.csv", version_id="v1", size=len(data))
    bare, full = [], []
    with answer_server((log_dir or Path(tempfile.gettempdir())) / "answer-server.log") as url:
        client = DownstreamClient(HttpTransport(url, pool_size=1, timeout_seconds=10), NoPacing())
        # Powertools prints an EMF blob every 100 metric values: real work in Lambda, noise here.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            sluice_rows(data, schema, client, obj)  # warm-up: imports, pydantic's first validations
            bare_rows(data, url)
            for _ in range(repeats):
                seconds, delivered = _cpu_seconds(lambda: bare_rows(data, url))
                bare.append(seconds / delivered)
                seconds, delivered = _cpu_seconds(lambda: sluice_rows(data, schema, client, obj))
                full.append(seconds / delivered)
            metrics.clear_metrics()  # what is left unflushed would be printed as a warning at exit
    sluice_per_row, bare_per_row = statistics.median(full), statistics.median(bare)
    return {
        "rows": rows,
        "bytes": len(data),
        "repeats": repeats,
        "sluice_cpu_seconds_per_row": round(sluice_per_row, 9),
        "bare_loop_seconds_per_row": round(bare_per_row, 9),
        "sluice_rows_per_cpu_second": round(1 / sluice_per_row),
        "bare_loop_rows_per_cpu_second": round(1 / bare_per_row),
        "ratio_to_bare_loop": round(sluice_per_row / bare_per_row, 3),
        "sluice_cpu_seconds_per_row_runs": [round(s, 9) for s in full],
        "bare_loop_seconds_per_row_runs": [round(s, 9) for s in bare],
    }
