"""The Validate stage: can this object ever be processed? Decided from its size and first bytes.

A file is INVALID (never retried, routed to the invalid path) when:
- it is empty (0 bytes) or larger than MAX_FILE_BYTES;
- its first SAMPLE_BYTES are not UTF-8 (a UTF-8 BOM is allowed and ignored);
- its header does not name exactly the schema's columns. Names are compared after trimming
  spaces, case-sensitively, and in any order: the rows are read by name, so a reordered file is
  as good as the documented one, while a missing, unexpected or repeated name is not. With
  RowSchema=passthrough any header goes whose names are unique and non-empty;
- ApiUrl has a `{column}` placeholder its header does not name (no row could be sent);
- one of its first SAMPLE_ROWS data rows would be rejected by the reader: a different number
  of columns than the header (a wrong delimiter or a shifted file shows there), malformed CSV,
  or over a record cap (a bad row further down is only rejected);
- it cannot be delivered before its raw object leaves for Glacier (`Deliverable`): its rows,
  estimated from its size and the sampled rows' average length, take longer at the stack's API
  rate than RawGlacierDays. Better INVALID now, with that reason, than FAILED after its attempts.

It reads one HEAD and one ranged GET of SAMPLE_BYTES, never the whole object. The sample is read
by csvstream's reader, the one ProcessObject reads with (one dialect: LF, CRLF or CR line ends,
a BOM, the record caps), so a file valid here is one processing reads the same way. A record that
the sample's end cuts (the file goes on inside it) is not judged: what follows decides it, and
ProcessObject judges it whole; every record the sample holds whole is judged. A header-only file
is valid: it is processed into empty results.

A reason is at most MAX_REASON_CHARS long (`sluice.bounds.bounded`): it travels in the dispatcher's state, an
SQS message attribute and an alert, and a hostile header could otherwise make it as long as the
sample (a 64 KiB header of one-letter names lists ~32,000 unexpected columns, ~160 KB of reason,
three copies of which ended the execution at Step Functions' 256 KiB state quota). A header of
more than MAX_HEADER_COLUMNS names is refused by its count alone.
"""

import codecs
import io
import re
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Any

from botocore.exceptions import ClientError

from sluice.bounds import bounded
from sluice.csvstream import CsvStream, HeaderError
from sluice.models import ObjectRef
from sluice.ratelimit import pacing_interval
from sluice.schemas import RowSchema

SAMPLE_BYTES = 64 * 1024
SAMPLE_ROWS = 5
# No schema has more columns than this; a header with more is not worth naming one by one.
MAX_HEADER_COLUMNS = 256


@dataclass(frozen=True, slots=True)
class Deliverable:
    """What the settings can deliver: rows at the stack's paced API rate, within the days the raw
    object stays readable (RawGlacierDays: after that GetObject needs a restore)."""

    api_rate_limit: float
    api_rate_lateness_seconds: float
    raw_readable_days: int
    api_batch_size: int = 1  # rows per request: the rate counts requests

    @property
    def max_seconds(self) -> int:
        return self.raw_readable_days * 86_400

    def seconds_for(self, rows: int) -> float:
        """At best: the whole stack's rate for this one file, a request per batch of rows."""
        requests = -(-rows // self.api_batch_size)
        return requests * pacing_interval(self.api_rate_limit, self.api_rate_lateness_seconds)


@dataclass(frozen=True, slots=True)
class FileCheck:
    valid: bool
    reason: str | None = None
    header: list[str] | None = None

    @classmethod
    def invalid(cls, reason: str) -> "FileCheck":
        return cls(valid=False, reason=bounded(reason))


def check_object(
    s3_client: Any,
    obj: ObjectRef,
    schema: RowSchema,
    *,
    max_file_bytes: int,
    deliverable: Deliverable | None = None,
    url_columns: tuple[str, ...] = (),
) -> FileCheck:
    version = {"VersionId": obj.version_id} if obj.version_id else {}
    try:
        size = s3_client.head_object(Bucket=obj.bucket, Key=obj.key, **version)["ContentLength"]
    except ClientError as error:
        if error.response["Error"]["Code"] in {"404", "NoSuchKey", "NoSuchVersion"}:
            return FileCheck.invalid("object not found (deleted before it was validated)")
        raise
    if size == 0:
        return FileCheck.invalid("empty file")
    if size > max_file_bytes:
        return FileCheck.invalid(f"file is {size} bytes, more than MAX_FILE_BYTES ({max_file_bytes})")
    sample = s3_client.get_object(
        Bucket=obj.bucket, Key=obj.key, Range=f"bytes=0-{SAMPLE_BYTES - 1}", **version
    )["Body"].read()
    check = check_sample(sample, schema, truncated=size > len(sample), url_columns=url_columns)
    if check.valid and deliverable is not None and (rows := _estimated_rows(sample, size)):
        seconds = deliverable.seconds_for(rows)
        if seconds > deliverable.max_seconds:
            return FileCheck.invalid(
                f"about {rows} rows ({size} bytes): at the API rate"
                f"{f' in batches of {deliverable.api_batch_size}' if deliverable.api_batch_size > 1 else ''}"
                f" they take about "
                f"{seconds / 86_400:.1f} days, longer than the raw object stays readable "
                f"(RawGlacierDays {deliverable.raw_readable_days})"
            )
    return check


def _estimated_rows(sample: bytes, size: int) -> int:
    """Rows in a file of `size` bytes, from the sample's lines after the header (0 if none)."""
    # Any of the dialect's line ends (csvstream); the last piece may be cut by the sample's end.
    lines = re.split(rb"\r\n|\n|\r", sample)[1:-1]
    if not lines:
        return 0
    average = sum(len(line) + 1 for line in lines) / len(lines)
    return int(size / average)


class _Invalid(Exception):
    """Raised by the checks below; its message is the file's reason."""


def check_sample(
    sample: bytes, schema: RowSchema, *, truncated: bool, url_columns: tuple[str, ...] = ()
) -> FileCheck:
    """Judge the first bytes of a file; `truncated` when the file goes on after them.
    `url_columns`: the columns ApiUrl's `{column}` placeholders name, which the header must have."""
    try:
        _check_encoding(sample, truncated=truncated)
        try:
            stream = CsvStream(io.BytesIO(sample))
        except HeaderError as error:
            raise _Invalid(str(error)) from None
        if truncated and stream.header_cut:
            raise _Invalid(f"header: no line end in the first {SAMPLE_BYTES} bytes")
        header = stream.header
        _check_header(header, schema)
        if missing := [column for column in url_columns if column not in header]:
            names = ", ".join(f"{{{column}}}" for column in missing)
            raise _Invalid(f"header: ApiUrl's {names} names no column of this file")
        for row in islice(stream, SAMPLE_ROWS):
            if row.error is not None and not (truncated and row.cut):
                raise _Invalid(f"row {row.number}: {row.error}")
    except _Invalid as invalid:
        return FileCheck.invalid(str(invalid))
    return FileCheck(valid=True, header=header)


def _check_encoding(sample: bytes, *, truncated: bool) -> None:
    """The whole sample must be UTF-8 (after a BOM), not only the rows judged."""
    bom = len(codecs.BOM_UTF8) if sample.startswith(codecs.BOM_UTF8) else 0
    try:
        # An incremental decoder keeps a multi-byte character cut by the sample's end for later
        # instead of calling it invalid; `final` only when the sample is the whole file.
        codecs.getincrementaldecoder("utf-8")().decode(sample[bom:], final=not truncated)
    except UnicodeDecodeError as error:
        at = bom + error.start
        raise _Invalid(f"encoding: not UTF-8 (byte 0x{sample[at]:02x} at offset {at})") from None


def _check_header(header: list[str], schema: RowSchema) -> None:
    if not any(header):
        raise _Invalid("header: no column names on the first line")
    if len(header) > MAX_HEADER_COLUMNS:
        raise _Invalid(f"header: {len(header)} columns, more than MAX_HEADER_COLUMNS ({MAX_HEADER_COLUMNS})")
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if schema.any_header:  # passthrough: the header is the payload's keys
        unnamed = [str(number) for number, name in enumerate(header, start=1) if not name]
        problems = [
            f"column{'s' if len(unnamed) > 1 else ''} {', '.join(unnamed)} without a name" if unnamed else "",
            _names("repeated column", repeated),
        ]
        if problem := "; ".join(problem for problem in problems if problem):
            raise _Invalid(
                f"header: {problem} (RowSchema {schema.name} needs a unique, non-empty name per column)"
            )
        return
    missing = [name for name in schema.columns if name not in header]
    unexpected = list(dict.fromkeys(name for name in header if name not in schema.columns))
    problems = [
        _names("missing column", missing),
        _names("unexpected column", unexpected),
        _names("repeated column", repeated),
    ]
    if problem := "; ".join(problem for problem in problems if problem):
        raise _Invalid(f"header: {problem}")


def _names(what: str, names: list[str]) -> str:
    if not names:
        return ""
    plural = "s" if len(names) > 1 else ""
    return f"{what}{plural} {', '.join(repr(name) for name in names)}"
