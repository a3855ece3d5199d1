"""MetadataStore: every transition checked by what ends up in the (moto) metadata table."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from handler_support import create_pk_table
from moto import mock_aws

from sluice.metadata import (
    CLAIM_SECONDS,
    DEFER_MARGIN_SECONDS,
    MAX_VISIBILITY_SECONDS,
    Fenced,
    MetadataConflict,
    MetadataStore,
    Registration,
)
from sluice.models import Checkpoint, FileState, ObjectRef, RowCounts

NOW = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)
OBJ = ObjectRef(
    bucket="sluice-raw-example", key="incoming/orders-valid.csv", version_id="v1", size=1024, etag='"abc"'
)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def table() -> Iterator[Any]:
    with mock_aws():
        yield create_pk_table("MetadataTable")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(table: Any, clock: Clock) -> MetadataStore:
    return MetadataStore(table, clock=clock)


def raw(table: Any, obj: ObjectRef = OBJ) -> dict[str, Any]:
    return table.get_item(Key={"pk": obj.id}, ConsistentRead=True)["Item"]


def set_state(table: Any, state: FileState, obj: ObjectRef = OBJ) -> None:
    """What the state machine's own UpdateItem does at the end of a file (a success with its
    results' summary_key: "Record outcome" runs after WriteOutput)."""
    update, values = "SET #s = :s", {":s": state.value}
    if state in (FileState.SUCCEEDED, FileState.SUCCEEDED_WITH_REJECTS):
        update, values = update + ", summary_key = :k", values | {":k": "results/summary.json"}
    table.update_item(
        Key={"pk": obj.id},
        UpdateExpression=update,
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues=values,
    )


def test_first_event_creates_a_received_item(store: MetadataStore, table: Any) -> None:
    registration = store.register(OBJ, priority=3)

    assert registration == Registration(action="process", attempt=1, state=FileState.RECEIVED)
    item = raw(table)
    assert item == {
        "pk": "sluice-raw-example/incoming/orders-valid.csv#v1",
        "bucket": "sluice-raw-example",
        "key": "incoming/orders-valid.csv",
        "version_id": "v1",
        "size": Decimal(1024),
        "etag": '"abc"',
        "state": "RECEIVED",
        "attempts": Decimal(1),
        "priority": Decimal(3),
        "received_at": "2026-11-22T03:00:00.000Z",
        "updated_at": "2026-11-22T03:00:00.000Z",
        "expires_at": Decimal(int((NOW + timedelta(days=180)).timestamp())),
    }


def test_unversioned_object_has_no_version_or_etag_attributes(store: MetadataStore, table: Any) -> None:
    obj = ObjectRef(bucket="b", key="plain.csv")
    store.register(obj)

    item = raw(table, obj)
    assert item["pk"] == "b/plain.csv#null"
    assert "version_id" not in item
    assert "etag" not in item


def test_an_unversioned_re_upload_with_new_content_is_a_new_file(store: MetadataStore, table: Any) -> None:
    # GIVEN an unversioned (or suspended) bucket's upload that SUCCEEDED: every upload's version is "null"
    first = ObjectRef(bucket="b", key="plain.csv", version_id="null", etag='"aaa"')
    store.register(first)
    set_state(table, FileState.SUCCEEDED, first)

    # WHEN the key is uploaded again, with new content (a new ETag), and then the first content again
    changed = store.register(first.model_copy(update={"etag": '"bbb"'}))
    same = store.register(ObjectRef(bucket="b", key="plain.csv", etag='"aaa"'))

    # THEN the new content is processed as a new file; the same content is the same file, finished
    assert changed == Registration("process", 1, FileState.RECEIVED)
    assert same.action == "skip"
    assert raw(table, first)["pk"] == "b/plain.csv#null-aaa"


@pytest.mark.parametrize(
    "finished", [FileState.SUCCEEDED, FileState.SUCCEEDED_WITH_REJECTS, FileState.INVALID]
)
def test_duplicate_event_for_a_finished_version_is_skipped(
    store: MetadataStore, table: Any, finished: FileState
) -> None:
    store.register(OBJ)
    set_state(table, finished)

    registration = store.register(OBJ)

    assert registration == Registration("skip", attempt=1, state=finished, reason=f"already {finished.value}")
    assert raw(table)["attempts"] == 1
    assert raw(table)["state"] == finished.value


def test_retry_after_failure_counts_the_attempt_and_keeps_the_checkpoint(
    store: MetadataStore, table: Any, clock: Clock
) -> None:
    # GIVEN a first attempt that checkpointed half the file, then FAILED
    store.register(OBJ)
    store.start_processing(OBJ, ["order_id", "amount"], attempt=1)
    saved = Checkpoint(next_row=501, byte_offset=20_480, parts=1, header=["order_id", "amount"])
    store.save_checkpoint(OBJ, saved, RowCounts(total=500, delivered=498, rejected=2), attempt=1)
    set_state(table, FileState.FAILED)
    started_at = raw(table)["started_at"]

    # WHEN the message comes back and is registered again
    clock.now = NOW + timedelta(minutes=10)
    registration = store.register(OBJ, priority=1)

    # THEN it is processed as attempt 2 and resumes from the checkpoint
    assert registration == Registration(action="process", attempt=2, state=FileState.FAILED)
    assert raw(table)["priority"] == 1
    assert raw(table)["expires_at"] == int((clock.now + timedelta(days=180)).timestamp())
    resumed = store.start_processing(OBJ, ["order_id", "amount"], attempt=2)
    assert resumed == saved
    item = raw(table)
    assert item["state"] == "PROCESSING"
    assert item["started_at"] == started_at  # set once, by the first attempt
    assert item["updated_at"] == "2026-11-22T03:10:00.000Z"
    assert store.load_checkpoint(OBJ) == (saved, RowCounts(total=500, delivered=498, rejected=2))


def test_registration_racing_another_one_does_not_lose_its_attempt(store: MetadataStore, table: Any) -> None:
    """GIVEN another invocation registers the same version between our check and our write."""

    class RacingTable:
        def __init__(self) -> None:
            self.raced = False

        def put_item(self, **kwargs: Any) -> Any:
            if not self.raced:
                self.raced = True
                MetadataStore(table).register(OBJ)  # the other invocation wins the create
            return table.put_item(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    registration = MetadataStore(RacingTable()).register(OBJ)

    assert registration == Registration(action="process", attempt=2, state=FileState.RECEIVED)
    assert raw(table)["attempts"] == 2


def test_version_finishing_between_check_and_update_is_skipped(table: Any) -> None:
    MetadataStore(table).register(OBJ)

    class FinishingTable:
        def update_item(self, **kwargs: Any) -> Any:
            set_state(table, FileState.SUCCEEDED)  # the running attempt finishes first
            return table.update_item(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    registration = MetadataStore(FinishingTable()).register(OBJ)

    assert registration == Registration("skip", 1, FileState.SUCCEEDED, reason="already SUCCEEDED")
    assert raw(table)["attempts"] == 1


def test_item_vanishing_between_check_and_update_is_created_again(table: Any) -> None:
    MetadataStore(table).register(OBJ)

    class ExpiringTable:
        def update_item(self, **kwargs: Any) -> Any:
            table.delete_item(Key={"pk": OBJ.id})  # the TTL sweeper got there first
            return table.update_item(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    registration = MetadataStore(ExpiringTable()).register(OBJ)

    assert registration == Registration(action="process", attempt=1, state=FileState.RECEIVED)
    assert raw(table)["state"] == "RECEIVED"


def test_registration_gives_up_when_the_item_keeps_changing(table: Any) -> None:
    MetadataStore(table).register(OBJ)

    class FlappingTable:
        def put_item(self, **kwargs: Any) -> Any:
            table.put_item(Item={"pk": OBJ.id, "state": "RECEIVED", "attempts": 1})
            return table.put_item(**kwargs)

        def update_item(self, **kwargs: Any) -> Any:
            table.delete_item(Key={"pk": OBJ.id})
            return table.update_item(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    with pytest.raises(MetadataConflict, match="could not register"):
        MetadataStore(FlappingTable()).register(OBJ)


def test_put_answer_without_the_item_is_retried(table: Any) -> None:
    """A failed condition whose answer carries no item (it just vanished) is tried again."""

    class VanishedOnceTable:
        def __init__(self) -> None:
            self.calls = 0

        def put_item(self, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}}, "PutItem")
            return table.put_item(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    fake = VanishedOnceTable()
    registration = MetadataStore(fake).register(OBJ)

    assert registration.attempt == 1
    assert fake.calls == 2
    assert raw(table)["state"] == "RECEIVED"


def test_errors_other_than_a_failed_condition_reach_the_caller() -> None:
    with mock_aws():
        missing = boto3.resource("dynamodb").Table("NoSuchTable")
        with pytest.raises(ClientError, match="ResourceNotFoundException"):
            MetadataStore(missing).register(OBJ)


# ---------------------------------------------------------------- the claim (docs/metadata.md, The claim)

A, B, C = "msg-a", "msg-b", "msg-c"  # SQS message ids


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def deferred(attempt: int, state: FileState, holder: str, seconds: int) -> Registration:
    """Another message's live claim: come back `seconds` from now (its expiry + the margin)."""
    reason = f"duplicate event: object version in progress under message {holder}"
    return Registration("defer", attempt, state, reason=reason, defer_seconds=seconds)


def test_a_second_message_for_a_version_in_flight_is_deferred_until_the_claim_expires(
    store: MetadataStore, table: Any, clock: Clock
) -> None:
    # GIVEN message A registered the version (and claimed it)
    first = store.register(OBJ, claimant=A)
    assert first == Registration("process", 1, FileState.RECEIVED)
    assert (raw(table)["claimed_by"], raw(table)["claim_expires_at"]) == (A, epoch(NOW) + CLAIM_SECONDS)

    # WHEN message B brings the same version, while it is RECEIVED and then PROCESSING
    clock.now = NOW + timedelta(seconds=5)
    received = store.register(OBJ, claimant=B)
    store.start_processing(OBJ, ["a"], attempt=1)
    processing = store.register(OBJ, claimant=B)

    # THEN B is deferred to the end of A's claim (renewed by start_processing), naming A, and nothing
    # about the item changes
    assert received == deferred(1, FileState.RECEIVED, A, CLAIM_SECONDS - 5 + DEFER_MARGIN_SECONDS)
    assert processing == deferred(1, FileState.PROCESSING, A, CLAIM_SECONDS + DEFER_MARGIN_SECONDS)
    item = raw(table)
    assert (item["attempts"], item["claimed_by"], item["state"]) == (1, A, "PROCESSING")

    # AND A's own message, redelivered, is the retry: attempt 2, claim renewed, checkpoint kept
    clock.now = NOW + timedelta(minutes=3)
    again = store.register(OBJ, claimant=A)
    assert again == Registration("process", 2, FileState.RECEIVED)
    item = raw(table)
    assert (item["claimed_by"], item["claim_expires_at"]) == (A, epoch(clock.now) + CLAIM_SECONDS)
    assert item["checkpoint"]["header"] == ["a"]


def test_an_expired_claim_is_taken_over_by_another_message(
    store: MetadataStore, table: Any, clock: Clock
) -> None:
    # GIVEN A's attempt stopped renewing its claim mid-file (its execution was aborted)
    store.register(OBJ, claimant=A)
    store.start_processing(OBJ, ["a"], attempt=1)
    saved = Checkpoint(next_row=6, byte_offset=60, parts=1, header=["a"])
    store.save_checkpoint(OBJ, saved, RowCounts(total=5, delivered=5), attempt=1)

    # WHEN B arrives the second the claim runs out
    clock.now = NOW + timedelta(seconds=CLAIM_SECONDS)
    registration = store.register(OBJ, claimant=B)

    # THEN B takes it over as the next attempt, resuming at A's checkpoint, and now A is the duplicate
    assert registration == Registration("process", 2, FileState.RECEIVED)
    assert (raw(table)["claimed_by"], raw(table)["claim_expires_at"]) == (B, epoch(clock.now) + CLAIM_SECONDS)
    assert store.start_processing(OBJ, ["a"], attempt=2) == saved
    assert store.register(OBJ, claimant=A) == deferred(
        2, FileState.PROCESSING, B, CLAIM_SECONDS + DEFER_MARGIN_SECONDS
    )


def test_a_failed_version_is_taken_over_by_another_message_and_then_protected(
    store: MetadataStore, table: Any, clock: Clock
) -> None:
    # GIVEN A's attempt FAILED halfway, its claim still unexpired
    store.register(OBJ, claimant=A)
    store.start_processing(OBJ, ["a"], attempt=1)
    saved = Checkpoint(next_row=3, byte_offset=30, parts=1, header=["a"])
    store.save_checkpoint(OBJ, saved, RowCounts(total=2, delivered=2), attempt=1)
    set_state(table, FileState.FAILED)

    # WHEN B brings the version, and then A's message comes back in the same batch
    clock.now = NOW + timedelta(seconds=30)
    taken = store.register(OBJ, claimant=B)
    duplicate = store.register(OBJ, claimant=A)

    # THEN B retries it (attempt 2, RECEIVED again, checkpoint kept) and A waits: one retry, not two
    assert taken == Registration("process", 2, FileState.RECEIVED)
    assert duplicate == deferred(2, FileState.RECEIVED, B, CLAIM_SECONDS + DEFER_MARGIN_SECONDS)
    item = raw(table)
    assert (item["state"], item["attempts"], item["claimed_by"]) == ("RECEIVED", 2, B)
    assert store.start_processing(OBJ, ["a"], attempt=2) == saved


def test_start_processing_and_save_checkpoint_renew_the_claim(
    store: MetadataStore, table: Any, clock: Clock
) -> None:
    # GIVEN A's attempt keeps making progress past its first claim's expiry
    store.register(OBJ, claimant=A)
    clock.now = NOW + timedelta(minutes=10)
    store.start_processing(OBJ, ["a"], attempt=1)
    assert raw(table)["claim_expires_at"] == epoch(clock.now) + CLAIM_SECONDS
    clock.now = NOW + timedelta(minutes=20)
    store.save_checkpoint(
        OBJ, Checkpoint(next_row=2, byte_offset=10, parts=1, header=["a"]), RowCounts(total=1), attempt=1
    )
    assert raw(table)["claim_expires_at"] == epoch(clock.now) + CLAIM_SECONDS

    # WHEN B arrives after the first claim would have run out
    clock.now = NOW + timedelta(seconds=CLAIM_SECONDS, minutes=10)
    registration = store.register(OBJ, claimant=B)

    # THEN A still holds it
    assert registration == deferred(1, FileState.PROCESSING, A, 10 * 60 + DEFER_MARGIN_SECONDS)
    assert (raw(table)["claimed_by"], raw(table)["attempts"]) == (A, 1)


def test_a_redrive_while_an_aborted_attempts_claim_holds_is_processed_once_it_expires(
    store: MetadataStore, table: Any, clock: Clock
) -> None:
    # GIVEN A's attempt aborted mid-file (no FAILED recorded) and its message dead-lettered
    store.register(OBJ, claimant=A)
    store.start_processing(OBJ, ["a"], attempt=1)
    saved = Checkpoint(next_row=4, byte_offset=40, parts=1, header=["a"])
    clock.now = NOW + timedelta(minutes=2)
    store.save_checkpoint(OBJ, saved, RowCounts(total=3, delivered=3), attempt=1)

    # WHEN the operator redrives it at once: the redriven message B has a new id
    clock.now = NOW + timedelta(minutes=3)
    first = store.register(OBJ, claimant=B)

    # THEN B is deferred to the end of A's claim, not dropped,
    assert first == deferred(1, FileState.PROCESSING, A, CLAIM_SECONDS - 60 + DEFER_MARGIN_SECONDS)
    # and when SQS shows it again, B takes the file over and resumes at A's checkpoint
    clock.now += timedelta(seconds=first.defer_seconds)
    assert store.register(OBJ, claimant=B) == Registration("process", 2, FileState.RECEIVED)
    assert store.start_processing(OBJ, ["a"], attempt=2) == saved


def test_the_claim_length_is_the_stores_and_a_deferral_never_exceeds_sqs_maximum(
    table: Any, clock: Clock
) -> None:
    short = MetadataStore(table, clock=clock, claim_seconds=60)
    short.register(OBJ, claimant=A)
    assert raw(table)["claim_expires_at"] == epoch(NOW) + 60
    assert short.register(OBJ, claimant=B).defer_seconds == 60 + DEFER_MARGIN_SECONDS

    other = ObjectRef(bucket="b", key="long.csv")
    longest = MetadataStore(table, clock=clock, claim_seconds=MAX_VISIBILITY_SECONDS)
    longest.register(other, claimant=A)
    assert longest.register(other, claimant=B).defer_seconds == MAX_VISIBILITY_SECONDS


def test_registration_without_a_claimant_neither_claims_nor_checks(store: MetadataStore, table: Any) -> None:
    store.register(OBJ, claimant=A)
    set_state(table, FileState.FAILED)

    registration = store.register(OBJ)  # a caller that is not RegisterObject: the rule before claims

    assert registration == Registration("process", 2, FileState.FAILED)
    assert raw(table)["claimed_by"] == A
    other = ObjectRef(bucket="b", key="unclaimed.csv")
    store.register(other)
    assert {"claimed_by", "claim_expires_at"}.isdisjoint(raw(table, other))


def test_an_item_claimed_without_an_expiry_is_free(store: MetadataStore, table: Any) -> None:
    """Written by hand (or by an older release): a claim that cannot expire would hold forever."""
    table.put_item(Item={"pk": OBJ.id, "state": "PROCESSING", "attempts": 1, "claimed_by": A})

    assert store.register(OBJ, claimant=B) == Registration("process", 2, FileState.RECEIVED)
    assert raw(table)["claimed_by"] == B


def test_a_message_losing_the_create_race_is_skipped(table: Any) -> None:
    """GIVEN message A creates the item between B's decision to create it and B's write (one Map batch)."""

    class RacingTable:
        def __init__(self) -> None:
            self.raced = False

        def put_item(self, **kwargs: Any) -> Any:
            if not self.raced:
                self.raced = True
                MetadataStore(table, clock=lambda: NOW).register(OBJ, claimant=A)
            return table.put_item(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    registration = MetadataStore(RacingTable(), clock=lambda: NOW).register(OBJ, claimant=B)

    assert registration == deferred(1, FileState.RECEIVED, A, CLAIM_SECONDS + DEFER_MARGIN_SECONDS)
    assert (raw(table)["attempts"], raw(table)["claimed_by"]) == (1, A)


def test_a_claim_taken_between_check_and_update_wins(table: Any) -> None:
    """GIVEN a FAILED version (free to take) that message C claims after B read it, before B's write."""
    MetadataStore(table, clock=lambda: NOW).register(OBJ, claimant=A)
    set_state(table, FileState.FAILED)

    class ClaimingTable:
        def update_item(self, **kwargs: Any) -> Any:
            MetadataStore(table, clock=lambda: NOW).register(OBJ, claimant=C)
            return table.update_item(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    registration = MetadataStore(ClaimingTable(), clock=lambda: NOW).register(OBJ, claimant=B)

    # THEN the condition in B's write, not B's earlier read, decides: B is the duplicate
    assert registration == deferred(2, FileState.RECEIVED, C, CLAIM_SECONDS + DEFER_MARGIN_SECONDS)
    assert (raw(table)["attempts"], raw(table)["claimed_by"]) == (2, C)


def test_mark_invalid_records_the_reason(store: MetadataStore, table: Any) -> None:
    store.register(OBJ)

    store.mark_invalid(OBJ, "header: missing column 'amount'")

    item = raw(table)
    assert item["state"] == "INVALID"
    assert item["reason"] == "header: missing column 'amount'"
    assert item["invalid_at"] == "2026-11-22T03:00:00.000Z"
    assert item["attempts"] == 1
    assert store.register(OBJ).action == "skip"


@pytest.mark.parametrize("finished", [FileState.SUCCEEDED, FileState.SUCCEEDED_WITH_REJECTS])
def test_mark_invalid_never_overwrites_a_success(
    store: MetadataStore, table: Any, finished: FileState
) -> None:
    store.register(OBJ)
    set_state(table, finished)

    store.mark_invalid(OBJ, "late duplicate found a bad header")

    item = raw(table)
    assert item["state"] == finished.value
    assert "reason" not in item


def test_mark_invalid_of_an_unregistered_version_creates_a_complete_item(
    store: MetadataStore, table: Any
) -> None:
    store.mark_invalid(OBJ, "not UTF-8")

    item = raw(table)
    assert item["state"] == "INVALID"
    assert (item["bucket"], item["key"], item["version_id"], item["etag"], item["size"]) == (
        OBJ.bucket,
        OBJ.key,
        "v1",
        '"abc"',
        1024,
    )
    assert item["received_at"] == "2026-11-22T03:00:00.000Z"
    assert item["attempts"] == 1


def test_start_processing_a_new_version_stores_a_fresh_checkpoint(store: MetadataStore, table: Any) -> None:
    store.register(OBJ)

    checkpoint = store.start_processing(OBJ, ["order_id", "amount"], attempt=1)

    assert checkpoint == Checkpoint(header=["order_id", "amount"])
    item = raw(table)
    assert item["state"] == "PROCESSING"
    assert item["started_at"] == "2026-11-22T03:00:00.000Z"
    assert item["checkpoint"] == {
        "next_row": 1,
        "byte_offset": 0,
        "parts": 0,
        "header": ["order_id", "amount"],
        "runs": [],
        "ahead": [],
        "ahead_file": "",
    }
    assert (item["rows_total"], item["rows_delivered"], item["rows_rejected"]) == (0, 0, 0)


def test_start_processing_refuses_unregistered_and_finished_versions(
    store: MetadataStore, table: Any
) -> None:
    with pytest.raises(MetadataConflict, match="not registered"):
        store.start_processing(OBJ, ["a"], attempt=1)

    store.register(OBJ)
    set_state(table, FileState.SUCCEEDED)
    with pytest.raises(MetadataConflict, match="SUCCEEDED"):
        store.start_processing(OBJ, ["a"], attempt=1)
    assert raw(table)["state"] == "SUCCEEDED"


def test_save_checkpoint_stores_position_and_counts(store: MetadataStore, table: Any, clock: Clock) -> None:
    store.register(OBJ)
    store.start_processing(OBJ, ["a", "b"], attempt=1)
    clock.now = NOW + timedelta(seconds=42)

    store.save_checkpoint(
        OBJ,
        Checkpoint(next_row=9, byte_offset=77, parts=2, header=["a", "b"]),
        RowCounts(total=8, delivered=7, rejected=1),
        attempt=1,
    )

    item = raw(table)
    assert Checkpoint.model_validate(item["checkpoint"]) == Checkpoint(
        next_row=9, byte_offset=77, parts=2, header=["a", "b"]
    )
    assert (item["rows_total"], item["rows_delivered"], item["rows_rejected"]) == (8, 7, 1)
    assert item["updated_at"] == "2026-11-22T03:00:42.000Z"
    assert item["state"] == "PROCESSING"


def test_save_checkpoint_refuses_a_finished_version(store: MetadataStore, table: Any) -> None:
    store.register(OBJ)
    set_state(table, FileState.SUCCEEDED_WITH_REJECTS)

    with pytest.raises(MetadataConflict):
        store.save_checkpoint(OBJ, Checkpoint(), RowCounts(), attempt=1)
    assert "checkpoint" not in raw(table)


def test_load_checkpoint_of_an_unknown_version_is_fresh(store: MetadataStore) -> None:
    assert store.load_checkpoint(OBJ) == (Checkpoint(), RowCounts())


def test_get_answers_plain_numbers_or_none(store: MetadataStore) -> None:
    assert store.get(OBJ.id) is None
    store.register(OBJ)

    item = store.get(OBJ.id)

    assert item is not None
    assert item["attempts"] == 1
    assert type(item["attempts"]) is int
    assert type(item["size"]) is int


def test_list_items_pages_through_everything_and_filters_by_state(store: MetadataStore, table: Any) -> None:
    objects = [ObjectRef(bucket="b", key=f"f{i}.csv", version_id="v") for i in range(5)]
    for obj in objects:
        store.register(obj)
    set_state(table, FileState.FAILED, objects[3])

    everything = list(store.list_items(page_size=2))
    failed = list(store.list_items(state=FileState.FAILED, page_size=2))

    assert sorted(item["pk"] for item in everything) == sorted(obj.id for obj in objects)
    assert [item["pk"] for item in failed] == [objects[3].id]
    assert list(store.list_items(state="INVALID")) == []


def test_a_stale_attempts_checkpoint_is_refused(store: MetadataStore, table: Any, clock: Clock) -> None:
    # GIVEN attempt 1 checkpointed row 11, then its claim lapsed and B took the file over (attempt 2)
    store.register(OBJ, claimant=A)
    store.start_processing(OBJ, ["a"], attempt=1)
    store.save_checkpoint(
        OBJ, Checkpoint(next_row=11, byte_offset=100, parts=2, header=["a"]), RowCounts(total=10), attempt=1
    )
    clock.now = NOW + timedelta(seconds=CLAIM_SECONDS)
    assert store.register(OBJ, claimant=B).attempt == 2

    # WHEN attempt 1's runner, still alive, checkpoints further on, or starts a segment 0 again
    with pytest.raises(Fenced, match=r"attempt 1 fenced out .*attempt 2"):
        store.save_checkpoint(
            OBJ,
            Checkpoint(next_row=21, byte_offset=200, parts=4, header=["a"]),
            RowCounts(total=20),
            attempt=1,
        )
    with pytest.raises(Fenced):
        store.start_processing(OBJ, ["a"], attempt=1)

    # THEN the item is attempt 2's as B left it: checkpoint at row 11, state RECEIVED
    item = raw(table)
    assert (item["checkpoint"]["next_row"], item["rows_total"], item["state"]) == (11, 10, "RECEIVED")
    assert store.start_processing(OBJ, ["a"], attempt=2).next_row == 11


def test_a_checkpoint_never_moves_backwards(store: MetadataStore, table: Any) -> None:
    store.register(OBJ)
    store.start_processing(OBJ, ["a"], attempt=1)
    ahead = Checkpoint(next_row=21, byte_offset=200, parts=4, header=["a"])
    store.save_checkpoint(OBJ, ahead, RowCounts(total=20), attempt=1)

    # WHEN a late write of the same attempt (a retried segment that started before) brings row 11
    with pytest.raises(Fenced, match="checkpoint at row 21"):
        store.save_checkpoint(
            OBJ,
            Checkpoint(next_row=11, byte_offset=100, parts=2, header=["a"]),
            RowCounts(total=10),
            attempt=1,
        )

    # THEN the checkpoint stays at row 21; the same position again is fine (a segment with no new row)
    assert store.load_checkpoint(OBJ) == (ahead, RowCounts(total=20))
    store.save_checkpoint(OBJ, ahead, RowCounts(total=20), attempt=1)
    assert raw(table)["checkpoint"]["next_row"] == 21


def test_a_success_recorded_without_its_results_completes_its_output(
    store: MetadataStore, table: Any
) -> None:
    # GIVEN an outcome recorded before WriteOutput had succeeded (no summary_key)
    store.register(OBJ, claimant="m-1")
    table.update_item(
        Key={"pk": OBJ.id},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":s": "SUCCEEDED"},
    )

    registration = store.register(OBJ, claimant="m-2")

    assert registration == Registration(
        "complete output", 1, FileState.SUCCEEDED, reason="SUCCEEDED without its output"
    )
    assert raw(table)["attempts"] == 1  # nothing written
