"""Flat memory: the real ProcessObject handler through a big CSV at the template's MemorySize.

Three processes, so that only the handler's own memory is measured: a moto server (S3 and
DynamoDB, holding the object's bytes), the handler (bench/memory_worker.py, every segment the
checkpoint needs in one warm process), and this one sampling the handler's resident memory
(psutil) and its progress (the metadata item's row count). The API is instant (API_MODE simulated,
the simulated API with zero latency and no failures) and the rate limit far above what one
process can send, so the handler runs as fast as its CPU path allows; the shared rate limiter
still claims its slots in DynamoDB as in production.

The handler's settings are the template's: MemorySize, Timeout (each segment's time budget),
ApiConcurrency, CheckpointEveryRows, SegmentSafetySeconds defaults. A file's segments are run
one after another in the one process (in production a file yields every SegmentsPerTurn segments
and goes on under a continuation message; what one segment holds in memory is the same).

`measure` takes a file of good orders (flat memory over size); `measure_hostile` a file of the
records csvstream caps (`write_hostile_csv`: quoted fields reopened over millions of
lines, a million fields, giant lines, no line end at all; flat memory whatever the content).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psutil
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from bench.procs import Background
from sluice.metadata import MetadataStore
from sluice.models import ObjectRef
from sluice_cli.offline.clients import FAKE_CREDENTIALS
from sluice_cli.offline.template import load_template
from sluice_cli.workload import generate_orders_csv, rows_for_size

REGION = "us-east-1"
RAW_BUCKET, PROCESSED_BUCKET = "bench-raw", "bench-processed"
TABLES = {"MetadataTable": "pk", "ControlTable": "pk", "IdempotencyTable": "id"}
# A guard on the worker's loop, not a setting: 200 segments of 270 s cover any benchmark file.
MAX_SEGMENTS = 200


def handler_settings(root: Path) -> dict[str, Any]:
    """ProcessObject's MemorySize and Timeout, and the defaults of the parameters it reads."""
    template = load_template(root / "template.yaml")
    function = template["Resources"]["ProcessObjectFunction"]["Properties"]
    parameters = template["Parameters"]

    def default(name: str) -> str:
        return str(parameters[name]["Default"])

    return {
        "memory_mb": int(function["MemorySize"]),
        "timeout_seconds": float(function["Timeout"]),
        "api_concurrency": default("ApiConcurrency"),
        "checkpoint_every_rows": default("CheckpointEveryRows"),
        "segment_safety_seconds": default("SegmentSafetySeconds"),
        "max_segments": MAX_SEGMENTS,
        "row_schema": default("RowSchema"),
    }


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        config=Config(retries={"max_attempts": 5}),
        **FAKE_CREDENTIALS,
    )


def _prepare(endpoint: str) -> None:
    s3 = _client("s3", endpoint)
    for bucket in (RAW_BUCKET, PROCESSED_BUCKET):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=RAW_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    dynamodb = _client("dynamodb", endpoint)
    for table, key in TABLES.items():
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )


def _upload(endpoint: str, path: Path) -> ObjectRef:
    s3 = _client("s3", endpoint)
    key = f"memory/{path.name}"
    # 64 MiB parts, 4 at a time: the emulator holds the object; our process streams the file.
    s3.upload_file(str(path), RAW_BUCKET, key, Config=TransferConfig(multipart_chunksize=64 * 1024**2))
    head = s3.head_object(Bucket=RAW_BUCKET, Key=key)
    version, size = head.get("VersionId"), head["ContentLength"]
    return ObjectRef(bucket=RAW_BUCKET, key=key, version_id=version, size=size, etag=head["ETag"])


def _worker_environment(endpoint: str, settings: dict[str, Any]) -> dict[str, str]:
    environ = {name: os.environ[name] for name in ("PATH", "LANG", "TMPDIR") if name in os.environ}
    root = Path(__file__).resolve().parents[1]
    environ.update(
        {
            **FAKE_CREDENTIALS_ENV,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "PYTHONPATH": os.pathsep.join(
                str(path) for path in (root, root / "functions/process_object", root / "layers/shared")
            ),
            "PYTHONDONTWRITEBYTECODE": "1",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(settings["memory_mb"]),
            "POWERTOOLS_SERVICE_NAME": "sluice",
            "POWERTOOLS_METRICS_NAMESPACE": "Sluice",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "METADATA_TABLE": "MetadataTable",
            "CONTROL_TABLE": "ControlTable",
            "IDEMPOTENCY_TABLE": "IdempotencyTable",
            "PROCESSED_BUCKET": PROCESSED_BUCKET,
            "ROW_SCHEMA": settings["row_schema"],
            "STAGE": "local",
            "API_MODE": "simulated",  # the in-process simulated API...
            "SIMULATED_LATENCY_MIN_SECONDS": "0",  # ...answering at once...
            "SIMULATED_LATENCY_MAX_SECONDS": "0",
            "SIMULATED_FAILURE_RATE": "0",  # ...and always
            "API_RATE_LIMIT": "1000000",  # far above what one process sends
            "API_CONCURRENCY": settings["api_concurrency"],
            "CHECKPOINT_EVERY_ROWS": settings["checkpoint_every_rows"],
            "SEGMENT_SAFETY_SECONDS": settings["segment_safety_seconds"],
        }
    )
    return environ


FAKE_CREDENTIALS_ENV = {
    "AWS_ACCESS_KEY_ID": FAKE_CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": FAKE_CREDENTIALS["aws_secret_access_key"],
    "AWS_SESSION_TOKEN": FAKE_CREDENTIALS["aws_session_token"],
}


def measure(
    size_bytes: int,
    *,
    root: Path,
    work_dir: Path,
    record: Callable[[dict[str, Any]], None],
    say: Callable[[str], None] = print,
    deadline_seconds: float = 4 * 3600,
) -> dict[str, Any]:
    """Generate, upload and process a file of about `size_bytes`; peak RSS and what it took."""
    settings = handler_settings(root)
    rows = rows_for_size(size_bytes)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="memory-") as scratch:
        scratch_dir = Path(scratch)
        began = time.monotonic()
        path = scratch_dir / f"orders-{size_bytes // 1024**2}MiB.csv"
        say(f"memory: generating {rows:,} rows (~{size_bytes / 1024**3:.2f} GiB)…")
        generated = generate_orders_csv(rows, path=path, seed=3)
        generate_seconds = time.monotonic() - began
        run = _process(
            path, settings, scratch_dir, record=record, say=say, deadline_seconds=deadline_seconds, root=root
        )
    rows_done = run["rows_processed"]
    return {
        "file_bytes": generated.bytes_written,
        "rows": generated.rows,
        **{key: run[key] for key in ("rows_processed", "done", "segments", "memory_size_mb", "peak_rss_mb")},
        "sampled_max_rss_mb": run["sampled_max_rss_mb"],
        "within_memory_size": run["within_memory_size"],
        "rss_after_first_segment_mb": run["rss_after_first_segment_mb"],
        "generate_seconds": round(generate_seconds, 1),
        "upload_seconds": run["upload_seconds"],
        "process_seconds": run["process_seconds"],
        "rows_per_second": round(rows_done / run["process_seconds"]) if run["process_seconds"] else 0,
        "segment_seconds": run["segment_seconds"],
    }


ORDERS_HEADER = b"order_id,customer_email,amount,currency,order_date,quantity\n"
# Lines of one reopened quoted field: 24 MB, 4,000 times MAX_RECORD_LINES (a reader without caps
# built one record of 4 million fields from 25 MB: +298 MB of RSS).
HOSTILE_BLOCK_LINES = 4_000_000
GIANT_LINE_BYTES = 16 * 1024**2  # 16 times MAX_RECORD_BYTES
TAIL_BYTES = 8 * 1024**2  # the file's end: no line end at all


@dataclass(frozen=True)
class HostileFile:
    bytes_written: int
    good_rows: int  # rows that must be delivered: one after each hostile record
    blocks: int


def write_hostile_csv(path: Path, size_bytes: int) -> HostileFile:
    """Blocks of hostile records until `size_bytes`, a good order after each one, then a tail
    without a line end. Each block: a quoted field that closes and reopens on every one of
    HOSTILE_BLOCK_LINES lines (one record of 4 million fields to a reader without caps), a line of a
    million empty fields (under MAX_RECORD_BYTES: the csv module does split it), a line of half a
    million one-character fields, and a GIANT_LINE_BYTES line."""
    good = 0

    def order() -> bytes:
        nonlocal good
        good += 1
        return f"ORD-{good:06d},good{good}@example.com,1.00,USD,2026-01-01,1\n".encode()

    reopened = b'ORD-000000,"a\n' + b'b","c\n' * HOSTILE_BLOCK_LINES + b'd",1.00,USD,2026-01-01,1\n'
    empty_fields = b"ORD-000000" + b"," * 999_999 + b"\n"
    short_fields = b"x," * 500_000 + b"x\n"
    giant = b"ORD-000000," + b"z" * GIANT_LINE_BYTES + b"\n"
    blocks = 0
    with path.open("wb") as out:
        written = out.write(ORDERS_HEADER)
        while written < size_bytes - TAIL_BYTES:
            for hostile in (reopened, empty_fields, short_fields, giant):
                written += out.write(hostile) + out.write(order())
            blocks += 1
        written += out.write(b"ORD-000000," + b"y" * TAIL_BYTES)
    return HostileFile(bytes_written=written, good_rows=good, blocks=blocks)


def measure_hostile(
    size_bytes: int,
    *,
    root: Path,
    work_dir: Path,
    record: Callable[[dict[str, Any]], None],
    say: Callable[[str], None] = print,
    deadline_seconds: float = 3600,
) -> dict[str, Any]:
    """ProcessObject through a file of hostile records of about `size_bytes`: its peak RSS, and
    whether every good row among them was delivered (the reader resynchronised after each)."""
    settings = handler_settings(root)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="hostile-") as scratch:
        scratch_dir = Path(scratch)
        path = scratch_dir / f"hostile-{size_bytes // 1024**2}MiB.csv"
        say(f"memory (hostile records): writing ~{size_bytes / 1024**2:.0f} MiB…")
        written = write_hostile_csv(path, size_bytes)
        run = _process(
            path,
            settings,
            scratch_dir,
            record=record,
            say=say,
            deadline_seconds=deadline_seconds,
            root=root,
            run_name="ProcessObject (hostile)",
        )
    return {
        "file_bytes": written.bytes_written,
        "blocks": written.blocks,
        "good_rows": written.good_rows,
        "rows_delivered": run["rows_delivered"],
        "rows_rejected": run["rows_rejected"],
        "every_good_row_delivered": run["rows_delivered"] == written.good_rows,
        **{
            key: run[key]
            for key in ("done", "segments", "memory_size_mb", "peak_rss_mb", "sampled_max_rss_mb")
        },
        "within_memory_size": run["within_memory_size"],
        "process_seconds": run["process_seconds"],
    }


def _process(
    path: Path,
    settings: dict[str, Any],
    scratch_dir: Path,
    *,
    record: Callable[[dict[str, Any]], None],
    say: Callable[[str], None],
    deadline_seconds: float,
    root: Path,
    run_name: str = "ProcessObject",
) -> dict[str, Any]:
    """Upload `path` to a moto server and run the ProcessObject worker through it; its figures."""
    server = Background(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        log_path=scratch_dir / "moto.log",
    )
    with server:
        running = server.wait_for(r"Running on (http://127\.0\.0\.1:\d+)", timeout=60, what="moto server")
        endpoint = running.group(1)
        _prepare(endpoint)
        began = time.monotonic()
        say(f"memory: uploading {path.stat().st_size / 1024**2:,.0f} MiB to the emulator…")
        obj = _upload(endpoint, path)
        upload_seconds = time.monotonic() - began
        path.unlink()  # the emulator has it now
        table = boto3.resource(  # type: ignore[call-overload]
            "dynamodb", endpoint_url=endpoint, region_name=REGION, **FAKE_CREDENTIALS
        ).Table("MetadataTable")
        store = MetadataStore(table)
        store.register(obj)
        result_path = scratch_dir / "result.jsonl"
        worker = Background(
            [
                sys.executable, "-m", "bench.memory_worker",
                "--object", json.dumps(obj.as_payload()),
                "--timeout", str(settings["timeout_seconds"]),
                "--memory-mb", str(settings["memory_mb"]),
                "--max-segments", str(settings["max_segments"]),
                "--result", str(result_path),
            ],
            log_path=scratch_dir / "worker.log",
            env=_worker_environment(endpoint, settings),
            cwd=root,
        )  # fmt: skip
        say(f"memory: {run_name} at {settings['memory_mb']} MB…")
        began = time.monotonic()
        samples = _follow(
            worker,
            store=store,
            obj=obj,
            limit_mb=settings["memory_mb"],
            record=record,
            deadline=began + deadline_seconds,
            result_path=result_path,
            run_name=run_name,
        )
        process_seconds = time.monotonic() - began
        lines = [json.loads(line) for line in result_path.read_text().splitlines() if line.strip()]
    final: dict[str, Any] = next((line for line in lines if line.get("final")), {})
    segments = [line for line in lines if not line.get("final")]
    peak = float(final.get("peak_rss_mb") or max((s["rss_mb"] for s in samples), default=0.0))
    last = segments[-1] if segments else {}
    return {
        "rows_processed": last.get("rows_total", 0),
        "rows_delivered": last.get("rows_delivered", 0),
        "rows_rejected": last.get("rows_rejected", 0),
        "done": bool(final.get("done")),
        "segments": len(segments),
        "memory_size_mb": settings["memory_mb"],
        "peak_rss_mb": peak,
        "sampled_max_rss_mb": round(max((s["rss_mb"] for s in samples), default=0.0), 1),
        "within_memory_size": peak <= settings["memory_mb"],
        "rss_after_first_segment_mb": segments[0]["peak_rss_mb"] if segments else None,
        "upload_seconds": round(upload_seconds, 1),
        "process_seconds": round(process_seconds, 1),
        "segment_seconds": [segment["seconds"] for segment in segments],
    }


def _follow(
    worker: Background,
    *,
    store: MetadataStore,
    obj: ObjectRef,
    limit_mb: int,
    record: Callable[[dict[str, Any]], None],
    deadline: float,
    result_path: Path,
    run_name: str = "ProcessObject",
) -> list[dict[str, Any]]:
    """Sample the worker's RSS and progress until it exits (an event where each invocation
    ends); stop it at the deadline."""
    samples: list[dict[str, Any]] = []
    with worker:
        process = psutil.Process(worker.pid)
        last_rows, last_read, segments_seen = 0, 0.0, 0
        while worker.running():
            ended = result_path.read_text().count("\n") if result_path.exists() else 0
            for number in range(segments_seen + 1, ended + 1):
                text = f"invocation {number} ends"
                record({"kind": "event", "run": run_name, "t": round(time.time(), 3), "text": text})
            segments_seen = max(segments_seen, ended)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"ProcessObject still running at the deadline; see {worker.log_path}")
            try:
                rss_mb = process.memory_info().rss / 1024**2
            except psutil.Error:
                break
            now = time.monotonic()
            if now - last_read >= 2.0:  # the item changes every CHECKPOINT_EVERY_ROWS rows
                item = store.get(obj.id) or {}
                last_rows, last_read = int(item.get("rows_total", 0)), now
            sample = {"kind": "rss", "run": run_name, "t": round(time.time(), 3)}
            sample |= {"rss_mb": round(rss_mb, 1), "rows_done": last_rows, "limit_mb": limit_mb}
            samples.append(sample)
            record(sample)
            worker.wait(0.5)
        code = worker.wait(30)
        if code not in (0, None):
            raise RuntimeError(f"ProcessObject worker exited {code}:\n{worker.output()[-3000:]}")
    return samples
