"""WriteOutput (Output): merge a finished file's parts into its results in ProcessedBucket.

Input `{"object": OBJECT, "result": <ProcessObject's last answer>, "position": null or the previous
call's}`; output `{"done", "calls_left", "position", "accepted_key", "rejects_key", "summary_key"}`
(docs/interfaces.md). Merges exactly the parts the answer names (`parts`, `runs`), S3 copying big
ones, threads reading and joining small ones, for as long as this call's time allows; the state
machine calls again with the answered position until `done` (at most MAX_OUTPUT_CALLS calls).
A retried call resumes from the position it was given (sluice/results.py).
"""

from dataclasses import asdict
from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config
from pydantic import BaseModel

from sluice.models import MergePosition, ObjectRef, ProcessResult
from sluice.observability import MetricUnit, bounded_errors, logger, metrics, tracer
from sluice.results import MERGE_CONNECTIONS, merge_results
from sluice.settings import OutputSettings

settings = OutputSettings.from_env()
s3 = boto3.client("s3", config=Config(max_pool_connections=MERGE_CONNECTIONS))  # the merge's threads


class OutputRequest(BaseModel):
    object: ObjectRef
    result: ProcessResult
    position: MergePosition | None = None


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context(correlation_id_path="object.id")
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = OutputRequest.model_validate(event)
    if not request.result.done:
        raise ValueError(
            f"{request.object.id}: not done after segment {request.result.segment}, no output yet"
        )
    tracer.put_annotation(key="object_id", value=request.object.id)
    answer = merge_results(
        s3,
        settings.processed_bucket,
        request.object,
        request.result,
        request.position,
        time_left=lambda: context.get_remaining_time_in_millis() / 1000,
    )
    if answer.done:
        metrics.add_metric(name="FilesWritten", unit=MetricUnit.Count, value=1)
        logger.info("Results written", extra={**asdict(answer.keys), "outcome": request.result.outcome})
    else:
        logger.info("Results continue in the next call", extra=answer.position.model_dump())
    return answer.as_payload()
