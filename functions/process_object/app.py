"""ProcessObject (Transform and deliver): one segment of a file per invocation.

Input `{"object": OBJECT, "attempt": int, "segment": int}`; output `{"done", "segment" (the next
one to run), "outcome", "rows_total", "rows_delivered", "rows_rejected"}` (docs/interfaces.md).
Idempotent on (object.id, attempt, segment) with Powertools idempotency: a retried invocation of
a segment gets the first one's answer, and a second one while the first runs is refused
(IdempotencyAlreadyInProgressError, which the state machine retries). The work is
sluice/delivery.py; the API client, the shared rate limiter, the downstream's shared health
(circuit breaker) and the simulated API are built here once per container.
"""

from typing import Any

import boto3
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field

from sluice.delivery import Segment, SegmentLimits
from sluice.downstream import add_metric, client_from_settings
from sluice.health import health_from_settings
from sluice.metadata import MetadataStore
from sluice.models import ObjectRef
from sluice.observability import bounded_errors, logger, metrics, tracer
from sluice.results import PartWriter
from sluice.schemas import get_schema
from sluice.settings import IDEMPOTENCY_KEY_PREFIXES, ProcessSettings

settings = ProcessSettings.from_env()  # refuses an API choice the stage does not allow
schema = get_schema(settings.row_schema)
s3 = boto3.client("s3")
dynamodb = boto3.resource("dynamodb")
store = MetadataStore(
    dynamodb.Table(settings.metadata_table), claim_seconds=settings.claim_seconds, api_mode=settings.api_mode
)
client = client_from_settings(settings, dynamodb.Table(settings.control_table))
client.health = health_from_settings(
    settings, dynamodb.Table(settings.control_table), sns_client=boto3.client("sns"), metric=add_metric
)
limits = SegmentLimits.from_settings(settings)
persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table)
idempotency = IdempotencyConfig(
    event_key_jmespath="[object.id, attempt, segment]", raise_on_no_idempotency_key=True
)


class ProcessRequest(BaseModel):
    object: ObjectRef
    attempt: int = Field(ge=1)
    segment: int = Field(ge=0)


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context(correlation_id_path="object.id")
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@idempotent(  # registers the context itself
    config=idempotency,
    persistence_store=persistence,
    key_prefix=IDEMPOTENCY_KEY_PREFIXES["ProcessObjectFunction"],
)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = ProcessRequest.model_validate(event)
    obj = request.object
    tracer.put_annotation(key="object_id", value=obj.id)
    logger.append_keys(attempt=request.attempt, segment=request.segment)
    segment = Segment(
        obj,
        s3_client=s3,
        store=store,
        parts=PartWriter(s3, settings.processed_bucket, obj, attempt=request.attempt),
        schema=schema,
        client=client,
        limits=limits,
        remaining_ms=context.get_remaining_time_in_millis,
        attempt=request.attempt,
    )
    return segment.run(request.segment).model_dump(mode="json")
