"""Typed payloads between the dispatcher state machine and the functions (docs/interfaces.md).

Pydantic models: the state machine's JSON is parsed into these at the handler's edge, and
answers are dumped from them, so a shape is declared once.
"""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class FileState(StrEnum):
    """States of one object version in the metadata table (docs/metadata.md)."""

    RECEIVED = "RECEIVED"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    SUCCEEDED_WITH_REJECTS = "SUCCEEDED_WITH_REJECTS"
    INVALID = "INVALID"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        """A finished version is never processed again; FAILED may be retried."""
        return self in {FileState.SUCCEEDED, FileState.SUCCEEDED_WITH_REJECTS, FileState.INVALID}


class ObjectRef(BaseModel):
    """One S3 object version: the unit Sluice processes. Parsing ignores the payload's `id`."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    version_id: str | None = None
    size: int = 0
    etag: str | None = None

    @property
    def id(self) -> str:
        """The metadata table's partition key."""
        return object_id(self.bucket, self.key, self.version_id, self.etag)

    @property
    def version_label(self) -> str:
        """The version part of the id: the version id, or `null-{etag}` in an unversioned bucket."""
        return version_label(self.version_id, self.etag)

    def as_payload(self) -> dict:
        """The `object` shape of docs/interfaces.md, with its id."""
        return {"id": self.id, **self.model_dump()}


def object_id(bucket: str, key: str, version_id: str | None, etag: str | None = None) -> str:
    return f"{bucket}/{key}#{version_label(version_id, etag)}"


def version_label(version_id: str | None, etag: str | None) -> str:
    """Which content of a key this is (docs/interfaces.md, Object identity).

    A versioned bucket names each upload with a version id. An unversioned or suspended one
    gives every upload the same "null" version, so the ETag (the content's MD5 for a single-part
    upload) tells a re-upload with new content, a new file, from the same content again.
    """
    if version_id and version_id != "null":
        return version_id
    bare = (etag or "").strip('"')
    return f"null-{bare}" if bare else "null"


class SqsMessage(BaseModel):
    """The `message` of a planned item."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1
    # Who holds the file's claim: this message's id, or for a continuation the id it carries in its
    # CLAIM_ATTRIBUTE (sluice/ingest.py). PlanBatch fills it in.
    claim: str | None = None


class PlanItem(BaseModel):
    message: SqsMessage
    priority: int
    wait_seconds: int


class Checkpoint(BaseModel):
    """Where the next ProcessObject invocation resumes: stored on the metadata item."""

    next_row: int = 1  # 1-based number of the next data row (the header is not a row)
    byte_offset: int = 0  # where that row starts in the object; 0 = before the header
    parts: int = 0  # how many part files have been flushed (accepted + rejects pairs)
    header: list[str] = Field(default_factory=list)
    # Which attempt wrote which parts: [first part, attempt], that attempt from that part on
    # (results.py names each part by its attempt, so a stale runner cannot overwrite a live one's).
    runs: list[list[int]] = Field(default_factory=list)
    # Rows past next_row the API already answered (after a row that failed or was abandoned):
    # their outcomes are in the parts file `ahead_file`; the next segment takes them from there
    # instead of sending them again. At most the segment's window of rows.
    ahead: list[int] = Field(default_factory=list)
    ahead_file: str = ""


class RowCounts(BaseModel):
    total: int = 0
    delivered: int = 0
    rejected: int = 0


class ProcessResult(BaseModel):
    """ProcessObject's answer to the state machine."""

    done: bool
    segment: int
    outcome: FileState | None = None
    rows_total: int
    rows_delivered: int
    rows_rejected: int
    # The parts that make up the file (the checkpoint's `parts` and `runs`): WriteOutput merges these.
    parts: int = 0
    runs: list[list[int]] = Field(default_factory=list)


# The calls one merge may take: WriteOutput's loop bound in the state machine (`calls_left`) and in the
# history-event arithmetic (sluice/lease.py). A call moves bytes ~80 s (sluice/results.py
# CALL_RESERVE_SECONDS): 6 × 80 s at 25 MB/s = 12 GB, against ~6.6 GB of results for the largest
# file Sluice accepts (~17 M rows at ~380 bytes a line; docs/performance.md, WriteOutput).
MAX_OUTPUT_CALLS = 6
ACCEPTED, REJECTS, FINISH = 0, 1, 2  # MergePosition.output: what a call does first


class MergePosition(BaseModel):
    """Where a merge spread over calls stands (WriteOutput's answer, its next request)."""

    calls: int = Field(default=0, ge=0)  # WriteOutput calls made so far
    output: int = Field(default=ACCEPTED, ge=ACCEPTED, le=FINISH)
    upload_id: str | None = None  # the multipart upload of `output`, once created
    next_piece: int = Field(default=0, ge=0)  # the first piece of `output` not yet uploaded
    pieces: int = Field(default=0, ge=0)  # the plan's count, checked when the call resumes
