"""Stream the rows of a CSV object from any byte offset, knowing where each row ends.

ProcessObject checkpoints "the next row starts at byte N", so every row comes with the offset
just after it, and a later invocation resumes with one ranged GET from N (Powertools' seekable
`S3Object`: seek, then a single streamed `Range: bytes=N-` request) instead of reading from the top.

Why not `S3Object(is_csv=True)` (Powertools' CsvTransform)? It decodes the whole stream as
text, so it cannot say where in the bytes a row ended, and one invalid UTF-8 byte fails the file.
Here the bytes are cut into physical lines, each line is decoded on its own and counted, and the
standard csv module reads records from those lines. The csv reader pulls exactly the lines of one
record, so the count after a record is that record's end, also when a quoted field holds newlines.

The dialect, the one place it is decided (ValidateObject's sample check reads with this class
too, so what validation accepts is what processing reads, from any checkpoint offset): a line
ends at LF, CRLF or a lone CR (CR-only files, old Mac exports); a UTF-8 BOM at offset 0 is
dropped; comma, double quote, quotes doubled inside a quoted field, and a line end inside a
quoted field belongs to the field (csv's defaults, `strict=False`). Neither LF nor CR occurs
inside a UTF-8 multi-byte character, so lines can be cut before decoding.

A record that is not UTF-8, that the csv module rejects, that has the wrong number of columns
or that is over one of the caps below is yielded as a row with an `error` (the row is rejected),
never an exception: one bad row must not stop a file. A record over a cap ends at the line where
it went over; the reader starts afresh at the next line. Blank lines are skipped and are not
rows. Row numbers count data records from 1; the header is not a row.

Memory stays flat whatever the content: one chunk and one record at a time, and a record is
bounded (the caps). A line longer than MAX_RECORD_BYTES is read to its end without being kept.
"""

import codecs
import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from aws_lambda_powertools.utilities.streaming import S3Object

from sluice.models import ObjectRef

BOM = codecs.BOM_UTF8
CHUNK_BYTES = 256 * 1024
# The caps on one record (docs/interfaces.md, CSV dialect and row limits). A record over one is
# rejected and the reader resynchronises at the next line.
# Bytes: an orders-v1 row is under 400 bytes; 1 MiB leaves any real CSV row room and bounds what
# one record holds: the bytes, their text (at most 4 bytes of str per byte) and its fields
# (csv keeps at most one field per byte: with one-character fields interned, at most ~350 K
# distinct field objects of ~60 bytes, ~25 MB), freed before the next record.
MAX_RECORD_BYTES = 1024 * 1024
# Lines: a quoted field's line breaks (an address, a note) are a handful per row; 1,000 is far
# above that and bounds what a quote that never closes swallows before the reader starts afresh.
MAX_RECORD_LINES = 1_000
# Fields: a schema has tens of columns; 1,000 is far above that (a row with another count than
# the header's is rejected anyway), and keeps a reject's reason and the header small.
MAX_RECORD_FIELDS = 1_000
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class RecordLimits:
    bytes: int = MAX_RECORD_BYTES
    lines: int = MAX_RECORD_LINES
    fields: int = MAX_RECORD_FIELDS


@dataclass(frozen=True, slots=True)
class Row:
    number: int
    end_offset: int  # the byte just after this row: where the next row (or blank line) starts
    fields: list[str] | None = None
    error: str | None = None
    cut: bool = False  # the input ended inside this record, before its line end


class HeaderError(ValueError):
    """The first record cannot be a header (empty file, not UTF-8, malformed, over a cap)."""


class _TooLarge(Exception):
    """Raised from the line iterator into the csv reader: the record went over a cap."""


class _Lines:
    """The physical lines of a byte stream, decoded one by one, with the bytes consumed so far.

    An iterator object, not a generator, so that it can raise `_TooLarge` through the csv reader
    (which starts its next record afresh) and go on. `bad_utf8` and `cut` describe the record
    read since the last `reset`; the stream resets after each record.
    """

    def __init__(self, source: IO[bytes], start_offset: int, chunk_bytes: int, limits: RecordLimits):
        self._source = source
        self._chunk_bytes = chunk_bytes
        self._limits = limits
        self._raw = self._raw_lines()
        self.offset = start_offset
        self._at_start = start_offset == 0
        self._record_start = start_offset
        self._record_lines = 0
        self.bad_utf8: int | None = None  # byte offset of the first undecodable line of the record
        self.cut = False

    def reset(self) -> None:
        self._record_start = self.offset
        self._record_lines = 0
        self.bad_utf8 = None
        self.cut = False

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        try:
            raw, consumed, ended = next(self._raw)
        except StopIteration:
            self.cut = True  # the input ended inside the record (or between records: no record)
            raise
        start = self.offset
        self.offset += consumed
        self._record_lines += 1
        self.cut = not ended
        line = raw.removeprefix(BOM) if self._at_start else raw
        self._at_start = False
        if self.offset - self._record_start > self._limits.bytes:
            raise _TooLarge(f"row is longer than {self._limits.bytes} bytes")
        if self._record_lines > self._limits.lines:
            raise _TooLarge(f"row spans more than {self._limits.lines} lines")
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as error:
            if self.bad_utf8 is None:
                self.bad_utf8 = start + error.start
            return line.decode("utf-8", errors="replace")

    def _raw_lines(self) -> Iterator[tuple[bytes, int, bool]]:
        """(line, bytes it took, whether a line end closed it); lines end in LF, CRLF or CR.

        A line longer than the record cap is read to its end without being kept (b"" stands for
        it: its record is over the cap whatever it held), so a file without line ends stays flat.
        """
        pending = b""
        cut = 0  # bytes of an over-long line dropped so far; 0 when not inside one
        more = True
        while more:
            chunk = self._source.read(self._chunk_bytes)
            more = bool(chunk)
            pending += chunk
            start = 0
            for match in _LINE_END.finditer(pending):
                if more and match.end() == len(pending) and match.group() == b"\r":
                    break  # a CR at the end of what is read may be half of a CRLF: wait for more
                line, start = pending[start : match.end()], match.end()
                if cut:
                    yield b"", cut + len(line), True
                    cut = 0
                else:
                    yield line, len(line), True
            pending = pending[start:]
            if cut or len(pending) > self._limits.bytes:
                keep = 1 if pending.endswith(b"\r") else 0  # a held CR still ends the line
                cut += len(pending) - keep
                pending = pending[len(pending) - keep :]
        if cut or pending:
            yield (b"" if cut else pending), cut + len(pending), False


class CsvStream:
    """The data rows of one CSV byte stream, from `start_offset`.

    At offset 0 the first record is the header (a UTF-8 BOM is dropped): it is read at once and
    exposed as `header` (`header_cut` when the input ended inside it). Resuming at a later
    offset, the caller passes the header it stored.
    """

    def __init__(
        self,
        source: IO[bytes],
        *,
        start_offset: int = 0,
        first_row: int = 1,
        header: Sequence[str] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        limits: RecordLimits = RecordLimits(),
    ):
        self._source = source
        self._lines = _Lines(source, start_offset, chunk_bytes, limits)
        self._limits = limits
        self._reader = csv.reader(self._lines, strict=False)
        self._next_row = first_row
        self.header_cut = False
        if start_offset == 0:
            self.header = self._read_header()
        elif header:
            self.header = list(header)
        else:
            raise ValueError("resuming after the header needs the header")

    @classmethod
    def from_s3(cls, s3_client: Any, obj: ObjectRef, *, start_offset: int = 0, **kwargs: Any) -> "CsvStream":
        """Stream `obj` (pinned to its version) with one ranged GET from `start_offset`."""
        source = S3Object(bucket=obj.bucket, key=obj.key, version_id=obj.version_id, boto3_client=s3_client)
        source.seek(start_offset)
        return cls(source, start_offset=start_offset, **kwargs)

    def close(self) -> None:
        """Let go of the object's streamed GET (a segment that stops mid-file)."""
        self._source.close()

    def __enter__(self) -> "CsvStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_header(self) -> list[str]:
        try:
            header = next(self._reader)
        except StopIteration:
            raise HeaderError("empty file: no header") from None
        except (csv.Error, _TooLarge) as error:
            raise HeaderError(f"header: {error}") from None
        if self._lines.bad_utf8 is not None:
            raise HeaderError(f"header is not valid UTF-8 (byte {self._lines.bad_utf8})")
        if len(header) > self._limits.fields:
            raise HeaderError(f"header: more than {self._limits.fields} columns")
        self.header_cut = self._lines.cut
        self._lines.reset()
        return [name.strip() for name in header]

    def __iter__(self) -> Iterator[Row]:
        columns = len(self.header)
        while True:
            try:
                fields = next(self._reader)
            except StopIteration:
                return
            except _TooLarge as error:
                yield self._row(error=str(error), cut=False)  # over a cap whatever follows
                continue
            except csv.Error as error:
                yield self._row(error=f"malformed CSV: {error}")
                continue
            if not fields and self._lines.bad_utf8 is None:
                self._lines.reset()  # a blank line is not a row
                continue
            if self._lines.bad_utf8 is not None:
                yield self._row(error=f"row is not valid UTF-8 (byte {self._lines.bad_utf8})")
            elif len(fields) > self._limits.fields:
                yield self._row(error=f"row has more than {self._limits.fields} fields")
            elif len(fields) != columns:
                yield self._row(error=f"expected {columns} columns, found {len(fields)}")
            else:
                yield self._row(fields=fields)

    def _row(
        self, *, fields: list[str] | None = None, error: str | None = None, cut: bool | None = None
    ) -> Row:
        cut = self._lines.cut if cut is None else cut
        row = Row(self._next_row, self._lines.offset, fields, error, cut)
        self._next_row += 1
        self._lines.reset()
        return row
