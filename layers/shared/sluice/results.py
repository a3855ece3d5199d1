"""What a processed file leaves in ProcessedBucket, and the two writers of it.

While a file is processed, each checkpoint flushes one numbered part (ProcessObject), named by
the attempt that wrote it, under a directory named by the hash of the object id:

    parts/{sha256(object id)}/{part:06d}-a{attempt}.accepted.jsonl  one JSON line per row (accepted_line)
    parts/{sha256(object id)}/{part:06d}-a{attempt}.rejects.csv     row,reason (no header)
    parts/{sha256(object id)}/ahead-a{attempt}-{uuid}.jsonl         rows answered past the checkpoint

The hash keeps every part key short (a 1,000-byte object key could not fit under S3's 1,024)
and makes one file's directory impossible to nest inside another's (`a.csv` and `a.csv/x.csv`
list and delete only their own parts). A part holds exactly the rows between two checkpoints, so
a segment that dies after writing a part but before its checkpoint rewrites the same part next
time; a runner of a stale attempt writes under its own attempt's name and can never overwrite
the live attempt's parts. The checkpoint (and ProcessObject's last answer) says which parts make
up the file, `parts` and `runs` ([first part, attempt] from that part on): WriteOutput merges
exactly those, never what a listing finds, into

    results/{key}/{version}/accepted.jsonl
    results/{key}/{version}/rejects.csv                 header "row,reason"
    results/{key}/{version}/summary.json                counts, outcome, the object

or, when that would be longer than S3's 1,024 bytes, `results-by-id/{sha256(object id)}/…`
(summary.json names the object). `{version}` is the version label (`null-{etag}` unversioned).

The merge is one S3 multipart upload per output, its parts built on MERGE_WORKERS threads: a
source part of 5 MiB or more is copied server side (UploadPartCopy); consecutive smaller ones
(500 rows are ~150 KB) are read and joined into parts of TARGET_PART bytes, S3's minimum being
5 MiB for every part but the last. Memory: MERGE_WORKERS × (TARGET_PART + one source). Then
summary.json is written and the parts directory deleted. summary.json is written after both
outputs: once it exists the results are complete, so a re-run only finishes the clean-up.

A merge may span several WriteOutput calls (the largest file's ~6 GiB does not pass through one
function within its timeout): a call works while `time_left()` is above CALL_RESERVE_SECONDS and
answers where it stopped, a MergePosition (which output, its multipart upload id, the next piece
to upload). The pieces are planned the same way from the same parts on every call, so piece n is
always the same bytes: a call that dies after uploading pieces but before answering is retried from
the position it was given and uploads those pieces again, replacing them with identical bytes; none
is lost (the upload is completed from ListParts, checked against the plan's count) and none is
doubled (a part number holds one piece). A completed upload whose answer was lost is recognised by
its size and part count. At most MAX_OUTPUT_CALLS calls (docs/architecture.md, WriteOutput over
several calls); the state machine loops on `calls_left`.
"""

import csv
import hashlib
import io
import json
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from sluice.models import ACCEPTED, FINISH, MAX_OUTPUT_CALLS, REJECTS, MergePosition, ObjectRef, ProcessResult

REJECTS_HEADER = b"row,reason\n"
JSONL, CSV = "application/x-ndjson", "text/csv"
MAX_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes
MIN_PART = 5 * 1024**2  # S3 multipart: every part but the last at least 5 MiB
TARGET_PART = 8 * 1024**2  # small sources are joined up to this; 5 GiB output → 640 parts (max 10,000)
# Parallel GETs, and parallel part uploads, in the merge; the S3 client needs a pooled connection
# for each: MERGE_CONNECTIONS. Memory: 16 pieces × 8 MiB, held twice while sent ≈ 256 MiB at most.
MERGE_WORKERS = 16
MERGE_CONNECTIONS = 2 * MERGE_WORKERS
# One call stops starting pieces when less than this is left of its timeout (120 s; a third of a
# shorter one): what is in flight then (MERGE_WORKERS pieces of TARGET_PART = 128 MiB, read and
# sent) and the completion need it, at ≥ 8 MiB/s. A call moves bytes for ~120 - 40 = 80 s.
CALL_RESERVE_SECONDS = 40.0
_PART_NAME = re.compile(r"(\d+)-a(\d+)\.")


@dataclass(frozen=True)
class ResultKeys:
    accepted_key: str
    rejects_key: str
    summary_key: str


@dataclass(frozen=True)
class Layout:
    """Where one object version's parts and results live."""

    obj: ObjectRef

    @property
    def _hash(self) -> str:
        return hashlib.sha256(self.obj.id.encode()).hexdigest()

    @property
    def parts_prefix(self) -> str:
        """Fixed length and ending in "/": no other file's directory can start with it."""
        return f"parts/{self._hash}/"

    def part_keys(self, part: int, attempt: int) -> tuple[str, str]:
        base = f"{self.parts_prefix}{part:06d}-a{attempt}"
        return f"{base}.accepted.jsonl", f"{base}.rejects.csv"

    def manifest(self, parts: int, runs: list[list[int]]) -> list[tuple[str, str]]:
        """The part keys of parts 0..parts-1, each under the attempt `runs` says wrote it."""
        owners = sorted(runs)
        if parts and (not owners or owners[0][0] != 0):
            raise ValueError(f"{self.obj.id}: no attempt recorded for part 0 (runs {runs})")
        keys: list[tuple[str, str]] = []
        for index, (first, attempt) in enumerate(owners):
            end = owners[index + 1][0] if index + 1 < len(owners) else parts
            keys.extend(self.part_keys(part, attempt) for part in range(first, min(end, parts)))
        return keys

    @property
    def results(self) -> ResultKeys:
        base = f"results/{self.obj.key}/{self.obj.version_label}"
        if len(f"{base}/accepted.jsonl".encode()) > MAX_KEY_BYTES:  # the longest of the three names
            base = f"results-by-id/{self._hash}"
        return ResultKeys(f"{base}/accepted.jsonl", f"{base}/rejects.csv", f"{base}/summary.json")


def accepted_line(row: int, key: str, data: dict[str, Any], answer: Any) -> str:
    return json.dumps({"row": row, "idempotency_key": key, "data": data, "answer": answer})


def part_attempt(key: str) -> int | None:
    """The attempt that wrote a part (its name's `-a{attempt}`), None for other files."""
    found = _PART_NAME.search(key.rsplit("/", 1)[-1])
    return int(found.group(2)) if found else None


class PartWriter:
    """Writes the parts of one object version for one attempt (ProcessObject)."""

    def __init__(self, s3_client: Any, bucket: str, obj: ObjectRef, *, attempt: int):
        self._s3 = s3_client
        self._bucket = bucket
        self._layout = Layout(obj)
        self._attempt = attempt

    def write(self, part: int, accepted: Iterable[str], rejects: Iterable[tuple[int, str]]) -> None:
        """Both files of part `part`: accepted lines (JSON, see accepted_line) and (row, reason)s."""
        accepted_key, rejects_key = self._layout.part_keys(part, self._attempt)
        body = "".join(f"{line}\n" for line in accepted).encode()
        self._s3.put_object(Bucket=self._bucket, Key=accepted_key, Body=body, ContentType=JSONL)
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rejects)
        self._s3.put_object(
            Bucket=self._bucket, Key=rejects_key, Body=text.getvalue().encode(), ContentType=CSV
        )

    def write_ahead(self, outcomes: dict[int, dict[str, Any]]) -> str:
        """Rows answered past the checkpoint ({row: {"line": …} or {"reason": …}}): a new file, its name.

        A new name each time (never overwritten), so a checkpoint that still names the previous
        file finds it whole if this write's checkpoint never lands.
        """
        name = f"ahead-a{self._attempt}-{uuid.uuid4().hex}.jsonl"
        body = "".join(
            json.dumps({"row": row, **outcome}) + "\n" for row, outcome in sorted(outcomes.items())
        )
        self._s3.put_object(
            Bucket=self._bucket, Key=self._layout.parts_prefix + name, Body=body.encode(), ContentType=JSONL
        )
        return name

    def read_ahead(self, name: str) -> dict[int, dict[str, Any]]:
        body = self._s3.get_object(Bucket=self._bucket, Key=self._layout.parts_prefix + name)["Body"].read()
        outcomes = {}
        for line in body.decode().splitlines():
            outcome = json.loads(line)
            outcomes[outcome.pop("row")] = outcome
        return outcomes

    def reset(self) -> None:
        """Forget an earlier processing of this version: its results and the parts of earlier attempts.

        Called when processing starts from the first row. The merge takes only the parts the
        checkpoint names, so this is tidying; later attempts' parts are never touched.
        """
        keys = [
            key
            for key, _ in _list(self._s3, self._bucket, self._layout.parts_prefix)
            if (part_attempt(key) or 0) < self._attempt
        ]
        keys.extend(vars(self._layout.results).values())
        _delete(self._s3, self._bucket, keys)


@dataclass(frozen=True)
class MergeAnswer:
    done: bool
    keys: ResultKeys
    position: MergePosition

    @property
    def calls_left(self) -> int:
        return MAX_OUTPUT_CALLS - self.position.calls

    def as_payload(self) -> dict[str, Any]:
        """WriteOutput's output (docs/interfaces.md)."""
        return {
            "done": self.done,
            "calls_left": self.calls_left,
            "position": None if self.done else self.position.model_dump(),
            **vars(self.keys),
        }


def merge_results(
    s3_client: Any,
    bucket: str,
    obj: ObjectRef,
    result: ProcessResult,
    position: MergePosition | None = None,
    *,
    time_left: Callable[[], float] | None = None,
    workers: int = MERGE_WORKERS,
    target_part: int = TARGET_PART,
) -> MergeAnswer:
    """The final results from the parts `result` names (WriteOutput): all of them, or as far as
    `time_left()` (seconds) allows, then where to go on from. Idempotent for a given position."""
    layout = Layout(obj)
    keys = layout.results
    given = position or MergePosition()
    here = given.model_copy(update={"calls": given.calls + 1})  # this call counted
    out_of_time = _out_of_time(time_left)
    present = dict(_list(s3_client, bucket, layout.parts_prefix))  # key → size, one listing
    if here.output < FINISH and _exists(s3_client, bucket, keys.summary_key):
        here = _at(here, FINISH)  # merged earlier; finish an interrupted clean-up
    if here.output < FINISH:
        manifest = layout.manifest(result.parts, result.runs)
        missing = [key for pair in manifest for key in pair if key not in present]
        if missing:
            raise FileNotFoundError(f"{obj.id}: {len(missing)} parts missing, first {missing[0]}")
        merge = _Merge(s3_client, bucket, workers=workers, target_part=target_part)
        outputs = {
            ACCEPTED: (keys.accepted_key, b"", [(a, present[a]) for a, _ in manifest], JSONL),
            REJECTS: (keys.rejects_key, REJECTS_HEADER, [(r, present[r]) for _, r in manifest], CSV),
        }
        for output in (ACCEPTED, REJECTS):
            if here.output != output:
                continue
            target, head, sources, content_type = outputs[output]
            stopped = merge.write(
                target, head, sources, content_type=content_type, position=here, out_of_time=out_of_time
            )
            if stopped is not None:
                return MergeAnswer(False, keys, stopped)
            here = _at(here, output + 1)
        _write_summary(s3_client, bucket, obj, result, keys)
    if not _delete(s3_client, bucket, list(present), out_of_time, workers):
        return MergeAnswer(False, keys, here)
    return MergeAnswer(True, keys, here)


def _at(position: MergePosition, output: int) -> MergePosition:
    """The position at the start of `output`: no upload yet."""
    return MergePosition(calls=position.calls, output=output)


def _out_of_time(time_left: Callable[[], float] | None) -> Callable[[], bool]:
    if time_left is None:
        return lambda: False  # one pass (tests)
    # A third of a short call (a Timeout set below 120 s) rather than none of it left to work.
    reserve = min(CALL_RESERVE_SECONDS, time_left() / 3)
    return lambda: time_left() < reserve


def _write_summary(
    s3_client: Any, bucket: str, obj: ObjectRef, result: ProcessResult, keys: ResultKeys
) -> None:
    summary = {
        "object": obj.as_payload(),
        "outcome": result.outcome,
        "rows_total": result.rows_total,
        "rows_delivered": result.rows_delivered,
        "rows_rejected": result.rows_rejected,
        "segments": result.segment,
        "parts": result.parts,
        "accepted_key": keys.accepted_key,
        "rejects_key": keys.rejects_key,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    s3_client.put_object(
        Bucket=bucket,
        Key=keys.summary_key,
        Body=json.dumps(summary, indent=2).encode(),
        ContentType="application/json",
    )


@dataclass
class _Piece:
    """One part of the output: copied from one big source, or `head` + small sources joined."""

    head: bytes = b""
    sources: list[str] = field(default_factory=list)
    size: int = 0
    copy: bool = False


class _Merge:
    """Concatenates objects into one, S3 doing the copying where it can (UploadPartCopy).

    Written by hand: boto3's managed transfer copies one object to one object; joining many
    small ones into a multipart upload, in order, is not something it does.
    """

    def __init__(self, s3_client: Any, bucket: str, *, workers: int, target_part: int):
        self._s3 = s3_client
        self._bucket = bucket
        self._workers = workers
        self._target = max(target_part, MIN_PART)

    def write(
        self,
        target: str,
        head: bytes,
        sources: list[tuple[str, int]],
        *,
        content_type: str,
        position: MergePosition,
        out_of_time: Callable[[], bool],
    ) -> MergePosition | None:
        """Write `target` from where `position` stands: None once it is complete, else where it stopped."""
        pieces = self._plan(head, sources)
        # Two pools: pieces are built and uploaded on one, their sources read on the other, so that
        # one piece of many tiny sources (a rejects file) is read in parallel too.
        with ThreadPoolExecutor(self._workers, thread_name_prefix="merge-get") as fetch:
            if len(pieces) == 1 and not pieces[0].copy:
                if out_of_time():  # one piece is read in one go: it starts the next call
                    return position
                body = self._read(fetch, pieces[0])
                self._s3.put_object(Bucket=self._bucket, Key=target, Body=body, ContentType=content_type)
                return None
            return self._multipart(
                fetch, target, pieces, content_type=content_type, position=position, out_of_time=out_of_time
            )

    def _multipart(
        self,
        fetch: ThreadPoolExecutor,
        target: str,
        pieces: list[_Piece],
        *,
        content_type: str,
        position: MergePosition,
        out_of_time: Callable[[], bool],
    ) -> MergePosition | None:
        upload_id, first = position.upload_id, position.next_piece
        if upload_id is not None and position.pieces != len(pieces):
            raise ValueError(
                f"{target}: {len(pieces)} pieces planned, {position.pieces} when the merge began"
            )
        if upload_id is not None and not self._open(target, upload_id):
            if self._complete_already(target, pieces):
                return None  # completed by the call whose answer was lost
            upload_id = None  # aborted (lifecycle, by hand): start this output again
        if upload_id is None:
            created = self._s3.create_multipart_upload(
                Bucket=self._bucket, Key=target, ContentType=content_type
            )
            upload_id, first = created["UploadId"], 0
        following = first
        with ThreadPoolExecutor(self._workers, thread_name_prefix="merge-part") as pool:
            flight: deque[Future[str]] = deque()
            while following < len(pieces) and not out_of_time():
                piece = pieces[following]
                following += 1
                flight.append(pool.submit(self._upload, fetch, target, upload_id, following, piece))
                if len(flight) >= self._workers:  # at most one piece per worker held in memory
                    flight.popleft().result()
            for future in flight:
                future.result()  # an error fails the call; a retry resumes from `position`
        if following < len(pieces):
            return position.model_copy(
                update={"upload_id": upload_id, "next_piece": following, "pieces": len(pieces)}
            )
        self._complete(target, upload_id, len(pieces))
        return None

    def _open(self, target: str, upload_id: str) -> bool:
        try:
            self._s3.list_parts(Bucket=self._bucket, Key=target, UploadId=upload_id, MaxParts=1)
        except ClientError as error:
            if error.response["Error"]["Code"] == "NoSuchUpload":
                return False
            raise
        return True

    def _complete_already(self, target: str, pieces: list[_Piece]) -> bool:
        try:
            whole = self._s3.head_object(Bucket=self._bucket, Key=target)
            first = self._s3.head_object(Bucket=self._bucket, Key=target, PartNumber=1)
        except ClientError as error:
            if error.response["Error"]["Code"] in {"404", "NoSuchKey"}:
                return False
            raise
        size = sum(piece.size for piece in pieces)
        return int(whole["ContentLength"]) == size and int(first.get("PartsCount", 1)) == len(pieces)

    def _complete(self, target: str, upload_id: str, count: int) -> None:
        """Complete from what S3 holds (parts of earlier calls too): exactly pieces 1..count."""
        pages = self._s3.get_paginator("list_parts").paginate(
            Bucket=self._bucket, Key=target, UploadId=upload_id
        )
        parts = [
            {"PartNumber": part["PartNumber"], "ETag": part["ETag"]}
            for page in pages
            for part in page.get("Parts", [])
        ]
        numbers = [part["PartNumber"] for part in parts]
        if numbers != list(range(1, count + 1)):
            raise RuntimeError(
                f"{target}: parts {numbers[:3]}… ({len(numbers)}) of an upload planned as {count}"
            )
        self._s3.complete_multipart_upload(
            Bucket=self._bucket, Key=target, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    def _plan(self, head: bytes, sources: list[tuple[str, int]]) -> list[_Piece]:
        """Pieces in order: every one but the last at least MIN_PART (S3's rule)."""
        pieces: list[_Piece] = []
        current = _Piece(head=head, size=len(head))
        for key, size in sources:
            if size == 0:
                continue  # an empty part (most rejects files): nothing to read
            if size >= MIN_PART and current.size == 0:
                pieces.append(_Piece(sources=[key], size=size, copy=True))
                continue
            current.sources.append(key)
            current.size += size
            if current.size >= self._target:
                pieces.append(current)
                current = _Piece()
        if current.size or not pieces:
            pieces.append(current)
        return pieces

    def _read(self, fetch: ThreadPoolExecutor, piece: _Piece) -> bytes:
        body = bytearray(piece.head)
        for data in fetch.map(self._get, piece.sources):  # in order
            body += data
        return bytes(body)

    def _get(self, key: str) -> bytes:
        return bytes(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read())

    def _upload(
        self, fetch: ThreadPoolExecutor, target: str, upload_id: str, number: int, piece: _Piece
    ) -> str:
        common = {"Bucket": self._bucket, "Key": target, "UploadId": upload_id, "PartNumber": number}
        if piece.copy:
            answer = self._s3.upload_part_copy(
                **common, CopySource={"Bucket": self._bucket, "Key": piece.sources[0]}
            )
            return str(answer["CopyPartResult"]["ETag"])
        return str(self._s3.upload_part(**common, Body=self._read(fetch, piece))["ETag"])


def _list(s3_client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], int(item["Size"])


def _exists(s3_client: Any, bucket: str, key: str) -> bool:
    try:
        s3_client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] in {"404", "NoSuchKey"}:
            return False
        raise
    return True


def _delete(
    s3_client: Any,
    bucket: str,
    keys: list[str],
    out_of_time: Callable[[], bool] = lambda: False,
    workers: int = 1,
) -> bool:
    """Delete `keys` (DeleteObjects takes 1,000 at a time) on `workers` threads; False if time ran out."""
    batches = [keys[start : start + 1000] for start in range(0, len(keys), 1000)]

    def delete(batch: list[str]) -> None:
        objects = [{"Key": key} for key in batch]
        s3_client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})

    submitted = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="merge-delete") as pool:
        flight: deque[Future[None]] = deque()
        for batch in batches:
            if out_of_time():
                break
            flight.append(pool.submit(delete, batch))
            submitted += 1
            if len(flight) >= workers:
                flight.popleft().result()
        for future in flight:
            future.result()
    return submitted == len(batches)
