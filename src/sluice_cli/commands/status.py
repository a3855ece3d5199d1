"""`sluice status`: every object version the metadata table knows, with its state and row counts."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from boto3.dynamodb.types import TypeDeserializer
from rich.console import Console
from rich.table import Table

from sluice_cli.commands.target import TargetError, resolve_target

STATE_STYLES = {
    "SUCCEEDED": "green",
    "SUCCEEDED_WITH_REJECTS": "yellow",
    "INVALID": "magenta",
    "FAILED": "red",
    "PROCESSING": "cyan",
    "RECEIVED": "blue",
}
SIMULATED_MARK = "\n[red]simulated API[/]"
_deserializer = TypeDeserializer()


def scan_items(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    """Every item of the table, as plain Python values (numbers as int where they are whole)."""
    items: list[dict[str, Any]] = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        items.extend(
            {key: _plain(_deserializer.deserialize(value)) for key, value in item.items()}
            for item in page["Items"]
        )
    return items


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | set):
        return [_plain(item) for item in value]
    return value


def file_record(item: dict[str, Any]) -> dict[str, Any]:
    """One object version as `status --json` prints it (docs/metadata.md names the attributes)."""
    bucket, key, version = item.get("bucket"), item.get("key"), item.get("version_id")
    if bucket is None or key is None:  # an item written without its identity: read it from the pk
        path, _, version_part = str(item.get("pk", "")).rpartition("#")
        bucket, _, key = path.partition("/")
        version = None if version_part == "null" else version_part
    return {
        "bucket": bucket,
        "key": key,
        "version_id": version,
        "state": item.get("state"),
        "rows_total": item.get("rows_total", 0),
        "rows_delivered": item.get("rows_delivered", 0),
        "rows_rejected": item.get("rows_rejected", 0),
        "attempts": item.get("attempts", 0),
        "api_mode": item.get("api_mode"),  # absent until processing starts
        "error": item.get("error") or item.get("reason"),
        "received_at": item.get("received_at"),
        "updated_at": item.get("updated_at"),
        "finished_at": item.get("finished_at") or item.get("invalid_at") or item.get("failed_at"),
    }


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    outputs: Annotated[Path | None, typer.Option(help="The offline stack's outputs file.")] = None,
    stack_name: Annotated[
        str | None, typer.Option(help="A deployed stack: read its CloudFormation outputs.")
    ] = None,
    region: Annotated[str | None, typer.Option(help="Region of the deployed stack.")] = None,
) -> None:
    """Every object version with its state, row counts and error, from the metadata table."""
    if outputs and stack_name:
        raise typer.BadParameter("give --outputs or --stack-name, not both")
    try:
        target = resolve_target(outputs, stack_name, region)
        records = [
            file_record(item)
            for item in scan_items(target.client("dynamodb"), target.output("MetadataTableName"))
        ]
    except TargetError as error:
        raise typer.BadParameter(str(error)) from error
    records.sort(key=lambda record: (record["received_at"] or "", record["key"] or ""))
    if as_json:
        typer.echo(json.dumps(records, indent=2, default=str))
        return
    Console().print(status_table(records))


def status_table(records: list[dict[str, Any]]) -> Table:
    """Key and error share what the terminal has left: at 80 columns neither may vanish (rich gives
    a column without a minimum width nothing when the row is too wide), so the counts are one
    compact column, the version goes under its key, and a file sent to the simulated API (no row left
    the stack) says so under its state."""
    table = Table(title=f"{len(records)} object version(s)")
    table.add_column("key / version", overflow="fold", min_width=16, ratio=3)
    table.add_column("state", overflow="fold", min_width=9)
    table.add_column("rows ok/rej/all", justify="right", overflow="fold", max_width=10)
    table.add_column("try", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold", min_width=12, ratio=2)
    for record in records:
        state = record["state"] or "?"
        table.add_row(
            f"{record['key']}\n[dim]{record['version_id'] or 'null'}[/]",
            f"[{STATE_STYLES.get(state, 'white')}]{state}[/]"
            + SIMULATED_MARK * (record["api_mode"] == "simulated"),
            f"{record['rows_delivered']}/{record['rows_rejected']}/{record['rows_total']}",
            str(record["attempts"]),
            record["error"] or "",
        )
    return table
