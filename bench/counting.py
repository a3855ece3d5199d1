"""What the stack did, counted where it happens: requests at the emulator's door, Lambda REPORT
lines in the function logs, state transitions in the execution histories.

Requests are counted by a WSGI layer in front of the emulator's app: every AWS call of the
handlers (Lambda worker processes) and of moto's Step Functions interpreter (its aws-sdk tasks)
comes through it. A boto3 event hook would only see this process's own calls. The bench's own
clients (uploads, sampling) send a marker in their User-Agent and are counted apart.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

BENCH_USER_AGENT = "sluice-bench"  # botocore Config(user_agent_extra=...) of the bench's clients

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_CREDENTIAL = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/(?P<service>[^/]+)/aws4_request")
_LAMBDA_INVOKE = re.compile(r"^/\d{4}-\d{2}-\d{2}/functions/[^/]+/invoc")


_LIST_PARAMETERS = {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}


def s3_operation(method: str, path: str, query: str, copy_source: bool = False) -> str:
    """The S3 API operation of a path-style request (what the emulator's clients send)."""
    params = set(parse_qs(query, keep_blank_values=True))
    list_type = parse_qs(query).get("list-type", [""])[0]
    on_object = "/" in path.strip("/")
    # (method, on an object?, a query parameter that decides, or None) → operation; first match wins
    for rule_method, rule_object, parameter, operation in _S3_RULES:
        if (
            rule_method == method
            and rule_object in (None, on_object)
            and (parameter is None or parameter in params)
        ):
            if operation == "PutObject" and copy_source:
                return "CopyObject"
            return operation
    if method == "GET" and not on_object:
        if list_type == "2":
            return "ListObjectsV2"
        return "ListObjects" if params <= _LIST_PARAMETERS else "GetBucketConfiguration"
    return method


_S3_RULES: tuple[tuple[str, bool | None, str | None, str], ...] = (
    ("GET", True, "uploadId", "ListParts"),
    ("GET", True, None, "GetObject"),
    ("GET", False, "versions", "ListObjectVersions"),
    ("HEAD", True, None, "HeadObject"),
    ("HEAD", False, None, "HeadBucket"),
    ("PUT", False, None, "PutBucketConfiguration"),
    ("PUT", True, "partNumber", "UploadPart"),
    ("PUT", True, None, "PutObject"),
    ("POST", None, "uploads", "CreateMultipartUpload"),
    ("POST", None, "uploadId", "CompleteMultipartUpload"),
    ("POST", None, "delete", "DeleteObjects"),
    ("POST", None, None, "PostObject"),
    ("DELETE", None, "uploadId", "AbortMultipartUpload"),
    ("DELETE", None, None, "DeleteObject"),
)


def identify(environ: dict[str, Any], body: bytes) -> tuple[str, str]:
    """(service, operation) of one request to the emulator."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "")
    if method == "POST" and _LAMBDA_INVOKE.match(path):
        return "lambda", "Invoke"
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = match.group("service") if match else "unknown"
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return service, target.rsplit(".", 1)[-1]
    query = environ.get("QUERY_STRING", "")
    if service == "s3":
        return service, s3_operation(method, path, query, "HTTP_X_AMZ_COPY_SOURCE" in environ)
    # Query protocol (SNS, ...): Action in the form body or the query string.
    for source in (body.decode("utf-8", errors="replace"), query):
        action = parse_qs(source).get("Action")
        if action:
            return service, action[0]
    return service, f"{method} {path.split('?')[0][:40]}"


class RequestCounter:
    """WSGI middleware: counts (service, operation) of every request, the bench's own apart, and
    DynamoDB requests by table too (the rate bucket's writes are ControlTable's UpdateItems)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._stack: Counter[tuple[str, str]] = Counter()
        self._bench: Counter[tuple[str, str]] = Counter()
        self._tables: Counter[tuple[str, str]] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = b""
        if environ.get("REQUEST_METHOD") == "POST" and _small_body(environ):
            # Reading the body consumes the stream: hand the app a fresh one with the same bytes.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
        key = identify(environ, body)
        mine = BENCH_USER_AGENT in environ.get("HTTP_USER_AGENT", "")
        table = _table_of(body) if key[0] == "dynamodb" and not mine else None
        with self._lock:
            (self._bench if mine else self._stack)[key] += 1
            if table:
                self._tables[(key[1], table)] += 1
        return self.app(environ, start_response)

    def counts(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self._stack)

    def bench_counts(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self._bench)

    def table_counts(self) -> Counter[tuple[str, str]]:
        """(operation, table name) of the stack's DynamoDB requests."""
        with self._lock:
            return Counter(self._tables)

    def reset(self) -> None:
        with self._lock:
            self._stack.clear()
            self._bench.clear()
            self._tables.clear()


def _small_body(environ: dict[str, Any]) -> bool:
    """Form bodies (query protocol: the Action) and DynamoDB's JSON (the TableName)."""
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return True
    return environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_")


def _table_of(body: bytes) -> str | None:
    try:
        name = json.loads(body).get("TableName")
    except (ValueError, AttributeError):
        return None
    return str(name) if name else None


# -- Lambda: the REPORT lines the offline runtime writes, as Lambda does --------------------------

_REPORT = re.compile(r"Billed Duration: (?P<billed>\d+) ms\tMemory Size: (?P<memory>\d+) MB")


@dataclass(frozen=True)
class Invocation:
    function: str  # logical id
    billed_ms: int
    memory_mb: int
    timestamp: str


def parse_report(record: dict[str, Any]) -> Invocation | None:
    """A function log record → the invocation its REPORT line bills, or None for other lines."""
    message = str(record.get("message", ""))
    if record.get("level") != "PLATFORM" or not message.startswith("REPORT "):
        return None
    match = _REPORT.search(message)
    if match is None:
        return None
    return Invocation(
        function=str(record.get("function", "")),
        billed_ms=int(match.group("billed")),
        memory_mb=int(match.group("memory")),
        timestamp=str(record.get("timestamp", "")),
    )


def invocations(log_dir: Path) -> Iterator[Invocation]:
    """Every billed invocation in `<log_dir>/<LogicalId>.log` (one JSON object per line)."""
    for path in sorted(log_dir.glob("*.log")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and (invocation := parse_report(record)) is not None:
                    yield invocation


# -- Step Functions: state transitions from the histories ----------------------------------------


def state_transitions(history_events: Iterable[dict[str, Any]]) -> int:
    """Billed state transitions of one execution: every state entered (inside Map iterations and
    Parallel branches too), plus every retry of a task (Step Functions bills each retry as a
    transition; the history shows it as one more TaskScheduled for the same state entry)."""
    entered = task_entries = scheduled = 0
    for event in history_events:
        kind = str(event.get("type", ""))
        if kind.endswith("StateEntered"):
            entered += 1
            task_entries += kind == "TaskStateEntered"
        elif kind in ("TaskScheduled", "LambdaFunctionScheduled"):
            scheduled += 1
    return entered + max(0, scheduled - task_entries)


def overlapping(executions: Iterable[dict[str, Any]], window: tuple[float, float]) -> list[dict[str, Any]]:
    """The executions (ListExecutions entries) that ran during `window` (epoch seconds): started
    before it ended and not stopped before it began. One started by the scheduler just before the
    uploads may do all of a run's work (the seed design's long rounds do): leaving it out counted
    no transitions at all. Its few idle rounds before the window are counted with it."""
    return [
        e
        for e in executions
        if e["startDate"].timestamp() <= window[1]
        and (e.get("stopDate") is None or e["stopDate"].timestamp() >= window[0])
    ]


def execution_history(sfn: Any, execution_arn: str) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        if token:
            kwargs["nextToken"] = token
        page = sfn.get_execution_history(**kwargs)
        yield from page["events"]
        token = page.get("nextToken")
        if not token:
            return


# -- the API: what the simulator saw ----------------------------------------------------------------


def utilization_figures(stats: dict[str, Any], limit: float) -> dict[str, Any]:
    """What the simulator saw, as the bench reports it (pure)."""
    per_second = list(stats.get("arrivals_per_second") or [])
    first = next((i for i, n in enumerate(per_second) if n), None)
    # Whole seconds only: the first from the first request, the last (partial) one left out.
    full = per_second[first:-1] if first is not None and len(per_second) - first > 2 else []
    achieved = float(stats.get("accepted_rate") or 0.0)
    return {
        "requests": stats.get("requests", 0),
        "accepted": stats.get("accepted", 0),
        "achieved_rate": achieved,
        "utilization": round(achieved / limit, 4) if limit else None,
        "busy_seconds": stats.get("active_seconds", 0),
        "busiest_second": stats.get("max_requests_in_any_second", 0),
        "busiest_second_accepted": stats.get("max_accepted_in_any_second", 0),
        "throttled_429": stats.get("throttled", 0),
        "duplicates": stats.get("duplicate_deliveries", 0),
        "median_per_second": sorted(full)[len(full) // 2] if full else 0,
        "share_of_seconds_at_90_percent": (
            round(sum(1 for n in full if n >= 0.9 * limit) / len(full), 3) if full else 0
        ),
        "api_latency_ms": stats.get("latency_ms", {}),
    }
