"""WakeDispatcher: a routed file's Object Created event (or the safety-net schedule) starts a
dispatcher execution unless one holds the lease.

Input: the EventBridge event (an S3 "Object Created" from the IngestRule, or a "Scheduled Event").
Output: `{"started": bool, "execution": "wake-…" | null, "reason": "..."}`. The logic lives in
`sluice.wake`.
"""

from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from sluice.lease import DispatcherLease
from sluice.observability import MetricUnit, logger, metrics, tracer
from sluice.settings import WakeSettings
from sluice.wake import DispatcherWake

settings = WakeSettings.from_env()
waker = DispatcherWake(
    DispatcherLease(boto3.resource("dynamodb").Table(settings.control_table), settings),
    boto3.client("stepfunctions"),
    settings.dispatcher_state_machine_arn,
    boto3.client("sqs"),
    settings.ingest_queue_url,
)


@logger.inject_lambda_context(correlation_id_path="id")
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    answer = waker.wake(event)
    # DispatcherWoken counts executions a wake started; the rest found one draining already.
    metrics.add_metric(
        name="DispatcherWoken" if answer.started else "WakeSkipped", unit=MetricUnit.Count, value=1
    )
    logger.info("Dispatcher wake", extra={"detail_type": event.get("detail-type"), **answer.model_dump()})
    return answer.model_dump()
