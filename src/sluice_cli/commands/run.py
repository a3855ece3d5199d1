"""`sluice run` (what `make run` calls): the whole pipeline, offline, on a realistic mix of files.

Starts the offline stack, uploads the workload in parallel, shows progress from the metadata
table and the downstream simulator, waits until every file is finished and every alert email it
calls for has reached the stack's SMTP sink, prints and writes the summary, and exits 0 only if
every file ended in the state its content calls for and was announced when it had to be.

With `--api-url` (your API, no simulator) the API figures come from Sluice's own metrics
(ProcessObject's log) and records, and the summary says so; `--secret NAME=VALUE` creates the
secrets your API's credential needs (docs/your-own-csv.md). report.json keeps every file's
rejected rows with their reasons.
"""

from __future__ import annotations

import csv
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sluice.filecheck import SAMPLE_BYTES, check_sample
from sluice.health import HEALTH_KEY
from sluice.models import ObjectRef
from sluice.results import Layout
from sluice.schemas import GUIDE, get_schema
from sluice.settings import URL_PLACEHOLDER
from sluice_cli.commands.local import ApiUrlOption, SecretOption, api_settings, own_api, parse_secrets
from sluice_cli.commands.runreport import (
    MAX_REJECTS_PER_FILE,
    OWN_FIGURES,
    SUCCESS,
    AlertMail,
    Summary,
    TrackedFile,
    emf_values,
    expected_alerts,
    missing_alerts,
    summarize,
)
from sluice_cli.commands.status import STATE_STYLES, scan_items
from sluice_cli.commands.target import DEFAULT_STATE_DIR
from sluice_cli.offline import OfflineStack, StackError
from sluice_cli.offline.iam import IAM_REPORT_FILE, summary_line
from sluice_cli.offline.template import TemplateError, parse_parameter_overrides
from sluice_cli.workload import default_mix

DEFAULT_PREFIX = "incoming/"  # used when the template's RawKeyPrefix is empty (any key matches)
POLL_SECONDS = 0.5
# An alert is published as its file finishes and AlertNotifier is warm: it normally arrives before
# the last file does. This bounds the wait for one that is late (SMTP retries back off 1-8 s).
ALERT_WAIT_SECONDS = 10.0
ALERT_BODY_LINES = 4  # of each alert email, shown under its subject


def plan_files(
    paths: list[Path] | None, seed: int, parameters: dict[str, Any], prefix: str
) -> list[tuple[TrackedFile, bytes]]:
    """The files to upload (key under `prefix`, bytes) and what each one's content calls for
    under the stack's RowSchema and ApiUrl (whose placeholders must name columns of the file)."""
    if not paths:
        return [
            (
                TrackedFile(
                    key=f"{prefix}{item.name}",
                    data_size=len(item.data),
                    rows=item.rows,
                    expected_states=frozenset({str(item.expected_state)}),
                    expected_rejects=item.expected_rejects,
                    expected_delivered=item.expected_delivered,
                ),
                item.data,
            )
            for item in default_mix(seed)
        ]
    schema = get_schema(str(parameters.get("RowSchema", "orders-v1")))
    url_columns = tuple(dict.fromkeys(URL_PLACEHOLDER.findall(str(parameters.get("ApiUrl", "")))))
    planned = []
    for path in paths:
        data = path.read_bytes()
        # The Validate stage's own check, on the same sample it reads: a file it would refuse is
        # expected INVALID; any other file must succeed, with or without rejected rows.
        check = (
            check_sample(
                data[:SAMPLE_BYTES], schema, truncated=len(data) > SAMPLE_BYTES, url_columns=url_columns
            )
            if data
            else None
        )
        valid = check is not None and check.valid
        expected = SUCCESS if valid else frozenset({"INVALID"})
        planned.append(
            (
                TrackedFile(
                    key=f"{prefix}{path.name}", data_size=len(data), rows=None, expected_states=expected
                ),
                data,
            )
        )
    return planned


def upload(stack: OfflineStack, files: list[tuple[TrackedFile, bytes]]) -> None:
    """PutObject every file at once (threads), as several producers would."""
    s3 = stack.client("s3")
    bucket = stack.outputs["RawBucketName"]

    def put(entry: tuple[TrackedFile, bytes]) -> None:
        tracked, data = entry
        response = s3.put_object(Bucket=bucket, Key=tracked.key, Body=data)
        tracked.uploaded_at = time.time()
        tracked.version_id = response.get("VersionId")

    with ThreadPoolExecutor(max_workers=min(8, len(files)) or 1) as pool:
        list(pool.map(put, files))


def refresh(stack: OfflineStack, files: list[TrackedFile]) -> None:
    """Attach each file's metadata item (by key and version)."""
    items = scan_items(stack.client("dynamodb"), stack.outputs["MetadataTableName"])
    by_version = {(item.get("key"), item.get("version_id")): item for item in items}
    now = time.time()
    for tracked in files:
        item = by_version.get((tracked.key, tracked.version_id))
        if item is not None:
            tracked.item = item
            if item.get("state") in {"SUCCEEDED", "SUCCEEDED_WITH_REJECTS", "INVALID", "FAILED"}:
                tracked.seen_finished_at = tracked.seen_finished_at or now


class _Monitor:
    """The live view: files and rows done of total, API requests per second against the limit."""

    def __init__(self, files: list[TrackedFile], limit: float) -> None:
        self.files = files
        self.limit = limit
        self.progress = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.files_task = self.progress.add_task("files finished", total=len(files))
        self.rows_task = self.progress.add_task("rows done", total=sum(f.rows_expected() for f in files) or 1)
        self._last = (time.monotonic(), 0)
        self.rate = 0.0
        self.stats: dict[str, Any] = {}

    def update(self, stats: dict[str, Any], max_receive_count: int) -> None:
        now, requests = time.monotonic(), int(stats.get("requests", 0))
        then, before = self._last
        if now - then >= 1.0:
            self.rate, self._last = (requests - before) / (now - then), (now, requests)
        self.stats = stats
        done = sum(1 for tracked in self.files if tracked.finished(max_receive_count))
        self.progress.update(self.files_task, completed=done)
        total_rows = sum(tracked.rows_expected() for tracked in self.files) or 1
        self.progress.update(
            self.rows_task, completed=sum(t.rows_done() for t in self.files), total=total_rows
        )

    def render(self) -> Group:
        line = (
            f"API [bold]{self.rate:5.1f}[/] req/s (limit {self.limit:g})   "
            f"busiest second {self.stats.get('max_requests_in_any_second', 0)}   "
            f"429s {self.stats.get('throttled', 0)}   duplicates {self.stats.get('duplicate_deliveries', 0)}"
            if self.stats
            else f"API: yours, no simulator (limit {self.limit:g}/s); figures at the end, Sluice's own"
        )
        states = "  ".join(
            f"[{STATE_STYLES.get(t.state or '', 'white')}]{_name(t.key)}: {t.state or 'uploaded'}[/]"
            for t in self.files
        )
        return Group(self.progress, line, states)


def downstream_health(stack: OfflineStack) -> dict[str, Any]:
    """The downstream's health item in ControlTable (sluice/health.py): state and reason."""
    answer = stack.client("dynamodb").get_item(
        TableName=stack.outputs["ControlTableName"], Key={"pk": {"S": HEALTH_KEY}}, ConsistentRead=True
    )
    item = answer.get("Item", {})
    return {name: item[name]["S"] for name in ("state", "reason") if "S" in item.get(name, {})}


def received_alerts(stack: OfflineStack) -> list[AlertMail] | None:
    """Every email the stack's SMTP sink received (None: no sink, or `-p` sent the alerts elsewhere)."""
    sink = stack.smtp
    if sink is None:
        return None
    address = (stack.parameters.get("SmtpHost", sink.host), stack.parameters.get("SmtpPort", str(sink.port)))
    if address != (sink.host, str(sink.port)):
        return None
    return [AlertMail(mail.subject, mail.to, mail.received_at, mail.text()) for mail in sink.received()]


def await_alerts(stack: OfflineStack, expected: list[str], timeout: float) -> list[AlertMail] | None:
    """What the sink received, once every expected subject is among it or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        alerts = received_alerts(stack)
        if alerts is None or not missing_alerts(expected, alerts) or time.monotonic() >= deadline:
            return alerts
        time.sleep(0.2)


def collect_rejects(
    stack: OfflineStack, files: list[TrackedFile]
) -> dict[str, tuple[list[dict[str, Any]], int]]:
    """Each file's rejected rows from its results' rejects.csv (row, reason), at most
    MAX_REJECTS_PER_FILE of them, and how many there were."""
    s3 = stack.client("s3")
    found: dict[str, tuple[list[dict[str, Any]], int]] = {}
    for tracked in files:
        item = tracked.item or {}
        if not int(item.get("rows_rejected", 0)) or tracked.state not in SUCCESS:
            continue
        obj = ObjectRef(
            bucket=stack.outputs["RawBucketName"],
            key=tracked.key,
            version_id=tracked.version_id,
            etag=item.get("etag"),
        )
        body = s3.get_object(
            Bucket=stack.outputs["ProcessedBucketName"], Key=Layout(obj).results.rejects_key
        )["Body"]
        rows = csv.DictReader(io.TextIOWrapper(body, encoding="utf-8"))
        listed: list[dict[str, Any]] = []
        count = 0
        for row in rows:
            count += 1
            if len(listed) < MAX_REJECTS_PER_FILE:
                listed.append({"row": int(row["row"]), "reason": row["reason"]})
        found[tracked.key] = (listed, count)
    return found


def own_metrics(stack: OfflineStack) -> dict[str, list[float]]:
    """ProcessObject's metrics, from the embedded-metric-format lines of its log."""
    path = stack.log_dir / "ProcessObjectFunction.log"
    if not path.is_file():
        return {}
    records = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if '"_aws"' in line:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    return emf_values(records)


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def print_alerts(alerts: list[AlertMail], console: Console, mail_dir: Path | None) -> None:
    where = f" ({mail_dir}/*.eml)" if mail_dir is not None else ""
    console.print(f"Alerts: {len(alerts)} email(s) received by the SMTP sink{where}")
    for alert in alerts:
        console.print(f"  ✉ [bold]{escape(alert.subject)}[/]  → {escape(alert.to)}")
        lines = [line for line in alert.body.splitlines() if line.strip()][:ALERT_BODY_LINES]
        for line in lines:
            console.print(f"      [dim]{escape(line)}[/]", no_wrap=True, overflow="ellipsis")


def print_summary(summary: Summary, console: Console, *, mail_dir: Path | None = None) -> None:
    console.print()  # the live view may leave the cursor at the end of its last line
    # One line per file rather than a table: readable at any terminal width, and in CI logs.
    for record in summary.files:
        state = record["state"] or "never registered"
        mark = "[green]✓[/]" if record["ok"] else "[red]✗[/]"
        took = "" if record["latency_seconds"] is None else f", {record['latency_seconds']:.1f} s"
        console.print(
            f"{mark} {_name(record['key'])}  [{STATE_STYLES.get(state, 'white')}]{state}[/]  "
            f"{record['rows_total']} rows: {record['rows_delivered']} delivered, "
            f"{record['rows_rejected']} rejected{took}"
        )
    api, rows, latency = summary.api, summary.rows, summary.latency_seconds
    states = ", ".join(f"{state} {count}" for state, count in summary.states.items())
    console.print(f"Files: {states}")
    console.print(f"Rows: {rows['delivered']} delivered, {rows['rejected']} rejected, {rows['total']} read")
    if api.get("source") == OWN_FIGURES:
        latency_ms = api["latency_ms"]
        timing = (
            f"; p50 {latency_ms['p50']:.0f} ms, p95 {latency_ms['p95']:.0f} ms" if latency_ms["p50"] else ""
        )
        console.print(
            f"API (yours, {escape(api['url'])}; no simulator, so these are Sluice's own figures, from "
            f"ProcessObject's metrics and the metadata table): {api['requests']} requests answered, "
            f"{api['accepted_rate']:.1f} rows delivered/s, limit {api['limit']:g}/s; "
            f"{api['throttled_429']} answered 429{timing}"
        )
    elif "requests" in api:
        within = "[green]within[/]" if api["busiest_second_within_limit"] else "[red]ABOVE[/]"
        console.print(
            f"API: {api['accepted_rate']:.1f} accepted/s achieved, limit {api['limit']:g}/s; busiest "
            f"one-second window {api['busiest_second']} requests ({within} the limit); "
            f"{api['throttled_429']} answered 429; {api['duplicate_deliveries']} duplicate deliveries"
        )
    p50, p95 = latency["p50"], latency["p95"]
    if p50 is not None:
        console.print(f"End-to-end latency (upload → finished): p50 {p50:.1f} s, p95 {p95:.1f} s")
    console.print(f"Wall time: {summary.wall_seconds:.1f} s")
    if summary.alerts is not None:
        print_alerts(summary.alerts, console, mail_dir)
    rejected = sum(len(record.get("rejects", [])) for record in summary.files)
    if rejected:
        console.print(f"Rejected rows and their reasons: {rejected} in the report (files[].rejects)")
    if summary.iam is not None:
        console.print(f"{summary.iam['line']}  ({summary.iam['report']})")
    console.print(f"[dim]Your own CSV or API: {GUIDE}[/]")
    for problem in summary.problems:
        console.print(f"[red]✗[/] {problem}")
    if summary.ok:
        console.print("[bold green]All files reached the state their content calls for.[/]")
    else:
        console.print("[bold red]Some files did not reach the state their content calls for.[/]")


def write_report(summary: Summary, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")


def add_iam_totals(summary: Summary, stack: OfflineStack) -> None:
    """The IAM check's totals into the summary; a denied call fails the run, as it would on AWS."""
    if stack.iam is None:
        return
    report, path = stack.iam.report(), stack.state_dir / IAM_REPORT_FILE
    summary.iam = {"checked": report["checked"], "denied": report["denied"], "line": summary_line(report)}
    summary.iam["report"] = str(path)
    if report["denied"]:
        summary.problems.append(f"{report['denied']} AWS call(s) denied by a role's policies: see {path}")
        summary.ok = False


def run(
    *,
    files: Annotated[
        list[Path] | None, typer.Option("--files", help="CSV files to upload instead of the generated mix.")
    ] = None,
    report: Annotated[Path, typer.Option(help="Write the summary here as JSON.")] = DEFAULT_STATE_DIR
    / "report.json",
    env: Annotated[str, typer.Option(help="samconfig.toml environment for parameter values.")] = "local",
    api_rate: Annotated[
        float | None, typer.Option(help="Downstream limit, requests/s (also ApiRateLimit).")
    ] = None,
    api_latency: Annotated[str | None, typer.Option(help="Downstream latency MIN-MAX seconds.")] = None,
    api_error_rate: Annotated[
        float | None, typer.Option(help="Share of downstream calls answered 503.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the generated mix.")] = 7,
    parameter_overrides: Annotated[
        list[str] | None, typer.Option("--parameter", "-p", help="Key=Value template parameter (repeatable).")
    ] = None,
    template: Annotated[Path, typer.Option(help="The SAM template.")] = Path("template.yaml"),
    state_dir: Annotated[
        Path, typer.Option(help="The run's stack state (outputs, function logs: `sluice logs --state-dir`).")
    ] = DEFAULT_STATE_DIR / "run",
    api_url: ApiUrlOption = None,
    secret: SecretOption = None,
) -> None:
    """Run the pipeline end to end offline on a mix of files, and check every file's outcome."""
    console = Console()
    began = time.monotonic()
    overrides = parse_parameter_overrides(parameter_overrides or [])
    api_changes, overrides = api_settings(api_rate, api_latency, api_error_rate, overrides)
    start_api, overrides = own_api(api_url, overrides)
    for path in files or []:
        if not path.is_file():
            raise typer.BadParameter(f"--files {path}: no such file")
    # Its own state directory: a `sluice local up` running beside it keeps its outputs and logs.
    stack = OfflineStack(
        template.parent.resolve(),
        env=env,
        template=template.name,
        overrides=overrides,
        api_settings=api_changes,
        start_api=start_api,
        secrets=parse_secrets(secret),
        port=0,
        state_dir=state_dir.resolve(),
    )
    try:
        with console.status("Starting the offline stack…"):
            stack.start()
        console.print(f"Offline stack up in {time.monotonic() - began:.1f} s at {stack.endpoint_url}")
        parameters = stack.parameters
        prefix = str(parameters.get("RawKeyPrefix") or DEFAULT_PREFIX)
        planned = plan_files(files, seed, parameters, prefix)
        upload(stack, planned)
        tracked = [entry for entry, _ in planned]
        console.print(f"Uploaded {len(tracked)} files to s3://{stack.outputs['RawBucketName']}/{prefix}")
        max_receive = int(parameters.get("MaxReceiveCount", 1))
        api = stack.api
        if api is None and start_api:
            raise StackError("the stack started without its downstream simulator")
        rate_limit = api.config.rate_limit if api is not None else float(parameters.get("ApiRateLimit", 0))
        monitor = _Monitor(tracked, rate_limit)
        deadline = time.monotonic() + timeout
        with Live(monitor.render(), console=console, refresh_per_second=4) as live:
            while True:
                refresh(stack, tracked)
                monitor.update(api.stats() if api is not None else {}, max_receive)
                live.update(monitor.render())
                if all(t.finished(max_receive) for t in tracked) or time.monotonic() > deadline:
                    break
                time.sleep(POLL_SECONDS)
        expected = expected_alerts(tracked, max_receive)
        with console.status(f"Waiting for {len(expected)} alert email(s)…"):
            alerts = await_alerts(stack, expected, ALERT_WAIT_SECONDS)
        summary = summarize(
            tracked,
            api.stats() if api is not None else None,
            rate_limit=rate_limit,
            wall_seconds=time.monotonic() - began,
            max_receive_count=max_receive,
            alerts=alerts,
            downstream=downstream_health(stack),
            rejects=collect_rejects(stack, tracked),
            own_metrics=own_metrics(stack) if api is None else None,
            api_url=str(parameters.get("ApiUrl", "")),
        )
    except (StackError, TemplateError) as error:
        console.print(f"[red]Could not start the offline stack:[/] {error}")
        raise typer.Exit(code=2) from error
    finally:
        stack.stop()
    add_iam_totals(summary, stack)
    print_summary(summary, console, mail_dir=stack.mail_dir if stack.smtp is not None else None)
    write_report(summary, report)
    console.print(f"Report: {report}")
    if not summary.ok:
        raise typer.Exit(code=1)
