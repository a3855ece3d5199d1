"""What an IngestQueue message says: the S3 "Object Created" event that EventBridge delivered.

PlanBatch reads it to find the key (for the priority), RegisterObject to register the object
version. Both go through `parse_object_created`, so "what counts as a well-formed event" is
decided once. Parsing uses Powertools' `S3EventBridgeNotificationEvent` data class; this module
only adds the checks a data class does not make (is it JSON, is it an S3 Object Created event,
are the fields there) and turns each failure into a reason a person can act on.
"""

import json

from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent

from sluice.models import ObjectRef

OBJECT_CREATED = "Object Created"
# The message attribute of a continuation: a file that ran its SegmentsPerTurn segments in one
# dispatcher execution is sent again with the same body and this attribute, the id of the message
# that holds its claim (docs/architecture.md, Long files yield). The state machine writes it
# ("Send continuation"); PlanBatch reads it into the item's `claim`, RegisterObject claims with it.
CLAIM_ATTRIBUTE = "sluice_claim"


class MalformedEvent(ValueError):
    """The body is not an S3 Object Created event; the message is the reason recorded for it."""


def parse_object_created(body: str) -> ObjectRef:
    """The object version an SQS message body announces, or MalformedEvent saying why not."""
    try:
        payload = json.loads(body)
    except (TypeError, ValueError) as error:
        raise MalformedEvent(f"body is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise MalformedEvent(f"body is a JSON {type(payload).__name__}, not an EventBridge event")

    event = S3EventBridgeNotificationEvent(payload)
    source, detail_type = event.get("source"), event.get("detail-type")
    if source != "aws.s3" or detail_type != OBJECT_CREATED:
        raise MalformedEvent(
            f"not an S3 Object Created event (source={source!r}, detail-type={detail_type!r})"
        )
    try:
        detail = event.detail
        bucket = detail.bucket.name
        s3_object = detail.object
        key = s3_object.key
        # An unversioned bucket sends no "version-id"; the data class's property would KeyError.
        version_id = s3_object.get("version-id") or None
        size = int(s3_object.size or 0)
        # AWS spells it "etag", moto "eTag"; neither quotes it, S3's own ETag headers do.
        etag = s3_object.etag or s3_object.get("eTag") or ""
    except KeyError as error:
        raise MalformedEvent(f"S3 Object Created event without {error} in its detail") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise MalformedEvent(f"S3 Object Created event with a malformed detail: {error}") from None
    if not bucket or not key:
        raise MalformedEvent("S3 Object Created event without a bucket name or an object key")
    return ObjectRef(bucket=bucket, key=key, version_id=version_id, size=size, etag=_quoted(etag))


def _quoted(etag: str) -> str | None:
    """The ETag as S3 returns it in headers (`"abc"`), the form docs/interfaces.md shows."""
    bare = etag.strip('"')
    return f'"{bare}"' if bare else None
