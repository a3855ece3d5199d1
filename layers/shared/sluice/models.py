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
        return object_id(self.bucket, self.key, self.version_id)

    def as_payload(self) -> dict:
        """The `object` shape of docs/interfaces.md, with its id."""
        return {"id": self.id, **self.model_dump()}


def object_id(bucket: str, key: str, version_id: str | None) -> str:
    return f"{bucket}/{key}#{version_id or 'null'}"


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
