"""`sluice report`: charts from a run's samples (a JSON lines file), as PNGs.

The samples file holds one JSON object per line, each with a `kind` and a `run` label:

- `snapshot` — `sluice monitor --record` / the benchmark's sampler: `t` (epoch s), `queue_visible`,
  `queue_in_flight`, `concurrency`, `running_executions`, ... (monitor.Snapshot)
- `api_seconds` — the downstream simulator's per-second counts at the end of a run:
  `arrivals_per_second`, `accepted_per_second`, `rate_limit`
- `latency` — one file's upload → terminal state: `seconds`
- `rss` — the ProcessObject process's resident memory: `t`, `rss_mb`, `rows_done`, `limit_mb`
- `event` — something that happened to a run, marked on its queue chart: `t`, `text`

Each chart is drawn only when its samples are there. Matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt
import typer
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110
LIMIT_COLOR, TARGET_COLOR = "#c0392b", "#7f8c8d"
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")


@dataclass
class Samples:
    snapshots: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    api_seconds: dict[str, dict[str, Any]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rss: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))


def load_samples(lines: Iterable[str]) -> Samples:
    """Group the records by kind and run; blank or unknown lines are skipped."""
    samples = Samples()
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        kind, run = record.get("kind"), str(record.get("run") or "run")
        if kind == "snapshot":
            samples.snapshots[run].append(record)
        elif kind == "api_seconds":
            samples.api_seconds[run] = record
        elif kind == "latency" and record.get("seconds") is not None:
            samples.latencies[run].append(float(record["seconds"]))
        elif kind == "rss":
            samples.rss[run].append(record)
        elif kind == "event" and record.get("t") is not None:
            samples.events[run].append(record)
    return samples


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank (as `sluice run` and the simulator report them)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def _full_seconds(per_second: Sequence[int]) -> list[int]:
    """The seconds from the first request to the one before the last (the last is partial)."""
    first = next((i for i, n in enumerate(per_second) if n), None)
    if first is None:
        return []
    return list(per_second[first:-1]) if len(per_second) - first > 1 else list(per_second[first:])


def chart_api_rate(samples: Samples, path: Path) -> Path | None:
    """Requests per second at the API, each run against the limit (one panel per run)."""
    runs = list(samples.api_seconds.items())
    if not runs:
        return None
    figure, axes = plt.subplots(
        len(runs), 1, figsize=(10, 2.9 * len(runs)), sharex=True, sharey=True, squeeze=False
    )
    peak = max(max(r.get("arrivals_per_second") or [0]) for _, r in runs)
    longest = max(len(_full_seconds(r.get("arrivals_per_second") or [])) for _, r in runs)
    for axis, (index, (run, record)) in zip(axes[:, 0], enumerate(runs), strict=True):
        limit = float(record.get("rate_limit") or 0)
        arrivals = _full_seconds(record.get("arrivals_per_second") or [])
        seconds = range(len(arrivals))
        axis.bar(seconds, arrivals, width=1.0, color=RUN_COLORS[index % len(RUN_COLORS)], alpha=0.85)
        if limit:
            axis.axhline(limit, color=LIMIT_COLOR, linestyle="--", linewidth=1.5, label=f"limit {limit:g}/s")
            axis.axhline(0.9 * limit, color=TARGET_COLOR, linestyle=":", linewidth=1.2, label="90% of it")
        # The bench's own figure when the record has it: accepted requests over the busy period.
        if record.get("achieved_rate"):
            rate, what = float(record["achieved_rate"]), "requests/s while busy"
        else:
            rate, what = (sum(arrivals) / len(arrivals) if arrivals else 0.0), "requests/s a whole second"
        share = f" = {100 * rate / limit:.0f}% of the limit" if limit else ""
        # The sliding-window maximum when the record has it (per-second buckets can only understate it).
        busiest = f"; busiest second {record['busiest_second']}" if record.get("busiest_second") else ""
        axis.set_title(f"{run}: {rate:.1f} {what}{share}{busiest}", loc="left")
        axis.set_ylabel("requests / s")
        axis.set_xlim(-0.5, max(longest, 1) - 0.5)
        axis.set_ylim(0, max(peak, limit) * 1.35 or 1)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(loc="upper right", fontsize="small", ncol=2)
    axes[-1, 0].set_xlabel("seconds since the first request")
    figure.suptitle("Requests per second reaching the downstream API", fontweight="bold")
    return _save(figure, path)


def _relative(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["t"], r[key]) for r in records if r.get(key) is not None]
    if not points:
        return [], []
    start = records[0]["t"]
    return [t - start for t, _ in points], [float(v) for _, v in points]


def chart_queue(samples: Samples, path: Path) -> Path | None:
    """Queue depth (visible, in flight) and the concurrency setting over time, one panel per run."""
    runs = [(run, records) for run, records in samples.snapshots.items() if records]
    if not runs:
        return None
    figure, axes = plt.subplots(len(runs), 1, figsize=(10, 3.0 * len(runs)), squeeze=False)
    for axis, (run, records) in zip(axes[:, 0], runs, strict=True):
        start = records[0]["t"]
        depth = [
            (r["t"] - start, r["queue_visible"], r["queue_in_flight"])
            for r in records
            if r.get("queue_visible") is not None and r.get("queue_in_flight") is not None
        ]
        if depth:
            times, visible, in_flight = zip(*depth, strict=True)
            axis.stackplot(
                times,
                in_flight,
                visible,
                labels=("being processed (in flight)", "waiting (visible)"),
                colors=("#1f77b4", "#aec7e8"),
                alpha=0.9,
                step="post",
            )
        most = max((v + f for _, v, f in depth), default=1)
        axis.set_ylim(0, most * 1.45)
        axis.set_ylabel("messages")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(axis="y", alpha=0.3)
        right = axis.twinx()
        t_conc, concurrency = _relative(records, "concurrency")
        if concurrency:
            label = "concurrency setting"
            right.step(t_conc, concurrency, where="post", color="#d62728", linewidth=2.2, label=label)
            right.set_ylim(0, max(concurrency) * 1.45)
        right.set_ylabel("concurrency setting", color="#d62728")
        right.tick_params(axis="y", colors="#d62728")
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = axis.get_legend_handles_labels()
        more_handles, more_labels = right.get_legend_handles_labels()
        axis.legend(handles + more_handles, labels + more_labels, loc="upper right", fontsize="small", ncol=3)
        for event in samples.events.get(run, []):
            at = event["t"] - start
            axis.axvline(at, color="black", linestyle=":", linewidth=1)
            axis.annotate(
                str(event.get("text", "")),
                xy=(at, most * 1.1),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize="small",
                va="center",
            )
        axis.set_title(f"{run}: IngestQueue and the live concurrency setting", loc="left")
    axes[-1, 0].set_xlabel("seconds since the first sample")
    figure.tight_layout()
    return _save(figure, path)


def chart_latency(samples: Samples, path: Path) -> Path | None:
    """Upload → terminal state: every file as a dot, the distribution as a step curve, p50/p95."""
    runs = [(run, values) for run, values in samples.latencies.items() if values]
    if not runs:
        return None
    figure, axis = plt.subplots(figsize=(9, 3.6))
    for index, (run, values) in enumerate(runs):
        ordered = sorted(values)
        share = [(i + 1) / len(ordered) for i in range(len(ordered))]
        color = RUN_COLORS[index % len(RUN_COLORS)]
        label = f"{run} ({len(values)} files)"
        axis.step(ordered, share, where="post", color=color, linewidth=2, label=label)
        axis.plot(ordered, share, "o", color=color, markersize=5)
        for fraction, style in ((0.5, "--"), (0.95, ":")):
            value = percentile(values, fraction)
            axis.axvline(value, color=color, linestyle=style, linewidth=1.2)
            axis.annotate(
                f"p{round(fraction * 100)} {value:.1f} s",
                xy=(value, fraction),
                xytext=(6, -12 if fraction > 0.9 else 6),
                textcoords="offset points",
                fontsize="small",
                color=color,
            )
    axis.set_xlabel("seconds from upload to terminal state")
    axis.set_ylabel("share of files finished")
    axis.set_ylim(0, 1.05)
    axis.set_xlim(left=0)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    axis.set_title("End-to-end latency of small files with no backlog", loc="left", fontweight="bold")
    return _save(figure, path)


def chart_memory(samples: Samples, path: Path) -> Path | None:
    """ProcessObject's resident memory while it works through a big file, against MemorySize."""
    runs = [(run, records) for run, records in samples.rss.items() if records]
    if not runs:
        return None
    figure, axis = plt.subplots(figsize=(10, 3.6))
    limit = None
    right: Axes | None = None
    for index, (run, records) in enumerate(runs):
        t, rss = _relative(records, "rss_mb")
        axis.plot(t, rss, color=RUN_COLORS[index % len(RUN_COLORS)], linewidth=2, label=f"{run}: RSS")
        limit = limit or next((r.get("limit_mb") for r in records if r.get("limit_mb")), None)
        t_rows, rows = _relative(records, "rows_done")
        if rows:
            right = right or axis.twinx()
            right.plot(t_rows, [r / 1e6 for r in rows], color=TARGET_COLOR, linestyle="--", label="rows done")
            right.set_ylabel("million rows done", color=TARGET_COLOR)
            right.set_ylim(bottom=0)
    for run, _ in runs:
        start = samples.rss[run][0]["t"]
        for event in samples.events.get(run, []):
            axis.axvline(event["t"] - start, color="black", linestyle=":", linewidth=1)
            axis.annotate(
                str(event.get("text", "")),
                xy=(event["t"] - start, 0.04),
                xycoords=("data", "axes fraction"),
                xytext=(-3, 0),
                textcoords="offset points",
                rotation=90,
                ha="right",
                va="bottom",
                fontsize="x-small",
            )
    if limit:
        axis.axhline(float(limit), color=LIMIT_COLOR, linestyle="--", label=f"MemorySize {limit:g} MB")
        axis.set_ylim(0, float(limit) * 1.15)
    axis.set_ylabel("resident memory (MB)")
    axis.set_xlabel("seconds")
    axis.grid(alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    if right is not None:
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axis.legend(handles, labels, loc="lower right", fontsize="small")
    axis.set_title("ProcessObject memory while it streams one big file", loc="left", fontweight="bold")
    return _save(figure, path)


CHARTS = {
    "api-rate.png": chart_api_rate,
    "queue-concurrency.png": chart_queue,
    "latency.png": chart_latency,
    "memory.png": chart_memory,
}


def make_charts(samples_path: Path, out_dir: Path) -> list[Path]:
    """Every chart the samples allow, written to out_dir; the paths written."""
    with samples_path.open(encoding="utf-8") as lines:
        samples = load_samples(lines)
    written = [chart(samples, out_dir / name) for name, chart in CHARTS.items()]
    return [path for path in written if path is not None]


def report(
    *,
    samples: Annotated[
        Path, typer.Option(help="JSON lines samples (the benchmark's, or `sluice monitor --record`).")
    ] = Path("bench/results/samples.jsonl"),
    out: Annotated[Path, typer.Option(help="Directory for the PNG charts.")] = Path("bench/results"),
) -> None:
    """Charts from a run's samples: API requests/s against the limit, queue depth and concurrency,
    end-to-end latency, ProcessObject memory."""
    if not samples.is_file():
        typer.echo(f"sluice report: {samples} not found (`make bench`, `sluice monitor --record`)", err=True)
        raise typer.Exit(code=2)
    written = make_charts(samples, out)
    if not written:
        typer.echo(f"sluice report: nothing to chart in {samples}", err=True)
        raise typer.Exit(code=1)
    for path in written:
        typer.echo(str(path))
