"""`sluice simulate`: many producers at once (seed 002's parallel uploads) to the raw bucket.

`--files N --rows M --workers W` generates N orders-v1 files of M rows (workload.py, each with its
own seed so no two are alike) and PUTs them on W threads, offline (outputs.json) or to a deployed
stack (`--stack-name`). Each file becomes one S3 event, one message, one file to process: watch
them with `sluice monitor`.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sluice_cli.commands.target import TargetError, resolve_target
from sluice_cli.workload import orders_csv_bytes

DEFAULT_PREFIX = "incoming/simulate/"


@dataclass(frozen=True)
class Uploaded:
    key: str
    version_id: str | None
    rows: int
    bytes: int
    uploaded_at: float  # epoch seconds, when PutObject answered


@dataclass(frozen=True)
class SimulationResult:
    bucket: str
    files: list[Uploaded]
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.files)

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "files": len(self.files),
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "uploads": [asdict(item) for item in self.files],
        }


def upload_files(
    s3: Any,
    bucket: str,
    *,
    files: int,
    rows: int,
    workers: int,
    prefix: str = DEFAULT_PREFIX,
    rejects: int = 0,
    seed: int = 0,
    run_id: str | None = None,
) -> SimulationResult:
    """Generate and PUT `files` files on `workers` threads; keys `{prefix}{run_id}/{n:05d}.csv`."""
    if files < 1 or rows < 0 or workers < 1:
        raise ValueError("need files >= 1, rows >= 0, workers >= 1")
    run = run_id or uuid.uuid4().hex[:8]

    def put(number: int) -> Uploaded:
        data, _ = orders_csv_bytes(rows, rejects=min(rejects, rows), seed=seed + number)
        key = f"{prefix}{run}/{number:05d}.csv"
        answer = s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/csv")
        return Uploaded(key, answer.get("VersionId"), rows, len(data), time.time())

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(workers, files), thread_name_prefix="simulate") as pool:
        uploaded = list(pool.map(put, range(1, files + 1)))
    return SimulationResult(bucket, uploaded, time.monotonic() - began)


def summary_table(result: SimulationResult) -> Table:
    table = Table(title=f"Uploaded to s3://{result.bucket}", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    seconds = max(result.seconds, 1e-9)
    table.add_row("files", str(len(result.files)))
    table.add_row("rows", f"{result.rows:,}")
    table.add_row("bytes", f"{result.bytes:,}")
    table.add_row("took", f"{result.seconds:.2f} s")
    table.add_row("uploads/s", f"{len(result.files) / seconds:.1f}")
    if result.files:
        table.add_row("first key", result.files[0].key)
        table.add_row("last key", result.files[-1].key)
    return table


def simulate(
    *,
    files: Annotated[int, typer.Option(min=1, help="How many files to upload.")] = 10,
    rows: Annotated[int, typer.Option(min=0, help="Data rows per file.")] = 100,
    workers: Annotated[int, typer.Option(min=1, help="Uploads in parallel.")] = 4,
    rejects: Annotated[int, typer.Option(min=0, help="Rows per file that fail validation.")] = 0,
    prefix: Annotated[
        str, typer.Option(help="Key prefix (the ingest rule's RawKeyPrefix must match it).")
    ] = DEFAULT_PREFIX,
    seed: Annotated[int, typer.Option(help="Seed of the first file's rows (file n uses seed + n).")] = 0,
    outputs: Annotated[Path | None, typer.Option(help="The offline stack's outputs file.")] = None,
    stack_name: Annotated[str | None, typer.Option(help="A deployed stack: read its outputs.")] = None,
    region: Annotated[str | None, typer.Option(help="AWS region of the stack.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was uploaded as JSON.")] = False,
) -> None:
    """Upload generated CSV files to the raw bucket in parallel, as many producers would."""
    if outputs and stack_name:
        raise typer.BadParameter("give --outputs or --stack-name, not both")
    try:
        target = resolve_target(outputs, stack_name, region)
        bucket = target.output("RawBucketName")
    except TargetError as error:
        typer.echo(f"sluice simulate: {error}", err=True)
        raise typer.Exit(code=2) from error
    result = upload_files(
        target.client("s3"),
        bucket,
        files=files,
        rows=rows,
        workers=workers,
        prefix=prefix,
        rejects=rejects,
        seed=seed,
    )
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        Console().print(summary_table(result))
