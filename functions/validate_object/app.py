"""ValidateObject (Validate): size, encoding, header and column count of one object version.

Input `{"object": OBJECT}`; output `{"valid": bool, "header": [str] | null, "reason": str | null}`
(docs/interfaces.md). It records nothing: on `valid: false` the state machine sends the message to
InvalidQueue and only then records INVALID with the reason ("Record invalid"), so a file is never
INVALID without its message in InvalidQueue. The checks and their rules are in sluice/filecheck.py;
the reason is at most 1 KiB.
"""

from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from sluice.filecheck import Deliverable, check_object
from sluice.models import ObjectRef
from sluice.observability import MetricUnit, bounded_errors, logger, metrics, tracer
from sluice.schemas import get_schema
from sluice.settings import ValidateSettings

settings = ValidateSettings.from_env()
schema = get_schema(settings.row_schema)
s3 = boto3.client("s3")
deliverable = Deliverable(
    api_rate_limit=settings.api_rate_limit,
    api_rate_lateness_seconds=settings.api_rate_lateness_seconds,
    raw_readable_days=settings.raw_glacier_days,
    api_batch_size=settings.api_batch_size,
)


class ValidateRequest(BaseModel):
    object: ObjectRef


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context(correlation_id_path="object.id")
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    obj = ValidateRequest.model_validate(event).object
    tracer.put_annotation(key="object_id", value=obj.id)
    check = check_object(
        s3,
        obj,
        schema,
        max_file_bytes=settings.max_file_bytes,
        deliverable=deliverable,
        url_columns=settings.url_columns,
    )
    if check.valid:
        metrics.add_metric(name="FilesValid", unit=MetricUnit.Count, value=1)
        logger.info("File valid", extra={"header": check.header})
    else:
        metrics.add_metric(name="FilesInvalid", unit=MetricUnit.Count, value=1)
        logger.warning("File invalid", extra={"reason": check.reason})
    return {"valid": check.valid, "header": check.header, "reason": check.reason}
