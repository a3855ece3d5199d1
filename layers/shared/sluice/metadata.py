"""The metadata table: one item per object version, and the only code that changes those items.

Every transition is a single conditional DynamoDB write, so two invocations racing on the same
object version (a duplicate S3 event, a retried Lambda) cannot lose each other's update: the
condition decides, and the loser sees the winner's item. docs/metadata.md describes the item and
the state diagram; the two transitions the state machine makes itself (success, FAILED) are
documented there too.

Registration also *claims* the item for the SQS message that carries the work (docs/metadata.md,
The claim): while one message's attempt is in flight, another message for the same version
(a duplicate event in the same batch, a redrive while an aborted attempt's claim still holds) is
deferred until the claim expires instead of processing the file side by side; it is then skipped
if the file finished meanwhile, or takes the claim over if the holder vanished.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from boto3.dynamodb.conditions import Attr
from botocore.exceptions import ClientError

from sluice.ddb import condition_failed_item, plain
from sluice.models import Checkpoint, FileState, ObjectRef, RowCounts
from sluice.observability import logger

RETENTION = timedelta(days=180)  # the table's TTL (expires_at) drops an item this long after its last event
# How long a claim holds without renewal. register, start_processing and every save_checkpoint
# renew it, so it must outlive the longest gap between two of them while the attempt is alive:
#   a ProcessObject segment between two checkpoints: at most its Timeout            300 s
# + the state machine's Retry backoff before a failed invocation runs again, 2+4+8   14 s
# + margin: a retried invocation failing before its first checkpoint, Lambda and
#   Step Functions latency (ValidateObject before the first segment: 30 + 14 s)     586 s
# = 900 s (15 min), the template's ClaimSeconds default (CLAIM_SECONDS in every function's
# environment). A longer claim only delays a deferred message's takeover after a claimant vanished
# without a FAILED (an aborted dispatcher); its own redelivered message is never held.
CLAIM_SECONDS = 15 * 60
FINISHED = tuple(state.value for state in FileState if state.finished)
SUCCEEDED = (FileState.SUCCEEDED.value, FileState.SUCCEEDED_WITH_REJECTS.value)

FINISHED_VALUES = {f":finished{i}": state for i, state in enumerate(FINISHED)}
NOT_FINISHED = f"attribute_exists(#pk) AND NOT #state IN ({', '.join(FINISHED_VALUES)})"
# A claim stops another message only while the attempt it started may still run: FAILED means it
# ended, an expired claim means its holder stopped renewing.
CLAIM_FREE = (
    "(#state = :failed OR attribute_not_exists(#claimed_by) OR #claimed_by = :claimant "
    "OR attribute_not_exists(#claim_expires_at) OR #claim_expires_at <= :epoch)"
)
# Fencing (docs/metadata.md): only the latest attempt moves the file, and never backwards.
OWNED = "#attempts = :attempt"
NOT_BEHIND = (
    "(attribute_not_exists(#checkpoint) OR "
    "(#checkpoint.#next_row <= :next_row AND #checkpoint.#parts <= :parts))"
)


# The longest an SQS message can be kept invisible (ChangeMessageVisibility's maximum, 12 h).
MAX_VISIBILITY_SECONDS = 12 * 60 * 60
# A deferred message comes back this long after the claim it waits for has expired, so that the
# claim is certainly free when it is registered again (DynamoDB and SQS clocks differ a little).
DEFER_MARGIN_SECONDS = 5


@dataclass(frozen=True)
class Registration:
    """What RegisterObject does with an object version: process it (attempt n), skip it (it
    finished: the message can go), or defer it (another message's attempt holds the claim: this
    message comes back after `defer_seconds`, when that attempt has finished or lost the claim)."""

    action: Literal["process", "skip", "defer", "complete output"]
    attempt: int
    state: FileState
    reason: str | None = None
    defer_seconds: int = 0


class MetadataConflict(Exception):
    """A transition the item's current state does not allow (finished, or never registered)."""


class Fenced(MetadataConflict):
    """A newer attempt owns the file (or the checkpoint is already further on): this runner stops.

    Raised by start_processing and save_checkpoint when their condition on `attempts` (and on the
    checkpoint's offset) fails: a stale runner, e.g. one still running after its claim lapsed and
    another message took the file over, never moves the file again.
    """


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with a Z, to the millisecond (the form Step Functions' $$ timestamps use)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MetadataStore:
    def __init__(
        self,
        table: Any,
        *,
        clock: Callable[[], datetime] = utc_now,
        claim_seconds: int = CLAIM_SECONDS,
        api_mode: str | None = None,  # ProcessObject's API_MODE, recorded by start_processing
    ) -> None:
        self._table = table  # a boto3 dynamodb Table resource
        self._clock = clock
        self._claim_seconds = claim_seconds
        self._api_mode = api_mode

    def register(
        self, obj: ObjectRef, *, priority: int | None = None, claimant: str | None = None
    ) -> Registration:
        """Record an S3 event for `obj`: a new item (attempt 1), a retry (attempt + 1), or a duplicate.

        Finished versions are skipped: S3 and EventBridge deliver at least once, duplicates are normal.
        RECEIVED, PROCESSING and FAILED versions are processed again and keep their checkpoint, so
        the retry resumes where the last attempt stopped.

        `claimant` (RegisterObject passes the SQS message id) claims the item for `claim_seconds`:
        a RECEIVED or PROCESSING version whose live claim another message holds is deferred until
        that claim expires, never dropped: the holder may have died without recording FAILED (an
        aborted dispatcher), and then this message is the only one left for the file. The same
        message, an expired claim or a FAILED version takes the claim and starts a new attempt
        (state RECEIVED until start_processing). Without a claimant nothing is claimed or checked.
        """
        # Bounded: the only ways round again are the item vanishing (TTL) or changing between writes.
        for _ in range(3):
            now = self._clock()
            existing = self._put_new(obj, now, priority, claimant)
            if existing is None:
                return Registration(action="process", attempt=1, state=FileState.RECEIVED)
            if not existing:
                continue
            if held := _held(existing, claimant, now):
                return held
            try:
                attributes = self._count_attempt(obj, now, priority, claimant)
            except ClientError as error:
                existing = condition_failed_item(error)
                if existing is not None and (held := _held(existing, claimant, now)):
                    return held
                continue
            return Registration("process", int(attributes["attempts"]), FileState(attributes["state"]))
        raise MetadataConflict(f"{obj.id}: could not register (item changing under us)")

    def _claim_until(self, now: datetime) -> int:
        return _epoch(now) + self._claim_seconds

    def _put_new(
        self, obj: ObjectRef, now: datetime, priority: int | None, claimant: str | None
    ) -> dict | None:
        """Create the item: None when created, else the item already there ({} if it just vanished)."""
        item = {
            "pk": obj.id,
            **_identity(obj),
            "state": FileState.RECEIVED.value,
            "attempts": 1,
            "received_at": iso(now),
            "updated_at": iso(now),
            "expires_at": _expiry(now),
        }
        if priority is not None:
            item["priority"] = priority
        if claimant is not None:
            item["claimed_by"] = claimant
            item["claim_expires_at"] = self._claim_until(now)
        try:
            self._table.put_item(
                Item=item,
                ConditionExpression=Attr("pk").not_exists(),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            return condition_failed_item(error) or {}
        return None

    def _count_attempt(
        self, obj: ObjectRef, now: datetime, priority: int | None, claimant: str | None
    ) -> dict:
        update = "SET #attempts = #attempts + :one, #updated_at = :now, #expires_at = :expires"
        values: dict[str, Any] = {":one": 1, ":now": iso(now), ":expires": _expiry(now), **FINISHED_VALUES}
        condition = NOT_FINISHED
        if priority is not None:
            update += ", #priority = :priority"
            values[":priority"] = priority
        if claimant is not None:
            # A new attempt under this claim: RECEIVED until it starts, so that a FAILED item,
            # which any message may take, is protected again as soon as one message has taken it.
            update += ", #claimed_by = :claimant, #claim_expires_at = :claim_until, #state = :received"
            condition += f" AND {CLAIM_FREE}"
            values |= {
                ":claimant": claimant,
                ":claim_until": self._claim_until(now),
                ":received": FileState.RECEIVED.value,
                ":failed": FileState.FAILED.value,
                ":epoch": _epoch(now),
            }
        return self._update(obj, update, values, condition)

    def mark_invalid(self, obj: ObjectRef, reason: str) -> None:
        """INVALID with the reason: the file can never succeed. Never overwrites a success."""
        now = self._clock()
        identity = _identity(obj)
        # An item that was never registered (it should not happen) still gets a complete identity.
        keep = "".join(f", #{name} = if_not_exists(#{name}, :{name})" for name in identity)
        update = (
            "SET #state = :invalid, #reason = :reason, #invalid_at = :now, #updated_at = :now, "
            "#attempts = if_not_exists(#attempts, :one), #received_at = if_not_exists(#received_at, :now), "
            f"#expires_at = :expires{keep}"
        )
        values = {
            ":invalid": FileState.INVALID.value,
            ":reason": reason,
            ":now": iso(now),
            ":one": 1,
            ":expires": _expiry(now),
            ":succeeded0": SUCCEEDED[0],
            ":succeeded1": SUCCEEDED[1],
            **{f":{name}": value for name, value in identity.items()},
        }
        condition = "attribute_not_exists(#pk) OR NOT #state IN (:succeeded0, :succeeded1)"
        try:
            self._update(obj, update, values, condition)
        except ClientError as error:
            existing = condition_failed_item(error) or {}
            logger.warning(
                "Not marking a finished file INVALID",
                extra={"object_id": obj.id, "state": existing.get("state"), "reason": reason},
            )

    def start_processing(self, obj: ObjectRef, header: list[str], *, attempt: int) -> Checkpoint:
        """PROCESSING; the stored checkpoint (a retry resumes) or a fresh one from `header`.

        Fenced unless `attempt` is still the item's latest (`attempts`, counted by register).
        """
        now = self._clock()
        update = (
            "SET #state = :processing, #updated_at = :now, #started_at = if_not_exists(#started_at, :now), "
            "#checkpoint = if_not_exists(#checkpoint, :fresh), "
            "#rows_total = if_not_exists(#rows_total, :zero), "
            "#rows_delivered = if_not_exists(#rows_delivered, :zero), "
            "#rows_rejected = if_not_exists(#rows_rejected, :zero), "
            "#claim_expires_at = :claim_until" + (", #api_mode = :api_mode" if self._api_mode else "")
        )
        values = {
            ":processing": FileState.PROCESSING.value,
            ":now": iso(now),
            ":fresh": Checkpoint(header=header).model_dump(),
            **({":api_mode": self._api_mode} if self._api_mode else {}),
            ":zero": 0,
            ":claim_until": self._claim_until(now),
            ":attempt": attempt,
            **FINISHED_VALUES,
        }
        attributes = self._transition(obj, update, values, OWNED)
        return Checkpoint.model_validate(attributes["checkpoint"])

    def save_checkpoint(
        self, obj: ObjectRef, checkpoint: Checkpoint, counts: RowCounts, *, attempt: int
    ) -> None:
        """Store where the next segment resumes and the counts so far (state PROCESSING).

        Fenced unless `attempt` is the item's latest and the stored checkpoint is not further on
        than this one (a checkpoint never moves backwards).

        Also renews the claim: a segment checkpoints at least every CHECKPOINT_EVERY_ROWS rows and
        at its end, so a long file keeps its claim for as long as it makes progress.
        """
        now = self._clock()
        update = (
            "SET #state = :processing, #updated_at = :now, #checkpoint = :checkpoint, "
            "#rows_total = :total, #rows_delivered = :delivered, #rows_rejected = :rejected, "
            "#claim_expires_at = :claim_until"
        )
        values = {
            ":processing": FileState.PROCESSING.value,
            ":now": iso(now),
            ":claim_until": self._claim_until(now),
            ":checkpoint": checkpoint.model_dump(),
            ":total": counts.total,
            ":delivered": counts.delivered,
            ":rejected": counts.rejected,
            ":attempt": attempt,
            ":next_row": checkpoint.next_row,
            ":parts": checkpoint.parts,
            **FINISHED_VALUES,
        }
        self._transition(obj, update, values, f"{OWNED} AND {NOT_BEHIND}")

    def load_checkpoint(self, obj: ObjectRef) -> tuple[Checkpoint, RowCounts]:
        """The stored checkpoint and counts; fresh ones when nothing was stored yet."""
        item = self.get(obj.id) or {}
        checkpoint = Checkpoint.model_validate(item.get("checkpoint") or {})
        counts = RowCounts(
            total=item.get("rows_total", 0),
            delivered=item.get("rows_delivered", 0),
            rejected=item.get("rows_rejected", 0),
        )
        return checkpoint, counts

    def get(self, obj_id: str) -> dict | None:
        """The item (numbers as int/float), read consistently; None if there is none."""
        item = self._table.get_item(Key={"pk": obj_id}, ConsistentRead=True).get("Item")
        return None if item is None else plain(item)

    def list_items(self, *, state: FileState | str | None = None, page_size: int = 100) -> Iterator[dict]:
        """Every item (or those in `state`), page by page: a scan, for `sluice status`."""
        kwargs: dict[str, Any] = {"Limit": page_size}
        if state is not None:
            kwargs["FilterExpression"] = Attr("state").eq(FileState(state).value)
        while True:
            page = self._table.scan(**kwargs)
            for item in page.get("Items", []):
                yield plain(item)
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _transition(self, obj: ObjectRef, update: str, values: dict[str, Any], fence: str) -> dict:
        """A processing update by attempt `:attempt`: refused on a finished or unregistered item
        (MetadataConflict), or when `fence` fails on a live one (Fenced)."""
        try:
            return self._update(obj, update, values, f"{NOT_FINISHED} AND {fence}")
        except ClientError as error:
            existing = condition_failed_item(error)
            if existing is None or FileState(existing["state"]).finished:
                state = existing.get("state") if existing else "not registered"
                raise MetadataConflict(f"{obj.id}: {state}, not processed") from error
            stored = existing.get("checkpoint") or {}
            raise Fenced(
                f"{obj.id}: attempt {values[':attempt']} fenced out (item at attempt "
                f"{existing.get('attempts')}, checkpoint at row {stored.get('next_row')}, "
                f"part {stored.get('parts')})"
            ) from error

    def _update(self, obj: ObjectRef, update: str, values: dict[str, Any], condition: str) -> dict:
        # Every attribute goes through a #placeholder: state, key, size... are DynamoDB reserved words.
        names = {token: token[1:] for token in re.findall(r"#\w+", f"{update} {condition}")}
        response = self._table.update_item(
            Key={"pk": obj.id},
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        return plain(response["Attributes"])


def _identity(obj: ObjectRef) -> dict[str, Any]:
    """The object's own attributes; absent ones (unversioned bucket, no etag) are left out."""
    item: dict[str, Any] = {"bucket": obj.bucket, "key": obj.key, "size": obj.size}
    if obj.version_id is not None:
        item["version_id"] = obj.version_id
    if obj.etag:
        item["etag"] = obj.etag
    return item


def _expiry(now: datetime) -> int:
    return int((now + RETENTION).timestamp())


def _epoch(now: datetime) -> int:
    return int(now.timestamp())


def _held(item: dict, claimant: str | None, now: datetime) -> Registration | None:
    """Why `claimant` must not process this item now (finished: skip; another message's live
    claim: defer until it expires), or None.

    The claim part mirrors CLAIM_FREE: it reads the item a failed write returned, which the
    condition judged with the same `now`.
    """
    state = FileState(item["state"])
    attempt = int(item["attempts"])
    if state.value in SUCCEEDED and "summary_key" not in item:
        # The outcome without its results: recorded before WriteOutput had succeeded (the state
        # machine records it only after that now); the output stage is run again, not skipped.
        return Registration("complete output", attempt, state, reason=f"{state.value} without its output")
    if state.finished:
        return Registration("skip", attempt, state, reason=f"already {state.value}")
    holder = item.get("claimed_by")
    expires = int(item.get("claim_expires_at", 0))
    if claimant is None or holder in (None, claimant) or state is FileState.FAILED or expires <= _epoch(now):
        return None
    return Registration(
        "defer",
        attempt,
        state,
        reason=f"duplicate event: object version in progress under message {holder}",
        defer_seconds=min(expires - _epoch(now) + DEFER_MARGIN_SECONDS, MAX_VISIBILITY_SECONDS),
    )
