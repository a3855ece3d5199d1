"""Redrive: dead letters back into the pipeline, invoked by hand or by `sluice redrive`.

Event `{"source": "ingest-dlq" | "rule-dlq" | "failure-destination" | "executions" | "all",
"dry_run": false, "max_messages": 1000}` (every field optional); the answer is the report with the
counts before and after for each source. The work is `sluice.redrive`, shared with the CLI.
"""

from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from sluice.observability import MetricUnit, bounded_errors, logger, metrics, tracer
from sluice.redrive import Redriver, RedriveRequest, RedriveTargets
from sluice.settings import RedriveSettings

SAFETY_SECONDS = 15  # stop taking batches this long before the function's timeout

settings = RedriveSettings.from_env()
redriver = Redriver(
    sqs=boto3.client("sqs"),
    lambda_client=boto3.client("lambda"),
    sfn=boto3.client("stepfunctions"),
    targets=RedriveTargets(
        ingest_queue_url=settings.ingest_queue_url,
        ingest_dlq_url=settings.ingest_dlq_url,
        ingest_rule_dlq_url=settings.ingest_rule_dlq_url,
        failure_destination_queue_url=settings.failure_destination_queue_url,
        dispatcher_state_machine_arn=settings.dispatcher_state_machine_arn,
    ),
    rate_per_second=settings.redrive_rate_per_second,
    move_task_wait_seconds=settings.redrive_move_task_wait_seconds,
)


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = RedriveRequest.model_validate({"max_messages": settings.redrive_max_messages, **(event or {})})
    budget = context.get_remaining_time_in_millis() / 1000 - SAFETY_SECONDS
    report = redriver.run(request, time_budget_seconds=max(budget, 1.0))
    if not request.dry_run:
        metrics.add_metric(name="MessagesRedriven", unit=MetricUnit.Count, value=report.moved)
    return report.model_dump(mode="json")
