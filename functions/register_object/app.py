"""RegisterObject (Ingest): parse the S3 Object Created event, register the object version.

Input: a planned item's `message`; output `{"action": "process" | "skip" | "defer" | "reject" |
"complete output", "object": OBJECT | null, "reason": str | null, "attempt": int, "defer_seconds": int,
"result": RESULT | null}`
(docs/interfaces.md). A body that is not an S3 Object Created event is rejected with the reason
(`attempt` 0: nothing was registered); the state machine moves it to the InvalidQueue, so nothing
is lost. A skip means the version already finished (the state machine deletes the message); a
defer, that another message's attempt holds the claim (the state machine hides this message for
`defer_seconds`, until that claim expires, and registers it again then). A "complete output"
means the version has its outcome but not its results (recorded before WriteOutput had succeeded):
`result` is the recorded outcome and counts, and the state machine runs the output stage again.
"""

from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from sluice.bounds import bounded
from sluice.ingest import MalformedEvent, parse_object_created
from sluice.metadata import MetadataStore
from sluice.models import Checkpoint, ObjectRef, ProcessResult, SqsMessage
from sluice.observability import MetricUnit, bounded_errors, logger, metrics, tracer
from sluice.settings import RegisterSettings

settings = RegisterSettings.from_env()
store = MetadataStore(
    boto3.resource("dynamodb").Table(settings.metadata_table), claim_seconds=settings.claim_seconds
)


class RegisterRequest(SqsMessage):
    priority: int | None = Field(default=None, ge=0, le=9)  # optional: the plan's priority, kept on the item


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context(correlation_id_path="message_id")
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = RegisterRequest.model_validate(event)
    try:
        obj = parse_object_created(request.body)
    except MalformedEvent as error:
        metrics.add_metric(name="MalformedEvents", unit=MetricUnit.Count, value=1)
        logger.warning("Rejecting: not an S3 Object Created event", extra={"reason": str(error)})
        return {
            "action": "reject",
            "object": None,
            "reason": bounded(str(error)),
            "attempt": 0,
            "defer_seconds": 0,
            "result": None,
        }

    logger.set_correlation_id(obj.id)
    tracer.put_annotation(key="object_id", value=obj.id)
    # The message id claims the item: a second message for the same version in flight is deferred.
    # A continuation (a long file that yielded) carries the claim of the message it continues.
    registration = store.register(
        obj, priority=request.priority, claimant=request.claim or request.message_id
    )
    match registration.action:
        case "skip":
            metrics.add_metric(name="DuplicateEventsSkipped", unit=MetricUnit.Count, value=1)
        case "defer":
            metrics.add_metric(name="DuplicateEventsDeferred", unit=MetricUnit.Count, value=1)
        case "complete output":
            metrics.add_metric(name="OutputsCompleted", unit=MetricUnit.Count, value=1)
        case "process" if request.claim not in (None, request.message_id):
            # A long file's next turn (a continuation), not a retry after a failure.
            metrics.add_metric(name="ContinuationsRegistered", unit=MetricUnit.Count, value=1)
        case "process":
            metrics.add_metric(
                name="FilesReceived" if registration.attempt == 1 else "RetriesRegistered",
                unit=MetricUnit.Count,
                value=1,
            )
    logger.info(
        f"Object {registration.action}",
        extra={
            "attempt": registration.attempt,
            "state": registration.state.value,
            "size": obj.size,
            "reason": registration.reason,
        },
    )
    return {
        "action": registration.action,
        "object": obj.as_payload(),
        "reason": registration.reason,
        "attempt": registration.attempt,
        "defer_seconds": registration.defer_seconds,
        "result": _recorded_result(obj) if registration.action == "complete output" else None,
    }


def _recorded_result(obj: ObjectRef) -> dict[str, Any]:
    """ProcessObject's last answer as the item recorded it: what WriteOutput needs to run again."""
    item = store.get(obj.id) or {}
    checkpoint = Checkpoint.model_validate(item.get("checkpoint") or {})  # which parts make the file
    result = ProcessResult(
        done=True,
        segment=0,
        outcome=item["state"],
        rows_total=item.get("rows_total", 0),
        rows_delivered=item.get("rows_delivered", 0),
        rows_rejected=item.get("rows_rejected", 0),
        parts=checkpoint.parts,
        runs=checkpoint.runs,
    )
    return result.model_dump(mode="json")
