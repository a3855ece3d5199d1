"""Redrive: dead letters back to where they are processed again, shared by the Redrive function and
`sluice redrive`.

Sources:

- `ingest-dlq`: IngestDLQ → IngestQueue. SQS `StartMessageMoveTask` (rate-limited) where the
  endpoint has it; where it does not (moto, the offline stack) or when `max_messages` must bound the
  move, receive → send → delete: a message is deleted from the DLQ only after the queue accepted
  its copy, so a fault anywhere leaves it in the DLQ. At worst a message is sent twice (the send
  succeeded, the delete did not), which the pipeline absorbs: registration skips finished object
  versions and the downstream dedupes on the Idempotency-Key.
- `rule-dlq`: IngestRuleDLQ → IngestQueue: events the rule could not deliver. The message body is
  the event the rule would have sent, so the same receive → send → delete applies (the move task
  only serves queues that are an SQS DLQ of another queue).
- `failure-destination`: Lambda's asynchronous failure records; each names the function and
  carries the original payload, so the function is invoked again (InvocationType Event) and the
  record deleted after Lambda accepted the invocation.
- `executions`: FAILED and TIMED_OUT dispatcher executions, redriven with `RedriveExecution`.
  Only when asked for by name, never in `all`: a redriven execution re-runs its failed Map items
  with the attempts and SQS receipt handles they were given then, while the files' messages have
  been received again (new handles, new attempts) by later executions. Such an item's outcome
  record is refused (it is fenced on the attempt) and its deletes and visibility changes act on
  stale handles; the messages themselves carry every file's work, so redriving them is enough.

`dry_run` only counts. Every source reports its counts before and after.
"""

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field, ValidationError

from sluice.observability import logger

SQS_BATCH = 10  # SendMessageBatch / DeleteMessageBatch / ReceiveMessage maximum
# RedriveExecution takes executions up to 14 days after they stopped (describe_execution's redriveStatus
# says so exactly); listing stops at executions started a day before that, for a dispatcher's short runs.
EXECUTION_LIST_WINDOW = timedelta(days=15)
REDRIVABLE_STATUSES = ("FAILED", "TIMED_OUT")  # ABORTED is an operator's decision: left alone
_UNSUPPORTED_CODES = {
    "NotImplemented",
    "NotImplementedException",
    "InvalidAction",
    "UnsupportedOperation",
    "UnknownOperationException",
    "UnknownOperation",
}
_MOVE_TASK_DONE = {"COMPLETED", "CANCELLED", "FAILED"}


class RedriveSource(StrEnum):
    INGEST_DLQ = "ingest-dlq"
    RULE_DLQ = "rule-dlq"
    FAILURE_DESTINATION = "failure-destination"
    EXECUTIONS = "executions"
    ALL = "all"


# What `all` redrives: not EXECUTIONS (module docstring).
ALL_SOURCES = (RedriveSource.INGEST_DLQ, RedriveSource.RULE_DLQ, RedriveSource.FAILURE_DESTINATION)


class RedriveTargets(BaseModel):
    """Where the dead letters are and where they go back to."""

    ingest_queue_url: str
    ingest_dlq_url: str
    ingest_rule_dlq_url: str = ""
    failure_destination_queue_url: str = ""
    dispatcher_state_machine_arn: str = ""


class RedriveRequest(BaseModel):
    """The Redrive function's event (and the CLI's options)."""

    source: RedriveSource = RedriveSource.ALL
    dry_run: bool = False
    max_messages: int = Field(default=1000, ge=1)  # per source


Status = Literal["done", "dry-run", "partial", "running", "unsupported", "skipped", "failed"]


class SourceReport(BaseModel):
    source: RedriveSource
    method: str
    status: Status
    before: int  # messages (or redrivable executions) at the source before
    after: int
    moved: int = 0  # moved back, re-invoked or redriven
    skipped: int = 0  # records left where they are because they cannot be redriven
    destination_before: int | None = None
    destination_after: int | None = None
    errors: list[str] = Field(default_factory=list)


class RedriveReport(BaseModel):
    dry_run: bool
    sources: list[SourceReport]

    @property
    def ok(self) -> bool:
        return all(
            s.status in ("done", "dry-run", "running", "skipped") and not s.errors for s in self.sources
        )

    @property
    def moved(self) -> int:
        return sum(s.moved for s in self.sources)


class LambdaFailureRecord(BaseModel):
    """The part of a Lambda asynchronous invocation failure record that a re-invoke needs."""

    request_context: dict[str, Any] = Field(alias="requestContext")
    request_payload: Any = Field(alias="requestPayload")

    @property
    def function_arn(self) -> str:
        arn = self.request_context.get("functionArn")
        if not isinstance(arn, str) or not arn.startswith("arn:"):
            raise ValueError("requestContext.functionArn missing")
        return arn


class Pacer:
    """At most `rate` messages a second, on average: the manual fallback's rate limit."""

    def __init__(self, rate: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = clock()

    def wait(self) -> None:
        """Until the next batch may go."""
        now = self._clock()
        if now < self._next:
            self._sleep(self._next - now)

    def spent(self, count: int) -> None:
        """`count` messages just went: the next batch waits their share of the rate."""
        self._next = max(self._clock(), self._next) + count * self._interval


def is_unsupported(error: Exception) -> bool:
    """The endpoint does not have this API at all (moto: NotImplementedError, or an HTML 500)."""
    if isinstance(error, NotImplementedError):
        return True
    if not isinstance(error, ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    # AWS always names its errors; a bare status code means the endpoint is not speaking the API.
    return code in _UNSUPPORTED_CODES or code.isdigit()


class Redriver:
    def __init__(
        self,
        *,
        sqs: Any,
        lambda_client: Any,
        sfn: Any,
        targets: RedriveTargets,
        rate_per_second: int = 50,
        move_task_wait_seconds: float = 60.0,
        receive_wait_seconds: int = 1,
        visibility_timeout: int = 60,
        poll_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sqs = sqs
        self.lambda_client = lambda_client
        self.sfn = sfn
        self.targets = targets
        self.rate = rate_per_second
        self.move_task_wait_seconds = move_task_wait_seconds
        self.receive_wait_seconds = receive_wait_seconds
        self.visibility_timeout = visibility_timeout
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._sleep = sleep
        self._deadline: float | None = None

    def run(self, request: RedriveRequest, *, time_budget_seconds: float | None = None) -> RedriveReport:
        """Redrive what `request` names; stops taking new batches once the time budget is spent."""
        self._deadline = None if time_budget_seconds is None else self._clock() + time_budget_seconds
        wanted = list(ALL_SOURCES) if request.source is RedriveSource.ALL else [request.source]
        reports = [self._redrive_one(source, request) for source in wanted]
        report = RedriveReport(dry_run=request.dry_run, sources=reports)
        logger.info("redrive finished", extra={"redrive": report.model_dump(mode="json")})
        return report

    def _redrive_one(self, source: RedriveSource, request: RedriveRequest) -> SourceReport:
        try:
            if source is RedriveSource.INGEST_DLQ:
                return self.redrive_queue(source, self.targets.ingest_dlq_url, request, move_task=True)
            if source is RedriveSource.RULE_DLQ:
                return self.redrive_queue(source, self.targets.ingest_rule_dlq_url, request, move_task=False)
            if source is RedriveSource.FAILURE_DESTINATION:
                return self.redrive_failure_destination(request)
            return self.redrive_executions(request)
        except (ClientError, BotoCoreError) as error:  # counting failed: report it, go on with the next
            return SourceReport(
                source=source, method="-", status="failed", before=0, after=0, errors=[str(error)]
            )

    # --- SQS dead-letter queues ---------------------------------------------------------------

    def redrive_queue(
        self, source: RedriveSource, source_url: str, request: RedriveRequest, *, move_task: bool
    ) -> SourceReport:
        if not source_url:
            return SourceReport(source=source, method="-", status="skipped", before=0, after=0)
        destination_url = self.targets.ingest_queue_url
        before, destination_before = self.count_messages(source_url), self.count_messages(destination_url)
        report = SourceReport(
            source=source,
            method="count",
            status="dry-run",
            before=before,
            after=before,
            destination_before=destination_before,
            destination_after=destination_before,
        )
        if request.dry_run or before == 0:
            report.status = "dry-run" if request.dry_run else "done"
            return report
        # The move task moves everything; a smaller bound needs the manual path, which counts.
        if move_task and before <= request.max_messages:
            try:
                self._move_task(source_url, destination_url, report)
            except (ClientError, NotImplementedError) as error:
                if not is_unsupported(error):
                    report.method, report.status = "StartMessageMoveTask", "failed"
                    report.errors.append(str(error))
                else:
                    logger.info("StartMessageMoveTask unsupported here; receive, send, delete instead")
                    report.method = "receive-send-delete (StartMessageMoveTask unsupported)"
                    self._move_by_hand(source_url, destination_url, request.max_messages, report)
        else:
            report.method = "receive-send-delete"
            self._move_by_hand(source_url, destination_url, request.max_messages, report)
        report.after = self.count_messages(source_url)
        report.destination_after = self.count_messages(destination_url)
        return report

    def count_messages(self, queue_url: str) -> int:
        """Messages in the queue: visible, in flight and delayed."""
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in names)

    def _queue_arn(self, queue_url: str) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        return attributes["Attributes"]["QueueArn"]

    def _move_task(self, source_url: str, destination_url: str, report: SourceReport) -> None:
        source_arn = self._queue_arn(source_url)
        self.sqs.start_message_move_task(
            SourceArn=source_arn,
            DestinationArn=self._queue_arn(destination_url),
            MaxNumberOfMessagesPerSecond=self.rate,
        )
        report.method, report.status = "StartMessageMoveTask", "running"
        deadline = self._clock() + self.move_task_wait_seconds
        while True:
            # The most recent task is listed first.
            tasks = self.sqs.list_message_move_tasks(SourceArn=source_arn, MaxResults=1).get("Results", [])
            task = tasks[0] if tasks else {}
            report.moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
            status = task.get("Status", "RUNNING")
            if status in _MOVE_TASK_DONE:
                report.status = "done" if status == "COMPLETED" else "failed"
                if status != "COMPLETED":
                    report.errors.append(f"move task {status}: {task.get('FailureReason', '-')}")
                return
            if self._clock() >= deadline:
                return  # still running: it goes on without us; `sluice redrive --dry-run` shows progress
            self._sleep(self.poll_seconds)

    def _move_by_hand(self, source_url: str, destination_url: str, limit: int, report: SourceReport) -> None:
        pacer = Pacer(self.rate, self._clock, self._sleep)
        report.status = "done"
        while report.moved < limit:
            pacer.wait()  # before receiving: a message is not held invisible while we wait
            if self._out_of_time():
                report.status = "partial"
                report.errors.append("time budget spent; run the redrive again for the rest")
                return
            try:
                messages = self._receive(source_url, min(SQS_BATCH, limit - report.moved))
            except (ClientError, BotoCoreError) as error:
                report.status = "partial"
                report.errors.append(f"receive failed: {error}")
                return
            if not messages:
                return
            pacer.spent(len(messages))
            sent, failures = self._send_copies(destination_url, messages)
            # Only what the queue accepted leaves the DLQ; the rest stays for the next run.
            self._delete(source_url, sent, report)
            report.moved += len(sent)
            if failures:
                self._release(source_url, [m for m in messages if m not in sent])
                report.status = "partial"
                report.errors.extend(failures)
                return

    def _receive(self, queue_url: str, count: int) -> list[dict]:
        answer = self.sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=self.receive_wait_seconds,
            VisibilityTimeout=self.visibility_timeout,
            MessageAttributeNames=["All"],
        )
        return answer.get("Messages", [])

    def _send_copies(self, queue_url: str, messages: list[dict]) -> tuple[list[dict], list[str]]:
        entries = []
        for index, message in enumerate(messages):
            entry: dict[str, Any] = {"Id": str(index), "MessageBody": message["Body"]}
            if message.get("MessageAttributes"):
                entry["MessageAttributes"] = {
                    name: {k: v for k, v in value.items() if v not in ([], None)}
                    for name, value in message["MessageAttributes"].items()
                }
            entries.append(entry)
        try:
            answer = self.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        except (ClientError, BotoCoreError) as error:
            return [], [f"send failed, {len(messages)} message(s) left in the DLQ: {error}"]
        accepted = {entry["Id"] for entry in answer.get("Successful", [])}
        failures = [
            f"send failed for one message: {f.get('Code')} {f.get('Message', '')}"
            for f in answer.get("Failed", [])
        ]
        return [m for i, m in enumerate(messages) if str(i) in accepted], failures

    def _delete(self, queue_url: str, messages: list[dict], report: SourceReport) -> None:
        if not messages:
            return
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        try:
            answer = self.sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
            failed = answer.get("Failed", [])
        except (ClientError, BotoCoreError) as error:
            failed = [{"Message": str(error)}] * len(entries)
        if failed:  # copies were sent: these return to the DLQ and may be moved twice, never lost
            report.errors.append(f"{len(failed)} message(s) sent but not deleted: they may be redriven twice")

    def _release(self, queue_url: str, messages: list[dict]) -> None:
        """Make unsent messages visible again at once (best effort: else their timeout does it)."""
        for message in messages:
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            except (ClientError, BotoCoreError):
                logger.warning("could not release a message; it returns after its visibility timeout")

    def _out_of_time(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline

    # --- Lambda failure destination -----------------------------------------------------------

    def redrive_failure_destination(self, request: RedriveRequest) -> SourceReport:
        source = RedriveSource.FAILURE_DESTINATION
        queue_url = self.targets.failure_destination_queue_url
        if not queue_url:
            return SourceReport(source=source, method="-", status="skipped", before=0, after=0)
        before = self.count_messages(queue_url)
        report = SourceReport(
            source=source, method="lambda:Invoke (Event)", status="done", before=before, after=before
        )
        if request.dry_run or before == 0:
            report.status = "dry-run" if request.dry_run else "done"
            return report
        handled = 0
        while handled < request.max_messages and not self._out_of_time():
            # Records that cannot be re-invoked stay invisible until this run ends: no busy loop.
            try:
                messages = self._receive(queue_url, min(SQS_BATCH, request.max_messages - handled))
            except (ClientError, BotoCoreError) as error:
                report.errors.append(f"receive failed: {error}")
                break
            if not messages:
                break
            for message in messages:
                handled += 1
                self._reinvoke(queue_url, message, report)
        if report.errors:
            report.status = "partial"
        report.after = self.count_messages(queue_url)
        return report

    def _reinvoke(self, queue_url: str, message: dict, report: SourceReport) -> None:
        try:
            record = LambdaFailureRecord.model_validate_json(message["Body"])
            function_arn = record.function_arn
        except (ValidationError, ValueError):
            report.skipped += 1
            logger.warning(
                "not a Lambda failure record; left in the queue", extra={"message_id": message["MessageId"]}
            )
            return
        try:
            answer = self.lambda_client.invoke(
                FunctionName=function_arn,
                InvocationType="Event",
                Payload=json.dumps(record.request_payload).encode(),
            )
        except (ClientError, BotoCoreError) as error:
            report.errors.append(f"invoke {function_arn}: {error}")
            return
        if int(answer.get("StatusCode", 0)) != 202:
            report.errors.append(f"invoke {function_arn}: status {answer.get('StatusCode')}")
            return
        report.moved += 1
        # Lambda has queued the new invocation: only now does the record go.
        try:
            self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError) as error:
            report.errors.append(f"re-invoked but not deleted, may be re-invoked twice: {error}")

    # --- dispatcher executions ----------------------------------------------------------------

    def redrive_executions(self, request: RedriveRequest) -> SourceReport:
        source = RedriveSource.EXECUTIONS
        arn = self.targets.dispatcher_state_machine_arn
        if not arn:
            return SourceReport(source=source, method="-", status="skipped", before=0, after=0)
        candidates = list(self._redrivable_executions(arn))
        report = SourceReport(
            source=source,
            method="RedriveExecution",
            status="done",
            before=len(candidates),
            after=len(candidates),
        )
        if request.dry_run or not candidates:
            report.status = "dry-run" if request.dry_run else "done"
            return report
        for execution_arn in candidates[: request.max_messages]:
            if self._out_of_time():
                report.status = "partial"
                break
            try:
                self.sfn.redrive_execution(executionArn=execution_arn)
            except (ClientError, NotImplementedError) as error:
                if is_unsupported(error):
                    report.status = "unsupported"
                    report.errors.append("RedriveExecution is not implemented by this endpoint (moto)")
                    break
                report.errors.append(f"{execution_arn}: {error}")
                continue
            report.moved += 1
        if report.errors and report.status == "done":
            report.status = "partial"
        report.after = len(list(self._redrivable_executions(arn)))
        return report

    def _redrivable_executions(self, state_machine_arn: str) -> Iterator[str]:
        for status in REDRIVABLE_STATUSES:
            for execution_arn in self._recent_executions(state_machine_arn, status):
                if self._redrivable(execution_arn):
                    yield execution_arn

    def _recent_executions(self, state_machine_arn: str, status: str) -> Iterator[str]:
        """Executions in `status` young enough for RedriveExecution (ListExecutions lists newest first)."""
        cutoff = datetime.now(UTC) - EXECUTION_LIST_WINDOW
        pages = self.sfn.get_paginator("list_executions").paginate(
            stateMachineArn=state_machine_arn, statusFilter=status
        )
        for page in pages:
            for execution in page.get("executions", []):
                started = execution.get("startDate")
                if isinstance(started, datetime) and started.astimezone(UTC) < cutoff:
                    return
                yield execution["executionArn"]

    def _redrivable(self, execution_arn: str) -> bool:
        described = self.sfn.describe_execution(executionArn=execution_arn)
        # AWS says REDRIVABLE or NOT_REDRIVABLE; an endpoint without the field (moto) gets a try.
        return described.get("redriveStatus", "REDRIVABLE") in ("REDRIVABLE", "REDRIVABLE_BY_MAP_RUN")
