"""The real application on the offline stack: its local test settings and what tests read back.

Every wait has a deadline and says what it waited for. Tests use their own object keys, so the
stack is shared and only the downstream simulator is reset between them.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable
from typing import Any

from sluice.csvstream import CsvStream
from sluice.downstream import idempotency_key
from sluice.models import ObjectRef
from sluice.results import Layout
from sluice_cli.apisim import UNKNOWN_CUSTOMER_RULE, ApiSimulatorConfig, RejectRule
from sluice_cli.commands.status import scan_items
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.polling import wait_for

API_RATE = 20.0  # requests per second: the simulator's limit and the stack's ApiRateLimit
FAST_API = {"latency_min": 0.005, "latency_max": 0.02, "error_rate": 0.0, "rate_limit": API_RATE}
MAX_RECEIVE_COUNT = 2

# samconfig.toml [local] plus what makes each case take seconds: no stagger, retries a second
# apart, a checkpoint every 5 rows, two deliveries before the DLQ, fast API backoff.
OVERRIDES = {
    "StaggerSeconds": "0",
    "MaxStaggerSeconds": "0",
    "RetryDelaySeconds": "1",
    "MaxReceiveCount": str(MAX_RECEIVE_COUNT),
    "CheckpointEveryRows": "5",
    # Covers a slot due within a second, one request and a flush within ProcessObject's local 8 s
    # timeout on a loaded machine (3 s and 4 s were overrun there, once each in the outage tests:
    # moto and the simulator answer slowly when the machine's two cores are shared).
    "SegmentSafetySeconds": "5",
    "ApiRateLimit": str(API_RATE),
    # The simulator counts per sliding second; a burst the pacing's lateness fits in leaves the
    # window alone to pace by (ratelimit.pacing_interval).
    "ApiBurst": "5",
    "ApiMaxAttempts": "4",
    "ApiBackoffBaseSeconds": "0.05",
    # Above the simulator's Retry-After (1 s): a 429 is waited out inside the segment.
    "ApiBackoffMaxSeconds": "2",
    # Longer than ProcessObject's local timeout: in the slow-API test the segment's stop, not the
    # request timeout nor the runtime, ends the calls.
    "ApiTimeoutSeconds": "20",
    # A duplicate event is deferred until the claim expires: seconds here, not 15 minutes.
    "ClaimSeconds": "20",
    # An unhealthy downstream is probed after 1 s, then every 2 s at most: recovery is seen at once.
    "DownstreamProbeSeconds": "1",
    "DownstreamProbeMaxSeconds": "2",
}
# ProcessObject's 300 s timeout, locally 8 s: a segment whose API calls have become slow reaches
# its stop within the test's time.
PROCESS_TIMEOUT_SECONDS = 8
FUNCTION_OVERRIDES = {"ProcessObjectFunction": {"Timeout": PROCESS_TIMEOUT_SECONDS}}
# A row whose own backend is down: the API answers it 503 every time while it accepts the others.
# That is a row failing for good (the file FAILED, then IngestDLQ); the whole API answering 503
# is an outage instead, which the downstream's circuit breaker waits out (sluice/health.py).
UNAVAILABLE_DOMAIN = "unavailable.example"
UNAVAILABLE_CUSTOMER_RULE = RejectRule(
    field="customer_email", pattern=r"@unavailable\.example$", error="customer backend down", status=503
)
SIMULATOR = ApiSimulatorConfig(
    rate_limit=API_RATE,
    latency_min=0.005,
    latency_max=0.02,
    rejects=(UNKNOWN_CUSTOMER_RULE, UNAVAILABLE_CUSTOMER_RULE),
)

FINISHED = {"SUCCEEDED", "SUCCEEDED_WITH_REJECTS", "INVALID"}


def with_failing_row(data: bytes) -> bytes:
    """`data` (orders CSV) with its first row's customer on UNAVAILABLE_DOMAIN: a row the API fails."""
    header, first, rest = data.split(b"\n", 2)
    fields = first.split(b",")
    fields[1] = fields[1].split(b"@")[0] + b"@" + UNAVAILABLE_DOMAIN.encode()
    return b"\n".join([header, b",".join(fields), rest])


def unique_key(label: str) -> str:
    return f"incoming/{label}-{uuid.uuid4().hex[:8]}.csv"


def upload(stack: OfflineStack, key: str, data: bytes) -> ObjectRef:
    bucket = stack.outputs["RawBucketName"]
    response = stack.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
    return ObjectRef(bucket=bucket, key=key, version_id=response.get("VersionId"), size=len(data))


def item_of(stack: OfflineStack, obj: ObjectRef) -> dict[str, Any] | None:
    for item in scan_items(stack.client("dynamodb"), stack.outputs["MetadataTableName"]):
        if item["pk"] == obj.id:
            return item
    return None


def wait_for_state(
    stack: OfflineStack,
    obj: ObjectRef,
    states: Iterable[str],
    *,
    timeout: float = 60,
    attempts: int | None = None,
) -> dict[str, Any]:
    wanted = set(states)

    def reached() -> dict[str, Any] | None:
        item = item_of(stack, obj)
        if item is None or item.get("state") not in wanted:
            return None
        return item if attempts is None or int(item.get("attempts", 0)) >= attempts else None

    def seen() -> str:
        item = item_of(stack, obj) or {}
        return (
            f"last seen: state={item.get('state')} attempts={item.get('attempts')} error={item.get('error')}"
        )

    what = f"{obj.key} to reach {' or '.join(sorted(wanted))}" + (
        f" after {attempts} attempts" if attempts else ""
    )
    return wait_for(reached, timeout=timeout, what=what, describe=seen, interval=0.5)


def delivery_counts(stack: OfflineStack, obj: ObjectRef, rows: Iterable[int]) -> dict[int, int]:
    """How many times the API answered 2xx for each row (by its Idempotency-Key, from its content)."""
    assert stack.api is not None
    deliveries = stack.api.deliveries()
    version = {"VersionId": obj.version_id} if obj.version_id else {}
    body = stack.client("s3").get_object(Bucket=obj.bucket, Key=obj.key, **version)["Body"].read()
    stream = CsvStream(io.BytesIO(body))
    keys = {
        row.number: idempotency_key(obj, row.number, dict(zip(stream.header, row.fields, strict=True)))
        for row in stream
        if row.fields is not None
    }
    return {row: deliveries.get(keys.get(row, ""), 0) for row in rows}


def read_object(stack: OfflineStack, bucket: str, key: str) -> bytes:
    return stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def results(stack: OfflineStack, obj: ObjectRef) -> dict[str, Any]:
    """The file's merged results in ProcessedBucket (docs/interfaces.md).

    The state machine records the outcome and writes the output in parallel: summary.json,
    written last, says the results are complete.
    """
    bucket = stack.outputs["ProcessedBucketName"]
    keys = Layout(obj).results
    base = keys.summary_key.rsplit("/", 1)[0]
    s3 = stack.client("s3")

    def written() -> bool:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{base}/summary.json")
        return listed.get("KeyCount", 0) > 0

    wait_for(written, timeout=30, what=f"{base}/summary.json in ProcessedBucket")
    accepted = [
        json.loads(line) for line in read_object(stack, bucket, f"{base}/accepted.jsonl").splitlines()
    ]
    rejects = read_object(stack, bucket, f"{base}/rejects.csv").decode().splitlines()
    summary = json.loads(read_object(stack, bucket, f"{base}/summary.json"))
    return {"accepted": accepted, "rejects": rejects, "summary": summary}


def queue_bodies(stack: OfflineStack, queue_url: str, *, delete: bool = False) -> list[dict[str, Any]]:
    """Every message now visible in a queue (read with visibility 0 unless deleted)."""
    sqs = stack.client("sqs")
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(10):
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=0 if not delete else 30,
            MessageAttributeNames=["All"],
        )
        messages = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not messages:
            break
        for message in messages:
            seen.add(message["MessageId"])
            found.append(message)
            if delete:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return found


def s3_event_body(obj: ObjectRef) -> str:
    """The EventBridge "Object Created" event S3 sends for this version, as IngestQueue receives it."""
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": "123456789012",
            "time": "2026-11-22T03:00:00Z",
            "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{obj.bucket}"],
            "detail": {
                "version": "0",
                "bucket": {"name": obj.bucket},
                "object": {"key": obj.key, "size": obj.size, "etag": "0", "version-id": obj.version_id},
                "reason": "PutObject",
            },
        }
    )


def subscribe_queue(stack: OfflineStack, topic_arn: str, name: str) -> str:
    """A queue subscribed to a topic, to see what the stack publishes."""
    sqs = stack.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.client("sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)
    return url


def queue_drained(stack: OfflineStack) -> bool:
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.outputs["IngestQueueUrl"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return all(value == "0" for value in attributes.values())
