"""`make bench` → `python -m bench`: the benchmark. Prints a table, writes bench/results/latest.json,
the samples (bench/results/samples.jsonl) and their charts (sluice_cli.report).

Parts, each skippable with --skip: `cpu` (ProcessObject's CPU per row ÷ a bare loop's: seconds),
`utilization` (Sluice and the seed's design on the offline stack, plus latency, woken by each
upload, and the counts the cost comes from: a few minutes), `memory`
(ProcessObject through a --memory-size-gb file: long, CPU-bound; see docs/performance.md),
`hostile` (ProcessObject through a --hostile-size-mb file of hostile records: peak RSS),
`output` (WriteOutput's merge of a --output-rows file's parts on moto: minutes), `nginx` (the
pacing judged by stock nginx's limit_req, issue 11's table: about 12 minutes; alone:
`python -m bench.nginx`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import cpupath, memory, nginx, output, summary
from bench.utilization import Workload, ramp_design, run_design, seed_design, sluice_design
from sluice_cli.report import make_charts

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("cpu", "utilization", "memory", "hostile", "output", "nginx")
STATE = ROOT / ".sluice" / "bench"  # the stacks' logs and state, the memory part's scratch files
Record = Callable[[dict[str, Any]], None]
Say = Callable[[str], None]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
        "git_commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        command = ["git", "rev-parse", "--short", "HEAD"]
        answer = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return answer.stdout.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--files", type=int, default=6, help="files in the backlog (utilization)")
    parser.add_argument("--rows", type=int, default=400, help="rows per file (utilization)")
    parser.add_argument("--rate", type=float, default=50.0, help="the API's limit, requests/s")
    parser.add_argument("--latency", default="0.1-0.3", help="the API's latency MIN-MAX, seconds")
    parser.add_argument("--seed-budget", type=float, default=40.0, help="seconds of the seed's backlog")
    parser.add_argument("--latency-files", type=int, default=8, help="small files timed one at a time")
    parser.add_argument("--cpu-rows", type=int, default=20_000)
    parser.add_argument("--cpu-repeats", type=int, default=5)
    parser.add_argument("--memory-size-gb", type=float, default=1.0, help="size of the memory part's file")
    parser.add_argument("--hostile-size-mb", type=int, default=64, help="size of the hostile part's file")
    parser.add_argument(
        "--output-rows", type=int, default=output.DEFAULT_ROWS, help="rows of the output part's file"
    )
    parser.add_argument(
        "--output-latency-ms", type=float, default=0, help="a wait before each S3 call (output)"
    )
    parser.add_argument(
        "--output-call-seconds",
        type=float,
        default=None,
        help="each WriteOutput call's time, instead of its Timeout: shorter shows the merge over calls",
    )
    parser.add_argument("--nginx-rates", default="50,200", help="limits of the nginx part's cases")
    parser.add_argument("--nginx-runs", type=int, default=3, help="runs per nginx case (medians)")
    parser.add_argument("--skip", action="append", default=[], choices=PARTS, help="leave a part out")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--docs-img", type=Path, default=None, help="also copy the charts here (docs/img)")
    parser.add_argument(
        "--keep-skipped",
        action="store_true",
        help="a skipped part keeps its figures and samples from the previous run in --out (dated)",
    )
    return parser.parse_args(argv)


def run_parts(args: argparse.Namespace, record: Record, say: Say) -> dict[str, Any]:
    """Each part in turn; after each, what there is so far goes to latest.json (a long memory
    part that fails does not lose the others)."""
    low, _, high = args.latency.partition("-")
    workload = Workload(
        files=args.files,
        rows=args.rows,
        rate_limit=args.rate,
        latency=(float(low), float(high or low)),
        latency_files=args.latency_files,
    )
    results: dict[str, Any] = {"machine": machine(), "timings_seconds": {}}
    timings = results["timings_seconds"]
    if "cpu" not in args.skip:
        say("CPU path…")
        began = time.monotonic()
        results["cpu"] = cpupath.measure(args.cpu_rows, args.cpu_repeats, log_dir=STATE)
        timings["cpu"] = round(time.monotonic() - began, 1)
        write_results(args.out, results)
    if "utilization" not in args.skip:
        began = time.monotonic()
        results["utilization"] = {"workload": asdict(workload)}
        for design in (sluice_design(), ramp_design(), seed_design(args.seed_budget)):
            say(f"utilization: {design.name}…")
            state_dir = STATE / design.name
            shutil.rmtree(state_dir, ignore_errors=True)
            results["utilization"][design.name] = run_design(
                ROOT, design, workload, state_dir=state_dir, record=record, say=say
            )
        results["cost"] = summary.costs(results["utilization"], results.get("cpu"))
        results["latency"] = summary.latency(results["utilization"]["sluice"])
        timings["utilization"] = round(time.monotonic() - began, 1)
        write_results(args.out, results)
    if "output" not in args.skip:
        say(f"output: WriteOutput's merge of {args.output_rows:,} rows' parts…")
        began = time.monotonic()
        results["output"] = output.measure(
            args.output_rows, latency_ms=args.output_latency_ms, call_seconds=args.output_call_seconds
        )
        timings["output"] = round(time.monotonic() - began, 1)
        write_results(args.out, results)
    if "nginx" not in args.skip:
        say("nginx: the pacing judged by limit_req…")
        began = time.monotonic()
        rates = [int(rate) for rate in args.nginx_rates.split(",")]
        results["nginx"] = nginx.measure(
            rates=rates, seconds=20, runs=args.nginx_runs, invocations=3, threads=6, say=say
        )
        timings["nginx"] = round(time.monotonic() - began, 1)
        write_results(args.out, results)
    if "memory" not in args.skip:
        began = time.monotonic()
        size = int(args.memory_size_gb * 1024**3)
        STATE.mkdir(parents=True, exist_ok=True)
        results["memory"] = memory.measure(size, root=ROOT, work_dir=STATE, record=record, say=say)
        timings["memory"] = round(time.monotonic() - began, 1)
        write_results(args.out, results)
    if "hostile" not in args.skip:
        began = time.monotonic()
        STATE.mkdir(parents=True, exist_ok=True)
        hostile = memory.measure_hostile(
            args.hostile_size_mb * 1024**2, root=ROOT, work_dir=STATE, record=record, say=say
        )
        results["memory_hostile"] = hostile
        timings["hostile"] = round(time.monotonic() - began, 1)
        say(
            f"hostile records: peak RSS {hostile['peak_rss_mb']:.0f} MB of {hostile['memory_size_mb']} MB "
            f"(VmHWM) through {hostile['file_bytes'] / 1024**2:.0f} MiB; "
            f"{hostile['rows_delivered']} of {hostile['good_rows']} good rows delivered"
        )
    return results


def write_results(out: Path, results: dict[str, Any]) -> Path:
    path = out / "latest.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def print_table(results: dict[str, Any], console: Console) -> None:
    host = results["machine"]
    table = Table(title=f"Sluice benchmark ({host['nproc']} cores, {host['cpu_model']}, {host['date']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("how", style="dim")
    for row in summary.table_rows(results):
        table.add_row(*row)
    console.print(table)


@dataclass
class Carried:
    """What a skipped part keeps from the previous run: its results, its samples, that run's date."""

    results: dict[str, Any] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    date: str = ""


def carried_over(out: Path, skipped: list[str]) -> Carried:
    """The previous run's figures and samples of the parts skipped now (the memory part takes
    hours; the others can be rerun without losing it)."""
    try:
        previous = json.loads((out / "latest.json").read_text(encoding="utf-8"))
        lines = (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return Carried()
    keys = {
        "cpu": ["cpu"],
        "utilization": ["utilization", "cost", "latency"],
        "memory": ["memory"],
        "hostile": ["memory_hostile"],
        "output": ["output"],
        "nginx": ["nginx"],
    }
    results = {key: previous[key] for part in skipped for key in keys[part] if key in previous}
    runs: set[str] = set()
    if "memory" in skipped and "memory" in previous:
        runs.add("ProcessObject")
    if "hostile" in skipped and "memory_hostile" in previous:
        runs.add("ProcessObject (hostile)")
    if "utilization" in skipped and "utilization" in previous:
        runs.update(name for name in previous["utilization"] if name != "workload")
    samples = [line for line in lines if line.strip() and json.loads(line).get("run") in runs]
    return Carried(results, samples, previous.get("machine", {}).get("date", ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / "samples.jsonl"
    kept = carried_over(out, args.skip) if args.keep_skipped else Carried()
    began = time.monotonic()
    with samples_path.open("w", encoding="utf-8") as samples:
        for line in kept.samples:
            samples.write(line + "\n")

        def record(item: dict[str, Any]) -> None:
            samples.write(json.dumps(item) + "\n")
            samples.flush()

        def say(text: str) -> None:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")

        results = run_parts(args, record, say)
    results.update(kept.results)
    if kept.results:
        results["carried_over"] = dict.fromkeys(kept.results, kept.date)
    results["timings_seconds"]["total"] = round(time.monotonic() - began, 1)
    charts = make_charts(samples_path, out)
    if args.docs_img is not None:
        args.docs_img.mkdir(parents=True, exist_ok=True)
        for chart in charts:
            shutil.copy2(chart, args.docs_img / chart.name)
    results["charts"] = [str(path) for path in charts]
    write_results(out, results)
    print_table(results, console)
    console.print(f"Results: {out / 'latest.json'}; charts: {', '.join(c.name for c in charts) or 'none'}")
    console.print(f"Took {results['timings_seconds']['total'] / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
