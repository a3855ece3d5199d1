"""Plan a received batch: who goes first, and how long each item waits before it starts.

The dispatcher receives up to ten IngestQueue messages per round and runs them through a Map
whose MaxConcurrency is the live concurrency (`c`). PlanBatch orders them and gives each a
`wait_seconds` for the Map item's Wait state, so the downstream API sees files start one after
another instead of `c` at the same instant.

Priority (0 = most urgent, 9 = least), first rule that applies:
1. a body that is not an S3 Object Created event: 9, the lowest. It is still planned (never
   dropped) so RegisterObject rejects it with its reason and the message reaches the InvalidQueue;
2. the SQS message attribute `priority` (an integer 0-9) set by whoever sent the message;
3. the first `PRIORITY_PREFIXES` entry (`"urgent/=0,bulk/=9"`) whose prefix starts the key;
4. `DEFAULT_PRIORITY`.
Items are ordered by (priority, receive order): a stable sort, so equal priorities keep FIFO.

Stagger, for the item at index `i` of the sorted batch, with priority `p`, queue depth
`d` = visible + in-flight messages (in-flight includes this batch) and base gap `s` = STAGGER_SECONDS:

    backlog_scale = c / max(c, d)                 1 while the queue holds at most one wave,
                                                  shrinking as the backlog grows: a deep queue
                                                  needs throughput, a shallow one can spread out
    gap           = s * backlog_scale * (1 + p / 9)   low priority waits up to twice as long
    wait_seconds  = clamp(round(gap * i / c), 0, MAX_STAGGER_SECONDS)   rounded half up

`i / c` is the item's position in waves: the first wave (`i < c`) starts within [0, gap), the
first item at once, and each later wave is one more `gap` behind. A worked example, s = 2,
c = 3, a batch of six with priorities 0, 5, 5, 5, 9, 9:

    i  p   d = 3 (scale 1)   d = 12 (scale 0.25)   d = 30 (scale 0.1)
    0  0          0                  0                     0
    1  5          1                  0                     0
    2  5          2                  1                     0
    3  5          3                  1                     0
    4  9          5                  1                     1
    5  9          7                  2                     1

Pure functions: the handler passes settings and the received batch, and gets the plan back.
"""

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from sluice.ingest import CLAIM_ATTRIBUTE, MalformedEvent, parse_object_created
from sluice.models import PlanItem, SqsMessage
from sluice.observability import logger
from sluice.settings import PlanSettings

LOWEST_PRIORITY = 9
HIGHEST_PRIORITY = 0


class MessageAttribute(BaseModel):
    string_value: str | None = Field(default=None, alias="StringValue")
    data_type: str = Field(default="String", alias="DataType")


class ReceivedMessage(BaseModel):
    """One entry of SQS ReceiveMessage's `Messages`, as the aws-sdk:sqs:receiveMessage task returns it."""

    model_config = ConfigDict(populate_by_name=True)

    message_id: str = Field(alias="MessageId")
    receipt_handle: str = Field(alias="ReceiptHandle")
    body: str = Field(alias="Body")
    attributes: dict[str, str] = Field(default_factory=dict, alias="Attributes")
    message_attributes: dict[str, MessageAttribute] = Field(default_factory=dict, alias="MessageAttributes")

    @property
    def receive_count(self) -> int:
        return int(self.attributes.get("ApproximateReceiveCount", "1"))

    @property
    def claim(self) -> str:
        """The claim this message works under: a continuation's carried claim, else its own id."""
        carried = self.message_attributes.get(CLAIM_ATTRIBUTE)
        return (carried.string_value if carried else None) or self.message_id


class QueueDepth(BaseModel):
    """GetQueueAttributes' answer (numbers arrive as strings; pydantic converts them)."""

    visible: int = Field(default=0, ge=0, alias="ApproximateNumberOfMessages")
    in_flight: int = Field(default=0, ge=0, alias="ApproximateNumberOfMessagesNotVisible")

    @property
    def total(self) -> int:
        return self.visible + self.in_flight


class PlanRequest(BaseModel):
    """PlanBatch's input (docs/interfaces.md)."""

    messages: list[ReceivedMessage] = Field(default_factory=list)  # ReceiveMessage omits it when empty
    queue: QueueDepth = Field(default_factory=QueueDepth)
    concurrency: int = Field(ge=1)
    round: int = Field(default=0, ge=0)
    execution: str | None = None  # optional: the dispatcher execution's name, for log correlation


@dataclass(frozen=True)
class Policy:
    stagger_seconds: float
    max_stagger_seconds: int
    priority_prefixes: tuple[tuple[str, int], ...]
    default_priority: int

    @classmethod
    def from_settings(cls, settings: PlanSettings) -> "Policy":
        return cls(
            stagger_seconds=settings.stagger_seconds,
            max_stagger_seconds=settings.max_stagger_seconds,
            priority_prefixes=parse_priority_prefixes(settings.priority_prefixes),
            default_priority=settings.default_priority,
        )


@dataclass(frozen=True)
class Plan:
    items: list[PlanItem]
    malformed: int  # messages whose body is not an S3 Object Created event


def parse_priority_prefixes(spec: str) -> tuple[tuple[str, int], ...]:
    """`"urgent/=0,bulk/=9"` → (("urgent/", 0), ("bulk/", 9)); a bad entry fails with its text."""
    rules = []
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        prefix, _, value = entry.rpartition("=")
        priority = _priority(value)
        if not prefix or priority is None:
            raise ValueError(f"PRIORITY_PREFIXES: {entry!r} is not prefix=priority with a priority 0-9")
        rules.append((prefix, priority))
    return tuple(rules)


def priority_of(message: ReceivedMessage, policy: Policy) -> tuple[int, str | None]:
    """The message's priority, and the reason when its body is not an S3 Object Created event."""
    try:
        key = parse_object_created(message.body).key
    except MalformedEvent as error:
        return LOWEST_PRIORITY, str(error)
    attribute = message.message_attributes.get("priority")
    if attribute is not None:
        explicit = _priority(attribute.string_value or "")
        if explicit is not None:
            return explicit, None
        logger.warning(
            "Ignoring a priority attribute that is not 0-9",
            extra={"message_id": message.message_id, "priority": attribute.string_value},
        )
    for prefix, priority in policy.priority_prefixes:
        if key.startswith(prefix):
            return priority, None
    return policy.default_priority, None


def wait_seconds(index: int, priority: int, *, concurrency: int, depth: int, policy: Policy) -> int:
    """The stagger of the item at `index` of the sorted batch (the formula in the module docstring)."""
    backlog_scale = concurrency / max(concurrency, depth)
    gap = policy.stagger_seconds * backlog_scale * (1 + priority / LOWEST_PRIORITY)
    seconds = math.floor(gap * index / concurrency + 0.5)
    return max(0, min(seconds, policy.max_stagger_seconds))


def plan_batch(request: PlanRequest, policy: Policy) -> Plan:
    """Order the batch by (priority, receive order) and give each item its wait."""
    ranked = []
    malformed = 0
    for order, message in enumerate(request.messages):
        priority, problem = priority_of(message, policy)
        if problem is not None:
            malformed += 1
            extra = {"message_id": message.message_id, "reason": problem}
            logger.warning("Malformed message planned last", extra=extra)
        ranked.append((priority, order, message))
    ranked.sort(key=lambda entry: entry[:2])
    items = [
        PlanItem(
            message=SqsMessage(
                message_id=message.message_id,
                receipt_handle=message.receipt_handle,
                body=message.body,
                receive_count=message.receive_count,
                claim=message.claim,
            ),
            priority=priority,
            wait_seconds=wait_seconds(
                index, priority, concurrency=request.concurrency, depth=request.queue.total, policy=policy
            ),
        )
        for index, (priority, _, message) in enumerate(ranked)
    ]
    return Plan(items=items, malformed=malformed)


def _priority(text: str) -> int | None:
    """An integer 0-9, or None."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if HIGHEST_PRIORITY <= value <= LOWEST_PRIORITY else None
