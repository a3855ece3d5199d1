"""What a processed file leaves in ProcessedBucket, and the two writers of it.

While a file is processed, each checkpoint flushes one numbered part (ProcessObject):

    parts/{key}/{version_id}/{part:06d}.accepted.jsonl  {"row", "idempotency_key", "data", "answer"} per line
    parts/{key}/{version_id}/{part:06d}.rejects.csv     row,reason (no header)

A part holds exactly the rows between two checkpoints, so a segment that dies after writing a
part but before its checkpoint rewrites the same part number with the same rows next time.
When the file is done, WriteOutput merges the parts, in order, into

    results/{key}/{version_id}/accepted.jsonl
    results/{key}/{version_id}/rejects.csv              header "row,reason"
    results/{key}/{version_id}/summary.json             counts, outcome, the object

and then deletes the parts. The merge streams: each output is one upload read from the parts
one after the other (boto3's managed transfer goes multipart past its threshold, holding one
chunk at a time), never the whole file in memory. summary.json is written last: once it exists
the results are complete, so a re-run after the parts were (even partly) deleted only finishes
the clean-up instead of merging what is left. `version_id` is "null" for an unversioned bucket.
"""

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from sluice.models import ObjectRef, ProcessResult

REJECTS_HEADER = b"row,reason\n"
JSONL, CSV = "application/x-ndjson", "text/csv"
# One chunk in memory at a time (no transfer threads); S3 wants parts of 5 MiB or more.
TRANSFER = TransferConfig(multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, use_threads=False)


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
    def _path(self) -> str:
        return f"{self.obj.key}/{self.obj.version_id or 'null'}"

    @property
    def parts_prefix(self) -> str:
        return f"parts/{self._path}/"

    def part_keys(self, part: int) -> tuple[str, str]:
        base = f"{self.parts_prefix}{part:06d}"
        return f"{base}.accepted.jsonl", f"{base}.rejects.csv"

    @property
    def results(self) -> ResultKeys:
        base = f"results/{self._path}"
        return ResultKeys(f"{base}/accepted.jsonl", f"{base}/rejects.csv", f"{base}/summary.json")


def accepted_line(row: int, key: str, data: dict[str, Any], answer: Any) -> str:
    return json.dumps({"row": row, "idempotency_key": key, "data": data, "answer": answer})


class PartWriter:
    """Writes the parts of one object version (ProcessObject)."""

    def __init__(self, s3_client: Any, bucket: str, obj: ObjectRef):
        self._s3 = s3_client
        self._bucket = bucket
        self._layout = Layout(obj)

    def write(self, part: int, accepted: Iterable[str], rejects: Iterable[tuple[int, str]]) -> None:
        """Both files of part `part`: accepted lines (JSON, see accepted_line) and (row, reason)s."""
        accepted_key, rejects_key = self._layout.part_keys(part)
        body = "".join(f"{line}\n" for line in accepted).encode()
        self._s3.put_object(Bucket=self._bucket, Key=accepted_key, Body=body, ContentType=JSONL)
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rejects)
        self._s3.put_object(
            Bucket=self._bucket, Key=rejects_key, Body=text.getvalue().encode(), ContentType=CSV
        )

    def reset(self) -> None:
        """Forget an earlier processing of this version: its parts and its results.

        Called when processing starts from the first row, so leftovers of an attempt that
        started over cannot be merged into this one's results.
        """
        keys = list(_list_keys(self._s3, self._bucket, self._layout.parts_prefix))
        keys.extend(vars(self._layout.results).values())
        _delete(self._s3, self._bucket, keys)


def merge_results(
    s3_client: Any, bucket: str, obj: ObjectRef, result: ProcessResult, *, transfer: TransferConfig = TRANSFER
) -> ResultKeys:
    """The final results from the parts (WriteOutput); idempotent."""
    layout = Layout(obj)
    keys = layout.results
    parts = sorted(_list_keys(s3_client, bucket, layout.parts_prefix))
    if not parts and _exists(s3_client, bucket, keys.summary_key):
        return keys  # merged and cleaned up by an earlier run
    if parts and _exists(s3_client, bucket, keys.summary_key):
        _delete(s3_client, bucket, parts)  # merged; the clean-up was interrupted
        return keys

    accepted = [key for key in parts if key.endswith(".accepted.jsonl")]
    rejects = [key for key in parts if key.endswith(".rejects.csv")]
    _concatenate(
        s3_client, bucket, accepted, keys.accepted_key, content_type=JSONL, head=b"", transfer=transfer
    )
    _concatenate(
        s3_client, bucket, rejects, keys.rejects_key, content_type=CSV, head=REJECTS_HEADER, transfer=transfer
    )
    summary = {
        "object": obj.as_payload(),
        "outcome": result.outcome,
        "rows_total": result.rows_total,
        "rows_delivered": result.rows_delivered,
        "rows_rejected": result.rows_rejected,
        "segments": result.segment,
        "parts": len(accepted),
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
    _delete(s3_client, bucket, parts)
    return keys


class _Concatenated(io.RawIOBase):
    """The bodies of several objects read as one stream, one object open at a time."""

    def __init__(self, s3_client: Any, bucket: str, keys: list[str], head: bytes):
        self._s3 = s3_client
        self._bucket = bucket
        self._keys = iter(keys)
        self._current: Any = io.BytesIO(head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            count = self._current.readinto(buffer)
            if count:
                return count
            self._current.close()
            key = next(self._keys, None)
            if key is None:
                self._current = io.BytesIO()
                return 0
            self._current = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"]


def _concatenate(
    s3_client: Any,
    bucket: str,
    sources: list[str],
    target: str,
    *,
    content_type: str,
    head: bytes,
    transfer: TransferConfig,
) -> None:
    # BufferedReader: s3transfer expects read(n) to return n bytes until the end (full-size parts).
    stream = io.BufferedReader(_Concatenated(s3_client, bucket, sources, head), buffer_size=1024**2)
    s3_client.upload_fileobj(stream, bucket, target, ExtraArgs={"ContentType": content_type}, Config=transfer)


def _list_keys(s3_client: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"]


def _exists(s3_client: Any, bucket: str, key: str) -> bool:
    try:
        s3_client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] in {"404", "NoSuchKey"}:
            return False
        raise
    return True


def _delete(s3_client: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        s3_client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
