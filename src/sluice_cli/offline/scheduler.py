"""The local scheduler: runs the template's schedules, which moto never fires.

Every schedule runs on one local period (a few seconds) whatever its rate expression says:
locally nobody wants to wait a minute for the dispatcher. A state machine target gets a new
execution with a unique name (moto refuses to start a second unnamed one) unless one is still
RUNNING, as the state machine's own lease would end it at once anyway; a Lambda target gets an
asynchronous invocation. `paused()` also waits for the invocations the last ticks fired: a
Lambda target (WakeDispatcher) may itself start an execution a moment after its tick.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sluice_cli.offline.provision import ScheduleTarget

DEFAULT_PERIOD_SECONDS = 3.0
PAUSE_WAIT_SECONDS = 60.0  # the longest `paused()` waits for a fired invocation to end


def scheduled_event(region: str, account: str, rule_arn: str) -> dict[str, Any]:
    """The input EventBridge gives a target of a schedule rule without an explicit Input."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


@dataclass
class ScheduleStats:
    started: int = 0
    skipped_running: int = 0
    failed: int = 0
    last_error: str = ""


class LocalScheduler:
    def __init__(
        self,
        targets: list[ScheduleTarget],
        *,
        period_seconds: float,
        stepfunctions: Any,
        # (function ARN, payload) → a Future done when the invocation has ended (or anything else,
        # for a caller that need not be waited for)
        invoke_async: Callable[[str, bytes], Any],
        source_arn: Callable[[str], str],
        region: str,
        account: str,
    ) -> None:
        self.targets = targets
        self.period_seconds = period_seconds
        self._sfn = stepfunctions
        self._invoke_async = invoke_async
        self._source_arn = source_arn
        self._region = region
        self._account = account
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._fired: list[Future[Any]] = []  # Lambda invocations of recent ticks, until done
        self.stats = ScheduleStats()

    def start(self) -> None:
        if not self.targets or self.period_seconds <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="local-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No tick starts anything inside the block (tests that drive executions themselves)."""
        self._paused.set()
        with self._lock:
            # A tick already firing when the flag was set finishes first, and so do the functions
            # it invoked: otherwise the execution either starts could appear after the caller has
            # checked that none is running.
            fired, self._fired = self._fired, []
        futures.wait(fired, timeout=PAUSE_WAIT_SECONDS)
        try:
            yield
        finally:
            self._paused.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._paused.is_set():
                self.tick()
            self._stop.wait(self.period_seconds)

    def tick(self) -> list[str]:
        """Fire every schedule once; the names of the executions started."""
        started = []
        with self._lock:
            for target in self.targets:
                try:
                    name = self._fire(target)
                except Exception as error:  # a failed tick must not stop the scheduler
                    self.stats.failed += 1
                    self.stats.last_error = f"{target.source}: {error}"
                    continue
                if name:
                    started.append(name)
        return started

    def _fire(self, target: ScheduleTarget) -> str | None:
        payload = target.input or json.dumps(
            scheduled_event(self._region, self._account, self._source_arn(target.source))
        )
        service = target.target_arn.split(":")[2]
        if service == "lambda":
            fired = self._invoke_async(target.target_arn, payload.encode())
            if isinstance(fired, Future):
                self._fired = [f for f in self._fired if not f.done()] + [fired]
            return target.target_arn
        if service != "states":
            raise ValueError(f"schedule target {target.target_arn} is not a state machine or function")
        running = self._sfn.list_executions(
            stateMachineArn=target.target_arn, statusFilter="RUNNING", maxResults=1
        )["executions"]
        if running:
            self.stats.skipped_running += 1
            return None
        name = f"local-{datetime.now(UTC):%Y%m%dT%H%M%S}-{next(self._counter)}"
        self._sfn.start_execution(stateMachineArn=target.target_arn, name=name, input=payload)
        self.stats.started += 1
        return name
