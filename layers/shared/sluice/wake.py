"""Waking the dispatcher: an arrival (or the safety-net schedule) starts one unless one holds the lease.

The IngestRule routes every routed S3 "Object Created" event to IngestQueue *and* to
WakeDispatcher, which starts a dispatcher execution unless one already holds the lease
(`sluice.lease`): an upload is picked up within seconds, and an idle stack runs nothing billed per
transition. The one-minute schedule targets WakeDispatcher too, as the safety net for a lost wake
and for a file that arrives while an execution is ending (it saw the lease still held).

A scheduled wake starts one only when IngestQueue has visible messages (one GetQueueAttributes):
idle, the safety net then costs a Lambda request and an SQS request a minute instead of an
execution's transitions. An arrival's wake does not look: EventBridge delivers to its targets
independently, and the file's message may not be in the queue yet.

The wake takes the lease itself, in the name of the execution it is about to start (the same
conditional write as the execution's, `DispatcherLease.acquire`), then starts it; the execution's
own acquire finds the lease already its own and keeps it. So of two wakes at once only one starts
an execution, and a burst of uploads starts one, not one per upload that came before the first
execution had acquired. A start that fails releases the lease at once; a wake that dies between
the two writes leaves it to expire (ExecutionTimeBudgetSeconds + the margin), as a crashed
execution would. The executions' acquire still guards on its own: a schedule or a person
starting one by hand is refused while another holds the lease.

The execution is named after the event (`wake-<event id>`): EventBridge and Lambda deliver at
least once, and a second delivery of the same event is then refused by Step Functions
(ExecutionAlreadyExists) instead of starting a second execution.
"""

import json
import re
import uuid
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from sluice.lease import DispatcherLease
from sluice.observability import logger

EXECUTION_PREFIX = "wake-"
SCHEDULED = "Scheduled Event"  # the detail-type of a schedule rule's event
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NAME_MAX = 80  # Step Functions' limit on an execution name


class WakeAnswer(BaseModel):
    """WakeDispatcher's output: the execution it started, or why it started none."""

    started: bool
    execution: str | None = None
    # "started", "nothing queued", "lease held by <name>", "lease taken by another wake",
    # "already started"
    reason: str


def execution_name(event_id: str | None) -> str:
    """`wake-<event id>` in the characters and length Step Functions accepts; a fresh id without one."""
    safe = _NAME_UNSAFE.sub("-", event_id or str(uuid.uuid4()))
    return (EXECUTION_PREFIX + safe)[:_NAME_MAX]


class DispatcherWake:
    def __init__(
        self, lease: DispatcherLease, stepfunctions: Any, state_machine_arn: str, sqs: Any, queue_url: str
    ) -> None:
        self._lease = lease
        self._sfn = stepfunctions
        self._state_machine_arn = state_machine_arn
        self._sqs = sqs
        self._queue_url = queue_url

    def wake(self, event: dict[str, Any]) -> WakeAnswer:
        """Start a dispatcher execution for this event unless one holds the lease (or, for the
        schedule's event, unless nothing is queued)."""
        if event.get("detail-type") == SCHEDULED and not self._queued():
            return WakeAnswer(started=False, reason="nothing queued")
        holder = self._lease.holder()
        if holder is not None:  # one read unit, where a refused conditional write costs a write unit
            return WakeAnswer(started=False, reason=f"lease held by {holder}")
        name = execution_name(event.get("id"))
        if not self._lease.acquire(name).acquired:
            return WakeAnswer(started=False, reason="lease taken by another wake")
        woken_by = {"woken_by": event.get("detail-type", "unknown"), "event_id": event.get("id")}
        try:
            self._sfn.start_execution(
                stateMachineArn=self._state_machine_arn, name=name, input=json.dumps(woken_by)
            )
        except ClientError as error:
            self._lease.release(name)
            if error.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
                raise
            logger.info("This event already started its execution", extra={"execution": name})
            return WakeAnswer(started=False, execution=name, reason="already started")
        except BaseException:
            self._lease.release(name)
            raise
        return WakeAnswer(started=True, execution=name, reason="started")

    def _queued(self) -> int:
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self._queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes.get("ApproximateNumberOfMessages", 0))
