"""DispatcherLease: at most one dispatcher execution at a time, within its round and time budget.

Input `{"operation": "acquire" | "renew" | "release", "execution": "...", "round": 0}`, output
`{"acquired": bool, "budget_left": bool, "deadline": "...Z" | null}` (docs/interfaces.md).
The lease itself lives in `sluice.lease`.
"""

from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from sluice.lease import DispatcherLease, LeaseRequest
from sluice.observability import MetricUnit, bounded_errors, logger, metrics, tracer
from sluice.settings import LeaseSettings

settings = LeaseSettings.from_env()
lease = DispatcherLease(boto3.resource("dynamodb").Table(settings.control_table), settings)


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context(correlation_id_path="execution")
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = LeaseRequest.model_validate(event)
    answer = lease.handle(request)
    if request.operation == "acquire":
        # LeaseRefused counts scheduled executions that found another one still running.
        metrics.add_metric(
            name="LeaseAcquired" if answer.acquired else "LeaseRefused", unit=MetricUnit.Count, value=1
        )
    elif request.operation == "renew":
        # A renewal closes a round; LeaseLost means another execution took over an expired lease.
        metrics.add_metric(
            name="DispatcherRounds" if answer.acquired else "LeaseLost", unit=MetricUnit.Count, value=1
        )
    else:
        metrics.add_metric(name="LeaseReleased", unit=MetricUnit.Count, value=1)
    logger.info(
        f"Dispatcher lease {request.operation}",
        extra={"operation": request.operation, "round": request.round, **answer.model_dump()},
    )
    return answer.model_dump()
