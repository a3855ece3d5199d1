"""Transform and deliver one segment of a file: as many rows as this invocation has time for.

A segment resumes at the checkpoint on the metadata item (the next row and its byte offset),
streams rows from there, validates and transforms each with the row schema, and POSTs the
accepted ones downstream on `concurrency` threads. Rows are *committed* strictly in file order:
a row counts as done only once it and every row before it are done, so the checkpoint is always
"everything before byte N is delivered or rejected". Every `checkpoint_every` committed rows
(and when the segment ends) the committed rows are flushed as a part (results.py) and THEN the
checkpoint is saved: a crash between the two rewrites the same part next time.

Bounded memory, whatever the file's size: at most `concurrency` requests in flight (a row is
only handed to a worker when one is free, so nothing waits in the pool's queue), at most
`window` rows delivered but not yet committed (a slow row at the head holds the rest back,
then the reader waits), at most one part of rows before it is flushed.

The segment stops taking rows when the invocation has less than `safety_seconds` left: the
requests on the wire finish, but no new attempt starts (a row between two retries is abandoned,
DeliveryAbandoned, rather than waited for through its backoff), then it flushes, checkpoints
and answers `done: false`; the state machine runs the next segment. A request on the wire then
has half of `safety_seconds` to end (downstream.DownstreamClient.deliver's `deadline`: its timeout
is the shorter of API_TIMEOUT_SECONDS and the time left until then), the other half is the
flush's: an API that accepts a connection and never answers cannot hold the segment past its
timeout. (Cutting requests at the stop itself gave a request sent just before it milliseconds to
answer; cut, it is sent again, a second delivery for an API that does not deduplicate.) So
`safety_seconds` must cover a rate slot (ratelimit.STOPPED_GRACE_SECONDS, 1 s) and a flush, twice.
At the end of the file it answers `done: true` with the outcome.

No wait in a segment outlives its time: the reader waits for a worker, for the head row, and
after the file's last row for the rows still in flight, in ticks, and stops the segment when the
time left is below `safety_seconds`; the workers' waits
(backoff, rate slot, a Retry-After pause, an unhealthy downstream) end when it stops. While the
downstream is unhealthy (health.py) the workers hold their rows, the reader checkpoints what is
committed once and keeps waiting; the rows go out when it recovers, or the segment answers
`done: false` at its deadline, having failed and rejected nothing.

If a row fails for good (TransientDownstreamError after its retries) the segment stops the
same way, flushes and checkpoints the committed prefix (which ends just before the failed row),
then re-raises. The committed prefix also ends before an abandoned row. Rows after such a row
that the API answered meanwhile are not committed, but they are not lost either: their outcomes
are saved in an "ahead" file the checkpoint names (`ahead`, `ahead_file`; at most the window's
rows past the checkpoint), and the next segment or attempt commits them from there, in order,
without sending them again. So each row the API answered is posted once and appears once in the
results; only a failed or abandoned row is sent again (the Idempotency-Key lets the API spot it).

Every write is fenced (docs/metadata.md): the checkpoint only by the attempt that owns the file
(`attempts` on the item) and never backwards, parts under the attempt's own names. A runner
that a newer attempt has overtaken gets `Fenced` from its next checkpoint and stops at once,
sending nothing more.
"""

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from sluice.csvstream import CsvStream, Row
from sluice.downstream import (
    RESEND_METADATA,
    DeliveryAbandoned,
    DownstreamClient,
    RowUrlError,
    add_metric,
    idempotency_key,
)
from sluice.metadata import Fenced, MetadataStore
from sluice.models import Checkpoint, FileState, ObjectRef, ProcessResult, RowCounts
from sluice.observability import MetricUnit, logger
from sluice.ratelimit import WAIT_TICK_SECONDS
from sluice.results import PartWriter, accepted_line
from sluice.schemas import RowSchema
from sluice.settings import ProcessSettings


class ObjectReplaced(RuntimeError):
    """An unversioned object was overwritten: this identity's content can no longer be read."""


@dataclass(slots=True)
class _Entry:
    """A row on its way: rejected already (`reason`), answered in an earlier segment
    (`answered`: {"line": accepted line} or {"reason": …}), or posted downstream (`future`)."""

    row: Row
    reason: str | None = None
    key: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""  # the payload as posted, encoded once by the schema
    url: str | None = None  # the row's own URL (ApiUrl's {column} placeholders filled), None: ApiUrl
    future: "Future[Any] | None" = None  # a Delivery; with batches a list of them, this row's at `index`
    index: int | None = None
    answered: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        return self.future is None or self.future.done()

    @property
    def to_send(self) -> bool:
        return self.reason is None and self.answered is None and self.future is None


@dataclass(slots=True)
class _Part:
    """Committed rows not flushed yet."""

    accepted: list[str] = field(default_factory=list)
    rejects: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.accepted) + len(self.rejects)


@dataclass(frozen=True)
class SegmentLimits:
    concurrency: int = 16  # requests in flight
    checkpoint_every: int = 500  # committed rows per part and checkpoint
    safety_seconds: float = 30.0  # stop taking rows with this little time left
    window: int = 0  # rows delivered but not committed yet; 0: 4 × concurrency × batch_size
    batch_size: int = 1  # rows per request (downstream.deliver_batch when > 1)

    @property
    def out_of_order(self) -> int:
        return self.window or 4 * self.concurrency * self.batch_size

    @classmethod
    def from_settings(cls, settings: ProcessSettings) -> "SegmentLimits":
        return cls(
            concurrency=settings.api_concurrency,
            checkpoint_every=settings.checkpoint_every_rows,
            safety_seconds=settings.segment_safety_seconds,
            batch_size=settings.api_batch_size,
        )


class Segment:
    """One ProcessObject invocation's work on one object version."""

    def __init__(
        self,
        obj: ObjectRef,
        *,
        s3_client: Any,
        store: MetadataStore,
        parts: PartWriter,
        schema: RowSchema,
        client: DownstreamClient,
        limits: SegmentLimits,
        remaining_ms: Callable[[], int],
        attempt: int,
    ):
        self._obj = obj
        self._attempt = attempt  # the attempt that runs this segment: its writes are fenced on it
        self._s3 = s3_client
        self._store = store
        self._parts = parts
        self._schema = schema
        self._client = client
        self._limits = limits
        self._remaining_ms = remaining_ms
        self._window: deque[_Entry] = deque()  # rows taken, in file order, not committed yet
        self._in_flight: set[Future[Any]] = set()
        self._part = _Part()
        self._checkpoint = Checkpoint()
        self._counts = RowCounts()
        self._header: list[str] = []
        self._failure: BaseException | None = None
        self._stop = threading.Event()  # set when no new attempt should start: out of time, or failed
        self._answered: dict[int, dict[str, Any]] = {}  # rows answered past the checkpoint, loaded
        self._resend_token = ""
        self._fenced = False
        self._stop_at = float("inf")  # time.monotonic() at which the segment stops taking rows
        self._saved_while_unhealthy = False  # checkpointed since the downstream became unhealthy
        self._abandoned = ""  # why the first row held back at the stop was not sent (DeliveryAbandoned)

    def run(self, segment: int) -> ProcessResult:
        stream = self._open(segment)
        before = self._counts.model_copy()  # what earlier segments did: the metrics count this one's rows
        ended = False
        try:
            with stream, ThreadPoolExecutor(self._limits.concurrency, thread_name_prefix="deliver") as pool:
                try:
                    ended = self._take_rows(stream, pool)
                except BaseException:
                    self._stop.set()  # the reader broke (S3, a bug): keep what is committed, retry nothing
                    raise
                finally:
                    self._see_through()  # what was sent is seen through, whatever happened
                    self._client.idle()  # the rate slots this invocation still holds go back
                    self._commit(until_blocked=False)
                    self._flush(final=True)
            # A row abandoned at the stop (the deadline came while the reader had already read the
            # file's last row) keeps the file open: the next segment sends it again.
            ended = ended and not self._window
        finally:
            add_metric("RowsDelivered", MetricUnit.Count, self._counts.delivered - before.delivered)
            add_metric("RowsRejected", MetricUnit.Count, self._counts.rejected - before.rejected)
        if self._failure is not None:
            raise self._failure
        outcome = None
        if ended:
            outcome = FileState.SUCCEEDED_WITH_REJECTS if self._counts.rejected else FileState.SUCCEEDED
        logger.info(
            "file done" if ended else "segment paused",
            extra={
                "segment": segment,
                "checkpoint": self._checkpoint.model_dump(exclude={"header"}),
                **({"abandoned": self._abandoned} if self._abandoned else {}),
            },
        )
        return ProcessResult(
            done=ended,
            segment=segment + 1,  # the segment to run next (docs/interfaces.md)
            outcome=outcome,
            rows_total=self._counts.total,
            rows_delivered=self._counts.delivered,
            rows_rejected=self._counts.rejected,
            parts=self._checkpoint.parts,
            runs=self._checkpoint.runs,
        )

    def _open(self, segment: int) -> CsvStream:
        """The row stream from the checkpoint. The first segment reads the header and enters PROCESSING."""
        version = {"VersionId": self._obj.version_id} if self._obj.version_id else {}
        head = self._s3.head_object(Bucket=self._obj.bucket, Key=self._obj.key, **version)
        if self._obj.version_label.startswith("null-") and head.get("ETag") != self._obj.etag:
            # Unversioned: the key now holds another upload, a file of its own (null-{its etag}).
            raise ObjectReplaced(f"{self._obj.id}: the key now holds {head.get('ETag')}, not this content")
        self._resend_token = head.get("Metadata", {}).get(RESEND_METADATA, "")
        stream = None
        if segment == 0:
            stream = CsvStream.from_s3(self._s3, self._obj)
            fresh = self._store.start_processing(self._obj, stream.header, attempt=self._attempt)
            if fresh.byte_offset == 0 and fresh.parts == 0 and not fresh.ahead:
                # Starting over: nothing of an earlier processing may be merged. Not when rows past
                # a failed first row were answered: their outcomes (the ahead file) are this file's.
                self._parts.reset()
        self._checkpoint, self._counts = self._store.load_checkpoint(self._obj)
        if self._checkpoint.ahead:
            loaded = self._parts.read_ahead(self._checkpoint.ahead_file)
            self._answered = {row: loaded[row] for row in self._checkpoint.ahead}
        if stream is None or self._checkpoint.byte_offset > 0:
            if stream is not None:
                stream.close()  # only its header was needed: the stored checkpoint is further on
            stream = CsvStream.from_s3(
                self._s3,
                self._obj,
                start_offset=self._checkpoint.byte_offset,
                first_row=self._checkpoint.next_row,
                header=self._checkpoint.header,
            )
        self._header = stream.header
        return stream

    def _take_rows(self, stream: CsvStream, pool: ThreadPoolExecutor) -> bool:
        """Hand rows to the workers until the file ends (True), time runs short or a row fails.

        Rows wait in `pending`, in file order, until they make a request: one row to send (or
        `batch_size` of them), or none (rejected or answered already: straight to the window).
        Rows still pending when the segment stops are not in the window, hence not committed:
        the next segment reads them again from the checkpoint.
        """
        safety_ms = self._limits.safety_seconds * 1000
        pending: list[_Entry] = []
        for row in stream:
            remaining_ms = self._remaining_ms()
            # When the reader must stop, on the monotonic clock: its waits look at this, not at the
            # context (asked once per row, which is what tests count on).
            self._stop_at = time.monotonic() + (remaining_ms - safety_ms) / 1000
            if remaining_ms < safety_ms:
                self._stop.set()
                return False
            pending.append(self._prepare(row))
            to_send = sum(1 for entry in pending if entry.to_send)
            if 0 < to_send < self._limits.batch_size and len(pending) < self._limits.out_of_order:
                continue  # the batch fills
            if not self._send(pending, pool):
                return False
            pending = []
        return self._send(pending, pool)

    def _send(self, entries: list[_Entry], pool: ThreadPoolExecutor) -> bool:
        """The rows of `entries` to be sent go to a worker as one request; all of them then enter
        the window and are committed as far as they can be. False: the segment must stop."""
        batch = [entry for entry in entries if entry.to_send]
        if batch:
            self._wait_for_a_worker()
            if self._failure is not None or self._stop.is_set():
                return False
            first = batch[0]
            future: Future[Any]
            if self._limits.batch_size == 1:
                future = pool.submit(
                    self._client.deliver,
                    first.body,
                    first.key,
                    url=first.url,
                    stop=self._stop,
                    order=first.row.number,
                    deadline=self._requests_end,
                )
            else:
                future = pool.submit(
                    self._client.deliver_batch,
                    [entry.body for entry in batch],
                    [entry.key for entry in batch],
                    stop=self._stop,
                    order=first.row.number,
                    deadline=self._requests_end,
                )
                for index, entry in enumerate(batch):
                    entry.index = index
            for entry in batch:
                entry.future = future
            self._in_flight.add(future)
        self._window.extend(entries)
        self._commit(until_blocked=True)
        while len(self._window) > self._limits.out_of_order and not self._stop.is_set():
            self._wait_for({self._window[0].future})  # type: ignore[arg-type]  # not ready: a future
            self._commit(until_blocked=True)
        return self._failure is None and not self._stop.is_set()

    def _prepare(self, row: Row) -> _Entry:
        if (answered := self._answered.get(row.number)) is not None:
            return _Entry(row, answered=answered)  # the API answered it in an earlier segment
        if row.fields is None:
            return _Entry(row, reason=row.error or "unreadable row")
        record = dict(zip(self._header, row.fields, strict=True))
        parsed = self._schema.parse(record)
        if parsed.payload is None:
            return _Entry(row, reason=parsed.reason)
        try:
            url = self._client.target.url(record)
        except RowUrlError as error:
            return _Entry(row, reason=str(error))
        key = idempotency_key(
            self._obj, row.number, record, resend_token=self._resend_token, identity=parsed.identity
        )
        return _Entry(row, key=key, payload=parsed.payload, body=parsed.body, url=url)

    def _wait_for_a_worker(self) -> None:
        """Until fewer than `concurrency` requests are in flight; notes a row that failed."""
        while True:
            finished = {future for future in self._in_flight if future.done()}
            self._in_flight -= finished
            for future in finished:
                self._note(future.exception())
            if len(self._in_flight) < self._limits.concurrency or self._stop.is_set():
                return
            self._wait_for(self._in_flight)

    @property
    def _requests_end(self) -> float:
        """When every request of the segment must have ended: half the margin after the stop."""
        return self._stop_at + self._limits.safety_seconds / 2

    def _see_through(self) -> None:
        """Until every request in flight is answered, abandoned or failed, keeping the deadline:
        past the file's last row the reader still stops the segment in time, which is what ends
        the waits of rows held for an unhealthy downstream (their requests end by the deadline)."""
        waiting = {future for future in self._in_flight if not future.done()}
        while waiting and not self._stop.is_set():
            self._wait_for(waiting)
            waiting = {future for future in waiting if not future.done()}
        wait(self._in_flight)

    def _wait_for(self, futures: set[Future[Any]]) -> None:
        """Until one of `futures` is done, or the segment must stop: never past the deadline.

        Every WAIT_TICK_SECONDS without an answer the reader looks at the clock (out of time: stop,
        so workers give up their retries and waits) and at the downstream's health (unhealthy:
        commit and checkpoint what is done now, once, before waiting for the recovery).
        """
        while not self._stop.is_set():
            if wait(futures, timeout=WAIT_TICK_SECONDS, return_when=FIRST_COMPLETED).done:
                return
            if time.monotonic() >= self._stop_at:
                self._stop.set()
                return
            health = self._client.health
            unhealthy = health is not None and health.seen_open
            if unhealthy and not self._saved_while_unhealthy:
                self._commit(until_blocked=True)
                self._flush()
            self._saved_while_unhealthy = unhealthy

    def _commit(self, *, until_blocked: bool) -> None:
        """Commit rows from the head of the window while they are done (all of them at the end)."""
        while self._window and (self._window[0].ready or not until_blocked):
            entry = self._window[0]
            if entry.future is not None and (error := entry.future.exception()) is not None:
                self._note(error)
                return  # the committed prefix ends just before this row
            self._window.popleft()
            self._record(entry)
            if len(self._part) >= self._limits.checkpoint_every:
                self._flush()

    def _note(self, error: BaseException | None) -> None:
        """A row that failed fails the segment (the first failure is raised); an abandoned one does not."""
        if isinstance(error, DeliveryAbandoned):
            self._abandoned = self._abandoned or str(error)  # the first one, for the segment's log line
        elif error is not None:
            self._failure = self._failure or error
            self._stop.set()  # the others in retry give up too: the segment fails anyway

    def _record(self, entry: _Entry) -> None:
        number = entry.row.number
        reason = entry.reason
        if (outcome := self._outcome(entry)) is not None:
            if "line" in outcome:
                self._part.accepted.append(outcome["line"])
            reason = outcome.get("reason")
        if reason is not None:
            self._part.rejects.append((number, reason))
        self._counts.total += 1
        self._counts.delivered += reason is None
        self._counts.rejected += reason is not None
        self._checkpoint.next_row = number + 1
        self._checkpoint.byte_offset = entry.row.end_offset

    def _outcome(self, entry: _Entry) -> dict[str, Any] | None:
        """What the API answered for a row ({"line"} or {"reason"}), None if it has no answer."""
        if entry.answered is not None:
            return entry.answered
        if entry.future is None or not entry.future.done() or entry.future.exception() is not None:
            return None
        delivery = entry.future.result()
        if entry.index is not None:
            delivery = delivery[entry.index]
        if delivery.accepted:
            return {"line": accepted_line(entry.row.number, entry.key, entry.payload, delivery.answer)}
        return {"reason": delivery.reason}

    def _flush(self, *, final: bool = False) -> None:
        """Write the committed rows as the next part, THEN save the checkpoint that follows it.

        The checkpoint keeps the rows answered past it (loaded ones not reached yet and, at the
        segment's end, those the window holds behind a failed or abandoned row), so the next
        segment commits them without sending them again.
        """
        if self._fenced:
            return  # a newer attempt owns the file: nothing more is written
        checkpoint = self._checkpoint
        if self._part:
            self._parts.write(checkpoint.parts, self._part.accepted, self._part.rejects)
            if not checkpoint.runs or checkpoint.runs[-1][1] != self._attempt:
                checkpoint.runs.append([checkpoint.parts, self._attempt])
            checkpoint.parts += 1
            self._part = _Part()
        ahead = {row: outcome for row, outcome in self._answered.items() if row >= checkpoint.next_row}
        if final:
            ahead |= {
                entry.row.number: outcome
                for entry in self._window
                if (outcome := self._outcome(entry)) is not None
            }
        if ahead.keys() - self._answered.keys():
            checkpoint.ahead_file = self._parts.write_ahead(ahead)
            self._answered = ahead
        checkpoint.ahead = sorted(ahead)
        if not ahead:
            checkpoint.ahead_file = ""
        try:
            self._store.save_checkpoint(self._obj, checkpoint, self._counts, attempt=self._attempt)
        except Fenced:
            self._fenced = True
            self._stop.set()  # the rows in retry give up: their answers could not be kept
            raise
