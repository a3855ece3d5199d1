"""`sluice monitor`: the pipeline at a glance, live, against the offline stack or a deployed one.

One snapshot reads: IngestQueue visible and in flight, IngestDLQ depth, running dispatcher
executions, files by state (MetadataTable), the API request rate, the concurrency setting (SSM).
The API rate comes from the downstream simulator's `/stats` offline, from ProcessObject's own
metrics (`RowsDelivered` + `ApiRetries`, namespace Sluice) on AWS.

`take_snapshot` is plain: it takes the clients and the stack outputs, and a reading that fails is
reported in `errors` rather than ending the view. `--record FILE` appends every snapshot as one
JSON line: the samples `sluice report` (and the benchmark) chart.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from boto3.dynamodb.types import TypeDeserializer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sluice.ratelimit import BUCKET_KEY, PacingState
from sluice_cli.commands.status import STATE_STYLES
from sluice_cli.commands.target import StackTarget, TargetError, resolve_target

SERVICES = ("sqs", "stepfunctions", "dynamodb", "ssm", "cloudwatch")
MAX_SCAN_PAGES = 10  # files by state: a deployed table can be large; count at most ~10 MB of it
METRICS_NAMESPACE = "Sluice"  # template Globals: POWERTOOLS_METRICS_NAMESPACE
METRICS_SERVICE = "sluice"  # template Globals: POWERTOOLS_SERVICE_NAME

Clients = Callable[[str], Any]


@dataclass
class Snapshot:
    """What the pipeline looked like at `t` (epoch seconds). None: not read (see `errors`)."""

    t: float
    queue_visible: int | None = None
    queue_in_flight: int | None = None
    dlq_visible: int | None = None
    running_executions: int | None = None
    files_by_state: dict[str, int] = field(default_factory=dict)
    files_counted_all: bool = True  # False when the scan stopped at MAX_SCAN_PAGES
    concurrency: int | None = None
    api_rate: float | None = None  # requests/s in the last complete second (offline) or minute (AWS)
    api_limit: float | None = None
    api_requests: int | None = None
    api_throttled: int | None = None
    api_busiest_second: int | None = None
    # The stack's shared pacing (ControlTable item ratelimit#downstream, sluice/ratelimit.py)
    paced_rate: float | None = None  # after 429s; None: the declared rate (never stepped down)
    pacing_lateness_ms: float | None = None  # the measured lateness the pacing tolerates
    rate_decreases: int | None = None  # 429s that stepped the stack's rate down
    paused_for_seconds: float | None = None  # a Retry-After or 429 pause still running; None: none
    errors: list[str] = field(default_factory=list)

    def as_record(self, run: str = "") -> dict[str, Any]:
        """One JSON line of the samples file."""
        return {"kind": "snapshot", "run": run, **dataclasses.asdict(self)}


def simulator_stats(api_url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET {simulator}/stats (the offline stack's downstream simulator)."""
    url = api_url.rstrip("/") + "/stats"
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - the stack's own http URL
        return dict(json.loads(answer.read()))


def take_snapshot(
    clients: Clients,
    outputs: Mapping[str, Any],
    *,
    api_stats: Callable[[], dict[str, Any]] | None = None,
    api_from_cloudwatch: bool = False,
    now: Callable[[], float] = time.time,
    max_scan_pages: int = MAX_SCAN_PAGES,
) -> Snapshot:
    """Read everything once. The API rate: from `api_stats` (the simulator's, offline), from
    CloudWatch with `api_from_cloudwatch` (a deployed stack), else not read."""
    snapshot = Snapshot(t=round(now(), 3))
    readings: list[tuple[str, Callable[[], None]]] = [
        ("IngestQueue", lambda: _queue(snapshot, clients("sqs"), outputs)),
        ("IngestDLQ", lambda: _dlq(snapshot, clients("sqs"), outputs)),
        ("executions", lambda: _executions(snapshot, clients("stepfunctions"), outputs)),
        ("files", lambda: _files(snapshot, clients("dynamodb"), outputs, max_scan_pages)),
        ("concurrency", lambda: _concurrency(snapshot, clients("ssm"), outputs)),
        ("pacing", lambda: _pacing(snapshot, clients("dynamodb"), outputs)),
    ]
    if api_stats is not None:
        readings.append(("API", lambda: _api_offline(snapshot, api_stats())))
    elif api_from_cloudwatch:
        readings.append(("API", lambda: _api_deployed(snapshot, clients("cloudwatch"), now())))
    for name, read in readings:
        try:
            read()
        except Exception as error:  # one reading failing must not hide the others
            snapshot.errors.append(f"{name}: {type(error).__name__}: {error}")
    return snapshot


def _queue(snapshot: Snapshot, sqs: Any, outputs: Mapping[str, Any]) -> None:
    attributes = sqs.get_queue_attributes(
        QueueUrl=outputs["IngestQueueUrl"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    snapshot.queue_visible = int(attributes["ApproximateNumberOfMessages"])
    snapshot.queue_in_flight = int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _dlq(snapshot: Snapshot, sqs: Any, outputs: Mapping[str, Any]) -> None:
    attributes = sqs.get_queue_attributes(
        QueueUrl=outputs["IngestDLQUrl"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    snapshot.dlq_visible = int(attributes["ApproximateNumberOfMessages"])


def _executions(snapshot: Snapshot, sfn: Any, outputs: Mapping[str, Any]) -> None:
    pages = sfn.get_paginator("list_executions").paginate(
        stateMachineArn=outputs["DispatcherStateMachineArn"], statusFilter="RUNNING"
    )
    snapshot.running_executions = sum(len(page["executions"]) for page in pages)


def _files(snapshot: Snapshot, dynamodb: Any, outputs: Mapping[str, Any], max_pages: int) -> None:
    counts: Counter[str] = Counter()
    pages = dynamodb.get_paginator("scan").paginate(
        TableName=outputs["MetadataTableName"],
        ProjectionExpression="#state",
        ExpressionAttributeNames={"#state": "state"},
    )
    for number, page in enumerate(pages, start=1):
        counts.update(item.get("state", {}).get("S", "?") for item in page["Items"])
        if number >= max_pages and page.get("LastEvaluatedKey"):
            snapshot.files_counted_all = False
            break
    snapshot.files_by_state = dict(sorted(counts.items()))


def _concurrency(snapshot: Snapshot, ssm: Any, outputs: Mapping[str, Any]) -> None:
    value = ssm.get_parameter(Name=outputs["ConcurrencyParameterName"])["Parameter"]["Value"]
    snapshot.concurrency = int(value)


def _pacing(snapshot: Snapshot, dynamodb: Any, outputs: Mapping[str, Any]) -> None:
    raw = dynamodb.get_item(TableName=outputs["ControlTableName"], Key={"pk": {"S": BUCKET_KEY}}).get(
        "Item", {}
    )
    state = PacingState.from_item({name: _DESERIALIZE.deserialize(value) for name, value in raw.items()})
    snapshot.paced_rate = state.rate
    snapshot.pacing_lateness_ms = (
        None if state.lateness_seconds is None else round(state.lateness_seconds * 1000, 2)
    )
    snapshot.rate_decreases = state.decreases
    if state.paused_until is not None and state.paused_until > snapshot.t:
        snapshot.paused_for_seconds = round(state.paused_until - snapshot.t, 1)


_DESERIALIZE = TypeDeserializer()


def _api_offline(snapshot: Snapshot, stats: dict[str, Any]) -> None:
    per_second = stats.get("arrivals_per_second") or []
    # The list ends at the second of the *last arrival*, not at now: the rate is the last complete
    # second before now (`elapsed_seconds` since the same start), 0 once the API has gone quiet.
    last_complete = int(float(stats.get("elapsed_seconds", len(per_second) - 1))) - 1
    snapshot.api_rate = float(per_second[last_complete]) if 0 <= last_complete < len(per_second) else 0.0
    snapshot.api_limit = float(stats.get("rate_limit", 0)) or None
    snapshot.api_requests = int(stats.get("requests", 0))
    snapshot.api_throttled = int(stats.get("throttled", 0))
    snapshot.api_busiest_second = int(stats.get("max_requests_in_any_second", 0))


def _api_deployed(snapshot: Snapshot, cloudwatch: Any, now: float) -> None:
    """Attempts/s over the last complete minute: RowsDelivered + ApiRetries (docs/scaling.md)."""
    end = datetime.fromtimestamp(now, UTC).replace(second=0, microsecond=0)
    queries = [
        {
            "Id": name.lower(),
            "MetricStat": {
                "Metric": {
                    "Namespace": METRICS_NAMESPACE,
                    "MetricName": name,
                    "Dimensions": [{"Name": "service", "Value": METRICS_SERVICE}],
                },
                "Period": 60,
                "Stat": "Sum",
            },
        }
        for name in ("RowsDelivered", "ApiRetries", "ApiThrottles")
    ]
    answer = cloudwatch.get_metric_data(
        MetricDataQueries=queries, StartTime=end - timedelta(minutes=1), EndTime=end
    )
    sums = {result["Id"]: sum(result.get("Values") or [0.0]) for result in answer["MetricDataResults"]}
    snapshot.api_rate = round((sums.get("rowsdelivered", 0.0) + sums.get("apiretries", 0.0)) / 60, 2)
    snapshot.api_throttled = int(sums.get("apithrottles", 0))


# -- rendering -------------------------------------------------------------------------------------


def _value(value: float | None, fmt: str = "{}") -> str:
    return "?" if value is None else fmt.format(value)


def render(snapshot: Snapshot, title: str = "Sluice") -> Group:
    """The view: one table of readings, one of files by state, then any errors."""
    stamp = datetime.fromtimestamp(snapshot.t, UTC).strftime("%H:%M:%S UTC")
    readings = Table(title=f"{title} at {stamp}", show_header=False, title_justify="left")
    readings.add_column("what")
    readings.add_column("value", justify="right")
    readings.add_row("queue visible", _value(snapshot.queue_visible))
    readings.add_row("queue in flight", _value(snapshot.queue_in_flight))
    dlq = _value(snapshot.dlq_visible)
    readings.add_row("dead letters (IngestDLQ)", f"[red]{dlq}[/]" if snapshot.dlq_visible else dlq)
    readings.add_row("running dispatcher executions", _value(snapshot.running_executions))
    readings.add_row("concurrency setting", _value(snapshot.concurrency))
    rate = _value(snapshot.api_rate, "{:.1f}/s")
    if snapshot.api_limit:
        rate += f" of {snapshot.api_limit:g}/s ({100 * (snapshot.api_rate or 0) / snapshot.api_limit:.0f}%)"
    readings.add_row("API requests", rate)
    if snapshot.api_busiest_second is not None:
        readings.add_row("busiest second so far", str(snapshot.api_busiest_second))
    if snapshot.api_throttled is not None:
        throttled = str(snapshot.api_throttled)
        readings.add_row("API 429s", f"[red]{throttled}[/]" if snapshot.api_throttled else throttled)
    if snapshot.rate_decreases is not None:
        paced = "declared rate" if snapshot.paced_rate is None else f"{snapshot.paced_rate:.1f}/s"
        readings.add_row("paced at (after 429s)", paced)
        readings.add_row("pacing lateness (measured)", _value(snapshot.pacing_lateness_ms, "{:.1f} ms"))
        readings.add_row("rate steps down (429s)", str(snapshot.rate_decreases))
        if snapshot.paused_for_seconds is not None:
            readings.add_row(
                "paused (Retry-After / 429)", f"[yellow]{snapshot.paused_for_seconds:g} s more[/]"
            )

    files = Table(title="files by state" + ("" if snapshot.files_counted_all else " (first pages only)"))
    files.add_column("state")
    files.add_column("files", justify="right")
    for state, count in snapshot.files_by_state.items():
        files.add_row(f"[{STATE_STYLES.get(state, 'white')}]{state}[/]", str(count))
    if not snapshot.files_by_state:
        files.add_row("[dim]none yet[/]", "0")
    parts: list[Any] = [readings, files]
    parts.extend(Text(f"! {error}", style="yellow") for error in snapshot.errors)
    return Group(*parts)


# -- the command ------------------------------------------------------------------------------------


def plain_line(snapshot: Snapshot) -> str:
    """One snapshot as one line, for a pipe or a log file (no terminal to redraw a view on)."""
    stamp = datetime.fromtimestamp(snapshot.t, UTC).strftime("%H:%M:%S")
    files = " ".join(f"{state}={count}" for state, count in snapshot.files_by_state.items()) or "none"
    return (
        f"{stamp} queue={_value(snapshot.queue_visible)} in_flight={_value(snapshot.queue_in_flight)} "
        f"dlq={_value(snapshot.dlq_visible)} running={_value(snapshot.running_executions)} "
        f"concurrency={_value(snapshot.concurrency)} api={_value(snapshot.api_rate, '{:.1f}/s')} "
        f"429s={_value(snapshot.api_throttled)} paced={_value(snapshot.paced_rate, '{:.1f}/s')} "
        f"lateness={_value(snapshot.pacing_lateness_ms, '{:.1f}ms')} "
        f"steps_down={_value(snapshot.rate_decreases)} "
        + ("" if snapshot.paused_for_seconds is None else f"paused={snapshot.paused_for_seconds:g}s ")
        + f"files: {files}"
        + "".join(f" ! {error}" for error in snapshot.errors)
    )


def snapshot_source(target: StackTarget) -> Callable[[], Snapshot]:
    """A function that takes one snapshot of `target`, its clients made once."""
    made = {service: target.client(service) for service in SERVICES}
    api_url = str(target.outputs.get("ApiUrl") or "")
    offline = target.endpoint_url is not None
    # Offline: the simulator's /stats (none without one); deployed: ProcessObject's metrics.
    stats = (lambda: simulator_stats(api_url)) if offline and api_url else None
    return lambda: take_snapshot(
        made.__getitem__, target.outputs, api_stats=stats, api_from_cloudwatch=not offline
    )


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as samples:
        samples.write(json.dumps(record) + "\n")


def monitor(
    *,
    outputs: Annotated[Path | None, typer.Option(help="The offline stack's outputs file.")] = None,
    stack_name: Annotated[str | None, typer.Option(help="A deployed stack: read its outputs.")] = None,
    region: Annotated[str | None, typer.Option(help="AWS region of the stack.")] = None,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between readings.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    record: Annotated[
        Path | None, typer.Option(help="Append every snapshot to this JSON lines file (`sluice report`).")
    ] = None,
    run: Annotated[str, typer.Option(help="Label of the recorded snapshots.")] = "monitor",
) -> None:
    """Queue, dead letters, running executions, files by state, API rate and concurrency, live."""
    if outputs and stack_name:
        raise typer.BadParameter("give --outputs or --stack-name, not both")
    try:
        target = resolve_target(outputs, stack_name, region)
    except TargetError as error:
        typer.echo(f"sluice monitor: {error}", err=True)
        raise typer.Exit(code=2) from error
    take = snapshot_source(target)
    title = str(target.outputs.get("StackName") or stack_name or "Sluice")
    console = Console()
    if once:
        snapshot = take()
        if record is not None:
            append_record(record, snapshot.as_record(run))
        console.print(render(snapshot, title))
        return

    def readings() -> Iterator[Snapshot]:
        while True:
            began = time.monotonic()
            snapshot = take()
            if record is not None:
                append_record(record, snapshot.as_record(run))
            yield snapshot
            time.sleep(max(0.0, interval - (time.monotonic() - began)))

    try:
        if not console.is_terminal:  # rich's Live draws nothing into a pipe: a line per reading
            for snapshot in readings():
                typer.echo(plain_line(snapshot))
        with Live(console=console, refresh_per_second=4) as live:
            for snapshot in readings():
                live.update(render(snapshot, title))
    except KeyboardInterrupt:
        pass
