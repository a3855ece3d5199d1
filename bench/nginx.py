"""Sluice's pacing judged by stock nginx's limit_req (issue 11): `python -m bench.nginx`.

What runs is ProcessObject's delivery path without the rest of the pipeline: `invocations`
processes (one per ProcessObject invocation, as on Lambda, `threads` worker threads each), each
with its RateLimiter on one ControlTable item (moto's server on 127.0.0.1), each thread POSTing
rows through DownstreamClient + HttpTransport (urllib3, real sockets) to nginx on 127.0.0.1.
nginx refuses with 429 what its leaky bucket says came too soon and logs every arrival; its log
is the verdict. The offline
stack's other work (S3, Step Functions, checkpoints) is left out on purpose: it would make the
load bursty and measure moto, not the limiter (tests/integration/test_nginx_judge.py runs the
whole stack against nginx).

Cases (the issue's table): nginx's policy and the one Sluice is told, at 50/s and 200/s:
declared the same with burst 5; strict spacing (burst 0); nginx at 70% of what Sluice is told
(a quota shared with another client), where the figures count after `converge_seconds`.

Figures per case (medians over `runs`): accepted/s over the limit, 429s, the busiest sliding
second, rows answered 2xx more than once, DynamoDB writes per 1,000 requests, and the lateness
the pacing used (wake-up p99, trip spread p99, the tolerated lateness) at the end of the run.
Written to bench/results/latest.json under "nginx".
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from sluice.downstream import DownstreamClient, HttpTransport, RetryPolicy
from sluice.ratelimit import ApiPolicy, SystemClock, shared_limiter
from sluice_cli.nginx_judge import Arrival, LimitPolicy, NginxJudge, _free_port, judge

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "latest.json"
KEY = "nginx"  # this part's key in latest.json


@dataclass(frozen=True)
class Case:
    name: str
    nginx: LimitPolicy  # what the API enforces
    declared: ApiPolicy  # what Sluice is told
    seconds: float
    converge_seconds: float = 0.0  # figures count arrivals after this (a limit lower than declared)


def cases(rates: list[int], seconds: float) -> list[Case]:
    out = []
    for rate in rates:
        low = int(rate * 0.7)
        out += [
            Case(f"{rate}/s burst 5, declared the same", LimitPolicy(rate, 5), ApiPolicy(rate, 5), seconds),
            Case(f"{rate}/s burst 0, declared the same", LimitPolicy(rate, 0), ApiPolicy(rate, 0), seconds),
            Case(
                f"{low}/s burst 5, told {rate}/s",
                LimitPolicy(low, 5),
                ApiPolicy(rate, 5),
                seconds + 10,
                converge_seconds=10,
            ),
        ]
    return out


class CountingTable:
    """The ControlTable, counting the writes and reads the limiter makes (its cost on DynamoDB)."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.writes = 0
        self.reads = 0
        self._lock = threading.Lock()

    def update_item(self, **kwargs: Any) -> Any:
        with self._lock:
            self.writes += 1
        return self._table.update_item(**kwargs)

    def get_item(self, **kwargs: Any) -> Any:
        with self._lock:
            self.reads += 1
        return self._table.get_item(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def _dynamodb(endpoint: str) -> Any:
    return boto3.resource(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - moto's, on 127.0.0.1
    )


@dataclass(frozen=True)
class Invocation:
    """What one invocation's process is given (picklable, for multiprocessing's spawn)."""

    endpoint: str  # moto's server
    url: str  # nginx
    declared: ApiPolicy
    threads: int
    first_row: int
    seconds: float


def invocation(job: Invocation, go: Any, out: Any) -> None:
    """One ProcessObject invocation in its own process (as on Lambda: its own interpreter, its own
    GIL): `threads` workers delivering rows for `seconds` once `go` is set, on the shared
    ControlTable; what it did goes to `out`."""
    table = CountingTable(_dynamodb(job.endpoint).Table("ControlTable"))
    limiter = shared_limiter(table, policy=job.declared, clock=SystemClock())
    transport = HttpTransport(job.url, pool_size=job.threads, timeout_seconds=5)
    client = DownstreamClient(transport, limiter, policy=RetryPolicy(max_attempts=5))
    rows = iter(range(job.first_row, job.first_row + 10**8))
    rows_lock = threading.Lock()
    stop = threading.Event()
    delivered: list[int] = []
    failed: list[str] = []

    def worker() -> None:
        while not stop.is_set():
            with rows_lock:
                row = next(rows)
            try:
                client.deliver(b'{"row": %d}' % row, f"row-{row:012d}", stop=stop, order=row)
                delivered.append(row)
            except Exception as error:  # abandoned at the end of the run, or a real failure
                if not stop.is_set():
                    failed.append(f"{type(error).__name__}: {error}")

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(job.threads)]
    out.put("ready")
    go.wait()  # every invocation starts at once, after all have imported and set up
    for thread in workers:
        thread.start()
    time.sleep(job.seconds)
    stop.set()
    for thread in workers:
        thread.join(timeout=30)
    client.idle()  # as a segment's end does (delivery.py): a lease's unused slots go back
    out.put(
        {
            "stats": limiter.stats(),
            "writes": table.writes,
            "reads": table.reads,
            "delivered": len(delivered),
            "failed": failed,
        }
    )


def run_case(case: Case, *, invocations: int, threads: int, workdir: Path) -> dict[str, Any]:
    """One run of `case`: a fresh nginx, a fresh DynamoDB (moto's server) and `invocations`
    processes sharing its ControlTable."""
    port = _free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        # moto's backends are process-wide: the last run's table is still there
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310 - moto on 127.0.0.1
        _dynamodb(endpoint).create_table(
            TableName="ControlTable",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        with NginxJudge(case.nginx, workdir) as nginx:
            context = multiprocessing.get_context("spawn")
            out, go = context.Queue(), context.Event()
            processes = [
                context.Process(
                    target=invocation,
                    args=(
                        Invocation(
                            endpoint, f"{nginx.url}/rows", case.declared, threads, n * 10**8, case.seconds
                        ),
                        go,
                        out,
                    ),
                )
                for n in range(invocations)
            ]
            for process in processes:
                process.start()
            # the processes' start-up (spawn imports boto3 and Powertools) is not measured
            for _ in processes:
                assert out.get(timeout=120) == "ready"
            go.set()
            reports = [out.get(timeout=case.seconds + 120) for _ in processes]
            for process in processes:
                process.join(timeout=30)
            arrivals = nginx.arrivals(at_least=sum(report["delivered"] for report in reports))
    finally:
        moto.stop()
    return figures(case, arrivals, reports)


def figures(case: Case, arrivals: list[Arrival], reports: list[dict[str, Any]]) -> dict[str, Any]:
    everything = judge(arrivals)
    first = everything.first_arrival or 0.0
    settled = judge([a for a in arrivals if a.at >= first + case.converge_seconds])
    stats = [report["stats"] for report in reports]
    writes = sum(report["writes"] for report in reports)
    reads = sum(report.get("reads", 0) for report in reports)
    failed = [failure for report in reports for failure in report["failed"]]
    return {
        "requests": everything.requests,
        "accepted": everything.accepted,
        "refused_429": everything.refused_429,
        "refused_share": round(everything.refused_429 / max(1, everything.requests), 4),
        "busiest_second": everything.busiest_second,
        "busiest_accepted_second": everything.busiest_accepted_second,
        "rows_answered_twice": everything.duplicate_keys,
        "rows_delivered": sum(report["delivered"] for report in reports),
        "rows_failed": len(failed),
        "failures": failed[:3],
        # after convergence (the whole run when converge_seconds is 0)
        "settled_accepted_per_second": round(settled.accepted_rate, 2),
        "settled_of_limit": round(settled.accepted_rate / case.nginx.rate, 4),
        "settled_refused_429": settled.refused_429,
        "settled_refused_share": round(settled.refused_429 / max(1, settled.requests), 4),
        "dynamodb_writes": writes,
        "dynamodb_writes_per_1000_requests": round(1000 * writes / max(1, everything.requests), 1),
        "dynamodb_reads": reads,
        "dynamodb_reads_per_1000_requests": round(1000 * reads / max(1, everything.requests), 1),
        "leases": sum(int(s.get("leases", 0)) for s in stats),
        "given_back": sum(int(s.get("given_back", 0)) for s in stats),
        "slots_claimed": sum(int(s.get("claimed", 0)) for s in stats),
        "paced_rate_at_end": min(s["rate"] for s in stats),
        "rate_decreases": sum(int(s["decreases"]) for s in stats),
        "lateness_ms": max(s["lateness_ms"] for s in stats),
        "wake_p99_ms": max(s["wake_p99_ms"] for s in stats),
        "trip_spread_p99_ms": max(s["trip_spread_p99_ms"] for s in stats),
        "interval_ms": max(s["interval_ms"] for s in stats),
        "forfeited": sum(int(s["forfeited"]) for s in stats),
        "expired": sum(int(s["expired"]) for s in stats),
    }


MEDIAN_OF = (
    "settled_of_limit",
    "settled_accepted_per_second",
    "refused_429",
    "refused_share",
    "settled_refused_share",
    "busiest_second",
    "busiest_accepted_second",
    "rows_answered_twice",
    "dynamodb_writes_per_1000_requests",
    "dynamodb_reads_per_1000_requests",
    "lateness_ms",
    "wake_p99_ms",
    "trip_spread_p99_ms",
    "interval_ms",
    "paced_rate_at_end",
    "load_average_1m",
)


def measure(
    *, rates: list[int], seconds: float, runs: int, invocations: int, threads: int, say: Any = print
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "how": {"invocations": invocations, "threads_each": threads, "seconds": seconds, "runs": runs},
        "cases": {},
    }
    for case in cases(rates, seconds):
        each = []
        for number in range(runs):
            with tempfile.TemporaryDirectory(prefix="sluice-nginx-") as workdir:
                each.append(run_case(case, invocations=invocations, threads=threads, workdir=Path(workdir)))
            last = each[-1]
            last["load_average_1m"] = round(os.getloadavg()[0], 2)  # the machine is shared: say how busy
            say(
                f"{case.name} run {number + 1}: {last['settled_of_limit']:.3f} of the limit, "
                f"{last['refused_429']} × 429, busiest {last['busiest_second']}, "
                f"lateness {last['lateness_ms']} ms, {last['dynamodb_writes_per_1000_requests']} writes and "
                f"{last['dynamodb_reads_per_1000_requests']} reads / 1,000 requests, "
                f"load {last['load_average_1m']}"
            )
        median = {name: statistics.median(run[name] for run in each) for name in MEDIAN_OF}
        results["cases"][case.name] = {
            "nginx": asdict(case.nginx),
            "declared": {"rate": case.declared.rate, "burst": case.declared.burst},
            "converge_seconds": case.converge_seconds,
            "median": median,
            "runs": each,
        }
    return results


def markdown(results: dict[str, Any]) -> str:
    """The table docs/performance.md shows, from `measure`'s results (medians)."""
    lines = [
        "| case | accepted ÷ limit | 429s (share; after convergence) | busiest sliding second "
        "| rows 2xx twice | DynamoDB writes (reads) / 1,000 requests | lateness paced for "
        "(wake p99 + trip spread p99) | interval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, case in results["cases"].items():
        m, limit = case["median"], case["nginx"]["rate"]
        after = f" after {case['converge_seconds']:g} s" if case["converge_seconds"] else ""
        lines.append(
            f"| {name} | **{m['settled_of_limit']:.3f}**{after} ({m['settled_accepted_per_second']:.1f}/s "
            f"of {limit}) | {m['refused_429']:g} ({100 * m['refused_share']:.2f}%; "
            f"{100 * m['settled_refused_share']:.2f}%) | {m['busiest_second']:g} (limit {limit}) "
            f"| {m['rows_answered_twice']:g} | {m['dynamodb_writes_per_1000_requests']:.0f} "
            f"({m['dynamodb_reads_per_1000_requests']:.0f}) "
            f"| {m['lateness_ms']:.1f} ms ({m['wake_p99_ms']:.1f} + {m['trip_spread_p99_ms']:.1f}) "
            f"| {m['interval_ms']:.1f} ms |"
        )
    return "\n".join(lines)


def write(results: dict[str, Any], path: Path = RESULTS) -> None:
    """Under KEY in latest.json, leaving the other parts' figures as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        everything = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        everything = {}
    everything[KEY] = results
    path.write_text(json.dumps(everything, indent=2, default=str) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nginx", description=__doc__)
    parser.add_argument("--rates", default="50,200", help="the limits to run the three cases at")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a run")
    parser.add_argument("--runs", type=int, default=3, help="runs per case (figures are medians)")
    parser.add_argument("--invocations", type=int, default=3, help="ProcessObject invocations at once")
    parser.add_argument("--threads", type=int, default=6, help="worker threads per invocation")
    args = parser.parse_args(argv)
    results = measure(
        rates=[int(rate) for rate in args.rates.split(",")],
        seconds=args.seconds,
        runs=args.runs,
        invocations=args.invocations,
        threads=args.threads,
    )
    write(results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
