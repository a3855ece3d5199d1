"""`sluice logs`: the offline stack's function logs, like `sam logs --tail`.

The Lambda runtime writes one JSON object per line to `.sluice/logs/<FunctionLogicalId>.log`:
Powertools' records as the function printed them, awslambdaric's error records, and the runtime's
own START / END / REPORT lines.

Two writers, two timestamp formats (Powertools' "2026-12-02 15:22:18,009+0000", the runtime's ISO
"2026-12-02T15:22:17.859Z"): records are merged on the instant each one names, not on its text.
An idle offline stack still runs a dispatcher tick every few seconds, so the runtime's
START/END/REPORT lines and metric documents are hidden unless `--all` asks for them, and
`--filter`, `--level` and `--since` narrow the rest, as `sam logs` does.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from sluice_cli.commands.target import DEFAULT_STATE_DIR

LEVEL_STYLES = {
    "ERROR": "red",
    "CRITICAL": "red",
    "WARNING": "yellow",
    "DEBUG": "dim",
    "PLATFORM": "dim",
    "METRIC": "blue",
}
_STANDARD_KEYS = {
    "timestamp", "level", "levelname", "message", "msg", "function", "service", "location", "xray_trace_id",
    "function_name", "function_memory_size", "function_arn", "function_request_id", "cold_start",
    "sampling_rate",
}  # fmt: skip


def record_fields(record: dict[str, Any]) -> tuple[str, str, str]:
    """(timestamp, level, message) of a log record, whatever wrote it."""
    timestamp = str(record.get("timestamp") or record.get("time") or "")
    if "_aws" in record:  # an EMF metrics document from Powertools Metrics
        metrics = record["_aws"].get("CloudWatchMetrics", [{}])[0].get("Metrics", [])
        values = ", ".join(f"{m['Name']}={record.get(m['Name'])}" for m in metrics)
        stamp = record["_aws"].get("Timestamp")
        if stamp is not None and not timestamp:
            timestamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp / 1000)) + "Z"
        return timestamp, "METRIC", values
    level = str(record.get("level") or record.get("levelname") or "INFO").upper()
    if "errorMessage" in record:  # awslambdaric's record of an unhandled error
        message = f"{record.get('errorType', 'Error')}: {record['errorMessage']}"
        trace = "".join(record.get("stackTrace") or [])
        return timestamp, "ERROR", f"{message}\n{trace}".rstrip()
    message = record.get("message", record.get("msg", ""))
    if not isinstance(message, str):
        message = json.dumps(message, default=str)
    extras = {key: value for key, value in record.items() if key not in _STANDARD_KEYS}
    if extras:
        message = f"{message} {json.dumps(extras, default=str, separators=(',', ':'))}"
    return timestamp, level, message


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
NOISE_LEVELS = frozenset({"PLATFORM", "METRIC"})  # the runtime's START/END/REPORT, metric documents
_SINCE = re.compile(r"^(?P<amount>\d+)(?P<unit>[smhd])$")
_SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def record_time(timestamp: str) -> float:
    """Epoch seconds of either writer's timestamp; 0 for one that cannot be read (sorted first)."""
    text = timestamp.strip().replace(",", ".").replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def since_seconds(value: str) -> float:
    """'90s', '5m', '2h', '1d' → seconds."""
    match = _SINCE.match(value.strip())
    if match is None:
        raise typer.BadParameter(f"--since {value!r}: a number and a unit, s, m, h or d (e.g. 5m)")
    return int(match["amount"]) * _SECONDS_PER_UNIT[match["unit"]]


@dataclass(frozen=True)
class LogFilter:
    """Which records to print: `sam logs`-like narrowing, and the idle tick's noise hidden by default."""

    text: str | None = None  # case-insensitive substring of the message
    min_level: str | None = None  # one of LEVELS
    since: float | None = None  # epoch seconds
    show_noise: bool = False

    def keep(self, record: dict[str, Any]) -> bool:
        timestamp, level, message = record_fields(record)
        if level in NOISE_LEVELS:
            return self.show_noise
        if self.min_level and LEVELS.index(self.min_level) > LEVELS.index(_level_rank(level)):
            return False
        if self.since is not None and record_time(timestamp) < self.since:
            return False
        return self.text is None or self.text.lower() in message.lower()


def _level_rank(level: str) -> str:
    return level if level in LEVELS else "INFO"


def format_record(function: str, record: dict[str, Any]) -> str:
    timestamp, level, message = record_fields(record)
    style = LEVEL_STYLES.get(level, "white")
    return f"[dim]{escape(timestamp)}[/] [bold]{escape(function)}[/] [{style}]{level:<8}[/] {escape(message)}"


@dataclass
class _Tail:
    path: Path
    offset: int = 0
    pending: str = ""
    function: str = field(init=False)

    def __post_init__(self) -> None:
        self.function = self.path.stem

    def read(self) -> list[str]:
        """Complete lines added since the last read (a file that shrank was recreated: start over)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset, self.pending = 0, ""
        with self.path.open("r", encoding="utf-8", errors="replace") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
            self.offset = handle.tell()
        text = self.pending + chunk
        lines = text.split("\n")
        self.pending = lines.pop()
        return [line for line in lines if line.strip()]


def select_files(log_dir: Path, function: str | None) -> list[Path]:
    files = sorted(log_dir.glob("*.log"))
    if function is None:
        return files
    wanted = function.lower().replace("_", "")
    chosen = [path for path in files if path.stem.lower() == function.lower()]
    chosen = chosen or [path for path in files if path.stem.lower().startswith(wanted)]
    if not chosen:
        known = ", ".join(path.stem for path in files) or "none yet"
        raise typer.BadParameter(f"no log for {function!r} in {log_dir} (functions: {known})")
    return chosen


def _records(tail: _Tail) -> Iterator[tuple[str, dict[str, Any], str]]:
    for line in tail.read():
        try:
            record = json.loads(line)
        except ValueError:
            record = {"message": line}
        if not isinstance(record, dict):
            record = {"message": line}
        yield tail.function, record, line


def logs(  # noqa: PLR0917 - typer reads the options from the signature
    function: Annotated[
        str | None, typer.Argument(help="Logical id (or its start, e.g. ProcessObject).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C to stop).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON lines.")] = False,
    text: Annotated[
        str | None, typer.Option("--filter", help="Only records whose message contains this (any case).")
    ] = None,
    level: Annotated[
        str | None, typer.Option(help=f"Only records at this level or above: {', '.join(LEVELS)}.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only records of the last 90s, 5m, 2h, 1d.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also the runtime's START/END/REPORT lines and metric documents.")
    ] = False,
    state_dir: Annotated[Path, typer.Option(help="The offline stack's state directory.")] = DEFAULT_STATE_DIR,
) -> None:
    """The offline stack's function logs: timestamp, function, level, message."""
    if level is not None and level.upper() not in LEVELS:
        raise typer.BadParameter(f"--level {level!r}: one of {', '.join(LEVELS)}")
    wanted = LogFilter(
        text=text,
        min_level=level.upper() if level else None,
        since=time.time() - since_seconds(since) if since else None,
        show_noise=show_all,
    )
    log_dir = state_dir / "logs"
    console = Console(highlight=False, soft_wrap=True)
    tails: dict[Path, _Tail] = {}

    def emit_new() -> None:
        for path in select_files(log_dir, function) if log_dir.is_dir() else []:
            tails.setdefault(path, _Tail(path))
        batch = [entry for tail in tails.values() for entry in _records(tail) if wanted.keep(entry[1])]
        batch.sort(key=lambda entry: record_time(record_fields(entry[1])[0]))  # one merged timeline
        for name, record, line in batch:
            if as_json:
                typer.echo(line)
            else:
                console.print(format_record(name, record))

    if not follow and not log_dir.is_dir():
        raise typer.BadParameter(f"{log_dir} does not exist: start the offline stack first")
    emit_new()
    if not follow:
        return
    try:
        while True:
            time.sleep(0.5)
            emit_new()
    except KeyboardInterrupt:
        return
