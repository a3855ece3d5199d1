"""PlanBatch: order a received batch by priority and give each item its stagger (sluice.planning).

Input `{"messages": [...], "queue": {...}, "concurrency": 3, "round": 0}` (plus an optional
`"execution"` name, the log correlation id); output `{"items": [ITEM, ...]}` (docs/interfaces.md).
"""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from sluice.observability import MetricUnit, bounded_errors, logger, metrics, tracer
from sluice.planning import PlanRequest, Policy, plan_batch
from sluice.settings import PlanSettings

# A malformed PRIORITY_PREFIXES fails the cold start with the entry it could not read.
policy = Policy.from_settings(PlanSettings.from_env())


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context(correlation_id_path="execution")
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = PlanRequest.model_validate(event)
    plan = plan_batch(request, policy)
    metrics.add_metric(name="BatchSize", unit=MetricUnit.Count, value=len(plan.items))
    metrics.add_metric(name="QueueDepth", unit=MetricUnit.Count, value=request.queue.total)
    if plan.malformed:
        metrics.add_metric(name="MalformedEvents", unit=MetricUnit.Count, value=plan.malformed)
    logger.info(
        "Planned batch",
        extra={
            "round": request.round,
            "concurrency": request.concurrency,
            "queue_depth": request.queue.total,
            "plan": [[i.message.message_id, i.priority, i.wait_seconds] for i in plan.items],
        },
    )
    return {"items": [item.model_dump() for item in plan.items]}
