"""Stream the rows of a CSV object from any byte offset, knowing where each row ends.

ProcessObject checkpoints "the next row starts at byte N", so every row comes with the offset
just after it, and a later invocation resumes with one ranged GET from N (Powertools' seekable
`S3Object`: seek, then a single streamed `Range: bytes=N-` request) instead of reading from the top.

Why not `S3Object(is_csv=True)` (Powertools' CsvTransform)? It decodes the whole stream as
text, so it cannot say where in the bytes a row ended, and one invalid UTF-8 byte fails the file.
Here the bytes are cut into physical lines (`\\n` never occurs inside a UTF-8 multi-byte
character), each line is decoded on its own and counted, and the standard csv module reads
records from those lines. The csv reader pulls exactly the lines of one record, so the count
after a record is that record's end, also when a quoted field holds newlines.

A record that is not UTF-8, that the csv module rejects, or that has the wrong number of
columns is yielded as a row with an `error` (the row is rejected), never an exception: one bad
row must not stop a file. Blank lines are skipped and are not rows. Row numbers count data
records from 1; the header is not a row.

Memory stays flat: one chunk, one record. A line longer than MAX_LINE_BYTES is cut (and its
row rejected) so a file without newlines cannot grow a line without bound; csv's own
field_size_limit bounds a quoted field that never closes.
"""

import codecs
import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from aws_lambda_powertools.utilities.streaming import S3Object

from sluice.models import ObjectRef

BOM = codecs.BOM_UTF8
CHUNK_BYTES = 256 * 1024
MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Row:
    number: int
    end_offset: int  # the byte just after this row: where the next row (or blank line) starts
    fields: list[str] | None = None
    error: str | None = None


class HeaderError(ValueError):
    """The first record cannot be a header (empty file, not UTF-8, malformed)."""


class _Lines:
    """The physical lines of a byte stream, decoded one by one, with the bytes consumed so far.

    `bad_utf8` and `too_long` are set when a line read since the last `reset` had that problem;
    the stream clears them after each record.
    """

    def __init__(self, source: IO[bytes], start_offset: int, chunk_bytes: int, max_line_bytes: int):
        self._source = source
        self._chunk_bytes = chunk_bytes
        self._max_line_bytes = max_line_bytes
        self.offset = start_offset
        self._at_start = start_offset == 0
        self.bad_utf8: int | None = None  # byte offset of the first undecodable line of the record
        self.too_long = False

    def reset(self) -> None:
        self.bad_utf8 = None
        self.too_long = False

    def __iter__(self) -> Iterator[str]:
        for raw, consumed in self._raw_lines():
            start = self.offset
            self.offset += consumed
            line = raw.removeprefix(BOM) if self._at_start else raw
            self._at_start = False
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as error:
                if self.bad_utf8 is None:
                    self.bad_utf8 = start + error.start
                yield line.decode("utf-8", errors="replace")

    def _raw_lines(self) -> Iterator[tuple[bytes, int]]:
        """(line, bytes it took): lines end in b"\\n" except perhaps the last.

        A line longer than the limit is read to its end without being kept, and stands for a
        bare newline, so its record ends (rejected) exactly where the next line starts.
        """
        pending = b""
        cut = 0  # bytes of an over-long line dropped so far; 0 when not inside one
        while chunk := self._source.read(self._chunk_bytes):
            pending += chunk
            start = 0
            while (newline := pending.find(b"\n", start)) != -1:
                line, start = pending[start : newline + 1], newline + 1
                if cut:
                    yield b"\n", cut + len(line)
                    cut = 0
                else:
                    yield line, len(line)
            pending = pending[start:]
            if cut or len(pending) > self._max_line_bytes:
                self.too_long = True
                cut += len(pending)
                pending = b""
        if cut:
            yield b"\n", cut
        elif pending:
            yield pending, len(pending)


class CsvStream:
    """The data rows of one CSV byte stream, from `start_offset`.

    At offset 0 the first record is the header (a UTF-8 BOM is dropped): it is read at once and
    exposed as `header`. Resuming at a later offset, the caller passes the header it stored.
    """

    def __init__(
        self,
        source: IO[bytes],
        *,
        start_offset: int = 0,
        first_row: int = 1,
        header: Sequence[str] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
    ):
        self._source = source
        self._lines = _Lines(source, start_offset, chunk_bytes, max_line_bytes)
        self._max_line_bytes = max_line_bytes
        self._reader = csv.reader(iter(self._lines), strict=False)
        self._next_row = first_row
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
        except csv.Error as error:
            raise HeaderError(f"header: {error}") from None
        if self._lines.bad_utf8 is not None:
            raise HeaderError(f"header is not valid UTF-8 (byte {self._lines.bad_utf8})")
        self._lines.reset()
        return [name.strip() for name in header]

    def __iter__(self) -> Iterator[Row]:
        columns = len(self.header)
        while True:
            try:
                fields = next(self._reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield self._row(error=f"malformed CSV: {error}")
                continue
            if not fields and self._lines.bad_utf8 is None and not self._lines.too_long:
                self._lines.reset()  # a blank line is not a row
                continue
            if self._lines.too_long:
                yield self._row(error=f"row is longer than {self._max_line_bytes} bytes")
            elif self._lines.bad_utf8 is not None:
                yield self._row(error=f"row is not valid UTF-8 (byte {self._lines.bad_utf8})")
            elif len(fields) != columns:
                yield self._row(error=f"expected {columns} columns, found {len(fields)}")
            else:
                yield self._row(fields=fields)

    def _row(self, *, fields: list[str] | None = None, error: str | None = None) -> Row:
        row = Row(number=self._next_row, end_offset=self._lines.offset, fields=fields, error=error)
        self._next_row += 1
        self._lines.reset()
        return row
