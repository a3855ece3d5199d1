"""ScaleConcurrency: on a schedule, set the dispatcher's Map concurrency from the queue and the API's health.

Input: the schedule's event, which carries nothing the decision needs (the clock is read here, not
taken from the event: a late or retried delivery must decide on what is true now). Output: the
decision, `{"old", "new", "target", "direction", "reason", "detail"}`. The policy lives in
`sluice.scaling` (docs/scaling.md); it also reads the downstream's breaker (sluice/health.py).
"""

from datetime import UTC, datetime
from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from sluice.observability import bounded_errors, logger, metrics, tracer
from sluice.scaling import ConcurrencyScaler
from sluice.settings import ScaleSettings

settings = ScaleSettings.from_env()
scaler = ConcurrencyScaler(
    settings,
    ssm=boto3.client("ssm"),
    sqs=boto3.client("sqs"),
    cloudwatch=boto3.client("cloudwatch"),
    control=boto3.resource("dynamodb").Table(settings.control_table),
)


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    decision = scaler.run(datetime.now(UTC))
    tracer.put_annotation(key="scaling_direction", value=decision.direction.value)
    return decision.as_payload()
