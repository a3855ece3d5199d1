"""Flat memory: the real ProcessObject handler through a big CSV at the template's MemorySize.

Three processes, so that only the handler's own memory is measured: a moto server (S3 and
DynamoDB, holding the object's bytes), the handler (bench/memory_worker.py, every segment the
checkpoint needs in one warm process), and this one sampling the handler's resident memory
(psutil) and its progress (the metadata item's row count). The API is instant (API_URL empty,
the simulated API with zero latency and no failures) and the rate limit far above what one
process can send, so the handler runs as fast as its CPU path allows; the shared rate limiter
still claims its slots in DynamoDB as in production.

The handler's settings are the template's: MemorySize, Timeout (each segment's time budget),
ApiConcurrency, CheckpointEveryRows, SegmentSafetySeconds defaults. A file's segments are run
one after another in the one process (in production a file yields every SegmentsPerTurn segments
and goes on under a continuation message; what one segment holds in memory is the same).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
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
            "API_URL": "",  # the in-process simulated API...
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
        server = Background(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            log_path=scratch_dir / "moto.log",
        )
        with server:
            running = server.wait_for(r"Running on (http://127\.0\.0\.1:\d+)", timeout=60, what="moto server")
            endpoint = running.group(1)
            _prepare(endpoint)
            began = time.monotonic()
            say(f"memory: uploading {generated.bytes_written / 1024**2:,.0f} MiB to the emulator…")
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
            say(f"memory: ProcessObject at {settings['memory_mb']} MB through {generated.rows:,} rows…")
            began = time.monotonic()
            samples = _follow(
                worker,
                store=store,
                obj=obj,
                limit_mb=settings["memory_mb"],
                record=record,
                deadline=began + deadline_seconds,
                result_path=result_path,
            )
            process_seconds = time.monotonic() - began
            lines = [json.loads(line) for line in result_path.read_text().splitlines() if line.strip()]
    final: dict[str, Any] = next((line for line in lines if line.get("final")), {})
    segments = [line for line in lines if not line.get("final")]
    peak = float(final.get("peak_rss_mb") or max((s["rss_mb"] for s in samples), default=0.0))
    rows_done = segments[-1]["rows_total"] if segments else 0
    return {
        "file_bytes": generated.bytes_written,
        "rows": generated.rows,
        "rows_processed": rows_done,
        "done": bool(final.get("done")),
        "segments": len(segments),
        "memory_size_mb": settings["memory_mb"],
        "peak_rss_mb": peak,
        "sampled_max_rss_mb": round(max((s["rss_mb"] for s in samples), default=0.0), 1),
        "within_memory_size": peak <= settings["memory_mb"],
        "rss_after_first_segment_mb": segments[0]["peak_rss_mb"] if segments else None,
        "generate_seconds": round(generate_seconds, 1),
        "upload_seconds": round(upload_seconds, 1),
        "process_seconds": round(process_seconds, 1),
        "rows_per_second": round(rows_done / process_seconds) if process_seconds else 0,
        "segment_seconds": [s["seconds"] for s in segments],
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
                record({"kind": "event", "run": "ProcessObject", "t": round(time.time(), 3), "text": text})
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
            sample = {"kind": "rss", "run": "ProcessObject", "t": round(time.time(), 3)}
            sample |= {"rss_mb": round(rss_mb, 1), "rows_done": last_rows, "limit_mb": limit_mb}
            samples.append(sample)
            record(sample)
            worker.wait(0.5)
        code = worker.wait(30)
        if code not in (0, None):
            raise RuntimeError(f"ProcessObject worker exited {code}:\n{worker.output()[-3000:]}")
    return samples
