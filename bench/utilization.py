"""Utilization: the same files through the offline stack, with Sluice's settings and the seed's.

Each design gets a fresh OfflineStack (template.yaml, samconfig [local]) with the downstream
simulator in a process of its own: it stands for another system, and inside the stack's process
its clock would share the GIL with the emulator, which delays the arrival times it records by
tens of milliseconds under load (one spurious 429 a run, measured). While the backlog drains a
sampler records a monitor snapshot every second; at the end the run's counts are read: requests
at the emulator's door (bench/counting.py), state transitions from every execution's history,
Lambda invocations and billed time from the REPORT lines. Then, with the scheduler paused, small
files one at a time, each started by its own wake (latency), and what each schedule does once on
an idle stack (a scheduled wake with nothing queued, or the seed's idle dispatcher execution; one
ScaleConcurrency run): what the schedules cost whatever the load.

Both designs run the same files, API limit and latency, and the template's CheckpointEveryRows
(with the [local] environment's 100, a 400-row file would write four parts where it writes one):
- sluice: the template's data path; ConcurrencyInitial 2 and ScaleConcurrency on, its step
  cooldown shortened to 5 s so the setting follows the backlog within the run;
- sluice-ramp: the same from concurrency 1 with a 15 s step cooldown, so the setting rises while
  the first round runs and invocations join those already sharing the rate bucket;
- seed: rows one after another (ApiConcurrency 1), concurrency fixed at 3 (Initial/Min/Max 3,
  ScaleScheduleState DISABLED). Its rate does not depend on the backlog beyond 3 files, so once
  `budget_seconds` have passed the files still queued are taken off the queue and the round in
  flight finishes: its figures are over the files it processed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from bench.cost import Usage, gb_seconds, usage_from_requests
from bench.counting import (
    BENCH_USER_AGENT,
    Invocation,
    RequestCounter,
    execution_history,
    invocations,
    overlapping,
    state_transitions,
    utilization_figures,
)
from bench.procs import Background
from sluice.models import object_id
from sluice_cli.monitor import simulator_stats, take_snapshot
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.clients import FAKE_CREDENTIALS
from sluice_cli.offline.intrinsics import ACCOUNT_ID
from sluice_cli.offline.polling import wait_for
from sluice_cli.offline.scheduler import scheduled_event
from sluice_cli.offline.template import load_template
from sluice_cli.simulate import upload_files

TERMINAL = frozenset({"SUCCEEDED", "SUCCEEDED_WITH_REJECTS", "INVALID", "FAILED"})
SUCCESS = frozenset({"SUCCEEDED", "SUCCEEDED_WITH_REJECTS"})
SCALE_FUNCTION = "ScaleConcurrencyFunction"
WAKE_FUNCTION = "WakeDispatcherFunction"
PROCESS_FUNCTION = "ProcessObjectFunction"
BENCH_SERVICES = ("s3", "sqs", "dynamodb", "stepfunctions", "ssm", "lambda", "cloudwatch")
SAMPLE_SECONDS = 1.0

Record = Callable[[dict[str, Any]], None]
Say = Callable[[str], None]


@dataclass(frozen=True)
class Workload:
    files: int = 6
    rows: int = 400
    rate_limit: float = 50.0
    latency: tuple[float, float] = (0.1, 0.3)
    latency_files: int = 8  # small files, one at a time, after the backlog (Sluice only)
    latency_rows: int = 20


@dataclass(frozen=True)
class Design:
    name: str
    overrides: Mapping[str, str]
    function_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    budget_seconds: float | None = None  # then the queued files are taken off the queue
    measure_latency: bool = False
    # The seed's schedule started a dispatcher execution every minute; Sluice's wakes it (issue 14).
    scheduled_executions: bool = False


def sluice_design() -> Design:
    return Design(
        name="sluice",
        overrides={"ConcurrencyInitial": "2"},
        function_overrides={
            SCALE_FUNCTION: {"Environment": {"Variables": {"STEP_COOLDOWN_SECONDS": "5"}}},
        },
        measure_latency=True,
    )


def ramp_design() -> Design:
    """Sluice when the setting rises while files are in progress: from 1, the first step 15 s
    after the stack starts, so it comes mid-round and new invocations join the ones running."""
    return Design(
        name="sluice-ramp",
        overrides={"ConcurrencyInitial": "1"},
        function_overrides={
            SCALE_FUNCTION: {"Environment": {"Variables": {"STEP_COOLDOWN_SECONDS": "15"}}},
        },
    )


def seed_design(budget_seconds: float) -> Design:
    return Design(
        name="seed",
        overrides={
            "ApiConcurrency": "1",
            "ConcurrencyInitial": "3",
            "ConcurrencyMin": "3",
            "ConcurrencyMax": "3",
            "ScaleScheduleState": "DISABLED",
        },
        budget_seconds=budget_seconds,
        scheduled_executions=True,
    )


class Simulator:
    """The downstream API simulator (sluice_cli.apisim) in a process of its own."""

    def __init__(self, workload: Workload, log_path: Path) -> None:
        low, high = workload.latency
        self.process = Background(
            [
                sys.executable, "-m", "sluice_cli.apisim", "--port", "0",
                "--rate", f"{workload.rate_limit:g}", "--latency", f"{low:g}-{high:g}",
                "--error-rate", "0", "--seed", "1",
            ],
            log_path=log_path,
        )  # fmt: skip
        self.url = ""

    def start(self) -> Simulator:
        self.process.start()
        started = self.process.wait_for(
            r"API simulator on (http://\S+)", timeout=30, what="the API simulator"
        )
        self.url = started.group(1)
        return self

    def stats(self) -> dict[str, Any]:
        return simulator_stats(self.url, timeout=10)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/reset", data=b"", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - our own http URL
            pass

    def stop(self) -> None:
        self.process.stop()


def bench_client(service: str, endpoint: str, region: str) -> Any:
    """A client whose requests the counter keeps apart (its User-Agent carries the marker)."""
    config = Config(
        user_agent_extra=BENCH_USER_AGENT,
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=32,
    )
    return boto3.client(  # type: ignore[call-overload]
        service, endpoint_url=endpoint, region_name=region, config=config, **FAKE_CREDENTIALS
    )


class Sampler:
    """A monitor snapshot every second on a thread, until the block ends."""

    def __init__(self, take: Callable[[], dict[str, Any]], record: Record) -> None:
        self._take = take
        self._record = record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self.records: list[dict[str, Any]] = []

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            record = self._take()
            self.records.append(record)
            self._record(record)
            self._stop.wait(max(0.0, SAMPLE_SECONDS - (time.monotonic() - began)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class Tracked:
    key: str
    version_id: str | None
    uploaded_at: float
    state: str | None = None
    finished_at: str | None = None
    rows_delivered: int = 0
    dropped: bool = False  # taken off the queue before it was processed (the seed's budget)

    @property
    def settled(self) -> bool:
        return self.dropped or self.state in TERMINAL


def refresh(dynamodb: Any, table: str, bucket: str, files: list[Tracked]) -> None:
    """Each unsettled file's state from its metadata item (consistent reads)."""
    for tracked in files:
        if tracked.settled:
            continue
        key = {"pk": {"S": object_id(bucket, tracked.key, tracked.version_id)}}
        item = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        if item:
            tracked.state = item["state"]["S"]
            stamp = item.get("finished_at") or item.get("invalid_at") or item.get("failed_at")
            tracked.finished_at = stamp["S"] if stamp else None
            tracked.rows_delivered = int(item.get("rows_delivered", {}).get("N", 0))


def take_off_queue(sqs: Any, queue_url: str, files: list[Tracked]) -> int:
    """Receive and delete what is still visible (the seed's files beyond its budget)."""
    taken = 0
    for _ in range(100):  # bounded: the queue holds at most a handful of messages
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600)
        messages = answer.get("Messages", [])
        if not messages:
            break
        for message in messages:
            key = json.loads(message["Body"]).get("detail", {}).get("object", {}).get("key")
            for tracked in files:
                if tracked.key == key and tracked.state is None:
                    tracked.dropped = True
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            taken += 1
    return taken


def wait_settled(
    files: list[Tracked],
    read: Callable[[], None],
    *,
    timeout: float,
    budget: float | None = None,
    take_off: Callable[[], int] = lambda: 0,
    say: Say = print,
    on_event: Callable[[str], None] = lambda text: None,
) -> None:
    began = time.monotonic()
    budget_spent = False
    while True:
        read()
        if all(t.settled for t in files):
            return
        elapsed = time.monotonic() - began
        if budget is not None and not budget_spent and elapsed >= budget:
            budget_spent = True
            taken = take_off()
            say(f"  budget of {budget:g} s spent: {taken} queued file(s) taken off the queue")
            on_event(f"{taken} queued files taken off the queue (budget)")
        if elapsed > timeout:
            unsettled = ", ".join(f"{t.key}={t.state}" for t in files if not t.settled)
            raise TimeoutError(f"files not finished after {timeout:.0f} s: {unsettled}")
        time.sleep(0.5)


def scheduled_event_payload(stack: OfflineStack) -> bytes:
    """What DispatchSchedule sends WakeDispatcher once a minute."""
    return json.dumps(scheduled_event(stack.region, ACCOUNT_ID, "DispatchSchedule")).encode()


def template_default(root: Path, parameter: str) -> str:
    return str(load_template(root / "template.yaml")["Parameters"][parameter]["Default"])


def run_design(
    root: Path,
    design: Design,
    workload: Workload,
    *,
    state_dir: Path,
    record: Record,
    say: Say = print,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Start the stack with the design's settings, push the workload through, read the counts."""
    simulator = Simulator(workload, state_dir / "apisim.log").start()
    overrides = {
        **design.overrides,
        "ApiUrl": simulator.url,
        "ApiRateLimit": f"{workload.rate_limit:g}",
        "SimulatedFailureRate": "0",
        "CheckpointEveryRows": template_default(root, "CheckpointEveryRows"),
        # One dispatcher execution drains the whole run (the [local] budget is 120 s).
        "ExecutionTimeBudgetSeconds": "900",
    }
    stack = OfflineStack(
        root,
        env="local",
        overrides=overrides,
        function_overrides=design.function_overrides,
        start_api=False,
        state_dir=state_dir,
    )
    try:
        began = time.monotonic()
        stack.start()
        say(f"  stack up in {time.monotonic() - began:.1f} s")
        run = Run(
            stack,
            simulator=simulator,
            design=design,
            workload=workload,
            state_dir=state_dir,
            record=record,
            say=say,
        )
        return run.measure(timeout)
    finally:
        stack.stop()
        simulator.stop()


class Run:
    """One design on one started stack."""

    def __init__(
        self,
        stack: OfflineStack,
        *,
        simulator: Simulator,
        design: Design,
        workload: Workload,
        state_dir: Path,
        record: Record,
        say: Say,
    ) -> None:
        if stack.server is None or stack.scheduler is None or stack.server._server is None:
            raise RuntimeError("the stack is not running")
        self.stack, self.simulator, self.design, self.workload = stack, simulator, design, workload
        self.logs = state_dir / "logs"
        self.record, self.say = record, say
        self.scheduler = stack.scheduler
        # The emulator's werkzeug server looks up `server.app` for every request: a counter goes in
        # front of it. OfflineStack has no hook for this (docs/performance.md, "How it is measured").
        wsgi_server = stack.server._server
        self.counter = RequestCounter(wsgi_server.app)
        wsgi_server.app = self.counter
        self.clients = {
            service: bench_client(service, stack.endpoint_url, stack.region) for service in BENCH_SERVICES
        }
        self.outputs = stack.outputs

    def snapshot(self) -> dict[str, Any]:
        snap = take_snapshot(self.clients.__getitem__, self.outputs, api_stats=self.simulator.stats)
        return snap.as_record(self.design.name)

    def measure(self, timeout: float) -> dict[str, Any]:
        design, workload = self.design, self.workload
        bucket, table = self.outputs["RawBucketName"], self.outputs["MetadataTableName"]
        self.simulator.reset()
        self.counter.reset()
        with Sampler(self.snapshot, self.record) as sampler:
            uploaded = upload_files(
                self.clients["s3"], bucket, files=workload.files, rows=workload.rows, workers=workload.files,
                prefix="incoming/bench/", seed=100, run_id=design.name,
            )  # fmt: skip
            began = time.monotonic()
            files = [Tracked(u.key, u.version_id, u.uploaded_at) for u in uploaded.files]
            self.say(f"  uploaded {len(files)} files × {workload.rows} rows; draining…")
            wait_settled(
                files,
                lambda: refresh(self.clients["dynamodb"], table, bucket, files),
                timeout=timeout,
                budget=design.budget_seconds,
                take_off=lambda: take_off_queue(self.clients["sqs"], self.outputs["IngestQueueUrl"], files),
                say=self.say,
                on_event=lambda text: self.record(
                    {"kind": "event", "run": design.name, "t": round(time.time(), 3), "text": text}
                ),
            )
            drain_seconds = time.monotonic() - began
            time.sleep(1.5)  # the executions' last states
            stats = self.simulator.stats()
            window = (uploaded.files[0].uploaded_at - uploaded.seconds - 1.0, time.time())
        self.record(
            {
                "kind": "api_seconds",
                "run": design.name,
                **{k: stats[k] for k in ("arrivals_per_second", "accepted_per_second", "rate_limit")},
                "achieved_rate": stats["accepted_rate"],
                "busiest_second": stats["max_requests_in_any_second"],
            }
        )
        processed = [t for t in files if not t.dropped]
        with self.scheduler.paused():
            time.sleep(1.0)  # a tick in progress finishes
            data_path = self.data_path_counts(rows=int(stats["accepted"]), window=window)
            latency = self.latency() if design.measure_latency else {"first_delivery": [], "finished": []}
            fixed = self.fixed_counts()
        return {
            "design": design.name,
            "settings": dict(design.overrides),
            "files_uploaded": len(files),
            "files_processed": len(processed),
            "files_ok": sum(1 for t in processed if t.state in SUCCESS),
            "rows_delivered": sum(t.rows_delivered for t in processed),
            "drain_seconds": round(drain_seconds, 1),
            "concurrency_seen": sorted({r["concurrency"] for r in sampler.records if r.get("concurrency")}),
            "most_executions_running": max(
                (r.get("running_executions") or 0 for r in sampler.records), default=0
            ),
            "api": utilization_figures(stats, workload.rate_limit),
            **data_path,
            "fixed": fixed,
            "latency_seconds": latency["finished"],
            "first_delivery_seconds": latency["first_delivery"],
        }

    def invocations(self) -> list[Invocation]:
        return list(invocations(self.logs))

    def data_path_counts(self, *, rows: int, window: tuple[float, float]) -> dict[str, Any]:
        """The run's usage: everything it did but the ScaleConcurrency schedule (fixed cost).
        Executions count when they ran during `window` (epoch seconds): from the uploads to the
        end of the drain, not the idle ones that ended before it."""
        sfn = self.clients["stepfunctions"]
        pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=self.stack.state_machine_arn())
        executions = overlapping((e for page in pages for e in page["executions"]), window)
        transitions = sum(state_transitions(execution_history(sfn, e["executionArn"])) for e in executions)
        calls = self.invocations()
        scale_runs = sum(1 for c in calls if c.function == SCALE_FUNCTION)
        requests = self.counter.counts()
        # ScaleConcurrency's own requests (a GetQueueAttributes and a GetMetricData per run, SSM)
        # belong to its schedule, not to the rows.
        requests[("sqs", "GetQueueAttributes")] -= min(scale_runs, requests[("sqs", "GetQueueAttributes")])
        requests[("monitoring", "GetMetricData")] = 0
        data_calls = [c for c in calls if c.function != SCALE_FUNCTION]
        usage = usage_from_requests(
            requests,
            rows=rows,
            state_transitions=transitions,
            lambda_requests=len(data_calls),
            lambda_gb_seconds=sum(gb_seconds(c.billed_ms, c.memory_mb) for c in data_calls),
        )
        process = [c for c in calls if c.function == PROCESS_FUNCTION]
        control_table = self.outputs.get("ControlTableName", "")
        tables = self.counter.table_counts()
        return {
            "usage": asdict(usage),
            "counts": {
                "executions": len(executions),
                "state_transitions": transitions,
                "lambda_invocations": dict(sorted(Counter(c.function for c in calls).items())),
                "scale_runs": scale_runs,
                "requests": {f"{s}:{o}": n for (s, o), n in sorted(requests.items()) if n},
                "rate_bucket_writes": tables[("UpdateItem", control_table)],
                "dynamodb_by_table": {f"{o} {t}": n for (o, t), n in sorted(tables.items())},
            },
            "process_object": {
                "invocations": len(process),
                "billed_seconds": round(sum(c.billed_ms for c in process) / 1000, 2),
                "memory_mb": process[0].memory_mb if process else 0,
            },
        }

    def latency(self) -> dict[str, list[float]]:
        """Small files one at a time, nothing else queued: upload → the API's first request for
        it, and upload → terminal state, each. The scheduler stays paused: the file's own wake
        (the event-driven start, sluice/wake.py) is what starts the dispatcher, as on AWS."""
        bucket, table = self.outputs["RawBucketName"], self.outputs["MetadataTableName"]
        first_delivery: list[float] = []
        finished_after: list[float] = []
        workload, design = self.workload, self.design
        sfn, machine = self.clients["stepfunctions"], self.stack.state_machine_arn()
        for number in range(workload.latency_files):
            # No backlog means no execution either: one still in its last round (a continuation,
            # a round waiting for its slowest file) would take the file late, and its stragglers
            # would pass for the file's first request.
            wait_for(
                lambda: (
                    not sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING")["executions"]
                ),
                timeout=300,
                what="no dispatcher execution running before a latency file",
            )
            self.simulator.reset()
            uploaded = upload_files(
                self.clients["s3"], bucket, files=1, rows=workload.latency_rows, workers=1,
                prefix="incoming/latency/", seed=500 + number, run_id=f"{design.name}-{number}",
            ).files[0]  # fmt: skip
            tracked = Tracked(uploaded.key, uploaded.version_id, uploaded.uploaded_at)
            wait_settled(
                [tracked],
                lambda t=tracked: refresh(self.clients["dynamodb"], table, bucket, [t]),  # type: ignore[misc]
                timeout=120,
            )
            first_request = self.simulator.stats().get("first_request_at")
            if tracked.finished_at and first_request:
                finished = datetime.fromisoformat(tracked.finished_at.replace("Z", "+00:00")).timestamp()
                first = round(max(0.0, float(first_request) - tracked.uploaded_at), 3)
                value = round(max(0.0, finished - tracked.uploaded_at), 3)
                first_delivery.append(first)
                finished_after.append(value)
                self.record(
                    {
                        "kind": "latency",
                        "run": design.name,
                        "key": tracked.key,
                        "seconds": value,
                        "first_delivery_seconds": first,
                    }
                )
        self.say(f"  latency: {len(finished_after)} small files, one at a time, woken by their upload")
        return {"first_delivery": first_delivery, "finished": finished_after}

    def fixed_counts(self) -> dict[str, Any]:
        """What each schedule does once on an idle stack, alone: the fixed cost.

        Sluice's DispatchSchedule invokes WakeDispatcher (the safety net of the event-driven
        start): measured as one scheduled wake with nothing queued. The seed design's schedule
        started a dispatcher execution every minute: measured as one idle execution. And one
        ScaleConcurrency run where its schedule is enabled.
        """
        result: dict[str, Any] = {}
        if self.design.scheduled_executions:
            result["idle_dispatcher_execution"] = self._idle_execution()
        else:
            result["safety_net_wake"] = self._idle_run(WAKE_FUNCTION, scheduled_event_payload(self.stack))
        scale = self.stack.resources.get(SCALE_FUNCTION)
        if scale is not None and self.design.overrides.get("ScaleScheduleState") != "DISABLED":
            result["scale_concurrency_run"] = self._idle_run(SCALE_FUNCTION, b"{}")
        return result

    def _idle_run(self, function: str, payload: bytes) -> dict[str, Any]:
        before = len(self.invocations())
        self.counter.reset()
        self.clients["lambda"].invoke(FunctionName=str(self.stack.resources[function].ref), Payload=payload)
        time.sleep(0.5)  # its REPORT line
        calls = self.invocations()[before:]
        return asdict(
            usage_from_requests(
                self.counter.counts(),
                rows=0,
                state_transitions=0,
                lambda_requests=len(calls),
                lambda_gb_seconds=sum(gb_seconds(c.billed_ms, c.memory_mb) for c in calls),
            )
        )

    def _idle_execution(self) -> dict[str, Any]:
        before = len(self.invocations())
        self.counter.reset()
        execution = self.stack.start_execution({}, wait=True, timeout=60)
        time.sleep(0.5)  # its functions' REPORT lines
        calls = self.invocations()[before:]
        transitions = state_transitions(
            execution_history(self.clients["stepfunctions"], execution["executionArn"])
        )
        return asdict(
            usage_from_requests(
                self.counter.counts(),
                rows=0,
                state_transitions=transitions,
                lambda_requests=len(calls),
                lambda_gb_seconds=sum(gb_seconds(c.billed_ms, c.memory_mb) for c in calls),
            )
        )


def around_the_rows(run: dict[str, Any]) -> Usage:
    """Sluice's usage per file around the rows: everything but ProcessObject's Lambda time and the
    rate bucket's writes (what a Distributed Map design keeps; bench/cost.py)."""
    usage = Usage(**run["usage"])
    process = run["process_object"]
    process_gb_s = gb_seconds(process["billed_seconds"] * 1000, process["memory_mb"])
    files = max(run["files_processed"], 1)
    around = Usage(
        rows=0,
        state_transitions=usage.state_transitions,
        lambda_requests=usage.lambda_requests - process["invocations"],
        lambda_gb_seconds=max(0.0, usage.lambda_gb_seconds - process_gb_s),
        sqs_requests=usage.sqs_requests,
        dynamodb_write_units=max(0.0, usage.dynamodb_write_units - run["counts"]["rate_bucket_writes"]),
        dynamodb_read_units=usage.dynamodb_read_units,
        s3_put_requests=usage.s3_put_requests,
        s3_get_requests=usage.s3_get_requests,
        sns_publishes=usage.sns_publishes,
    )
    return around.scaled(1 / files)
