"""`make load` → `python -m bench.load`: locust, headless, against the offline stack.

Starts `sluice local up` in the background (its own outputs file, any free port), waits for the
outputs file and the endpoint, runs loadtest/locustfile.py headless (-u/-r/-t small), and always
stops the stack by the PID it started, whatever happened. Every wait has a deadline. The locust
CSV files and a summary (load.json) go to bench/results/. Exit code: locust's (1 when a request
failed, e.g. a file that did not reach its expected state in time).

For a deployed stack, run locust yourself (loadtest/README.md):
    .venv/bin/locust -f loadtest/locustfile.py --headless -u 20 -r 2 -t 15m --stack-name sluice-dev
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import Background, ProcessError
from sluice_cli.commands.target import endpoint_alive

ROOT = Path(__file__).resolve().parents[1]
STACK_START_SECONDS = 120.0
STACK_STOP_SECONDS = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", "-u", type=int, default=5, help="locust users: files in flight at once")
    parser.add_argument("--spawn-rate", "-r", type=float, default=5.0)
    parser.add_argument("--run-time", "-t", default="45s", help="locust's --run-time")
    parser.add_argument("--rows", type=int, default=50, help="rows per uploaded file")
    parser.add_argument("--upload-wait", type=float, default=1.0, help="seconds between a user's files")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds for a file to reach its end")
    parser.add_argument(
        "--api-rate", type=float, default=None, help="the simulator's limit (and ApiRateLimit)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


def seconds_of(run_time: str) -> float:
    """locust's --run-time (`45s`, `2m`, `1h30m`, `90`) in seconds."""
    total, number = 0.0, ""
    for char in run_time.strip():
        if char.isdigit() or char == ".":
            number += char
            continue
        total += float(number or 0) * {"h": 3600, "m": 60, "s": 1}[char]
        number = ""
    return total + float(number or 0)


def locust_summary(stats_csv: Path) -> list[dict[str, Any]]:
    """The rows of locust's `<prefix>_stats.csv` that matter here, per request type and name."""
    rows = []
    with stats_csv.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append(
                {
                    "type": row["Type"],
                    "name": row["Name"],
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "median_ms": float(row["Median Response Time"] or 0),
                    "p95_ms": float(row["95%"] or 0) if row.get("95%") not in (None, "N/A") else None,
                    "max_ms": float(row["Max Response Time"] or 0),
                    "requests_per_second": float(row["Requests/s"] or 0),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    state = ROOT / ".sluice" / "load"
    state.mkdir(parents=True, exist_ok=True)
    outputs = state / "outputs.json"
    outputs.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "sluice_cli.main",
        "local",
        "up",
        "--port",
        "0",
        "--outputs",
        str(outputs),
    ]
    if args.api_rate is not None:
        command += ["--api-rate", f"{args.api_rate:g}"]
    stack = Background(command, log_path=state / "stack.log", cwd=ROOT)
    code = 2
    began = time.monotonic()
    try:
        stack.start()
        print(f"offline stack starting (PID {stack.pid}, log {stack.log_path})…", flush=True)
        stack.wait_for(r"Offline stack \S+ is up", timeout=STACK_START_SECONDS, what="the offline stack")
        endpoint = json.loads(outputs.read_text(encoding="utf-8"))["EndpointUrl"]
        if not endpoint_alive(endpoint):
            raise ProcessError(f"the stack wrote {outputs} but nothing answers at {endpoint}")
        print(f"offline stack up at {endpoint} in {time.monotonic() - began:.1f} s", flush=True)
        prefix = out / "load"
        locust = Background(
            [
                sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
                "-u", str(args.users), "-r", f"{args.spawn_rate:g}", "-t", args.run_time,
                "--stop-timeout", f"{args.deadline:g}", "--csv", str(prefix), "--only-summary",
                "--outputs", str(outputs), "--rows", str(args.rows),
                "--upload-wait", f"{args.upload_wait:g}", "--deadline", f"{args.deadline:g}",
            ],
            log_path=state / "locust.log",
            cwd=ROOT,
        )  # fmt: skip
        with locust:
            limit = seconds_of(args.run_time) + args.deadline + 60  # run, users finishing, start-up
            exit_code = locust.wait(limit)
            if exit_code is None:
                raise ProcessError(f"locust still running after {limit:.0f} s; see {locust.log_path}")
            code = exit_code
        print(locust.output()[-4000:], flush=True)
        summary = {"users": args.users, "run_time": args.run_time, "rows_per_file": args.rows}
        summary["stats"] = locust_summary(prefix.with_name(prefix.name + "_stats.csv"))
        (out / "load.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"locust exit code {code}; summary in {out / 'load.json'}", flush=True)
    except ProcessError as error:
        print(f"make load: {error}", file=sys.stderr, flush=True)
        print(stack.output()[-3000:], file=sys.stderr, flush=True)
    finally:
        stopped = stack.stop(grace=STACK_STOP_SECONDS)
        print(f"offline stack stopped (exit {stopped})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
