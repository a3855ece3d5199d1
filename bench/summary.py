"""From the bench's measurements to its figures: cost per design, the printed table. Pure."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from bench.cost import (
    MINUTES_PER_MONTH,
    PRICES_CHECKED,
    US_EAST_1,
    RowLambda,
    Usage,
    api_destinations_usage,
    by_file_rows,
    cost,
    distributed_map_usage,
    fixed_monthly,
    per_million_rows,
)
from bench.utilization import around_the_rows

FILE_SIZES = (400, 10_000, 100_000)  # rows per file: cost.per_million_rows_by_file_rows (issue 14)
# A segment's working time: ProcessObject's Timeout (300 s) less SegmentSafetySeconds (30 s), the
# template's defaults. A lone file gets the whole rate: rows per segment = rate × this.
SEGMENT_SECONDS = 270
ALTERNATIVES = ("api_destinations", "seed", "distributed_map")
MODELS = {
    "sluice": "measured on the run's files; other sizes from its per-file and per-row dollars, "
    "plus one more segment's states and calls per rate × 270 s of rows",
    "seed": "the seed design run on the same files (schedule starts an execution a minute, rows "
    "one by one, concurrency 3); other sizes as for Sluice",
    "distributed_map": "Sluice's measured per-file work without ProcessObject, plus one child "
    "execution (1 transition) and one 128 MB invocation per row (API latency + a row's CPU)",
    "api_destinations": "a 128 MB function reads each file (one invocation, one GET) and puts one "
    "event per row; a rule sends each to an API destination (its own rate limit): per row an event, "
    "an invocation, and the bench's bare loop time per row",
}


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest rank, as `sluice run` and the simulator report them."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def row_lambda(sluice_run: dict[str, Any], cpu: dict[str, Any] | None) -> RowLambda:
    """The per-row function of a one-execution-per-row design: it waits for the API's answer (the
    median service time the simulator measured in the Sluice run) and does one row's CPU work."""
    api_ms = float(sluice_run["api"]["api_latency_ms"].get("p50", 0.0))
    cpu_ms = 1000 / cpu["sluice_rows_per_second"] if cpu and cpu.get("sluice_rows_per_second") else 0.0
    return RowLambda(duration_ms=api_ms + cpu_ms)


def costs(utilization: dict[str, Any], cpu: dict[str, Any] | None) -> dict[str, Any]:
    """Dollars per million rows by file size for Sluice and the alternatives, and what the
    schedules cost a month whatever the load, all priced with one table (bench/cost.py)."""
    sluice, seed = utilization["sluice"], utilization["seed"]
    workload = utilization["workload"]
    per_row = row_lambda(sluice, cpu)
    files, rows = sluice["files_processed"], sluice["api"]["accepted"]
    dmap = distributed_map_usage(around_the_rows(sluice), files=files, rows=rows, row_lambda=per_row)
    splitter = float((cpu or {}).get("bare_loop_seconds_per_row") or 0.0)
    apid = api_destinations_usage(files=files, rows=rows, splitter_seconds_per_row=splitter)
    designs = {
        "sluice": Usage(**sluice["usage"]),
        "seed": Usage(**seed["usage"]),
        "distributed_map": dmap,
        "api_destinations": apid,
    }
    per_million = {name: per_million_rows(usage) for name, usage in designs.items()}
    # What a file costs whatever its size, and what each row adds: the cost at other file sizes.
    file_counts = {"sluice": files, "seed": seed["files_processed"], "distributed_map": files}
    file_counts["api_destinations"] = files
    per_file_usage = {
        "sluice": around_the_rows(sluice),
        "seed": around_the_rows(seed),
        "distributed_map": around_the_rows(sluice),
        "api_destinations": api_destinations_usage(files=1, rows=0, splitter_seconds_per_row=0.0),
    }
    split: dict[str, dict[str, float]] = {}
    for name, usage in designs.items():
        file_dollars = sum(cost(per_file_usage[name]).values())
        row_dollars = (sum(cost(usage).values()) - file_dollars * file_counts[name]) / usage.rows
        split[name] = {"per_file": file_dollars, "per_row": row_dollars}
    rows_per_segment = {
        "sluice": workload["rate_limit"] * SEGMENT_SECONDS,
        "seed": workload["rate_limit"] * SEGMENT_SECONDS,
        "distributed_map": math.inf,  # no segments: a child execution per row
        "api_destinations": math.inf,
    }
    by_size = {
        name: {
            size: round(dollars, 4)
            for size, dollars in by_file_rows(
                parts["per_file"], parts["per_row"], FILE_SIZES, rows_per_segment=rows_per_segment[name]
            ).items()
        }
        for name, parts in split.items()
    }
    fixed: dict[str, float] = {}
    for name, run in (("sluice", sluice), ("seed", seed)):
        monthly = 0.0
        for part in run["fixed"].values():
            monthly += fixed_monthly(Usage(**part), MINUTES_PER_MONTH)  # both schedules: rate(1 minute)
        fixed[name] = round(monthly, 4)
    fixed["distributed_map"] = 0.0  # started by each file's event: no schedule
    fixed["api_destinations"] = 0.0
    measured = str(workload["rows"])
    how = {
        str(size): "measured" if str(size) == measured else "modelled from the measured counts"
        for size in FILE_SIZES
    }
    return {
        "prices_checked": PRICES_CHECKED,
        "prices": asdict(US_EAST_1),
        "per_million_rows_by_file_rows": by_size["sluice"],
        "per_million_rows_by_file_rows_how": how,
        "fixed_monthly": fixed["sluice"],
        "alternatives": {
            name: {
                "per_million_rows_by_file_rows": by_size[name],
                "fixed_monthly": fixed[name],
                "model": MODELS[name],
            }
            for name in ALTERNATIVES
        },
        "model": MODELS["sluice"],
        "per_million_rows": {name: {k: round(v, 4) for k, v in d.items()} for name, d in per_million.items()},
        "per_file_and_per_row_dollars": {n: {k: round(v, 8) for k, v in d.items()} for n, d in split.items()},
        "distributed_map_model": {
            "row_lambda_ms": round(per_row.duration_ms, 1),
            "row_lambda_memory_mb": per_row.memory_mb,
            "transitions_per_row": 1,
        },
        "usage": {name: asdict(usage) for name, usage in designs.items()},
    }


def latency(sluice_run: dict[str, Any]) -> dict[str, Any]:
    """Upload → the API's first request for the file, and → its terminal state: small files one
    at a time, no backlog, each started by its own wake (offline; docs/performance.md)."""
    first = sluice_run.get("first_delivery_seconds") or []
    finished = sluice_run.get("latency_seconds") or []
    return {
        "files": len(finished),
        "first_delivery_p50_seconds": percentile(first, 0.5),
        "first_delivery_p95_seconds": percentile(first, 0.95),
        "finished_p50_seconds": percentile(finished, 0.5),
        "finished_p95_seconds": percentile(finished, 0.95),
        "started_by": "the file's own wake (scheduler paused)",
    }


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"


def _ramp_rows(utilization: dict[str, Any], limit: float) -> list[tuple[str, str, str]]:
    ramp = utilization.get("sluice-ramp")
    if not ramp:
        return []
    api = ramp["api"]
    return [
        (
            "Sluice, concurrency rising mid-run",
            f"{api['achieved_rate']:.1f}/s = {_pct(api['utilization'])}; busiest {api['busiest_second']}; "
            f"429s {api['throttled_429']}",
            "setting " + " → ".join(str(c) for c in ramp["concurrency_seen"]) + f", limit {limit:g}",
        )
    ]


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, how it was measured) for the printed table."""
    rows: list[tuple[str, str, str]] = []
    utilization = results.get("utilization")
    if utilization:
        limit = utilization["workload"]["rate_limit"]
        sluice, seed = utilization["sluice"]["api"], utilization["seed"]["api"]
        rows += [
            (
                "Sluice: achieved rate ÷ limit",
                f"{sluice['achieved_rate']:.1f}/s ÷ {limit:g}/s = {_pct(sluice['utilization'])}",
                f"backlog of {utilization['workload']['files']} files, {sluice['busy_seconds']:.0f} s busy",
            ),
            (
                "Sluice: median second / seconds ≥ 90%",
                f"{sluice['median_per_second']}/s; {_pct(sluice['share_of_seconds_at_90_percent'])} of them",
                "whole seconds from the first request to the last",
            ),
            (
                "Sluice: busiest one-second window",
                f"{sluice['busiest_second']} (limit {limit:g})",
                "sliding, every request the API received",
            ),
            (
                "Sluice: 429s / duplicates",
                f"{sluice['throttled_429']} / {sluice['duplicates']}",
                "API simulator",
            ),
            (
                "Sluice: concurrency setting seen",
                " → ".join(str(c) for c in utilization["sluice"]["concurrency_seen"]) or "?",
                "ScaleConcurrency during the run (SSM)",
            ),
            *_ramp_rows(utilization, limit),
            (
                "Seed design: achieved rate ÷ limit",
                f"{seed['achieved_rate']:.1f}/s = {_pct(seed['utilization'])}",
                f"{utilization['seed']['files_processed']} files, rows one by one, concurrency 3",
            ),
            (
                "Sluice ÷ seed (rate)",
                f"{sluice['achieved_rate'] / seed['achieved_rate']:.1f}×" if seed["achieved_rate"] else "?",
                "same files, same run of the bench",
            ),
            ("Seed: busiest second / 429s", f"{seed['busiest_second']} / {seed['throttled_429']}", ""),
        ]
    timing = results.get("latency")
    if timing and timing.get("files"):
        rows += [
            (
                "Latency upload → first delivery, p50 / p95",
                f"{timing['first_delivery_p50_seconds']:.2f} s"
                f" / {timing['first_delivery_p95_seconds']:.2f} s",
                f"{timing['files']} small files one at a time, no backlog, woken by their upload",
            ),
            (
                "Latency upload → finished, p50 / p95",
                f"{timing['finished_p50_seconds']:.2f} s / {timing['finished_p95_seconds']:.2f} s",
                "same files (offline stack)",
            ),
        ]
    cpu = results.get("cpu")
    if cpu:
        rows += [
            (
                "CPU per row: Sluice ÷ bare loop",
                f"{cpu['ratio_to_bare_loop']:.2f}",
                f"{cpu['sluice_cpu_seconds_per_row'] * 1e6:.0f} µs"
                f" ÷ {cpu['bare_loop_seconds_per_row'] * 1e6:.0f} µs CPU; csv.reader → json.dumps →"
                f" urllib3 keep-alive POST; median of {cpu['repeats']}",
            ),
        ]
    merge = results.get("output")
    if merge:
        rows.append(
            (
                f"WriteOutput: merge of {merge['rows']:,} rows",
                f"{merge['merge_seconds']:.0f} s",
                f"{merge['parts']:,} parts ({merge['accepted_bytes'] / 1024**2:,.0f} MiB) into "
                f"{merge['upload_parts']} upload parts, {merge['workers']} threads, "
                f"{merge.get('calls', 1)} call(s) of {merge.get('call_timeout_seconds', 120):.0f} s; "
                "moto in-process"
                + (f", +{merge['latency_ms']:.0f} ms per S3 call" if merge.get("latency_ms") else ""),
            )
        )
        worst = merge.get("worst_case")
        if worst:
            rows.append(
                (
                    f"WriteOutput: {worst['rows']:,} rows (modelled)",
                    f"{worst['aws_calls']} of {worst['max_calls']} calls",
                    f"{worst['output_gb']} GB at {worst['aws_assumed_mb_per_second']:.0f} MB/s (assumed for "
                    f"Lambda); {worst['moto_calls']} calls at moto's measured "
                    f"{worst['moto_mb_per_second']} MB/s; needs {worst['rate_needed_mb_per_second']} MB/s",
                )
            )
    memory = results.get("memory")
    if memory:
        size = memory["file_bytes"] / 1024**3
        earlier = results.get("carried_over", {}).get("memory")
        when = f"; the run of {earlier}" if earlier else ""
        rows += [
            (
                f"Memory: peak RSS, {size:.2f} GiB file",
                f"{memory['peak_rss_mb']:.0f} MB of {memory['memory_size_mb']} MB",
                f"{memory['segments']} invocations, {memory['rows_processed']:,} rows, VmHWM{when}",
            ),
            (
                "Memory: time for the file",
                f"{memory['process_seconds'] / 60:.1f} min ({memory['rows_per_second']:,} rows/s)",
                "instant API; CPU-bound on this machine",
            ),
        ]
    cost = results.get("cost")
    if cost:
        sizes = cost["per_million_rows_by_file_rows"]
        how = cost.get("per_million_rows_by_file_rows_how", {})
        rows.append(
            (
                "Cost per million rows: Sluice",
                " / ".join(f"${v:.2f}" for v in sizes.values()),
                "files of "
                + " / ".join(f"{int(k):,}" for k in sizes)
                + " rows; "
                + ", ".join(f"{k}: {v}" for k, v in how.items() if v == "measured")
                + f"; +${cost['fixed_monthly']:.2f}/month fixed",
            )
        )
        labels = {
            "api_destinations": "EventBridge API destinations",
            "seed": "Seed design",
            "distributed_map": "Distributed Map, 1 execution/row",
        }
        for name, label in labels.items():
            alternative = cost["alternatives"][name]
            rows.append(
                (
                    f"Cost per million rows: {label}",
                    " / ".join(f"${v:.2f}" for v in alternative["per_million_rows_by_file_rows"].values()),
                    f"same sizes, same prices; +${alternative['fixed_monthly']:.2f}/month fixed",
                )
            )
    return rows
