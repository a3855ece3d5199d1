"""Function log files: one JSON object per line, like a CloudWatch log group, for `sluice logs`.

Powertools already writes JSON lines; anything else a worker prints (tracebacks, awslambdaric's
`[ERROR]` lines, print()) is wrapped into an object so every line of a file parses.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wrap_line(line: str, function: str, request_id: str | None) -> dict[str, Any]:
    """A log record for one line of output: the line itself if it is a JSON object, else wrapped."""
    stripped = line.rstrip("\r\n")
    try:
        parsed = json.loads(stripped)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    level = "ERROR" if stripped.startswith(("[ERROR]", "Traceback")) else "INFO"
    record: dict[str, Any] = {
        "timestamp": utc_now_iso(),
        "level": level,
        "message": stripped.replace("\r", "\n"),
    }
    record["function"] = function
    if request_id:
        record["request_id"] = request_id
    return record


class Sink(Protocol):
    """Where the Lambda runtime sends a function's output and its own platform lines."""

    def line(self, function: str, line: str, request_id: str | None) -> None: ...

    def platform(self, function: str, message: str, request_id: str | None = None) -> None: ...

    def close(self) -> None: ...


class ConsoleSink:
    """Output as the function printed it, on stderr (what `sam local invoke` shows)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def line(self, function: str, line: str, request_id: str | None) -> None:
        with self._lock:
            # awslambdaric separates a text-format traceback's lines with \r: show them as lines.
            self.stream.write(line.rstrip("\r\n").replace("\r", "\n") + "\n")
            self.stream.flush()

    def platform(self, function: str, message: str, request_id: str | None = None) -> None:
        with self._lock:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        return


class LogSink:
    """Appends records to `<directory>/<FunctionLogicalId>.log`, one writer lock per file."""

    def __init__(self, directory: Path | None) -> None:
        if directory is None:
            raise ValueError("LogSink needs a directory")
        self.directory = directory
        self._files: dict[str, IO[str]] = {}
        self._lock = threading.Lock()

    def path(self, function: str) -> Path:
        return self.directory / f"{function}.log"

    def write(self, function: str, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            handle = self._files.get(function)
            if handle is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                handle = self._files[function] = self.path(function).open("a", encoding="utf-8")
            handle.write(line)
            handle.flush()

    def line(self, function: str, line: str, request_id: str | None) -> None:
        self.write(function, wrap_line(line, function, request_id))

    def platform(self, function: str, message: str, request_id: str | None = None) -> None:
        """Lambda's own lines (START, END, REPORT, timeouts), as the service writes them."""
        record: dict[str, Any] = {"timestamp": utc_now_iso(), "level": "PLATFORM", "message": message}
        record["function"] = function
        if request_id:
            record["request_id"] = request_id
        self.write(function, record)

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()
