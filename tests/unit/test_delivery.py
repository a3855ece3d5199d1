"""Segments of a file end to end: moto S3 + the real MetadataStore + a loopback API.

A test schema with a free-text column lets accepted rows carry quoted newlines. The Lambda
context's remaining time is what cuts a file into segments, as in production.
"""

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pytest
from datapath_support import (
    PROCESSED_BUCKET,
    RAW_BUCKET,
    ApiServer,
    CountdownContext,
    Received,
    Reply,
    accept_all,
    create_buckets,
    create_tables,
)
from moto import mock_aws
from pydantic import Field

from sluice.delivery import ObjectReplaced, Segment, SegmentLimits
from sluice.downstream import (
    DownstreamClient,
    HttpTransport,
    RetryPolicy,
    TransientDownstreamError,
    batch_key,
    idempotency_key,
)
from sluice.filecheck import check_sample
from sluice.health import BreakerState, DownstreamHealth
from sluice.metadata import Fenced, MetadataStore
from sluice.models import FileState, ObjectRef, ProcessResult
from sluice.observability import metrics
from sluice.ratelimit import Clock, ManualClock, SystemClock, shared_limiter
from sluice.results import Layout, PartWriter, merge_results
from sluice.schemas import RowModel, RowSchema, get_schema
from sluice.schemas.declared import model_from_file
from sluice.settings import ProcessSettings


class NoteRow(RowModel):
    schema_name: ClassVar[str] = "test-notes"

    id: Annotated[int, Field(ge=1)]
    note: str

    def transform(self) -> dict[str, Any]:
        return {"id": self.id, "note": self.note}


NOTES = RowSchema("test-notes", NoteRow)
ROWS = 60
SCHEMA_REJECTS = {13: "id: must be >= 1", 41: "id: must be >= 1"}
STREAM_REJECTS = {27: "row is not valid UTF-8", 50: "expected 2 columns, found 3"}
API_REJECT = 33


def note(number: int) -> str:
    return f"line one of {number}\nline two, with a comma" if number % 7 == 0 else f"note {number}"


def csv_file() -> bytes:
    lines = [b"id,note\r\n"]
    for number in range(1, ROWS + 1):
        if number in SCHEMA_REJECTS:
            lines.append(f"-{number},negative\r\n".encode())
        elif number == 27:
            lines.append(b"27,caf\xe9\r\n")
        elif number == 50:
            lines.append(b"50,one,too many\r\n")
        else:
            lines.append(f'{number},"{note(number)}"\r\n'.encode())
        if number == 30:
            lines.append(b"\r\n")  # a blank line is not a row
    return b"".join(lines)


def rejecting_row_33(request: Received, seen: int) -> Reply:
    if request.payload.get("id") == API_REJECT:
        return Reply(422, {"error": "duplicate order"})
    return accept_all(request, seen)


@dataclass
class World:
    s3: Any
    store: MetadataStore
    server: ApiServer
    control: Any
    obj: ObjectRef = field(init=False)
    limits: SegmentLimits = field(default_factory=lambda: SegmentLimits(concurrency=3, checkpoint_every=4))
    attempt: int = 1

    def upload(
        self, body: bytes, key: str = "in/notes.csv", metadata: dict[str, str] | None = None
    ) -> ObjectRef:
        answer = self.s3.put_object(Bucket=RAW_BUCKET, Key=key, Body=body, Metadata=metadata or {})
        self.obj = ObjectRef(
            bucket=RAW_BUCKET, key=key, version_id=answer["VersionId"], size=len(body), etag=answer["ETag"]
        )
        self.attempt = self.store.register(self.obj).attempt
        return self.obj

    def segment(
        self,
        context: Any,
        *,
        attempts: int = 2,
        schema: RowSchema = NOTES,
        clock: Clock | None = None,
        backoff_seconds: float = 0.1,
        health: DownstreamHealth | None = None,
        timeout_seconds: float = 5,
    ) -> Segment:
        clock = clock or ManualClock()
        client = DownstreamClient(
            HttpTransport(
                self.server.url, pool_size=self.limits.concurrency, timeout_seconds=timeout_seconds
            ),
            shared_limiter(self.control, limit=10_000, clock=clock),
            policy=RetryPolicy(
                max_attempts=attempts, backoff_base_seconds=backoff_seconds, backoff_max_seconds=1
            ),
            clock=clock,
            health=health,
        )
        return Segment(
            self.obj,
            s3_client=self.s3,
            store=self.store,
            parts=PartWriter(self.s3, PROCESSED_BUCKET, self.obj, attempt=self.attempt),
            schema=schema,
            client=client,
            limits=self.limits,
            remaining_ms=context.get_remaining_time_in_millis,
            attempt=self.attempt,
        )

    def run_all(
        self, rows_per_segment: int, *, first_segment: int = 0, schema: RowSchema = NOTES
    ) -> list[ProcessResult]:
        results: list[ProcessResult] = []
        segment = first_segment
        for _ in range(100):  # bounded: a file that never ends would fail here, not hang
            result = self.segment(CountdownContext(calls=rows_per_segment), schema=schema).run(segment)
            results.append(result)
            if result.done:
                return results
            segment = result.segment
        raise AssertionError("not done after 100 segments")

    def merged(self, result: ProcessResult) -> tuple[list[dict[str, Any]], list[str]]:
        keys = merge_results(self.s3, PROCESSED_BUCKET, self.obj, result).keys
        body = self.s3.get_object(Bucket=PROCESSED_BUCKET, Key=keys.accepted_key)["Body"].read().decode()
        rejects = self.s3.get_object(Bucket=PROCESSED_BUCKET, Key=keys.rejects_key)["Body"].read().decode()
        return [json.loads(line) for line in body.splitlines()], rejects.splitlines()

    def key(self, number: int, resend_token: str = "") -> str:
        """Row `number`'s Idempotency-Key, from the row as csv_file writes it."""
        return idempotency_key(
            self.obj, number, {"id": str(number), "note": note(number)}, resend_token=resend_token
        )


@pytest.fixture
def world() -> Iterator[World]:
    metrics.clear_metrics()
    with mock_aws(), ApiServer(rejecting_row_33) as server:
        tables = create_tables()
        yield World(create_buckets(), MetadataStore(tables["MetadataTable"]), server, tables["ControlTable"])
    metrics.clear_metrics()


DELIVERED = [n for n in range(1, ROWS + 1) if n not in SCHEMA_REJECTS | STREAM_REJECTS and n != API_REJECT]
POSTED = sorted([*DELIVERED, API_REJECT])


def test_segments_cut_by_time_deliver_every_row_exactly_once_and_resume_at_the_right_row(
    world: World,
) -> None:
    body = csv_file()
    world.upload(body)

    # WHEN each invocation only has time for 9 rows
    results = world.run_all(rows_per_segment=9)

    # THEN the file took 7 segments, each answering the next one's number
    assert [result.segment for result in results] == [1, 2, 3, 4, 5, 6, 7]
    assert [result.done for result in results] == [False] * 6 + [True]
    final = results[-1]
    assert final.outcome == FileState.SUCCEEDED_WITH_REJECTS
    assert (final.rows_total, final.rows_delivered, final.rows_rejected) == (60, 55, 5)
    # the API saw every row once, with its key, multi-line notes intact
    assert Counter(world.server.keys()) == Counter({world.key(n): 1 for n in POSTED})
    by_key = {request.key: request.payload for request in world.server.received}
    assert by_key[world.key(14)] == {"id": 14, "note": "line one of 14\nline two, with a comma"}
    # the results hold every row once, in file order, rejects with their row numbers
    accepted, rejects = world.merged(final)
    assert [row["row"] for row in accepted] == DELIVERED
    assert accepted[0] == {
        "row": 1,
        "idempotency_key": world.key(1),
        "data": {"id": 1, "note": "note 1"},
        "answer": {"status": "accepted", "ref": f"ref-{world.key(1)[:8]}"},
    }
    assert rejects[0] == "row,reason"
    assert [line.split(",", 1)[0] for line in rejects[1:]] == ["13", "27", "33", "41", "50"]
    assert rejects[2].startswith("27,row is not valid UTF-8")
    assert rejects[3] == '33,"api 422: {""error"": ""duplicate order""}"'
    # the metadata item ends at the end of the file
    item = world.store.get(world.obj.id)
    assert item is not None
    assert item["state"] == "PROCESSING"  # SUCCEEDED is the state machine's to record
    assert item["checkpoint"]["byte_offset"] == len(body)
    assert item["checkpoint"]["next_row"] == 61
    assert (item["rows_total"], item["rows_delivered"], item["rows_rejected"]) == (60, 55, 5)


def batch_api(request: Received, seen: int) -> Reply:
    """Issue 12's batch contract: one result per row of the JSON array, in order; row 33 refused."""
    return Reply(
        200,
        [
            {"status": 422, "error": "duplicate"} if row["id"] == API_REJECT else {"status": 201}
            for row in request.payload
        ],
    )


def test_batches_send_up_to_batch_size_rows_per_request_each_row_getting_its_result(
    world: World,
) -> None:
    # GIVEN an API that takes batches, and ProcessObject sending 4 rows per request
    world.server.respond = batch_api
    world.limits = SegmentLimits(concurrency=3, checkpoint_every=4, batch_size=4)
    world.upload(csv_file())

    # WHEN each invocation only has time for 9 rows
    final = world.run_all(rows_per_segment=9)[-1]

    # THEN every row to send reached the API exactly once, in batches of at most 4, each batch
    # keyed by its rows' keys
    sent = [row["id"] for request in world.server.received for row in request.payload]
    assert sorted(sent) == POSTED
    assert all(1 <= len(request.payload) <= 4 for request in world.server.received)
    assert len(world.server.received) < len(POSTED) / 2
    for request in world.server.received:
        assert request.key == batch_key([world.key(row["id"]) for row in request.payload])
    # AND each row's outcome is its own result: 33 rejected with its item's answer, the rest accepted
    assert (final.rows_total, final.rows_delivered, final.rows_rejected) == (60, 55, 5)
    accepted, rejects = world.merged(final)
    assert [row["row"] for row in accepted] == DELIVERED
    assert accepted[0]["answer"] == {"status": 201}
    assert '33,"api item 422: {""status"": 422, ""error"": ""duplicate""}"' in rejects


def test_a_batch_answer_without_one_result_per_row_rejects_its_rows_saying_why(world: World) -> None:
    world.server.respond = lambda request, seen: Reply(200, {"status": "accepted"})
    world.limits = SegmentLimits(concurrency=1, checkpoint_every=100, batch_size=5)
    world.upload(b"id,note\n" + b"".join(f"{n},n{n}\n".encode() for n in range(1, 8)))

    final = world.run_all(rows_per_segment=100)[-1]

    assert (final.rows_delivered, final.rows_rejected) == (0, 7)
    _, rejects = world.merged(final)
    assert rejects[1].startswith('1,"api answer to a batch of 5 rows is not a JSON array of 5 results')
    assert rejects[-1].startswith('7,"api answer to a batch of 2 rows')


def test_key_columns_give_the_same_order_the_same_key_in_another_file(world: World, tmp_path: Path) -> None:
    # GIVEN a schema file whose key is the order id, and the same order in two files: at another
    # row, under another object key, its text spaced differently
    (tmp_path / "keyed-v1.json").write_text(
        json.dumps({"name": "keyed-v1", "columns": {"id": {}, "note": {}}, "key": ["id"]})
    )
    schema = RowSchema("keyed-v1", model_from_file(tmp_path / "keyed-v1.json"))
    world.upload(b"id,note\nA-1,first\nB-2,second\n", key="in/monday.csv")
    world.run_all(rows_per_segment=100, schema=schema)
    world.upload(b"id,note\nC-3,third\n A-1 ,first again\n", key="in/tuesday.csv")
    world.run_all(rows_per_segment=100, schema=schema)

    # THEN the API sees A-1 twice under one Idempotency-Key (it can answer the second as a
    # duplicate), and each other order under its own
    keys: dict[str, set[str]] = {}
    for request in world.server.received:
        keys.setdefault(request.payload["id"], set()).add(request.key)
    assert {order: len(seen) for order, seen in keys.items()} == {"A-1": 1, "B-2": 1, "C-3": 1}
    assert len({next(iter(seen)) for seen in keys.values()}) == 3
    assert keys["A-1"] == {idempotency_key(world.obj, 99, {}, identity=["A-1"])}  # nothing but the key


def test_a_schema_file_validates_and_sends_each_row_as_it_declares(world: World) -> None:
    # GIVEN a file for layers/shared/sluice/schemas/files/products-v1.json, one row out of bounds
    schema = get_schema("products-v1")
    body = (
        b"sku,product name,price,stock,active,category,released,internal note\n"
        b"AB-1,Saw,12.50,3,yes,tools,2026-01-31,x\n"
        b"AB-2,Rake,-1,,no,garden,,y\n"
        b"AB-3,Pan,7,,true,kitchen,,\n"
    )
    world.upload(body)
    assert check_sample(body, schema, truncated=False).valid

    final = world.run_all(rows_per_segment=100, schema=schema)[-1]

    assert (final.rows_delivered, final.rows_rejected) == (2, 1)
    # rows go out on several worker threads: compare in file order
    assert sorted((request.payload for request in world.server.received), key=lambda p: p["sku"]) == [
        {
            "sku": "AB-1",
            "name": "Saw",
            "price_eur": "12.50",
            "stock": 3,
            "active": True,
            "category": "tools",
            "released": "2026-01-31",
        },
        {
            "sku": "AB-3",
            "name": "Pan",
            "price_eur": "7",
            "stock": None,
            "active": True,
            "category": "kitchen",
            "released": None,
        },
    ]
    _, rejects = world.merged(final)
    assert rejects[1:] == ["2,price: must be >= 0"]


def test_a_paused_segment_checkpoints_exactly_after_its_last_committed_row(world: World) -> None:
    body = csv_file()
    world.upload(body)

    result = world.segment(CountdownContext(calls=15)).run(0)

    checkpoint, counts = world.store.load_checkpoint(world.obj)
    assert not result.done
    assert result.outcome is None
    assert checkpoint.next_row == 16
    assert body[checkpoint.byte_offset :].startswith(b"16,")
    assert checkpoint.parts == 4  # 15 rows in parts of 4: 4 + 4 + 4 + 3
    assert (counts.total, counts.rejected) == (15, 1)
    assert sorted(world.server.keys()) == sorted(world.key(n) for n in range(1, 16) if n != 13)


# Row 1: nothing before it is committed, so the retry's first segment starts from the top, where
# it must still keep the outcomes of the rows answered behind row 1 (it used to delete them).
@pytest.mark.parametrize("failing", [20, 1])
def test_a_row_failing_for_good_checkpoints_the_rows_before_it_and_the_retry_finishes_the_file(
    world: World, failing: int
) -> None:
    world.upload(csv_file())
    outage = threading.Event()
    outage.set()

    def respond(request: Received, seen: int) -> Reply:
        if request.payload["id"] == failing and outage.is_set():
            return Reply(503, {"error": "down"})
        return rejecting_row_33(request, seen)

    world.server.respond = respond

    # WHEN the row keeps failing
    with pytest.raises(TransientDownstreamError, match="after 2 attempts"):
        world.segment(CountdownContext()).run(0)

    # THEN everything before the row is committed, nothing from it on
    checkpoint, counts = world.store.load_checkpoint(world.obj)
    assert checkpoint.next_row == failing
    assert counts.total == failing - 1

    # WHEN the state machine's next attempt runs once the API is back
    outage.clear()
    results = world.run_all(rows_per_segment=1_000)

    # THEN the results hold every row exactly once, and only that row was posted again: the rows the
    # API answered behind it while it failed were kept with the checkpoint, not sent a second time
    accepted, rejects = world.merged(results[-1])
    assert [row["row"] for row in accepted] == DELIVERED
    assert [line.split(",", 1)[0] for line in rejects[1:]] == ["13", "27", "33", "41", "50"]
    posted = Counter(world.server.keys())
    assert posted[world.key(failing)] == 3  # 2 failed attempts, then delivered
    assert {n for n in POSTED if posted[world.key(n)] > 1} == {failing}
    assert checkpoint.ahead  # some rows past it were answered before the segment stopped
    assert (results[-1].rows_total, results[-1].rows_delivered, results[-1].rows_rejected) == (60, 55, 5)


def test_a_fresh_start_forgets_the_parts_of_an_earlier_processing(world: World) -> None:
    world.upload(csv_file())
    stale = Layout(world.obj).part_keys(0, 0)[0]  # an earlier processing's part 0
    world.s3.put_object(Bucket=PROCESSED_BUCKET, Key=stale, Body=b'{"row": 999}\n')

    results = world.run_all(rows_per_segment=1_000)

    accepted, _ = world.merged(results[-1])
    assert [row["row"] for row in accepted] == DELIVERED


def test_a_header_only_file_succeeds_without_a_request(world: World) -> None:
    world.upload(b"id,note\n")

    result = world.segment(CountdownContext()).run(0)

    assert result == ProcessResult(
        done=True, segment=1, outcome=FileState.SUCCEEDED, rows_total=0, rows_delivered=0, rows_rejected=0
    )
    assert world.server.received == []


def test_a_segment_with_no_time_left_takes_no_row(world: World) -> None:
    world.upload(csv_file())

    result = world.segment(CountdownContext(calls=0)).run(0)

    assert (result.done, result.segment, result.rows_total) == (False, 1, 0)
    assert world.server.received == []
    assert world.store.get(world.obj.id)["state"] == "PROCESSING"  # type: ignore[index]


def test_a_slow_row_holds_back_the_reader_instead_of_piling_up_rows(world: World) -> None:
    # GIVEN 3 workers and at most 4 rows delivered but not committed, and row 1 answering slowly
    world.limits = SegmentLimits(concurrency=3, checkpoint_every=4, window=4)
    world.upload(csv_file())
    seen_when_row_1_answered: list[int] = []

    def respond(request: Received, seen: int) -> Reply:
        if request.payload["id"] == 1:
            deadline = time.monotonic() + 1.0
            while len(world.server.received) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_when_row_1_answered.append(len(world.server.received))
        return rejecting_row_33(request, seen)

    world.server.respond = respond

    result = world.segment(CountdownContext()).run(0)

    # THEN while row 1 was pending, only rows up to the window's reach were sent
    assert seen_when_row_1_answered == [5]  # row 1, rows 2-4 (window), row 5 (waiting for the head)
    assert result.done
    assert Counter(world.server.keys()) == Counter({world.key(n): 1 for n in POSTED})


def test_rows_delivered_and_rejected_are_counted_per_segment(world: World) -> None:
    world.upload(csv_file())

    world.run_all(rows_per_segment=25)

    assert sum(metrics.metric_set["RowsDelivered"]["Value"]) == 55
    assert sum(metrics.metric_set["RowsRejected"]["Value"]) == 5


def test_limits_come_from_the_process_settings() -> None:
    settings = ProcessSettings.from_env(
        {
            "METADATA_TABLE": "m",
            "CONTROL_TABLE": "c",
            "IDEMPOTENCY_TABLE": "i",
            "PROCESSED_BUCKET": "p",
            "STAGE": "dev",
            "API_URL": "https://api.example.com/rows",
            "API_CONCURRENCY": "8",
            "CHECKPOINT_EVERY_ROWS": "100",
            "SEGMENT_SAFETY_SECONDS": "45",
        }
    )

    limits = SegmentLimits.from_settings(settings)

    assert (limits.concurrency, limits.checkpoint_every, limits.safety_seconds, limits.out_of_order) == (
        8,
        100,
        45,
        32,
    )


def test_a_failing_head_row_stops_the_reader_while_the_window_is_full(world: World) -> None:
    # GIVEN 2 workers, a window of 2, and row 1 failing for good
    world.limits = SegmentLimits(concurrency=2, checkpoint_every=4, window=2)
    world.upload(csv_file())

    def respond(request: Received, seen: int) -> Reply:
        return Reply(503, {"error": "down"}) if request.payload["id"] == 1 else accept_all(request, seen)

    world.server.respond = respond

    with pytest.raises(TransientDownstreamError):
        world.segment(CountdownContext()).run(0)

    # THEN the reader stopped at the window's edge (row 3 may or may not have been read before row 1
    # gave up, depending on thread timing) and nothing was committed past the failed row
    sent = {request.payload["id"] for request in world.server.received}
    assert {1, 2} <= sent <= {1, 2, 3}
    checkpoint, counts = world.store.load_checkpoint(world.obj)
    assert (checkpoint.next_row, checkpoint.byte_offset, counts.total) == (1, 0, 0)


def test_a_row_in_retry_when_time_runs_short_is_left_to_the_next_segment(world: World) -> None:
    # GIVEN row 5 answers 503 only once the segment has run out of time
    world.upload(csv_file())
    context = CountdownContext(calls=8)

    def respond(request: Received, seen: int) -> Reply:
        if request.payload["id"] == 5 and seen == 0:
            deadline = time.monotonic() + 10
            while context.calls >= 0:  # the segment asked for the 9th row and heard "no time"
                assert time.monotonic() < deadline, "the segment never ran short of time"
                time.sleep(0.005)
            return Reply(503, {"error": "busy"})
        return rejecting_row_33(request, seen)

    world.server.respond = respond

    paused = world.segment(context).run(0)

    # THEN row 5 was not retried in this segment, and the checkpoint stops just before it
    checkpoint, _ = world.store.load_checkpoint(world.obj)
    assert (paused.done, checkpoint.next_row, paused.rows_total) == (False, 5, 4)
    assert world.server.keys().count(world.key(5)) == 1

    # WHEN the next segments run
    results = world.run_all(rows_per_segment=1_000, first_segment=paused.segment)

    # THEN the results hold every row once; only row 5, never answered, was posted twice: rows 6-8,
    # answered while it waited, were kept with the checkpoint and not sent again
    assert checkpoint.ahead == [6, 7, 8]
    accepted, _ = world.merged(results[-1])
    assert [row["row"] for row in accepted] == DELIVERED
    posted = Counter(world.server.keys())
    assert {n for n in POSTED if posted[world.key(n)] == 2} == {5}
    assert all(posted[world.key(n)] == 1 for n in POSTED if n != 5)


class BrokenOnRow10(NoteRow):
    def transform(self) -> dict[str, Any]:
        if self.id == 10:
            raise RuntimeError("a bug in the transform")
        return super().transform()


def test_a_crash_while_reading_keeps_what_was_committed_and_raises(world: World) -> None:
    world.upload(csv_file())
    segment = world.segment(CountdownContext(), schema=RowSchema("broken", BrokenOnRow10))

    with pytest.raises(RuntimeError, match="a bug in the transform"):
        segment.run(0)

    checkpoint, counts = world.store.load_checkpoint(world.obj)
    assert (checkpoint.next_row, counts.total) == (10, 9)
    assert sorted(world.server.keys()) == sorted(world.key(n) for n in range(1, 10))


ORDER_HEADER = b"order_id,customer_email,amount,currency,order_date,quantity\n"


def order(number: int, amount: str) -> bytes:
    return f"ORD-{number:06d},o{number}@example.com,{amount},USD,2026-01-01,1\n".encode()


def test_a_poison_amount_is_its_rows_reject_and_the_rows_around_it_are_delivered(world: World) -> None:
    # GIVEN amounts that pass a naive check: 5,000 digits (its cents do not fit json.dumps'
    # 4,300-digit int limit) and 30 significant digits (the decimal context would round its cents)
    amounts = {
        1: "12.50",
        2: "9" * 5_000,
        3: "0.99",
        4: "123456789012345678901234567.89",
        5: "999999999999.99",
    }
    world.upload(ORDER_HEADER + b"".join(order(number, amount) for number, amount in amounts.items()))

    # WHEN the file is processed (segments of 2 rows: the checkpoint passes the poison rows)
    results = world.run_all(rows_per_segment=2, schema=get_schema("orders-v1"))

    # THEN the two poison rows are rejected with their reasons and every other row is delivered, exact
    final = results[-1]
    assert (final.outcome, final.rows_delivered, final.rows_rejected) == (
        FileState.SUCCEEDED_WITH_REJECTS,
        3,
        2,
    )
    cents = {
        request.payload["order_id"]: request.payload["amount_cents"] for request in world.server.received
    }
    assert cents == {"ORD-000001": 1250, "ORD-000003": 99, "ORD-000005": 99_999_999_999_999}
    accepted, rejects = world.merged(final)
    assert [row["row"] for row in accepted] == [1, 3, 5]
    assert rejects[1:] == [
        "2,amount: must have at most 14 significant digits",
        "4,amount: must have at most 14 significant digits",
    ]


def test_a_cr_only_file_is_processed_as_its_crlf_twin_across_checkpoints(world: World) -> None:
    # GIVEN the test file with lone CR line ends (its quoted notes keep their LF)
    world.upload(csv_file().replace(b"\r\n", b"\r"))

    # WHEN each invocation only has time for 9 rows: every segment resumes at a CR-ended checkpoint
    final = world.run_all(rows_per_segment=9)[-1]

    # THEN the same rows are delivered and rejected as from the CRLF file
    assert (final.rows_total, final.rows_delivered, final.rows_rejected) == (60, 55, 5)
    assert Counter(world.server.keys()) == Counter({world.key(n): 1 for n in POSTED})
    accepted, rejects = world.merged(final)
    assert [row["row"] for row in accepted] == DELIVERED
    assert [line.split(",", 1)[0] for line in rejects[1:]] == ["13", "27", "33", "41", "50"]


def test_a_stale_attempt_is_fenced_out_and_only_the_live_attempts_parts_make_the_file(world: World) -> None:
    # GIVEN attempt 1 paused after 9 rows (checkpoint at row 10, 3 parts), then lost the file:
    # another message took it over as attempt 2
    world.upload(csv_file())
    world.segment(CountdownContext(calls=9)).run(0)
    stale = world.segment(CountdownContext())  # attempt 1's runner, still alive
    world.attempt = world.store.register(world.obj).attempt
    assert world.attempt == 2

    # WHEN attempt 1's runner goes on with its next segment
    with pytest.raises(Fenced, match="attempt 1 fenced out"):
        stale.run(1)

    # THEN it stopped at its first checkpoint: the item is still at row 10, and it sent at most the
    # rows of one part plus its window and its workers (4 + 12 + 3) past it
    checkpoint, counts = world.store.load_checkpoint(world.obj)
    assert (checkpoint.next_row, checkpoint.parts, counts.total) == (10, 3, 9)
    assert len(world.server.received) <= 9 + 4 + 12 + 3

    # AND attempt 2 finishes the file from row 10; its results are every row once, in order: the
    # part attempt 1's runner wrote as part 3 is not among them
    results = world.run_all(rows_per_segment=1_000)
    assert results[-1].runs == [[0, 1], [3, 2]]
    accepted, _ = world.merged(results[-1])
    assert [row["row"] for row in accepted] == DELIVERED


def test_the_same_bytes_uploaded_again_carry_the_same_keys_unless_a_resend_token_is_set(world: World) -> None:
    # GIVEN a file delivered once
    body = csv_file()
    world.upload(body)
    world.run_all(rows_per_segment=1_000)
    first = set(world.server.keys())

    # WHEN the same bytes come again as a new version (a re-upload, a retried PUT, a copy in place)
    world.upload(body)
    world.run_all(rows_per_segment=1_000)

    # THEN every row carries the key it had: the API can tell they are the same rows
    assert set(world.server.keys()[len(first) :]) == first
    assert first == {world.key(n) for n in POSTED}

    # WHEN the user asks for a re-send with a resend token in the object's metadata
    world.upload(body, metadata={"sluice-resend-token": "2026-12-02"})
    world.run_all(rows_per_segment=1_000)

    # THEN the rows carry new keys, the token's
    resent = set(world.server.keys()[2 * len(first) :])
    assert resent == {world.key(n, resend_token="2026-12-02") for n in POSTED}
    assert resent.isdisjoint(first)


def test_a_1000_byte_key_is_processed_and_its_results_written(world: World) -> None:
    key = "in/" + "n" * 993 + ".csv"
    assert len(key.encode()) == 1000
    world.upload(csv_file(), key=key)

    results = world.run_all(rows_per_segment=25)
    parts = list_keys(world.s3, PROCESSED_BUCKET)

    accepted, rejects = world.merged(results[-1])
    assert [row["row"] for row in accepted] == DELIVERED
    assert len(rejects) == 6
    # every key within S3's 1,024 bytes (which moto does not enforce)
    written = parts + list_keys(world.s3, PROCESSED_BUCKET)
    assert len(parts) == 2 * results[-1].parts
    assert max(len(key.encode()) for key in written) <= 1024


def list_keys(s3: Any, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_an_unversioned_object_overwritten_meanwhile_is_not_read_as_this_file(world: World) -> None:
    # GIVEN an unversioned bucket's file registered by its content, then overwritten by another upload
    world.s3.create_bucket(Bucket="plain-raw")
    first = world.s3.put_object(Bucket="plain-raw", Key="in/notes.csv", Body=csv_file())
    world.obj = ObjectRef(bucket="plain-raw", key="in/notes.csv", etag=first["ETag"])
    world.attempt = world.store.register(world.obj).attempt
    world.s3.put_object(Bucket="plain-raw", Key="in/notes.csv", Body=b"id,note\n1,other content\n")

    # WHEN its segment starts, THEN it refuses to read the other upload's rows under this identity
    with pytest.raises(ObjectReplaced, match="not this content"):
        world.segment(CountdownContext()).run(0)
    assert world.server.received == []
    assert world.store.get(world.obj.id)["state"] == "RECEIVED"  # type: ignore[index]  # nothing written


@dataclass
class RealTimeContext:
    """A Lambda context whose remaining time runs down in real time, like the runtime's."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return int((self.seconds - (time.monotonic() - self.started)) * 1000)


def test_the_reader_waiting_on_a_retrying_head_row_stops_at_the_deadline(world: World) -> None:
    # GIVEN row 1 failing with 503 again and again (its retries alone would take ~10 s), the rest
    # accepted, 1 s of safety margin and 2.5 s left in the invocation
    world.limits = SegmentLimits(concurrency=3, checkpoint_every=4, window=4, safety_seconds=1.0)
    world.upload(csv_file())

    def respond(request: Received, seen: int) -> Reply:
        return Reply(503, {"error": "busy"}) if request.payload["id"] == 1 else accept_all(request, seen)

    world.server.respond = respond
    segment = world.segment(RealTimeContext(2.5), attempts=20, clock=SystemClock(), backoff_seconds=1.0)

    started = time.monotonic()
    result = segment.run(0)
    took = time.monotonic() - started

    # THEN the segment paused before its deadline, without failing, and committed nothing past row 1
    assert took < 2.5, f"the segment outlived its time: {took:.1f} s"
    assert (result.done, result.rows_total) == (False, 0)
    checkpoint, _ = world.store.load_checkpoint(world.obj)
    assert checkpoint.next_row == 1
    assert world.store.get(world.obj.id)["state"] == "PROCESSING"  # type: ignore[index]


def test_an_api_that_accepts_and_never_answers_cannot_hold_the_segment_past_its_deadline(
    world: World,
) -> None:
    # GIVEN an API that answers rows 1-8, then accepts every request and never answers it; a request
    # timeout (20 s, as the integration pipeline's ApiTimeoutSeconds) far beyond the invocation's
    # 4 s, a 2 s margin, and a breaker that two failed requests would open
    world.limits = SegmentLimits(concurrency=3, checkpoint_every=4, safety_seconds=2.0)
    world.upload(csv_file())
    release = threading.Event()

    def respond(request: Received, seen: int) -> Reply:
        if request.payload["id"] > 8:
            release.wait(timeout=30)  # no answer while the test runs
        return accept_all(request, seen)

    world.server.respond = respond
    health = DownstreamHealth(world.control, failure_threshold=2, notify=lambda subject, _: None)
    segment = world.segment(RealTimeContext(4.0), clock=SystemClock(), health=health, timeout_seconds=20)

    # WHEN the segment runs
    started = time.monotonic()
    try:
        paused = segment.run(0)
    finally:
        took = time.monotonic() - started
        release.set()

    # THEN it ended before its deadline, its requests cut half the margin after the stop, with
    # rows 1-8 committed and checkpointed; the cut requests failed nothing and opened nothing
    assert took < 4.0, f"the segment outlived its 4 s: {took:.1f} s"
    assert (paused.done, paused.rows_total) == (False, 8)
    checkpoint, _ = world.store.load_checkpoint(world.obj)
    assert checkpoint.next_row == 9
    assert world.store.get(world.obj.id)["state"] == "PROCESSING"  # type: ignore[index]
    assert not health.is_open()

    # WHEN the API answers again: THEN the next segment delivers the rest, row 9 is not lost
    world.server.respond = rejecting_row_33
    done = world.segment(RealTimeContext(20), clock=SystemClock(), health=health).run(paused.segment)
    assert (done.done, done.rows_delivered) == (True, len(DELIVERED))
    accepted_rows, _ = world.merged(done)
    assert [row["row"] for row in accepted_rows] == DELIVERED
    sent = Counter(world.server.keys())
    assert all(sent[world.key(n)] == 1 for n in range(1, 9))  # the committed rows were not sent again


def test_a_request_sent_just_before_the_stop_is_answered_not_cut_and_sent_again(world: World) -> None:
    # GIVEN an API answering in 0.4 s, and a segment that stops taking rows 0.3 s in (2 s margin)
    world.limits = SegmentLimits(concurrency=3, checkpoint_every=4, safety_seconds=2.0)
    world.upload(csv_file())

    def slow(request: Received, seen: int) -> Reply:
        time.sleep(0.4)
        return accept_all(request, seen)

    world.server.respond = slow

    # WHEN it runs: rows 1-3 go out at once, the stop comes while they are on the wire
    paused = world.segment(RealTimeContext(2.3), clock=SystemClock(), timeout_seconds=20).run(0)

    # THEN their answers were waited for (half the margin is theirs): committed, each sent once
    assert (paused.done, paused.rows_delivered) == (False, 3)
    assert Counter(world.server.keys()) == Counter({world.key(n): 1 for n in (1, 2, 3)})


SHORT_FILE = b"id,note\r\n1,one\r\n2,two\r\n3,three\r\n"  # fewer rows than workers: all read at once


def test_a_row_cut_at_the_deadline_after_the_last_row_was_read_keeps_the_file_open(world: World) -> None:
    # GIVEN a file whose rows all go out at once, and an API that never answers row 3
    world.limits = SegmentLimits(concurrency=3, checkpoint_every=4, safety_seconds=2.0)
    world.upload(SHORT_FILE)
    release = threading.Event()

    def respond(request: Received, seen: int) -> Reply:
        if request.payload["id"] == 3:
            release.wait(timeout=30)
        return accept_all(request, seen)

    world.server.respond = respond
    segment = world.segment(RealTimeContext(4.0), clock=SystemClock(), timeout_seconds=20)

    # WHEN the segment runs: the reader has read the last row when row 3's request is cut
    try:
        paused = segment.run(0)
    finally:
        release.set()

    # THEN the file is not done: row 3 was not answered, and the next segment sends it
    assert (paused.done, paused.rows_total) == (False, 2)
    world.server.respond = accept_all
    done = world.segment(RealTimeContext(20), clock=SystemClock()).run(paused.segment)
    assert (done.done, done.rows_delivered) == (True, 3)


def test_rows_held_for_an_unhealthy_downstream_after_the_last_row_was_read_end_at_the_deadline(
    world: World,
) -> None:
    # GIVEN a file whose rows all go out at once, an API answering 401 (the breaker opens and
    # holds every row; no probe before 30 s) and 2.5 s left with a 1 s margin
    world.limits = SegmentLimits(concurrency=3, checkpoint_every=4, safety_seconds=1.0)
    world.upload(SHORT_FILE)
    world.server.respond = lambda request, seen: Reply(401, {"error": "token expired"})
    health = DownstreamHealth(world.control, probe_seconds=30, notify=lambda subject, _: None)
    segment = world.segment(RealTimeContext(2.5), clock=SystemClock(), health=health)
    answers: list[ProcessResult] = []

    # WHEN the segment runs (in a thread: before the fix it waited for the downstream for ever)
    runner = threading.Thread(target=lambda: answers.append(segment.run(0)), daemon=True)
    started = time.monotonic()
    runner.start()
    runner.join(timeout=10)
    took = time.monotonic() - started
    if runner.is_alive():
        segment._stop.set()  # let its workers go, so the test process can end
        runner.join(timeout=5)

    # THEN it ended before its deadline, not done, nothing committed, checkpoint saved
    assert took < 2.5, f"the segment outlived its 2.5 s: {took:.1f} s"
    assert [(answer.done, answer.rows_total) for answer in answers] == [(False, 0)]
    checkpoint, _ = world.store.load_checkpoint(world.obj)
    assert checkpoint.next_row == 1


def test_a_401_for_every_row_rejects_nothing_the_segment_waits_then_the_file_is_delivered_once(
    world: World,
) -> None:
    # GIVEN an API whose credential was revoked: it answers 401 to every request until it is fixed
    world.limits = SegmentLimits(concurrency=3, checkpoint_every=4, safety_seconds=1.0)
    world.upload(csv_file())
    revoked = threading.Event()
    revoked.set()
    accepted: Counter[str] = Counter()

    def respond(request: Received, seen: int) -> Reply:
        if revoked.is_set():
            return Reply(401, {"error": "token expired"})
        reply = rejecting_row_33(request, seen)
        if reply.status < 300:
            accepted[request.key] += 1
        return reply

    world.server.respond = respond
    alerts: list[str] = []
    health = DownstreamHealth(
        world.control, probe_seconds=0.2, notify=lambda subject, _: alerts.append(subject)
    )

    # WHEN a segment runs while it refuses everything
    started = time.monotonic()
    paused = world.segment(RealTimeContext(2.5), clock=SystemClock(), health=health).run(0)

    # THEN it answered done:false before its deadline, rejected and failed nothing, and checkpointed
    assert time.monotonic() - started < 2.5
    assert (paused.done, paused.rows_rejected) == (False, 0)
    assert health.is_open()
    assert world.control.get_item(Key={"pk": "health#downstream"})["Item"]["state"] == BreakerState.OPEN
    assert world.store.get(world.obj.id)["state"] == "PROCESSING"  # type: ignore[index]

    # WHEN the credential is fixed: the next segment's probe closes the breaker and it finishes the file
    revoked.clear()
    done = world.segment(RealTimeContext(20), clock=SystemClock(), health=health).run(paused.segment)

    # THEN every row was delivered exactly once after the recovery; only data rejects are rejects
    assert (done.done, done.outcome) == (True, FileState.SUCCEEDED_WITH_REJECTS)
    assert done.rows_rejected == len(SCHEMA_REJECTS) + len(STREAM_REJECTS) + 1  # row 33: the API's 422
    assert accepted == Counter({world.key(n): 1 for n in DELIVERED})
    accepted_rows, rejects = world.merged(done)
    assert [row["row"] for row in accepted_rows] == DELIVERED
    assert not any("401" in line for line in rejects)
    assert alerts == ["Downstream unhealthy", "Downstream recovered"]
