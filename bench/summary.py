"""From the bench's measurements to its figures: cost per design, the printed table. Pure."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from bench.cost import (
    MILLION,
    MINUTES_PER_MONTH,
    PRICES_CHECKED,
    US_EAST_1,
    RowLambda,
    Usage,
    cost,
    distributed_map_usage,
    fixed_monthly,
    per_million_rows,
)
from bench.utilization import around_the_rows

FILE_SIZES = (100, 1_000, 10_000)  # rows per file, for the cost at other file sizes


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
    """Dollars per million rows for Sluice, the seed's design and a Distributed Map, and what the
    schedules cost a month whatever the load."""
    sluice, seed = utilization["sluice"], utilization["seed"]
    per_row = row_lambda(sluice, cpu)
    dmap = distributed_map_usage(
        around_the_rows(sluice),
        files=sluice["files_processed"],
        rows=sluice["api"]["accepted"],
        row_lambda=per_row,
    )
    designs = {
        "sluice": Usage(**sluice["usage"]),
        "seed": Usage(**seed["usage"]),
        "distributed_map": dmap,
    }
    per_million = {name: per_million_rows(usage) for name, usage in designs.items()}
    # What a file costs whatever its size, and what each row adds: the cost at other file sizes.
    files = {"sluice": sluice["files_processed"], "seed": seed["files_processed"]}
    files["distributed_map"] = files["sluice"]
    per_file_usage = {"sluice": around_the_rows(sluice), "seed": around_the_rows(seed)}
    per_file_usage["distributed_map"] = per_file_usage["sluice"]
    split: dict[str, dict[str, float]] = {}
    for name, usage in designs.items():
        file_dollars = sum(cost(per_file_usage[name]).values())
        row_dollars = (sum(cost(usage).values()) - file_dollars * files[name]) / usage.rows
        split[name] = {"per_file": file_dollars, "per_row": row_dollars}
    by_file_size = {
        name: {
            str(size): round(MILLION * (parts["per_row"] + parts["per_file"] / size), 2)
            for size in FILE_SIZES
        }
        for name, parts in split.items()
    }
    fixed: dict[str, float] = {}
    for name, run in (("sluice", sluice), ("seed", seed)):
        monthly = 0.0
        for part in run["fixed"].values():
            monthly += fixed_monthly(Usage(**part), MINUTES_PER_MONTH)  # both schedules: rate(1 minute)
        fixed[name] = round(monthly, 2)
    fixed["distributed_map"] = 0.0  # started by each file's event: no schedule
    return {
        "prices_checked": PRICES_CHECKED,
        "prices": asdict(US_EAST_1),
        "per_million_rows": {name: {k: round(v, 4) for k, v in d.items()} for name, d in per_million.items()},
        "per_file_and_per_row_dollars": {n: {k: round(v, 8) for k, v in d.items()} for n, d in split.items()},
        "per_million_rows_by_rows_per_file": by_file_size,
        "fixed_per_month": fixed,
        "distributed_map_model": {
            "row_lambda_ms": round(per_row.duration_ms, 1),
            "row_lambda_memory_mb": per_row.memory_mb,
            "transitions_per_row": 1,
            "per_file_from": "Sluice's measured per-file usage without ProcessObject and the rate bucket",
        },
        "usage": {name: asdict(usage) for name, usage in designs.items()},
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
        latency = utilization["sluice"].get("latency_seconds") or []
        if latency:
            rows.append(
                (
                    "Latency upload → terminal, p50 / p95",
                    f"{percentile(latency, 0.5):.1f} s / {percentile(latency, 0.95):.1f} s",
                    f"{len(latency)} files of {utilization['workload']['latency_rows']} rows, no backlog",
                )
            )
    cpu = results.get("cpu_path")
    if cpu:
        rows += [
            (
                "CPU path: Sluice rows/s",
                f"{cpu['sluice_rows_per_second']:,}",
                f"parse+validate+transform+client, instant API; median of {cpu['repeats']}",
            ),
            ("CPU path: csv.reader rows/s", f"{cpu['csv_reader_rows_per_second']:,}", "same bytes"),
            ("CPU path: ratio", f"{cpu['ratio']:.3f}", "Sluice ÷ csv.reader"),
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
        names = {
            "sluice": "Sluice",
            "seed": "Seed design",
            "distributed_map": "Distributed Map, 1 execution/row",
        }
        for name, label in names.items():
            per_million = cost["per_million_rows"][name]
            top = sorted(((v, k) for k, v in per_million.items() if k != "total"), reverse=True)[:2]
            rows.append(
                (
                    f"Cost per million rows: {label}",
                    f"${per_million['total']:.2f}",
                    "; ".join(f"{k} ${v:.2f}" for v, k in top)
                    + f"; +${cost['fixed_per_month'][name]:.2f}/month fixed",
                )
            )
    return rows
