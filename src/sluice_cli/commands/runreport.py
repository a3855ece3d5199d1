"""What `sluice run` tracks per file and the summary it prints and writes (pure: no AWS, no I/O)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.downstream import LATENCY_METRIC, THROTTLES_METRIC

FINISHED = frozenset({"SUCCEEDED", "SUCCEEDED_WITH_REJECTS", "INVALID"})
SUCCESS = frozenset({"SUCCEEDED", "SUCCEEDED_WITH_REJECTS"})
# The states a file is announced in on AlertTopic (the dispatcher publishes, AlertNotifier emails).
ALERTED = frozenset({"INVALID", "FAILED"})
# report.json keeps at most this many rejected rows (row, reason) per file, and says how many more
MAX_REJECTS_PER_FILE = 1000
# Where the summary's API figures come from when no simulator stood in for the API (--api-url)
OWN_FIGURES = "sluice"


@dataclass
class TrackedFile:
    """One uploaded file: what its content calls for, and what the metadata table says of it."""

    key: str
    data_size: int
    rows: int | None  # data rows, when known before processing
    expected_states: frozenset[str]
    expected_rejects: int | None = None
    expected_delivered: int | None = None
    uploaded_at: float = 0.0  # epoch seconds, when PutObject answered
    version_id: str | None = None
    item: dict[str, Any] | None = None
    seen_finished_at: float | None = None  # when this run first saw it finished (if the item has no time)

    @property
    def state(self) -> str | None:
        return None if self.item is None else self.item.get("state")

    def finished(self, max_receive_count: int) -> bool:
        """Finished for good: a finished state, or FAILED with no delivery left before the DLQ."""
        state = self.state
        if state in FINISHED:
            return True
        return (
            state == "FAILED"
            and self.item is not None
            and int(self.item.get("attempts", 0)) >= max_receive_count
        )

    @property
    def ok(self) -> bool:
        if self.state not in self.expected_states or self.item is None:
            return False
        if (
            self.expected_rejects is not None
            and int(self.item.get("rows_rejected", 0)) != self.expected_rejects
        ):
            return False
        return (
            self.expected_delivered is None
            or int(self.item.get("rows_delivered", 0)) == self.expected_delivered
        )

    @property
    def finished_at(self) -> float | None:
        if self.item is not None:
            for name in ("finished_at", "invalid_at", "failed_at"):
                if self.item.get(name):
                    return parse_time(str(self.item[name]))
        return self.seen_finished_at

    @property
    def latency_seconds(self) -> float | None:
        finished = self.finished_at
        return None if finished is None or not self.uploaded_at else max(finished - self.uploaded_at, 0.0)

    def rows_done(self) -> int:
        if self.item is None:
            return 0
        return int(self.item.get("rows_delivered", 0)) + int(self.item.get("rows_rejected", 0))

    def rows_expected(self) -> int:
        """Rows this file will have processed when finished (an invalid file's rows are never read)."""
        if self.expected_states == {"INVALID"}:
            return 0
        if self.rows is not None:
            return self.rows
        return int(self.item.get("rows_total", 0)) if self.item else 0


@dataclass(frozen=True)
class AlertMail:
    """One alert email the run's SMTP sink received."""

    subject: str
    to: str
    received_at: float  # epoch seconds
    body: str = ""

    def as_dict(self) -> dict[str, Any]:
        when = datetime.fromtimestamp(self.received_at, UTC).isoformat(timespec="milliseconds")
        return {"subject": self.subject, "to": self.to, "received_at": when.replace("+00:00", "Z")}


def alert_subject(state: str, key: str) -> str:
    """The subject AlertNotifier gives a file's alert (`sluice.alerting`, file alerts)."""
    return f"[Sluice] File {state}: {key}"


def expected_alerts(files: Sequence[TrackedFile], max_receive_count: int) -> list[str]:
    """The subjects of the alert emails this run's outcome calls for: one per file that finished
    INVALID or FAILED for good (the alert is published on the message's last receive)."""
    return [
        alert_subject(str(tracked.state), tracked.key)
        for tracked in files
        if tracked.state in ALERTED and tracked.finished(max_receive_count)
    ]


def missing_alerts(expected: Sequence[str], alerts: Sequence[AlertMail]) -> list[str]:
    received = {alert.subject for alert in alerts}
    return [subject for subject in expected if subject not in received]


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (None without values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


@dataclass
class Summary:
    files: list[dict[str, Any]]
    states: dict[str, int]
    rows: dict[str, int]
    api: dict[str, Any]
    latency_seconds: dict[str, float | None]
    wall_seconds: float
    ok: bool
    problems: list[str] = field(default_factory=list)
    alerts: list[AlertMail] | None = None  # None: the run had no SMTP sink to ask
    downstream: dict[str, Any] = field(default_factory=dict)  # its health item at the end (health.py)
    iam: dict[str, Any] | None = None  # the offline IAM check's totals (offline/iam.py), if enforced

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "wall_seconds": round(self.wall_seconds, 1),
            "states": self.states,
            "rows": self.rows,
            "api": self.api,
            "latency_seconds": self.latency_seconds,
            "files": self.files,
            "alerts": None if self.alerts is None else [alert.as_dict() for alert in self.alerts],
            "downstream": self.downstream,
            "iam": self.iam,
        }


def summarize(
    files: Sequence[TrackedFile],
    api_stats: dict[str, Any] | None,
    *,
    rate_limit: float | None,
    wall_seconds: float,
    max_receive_count: int,
    alerts: Sequence[AlertMail] | None = None,
    downstream: dict[str, Any] | None = None,
    rejects: Mapping[str, tuple[list[dict[str, Any]], int]] | None = None,
    own_metrics: Mapping[str, list[float]] | None = None,
    api_url: str = "",
) -> Summary:
    """The run's summary; with `alerts` (what the SMTP sink received), a file that ended INVALID
    or FAILED without its alert email is a problem too: alerting is a promised feature.

    The API refusing everything is a problem whatever the files' expected states: a file whose
    every row was rejected (the API refused it as a whole, not its rows), or a downstream still
    unhealthy at the end (`downstream`: the breaker's item, sluice/health.py).

    `rejects` (key -> (rows {"row", "reason"}, how many there were)) go into each file's record.
    Without `api_stats` (no simulator: --api-url), the API figures come from `own_metrics`
    (ProcessObject's metrics, `emf_values`) and the metadata records, and say so."""
    records: list[dict[str, Any]] = []
    for tracked in files:
        item = tracked.item or {}
        latency = tracked.latency_seconds
        records.append(
            {
                "key": tracked.key,
                "version_id": tracked.version_id,
                "expected": sorted(tracked.expected_states),
                "state": tracked.state,
                "ok": tracked.ok,
                "rows_total": int(item.get("rows_total", 0)),
                "rows_delivered": int(item.get("rows_delivered", 0)),
                "rows_rejected": int(item.get("rows_rejected", 0)),
                "expected_rejects": tracked.expected_rejects,
                "attempts": int(item.get("attempts", 0)),
                "latency_seconds": None if latency is None else round(latency, 2),
                "error": item.get("error") or item.get("reason"),
            }
        )
        if rejects is not None and tracked.key in rejects:
            rows, count = rejects[tracked.key]
            records[-1]["rejects"] = rows[:MAX_REJECTS_PER_FILE]
            records[-1]["rejects_not_listed"] = max(0, count - MAX_REJECTS_PER_FILE)
    latencies = [tracked.latency_seconds for tracked in files if tracked.latency_seconds is not None]
    states = Counter(tracked.state or "NOT REGISTERED" for tracked in files)
    problems = [_problem(record) for record in records if not record["ok"]]
    unfinished = [tracked.key for tracked in files if not tracked.finished(max_receive_count)]
    if unfinished:
        problems.append(f"not finished before the deadline: {', '.join(unfinished)}")
    if alerts is not None:
        problems += [
            f"no alert email “{subject}” reached the SMTP sink"
            for subject in missing_alerts(expected_alerts(files, max_receive_count), alerts)
        ]
    problems += [
        f"{record['key']}: every one of its {record['rows_total']} rows was rejected: "
        "the API or the format refused the file, not its rows"
        for record in records
        if record["rows_total"] and record["rows_rejected"] == record["rows_total"]
    ]
    downstream = dict(downstream or {})
    if downstream.get("state") == "open":
        problems.append(
            f"the downstream API was unhealthy at the end of the run ({downstream.get('reason', '')}): "
            "delivery is paused, rows wait for it"
        )
    if api_stats is None and own_metrics is not None:
        api = own_api_summary(own_metrics, files, rate_limit, api_url)
    else:
        api = api_summary(api_stats, rate_limit)
    return Summary(
        files=records,
        states=dict(sorted(states.items())),
        rows={
            "total": sum(record["rows_total"] for record in records),
            "delivered": sum(record["rows_delivered"] for record in records),
            "rejected": sum(record["rows_rejected"] for record in records),
        },
        api=api,
        latency_seconds={
            "p50": _round(percentile(latencies, 0.50)),
            "p95": _round(percentile(latencies, 0.95)),
            "max": _round(max(latencies) if latencies else None),
        },
        wall_seconds=wall_seconds,
        ok=not problems,
        problems=problems,
        alerts=None if alerts is None else list(alerts),
        downstream=downstream,
    )


def _problem(record: dict[str, Any]) -> str:
    state = record["state"] or "never registered"
    text = f"{record['key']}: {state}, expected {' or '.join(record['expected'])}"
    if record["expected_rejects"] is not None:
        text += f" with {record['expected_rejects']} rejected rows (got {record['rows_rejected']})"
    return text


def api_summary(stats: dict[str, Any] | None, rate_limit: float | None) -> dict[str, Any]:
    """The downstream's view: how fast, how close to the limit, how many refusals and duplicates."""
    if not stats:
        return {"limit": rate_limit}
    busiest = int(stats.get("max_requests_in_any_second", 0))
    return {
        "limit": rate_limit,
        "requests": stats.get("requests", 0),
        "accepted": stats.get("accepted", 0),
        "accepted_rate": stats.get("accepted_rate", 0.0),
        "busiest_second": busiest,
        "busiest_second_within_limit": rate_limit is None or busiest <= rate_limit,
        "throttled_429": stats.get("throttled", 0),
        "duplicate_deliveries": stats.get("duplicate_deliveries", 0),
        "responses_by_status": stats.get("responses_by_status", {}),
        "latency_ms": stats.get("latency_ms", {}),
        # Requests per whole second of the run, for charts and for finding a burst.
        "arrivals_per_second": stats.get("arrivals_per_second", []),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def emf_values(records: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """Every value of every metric in CloudWatch embedded-metric-format records (Powertools'
    `log_metrics` output, one JSON object per invocation or per 100 values), by metric name."""
    values: dict[str, list[float]] = {}
    for record in records:
        directives = record.get("_aws", {}).get("CloudWatchMetrics", []) if isinstance(record, dict) else []
        for directive in directives:
            for metric in directive.get("Metrics", []):
                name = metric.get("Name")
                value = record.get(name)
                found = value if isinstance(value, list) else [value]
                values.setdefault(name, []).extend(float(v) for v in found if isinstance(v, int | float))
    return values


def own_api_summary(
    metrics: Mapping[str, list[float]], files: Sequence[TrackedFile], rate_limit: float | None, api_url: str
) -> dict[str, Any]:
    """The API's figures as Sluice itself saw them: no simulator counted the arrivals, so there is
    no busiest second and no duplicate count; requests are the answers ProcessObject timed."""
    latencies = list(metrics.get(LATENCY_METRIC, []))
    delivered = sum(int((tracked.item or {}).get("rows_delivered", 0)) for tracked in files)
    starts = [tracked.uploaded_at for tracked in files if tracked.uploaded_at]
    ends = [end for tracked in files if (end := tracked.finished_at) is not None]
    span = max(ends) - min(starts) if starts and ends else 0.0
    return {
        "source": OWN_FIGURES,
        "url": api_url,
        "limit": rate_limit,
        "requests": len(latencies),
        "accepted": delivered,
        "accepted_rate": round(delivered / span, 2) if span > 0 else 0.0,
        "throttled_429": int(sum(metrics.get(THROTTLES_METRIC, []))),
        "latency_ms": {
            "p50": _round(percentile(latencies, 0.50)),
            "p95": _round(percentile(latencies, 0.95)),
        },
    }
