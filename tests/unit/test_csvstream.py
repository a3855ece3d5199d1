"""CSV rows from any byte offset: offsets, resume, embedded newlines, and bad rows as row errors."""

import io
import tracemalloc

import pytest
from conftest import SAMPLES
from datapath_support import RAW_BUCKET, create_buckets
from moto import mock_aws

from sluice.csvstream import (
    CHUNK_BYTES,
    MAX_RECORD_BYTES,
    MAX_RECORD_FIELDS,
    MAX_RECORD_LINES,
    CsvStream,
    HeaderError,
    RecordLimits,
    Row,
)
from sluice.models import ObjectRef

HEADER = b"id,note\n"


def rows(data: bytes, **kwargs: object) -> list[Row]:
    return list(CsvStream(io.BytesIO(data), **kwargs))  # type: ignore[arg-type]


def resume(data: bytes, after: Row, header: list[str], **kwargs: object) -> list[Row]:
    source = io.BytesIO(data)
    source.seek(after.end_offset)
    stream = CsvStream(
        source, start_offset=after.end_offset, first_row=after.number + 1, header=header, **kwargs
    )  # type: ignore[arg-type]
    return list(stream)


def test_each_row_ends_where_the_next_one_starts() -> None:
    data = HEADER + b"1,a\n2,b\r\n3,c"

    result = rows(data)

    assert [(row.number, row.fields) for row in result] == [(1, ["1", "a"]), (2, ["2", "b"]), (3, ["3", "c"])]
    assert [data[row.end_offset :][:1] for row in result] == [b"2", b"3", b""]
    assert result[-1].end_offset == len(data)


def test_the_header_is_read_at_offset_zero_and_a_bom_dropped() -> None:
    stream = CsvStream(io.BytesIO(b"\xef\xbb\xbf id , note \n1,a\n"))

    assert stream.header == ["id", "note"]
    assert [row.fields for row in stream] == [["1", "a"]]


def test_quoted_newlines_stay_inside_one_row() -> None:
    data = HEADER + b'1,"line one\nline two\r\nline three"\n2,"plain"\n'

    result = rows(data)

    assert [row.fields for row in result] == [["1", "line one\nline two\r\nline three"], ["2", "plain"]]
    assert data[result[0].end_offset :] == b'2,"plain"\n'


@pytest.mark.parametrize("chunk_bytes", [1, 3, 64, 1 << 16])
def test_resuming_after_any_row_gives_exactly_the_rows_after_it(chunk_bytes: int) -> None:
    # GIVEN rows of every kind: embedded newlines, multi-byte characters, CRLF, blank lines, bad ones
    data = (
        HEADER
        + '1,"café\nau lait"\r\n'.encode()
        + b"\n"
        + b"2,\xff\xfe\n"
        + b"3\n"
        + '4,"ünïcödé, with a comma"\n'.encode()
        + b'5,"multi\n\nblank"\n'
        + b"6,last"
    )
    everything = rows(data, chunk_bytes=chunk_bytes)
    assert [row.number for row in everything] == [1, 2, 3, 4, 5, 6]

    for row in everything:
        assert resume(data, row, ["id", "note"], chunk_bytes=chunk_bytes) == everything[row.number :]


def test_a_row_that_is_not_utf8_is_a_row_error_and_the_stream_goes_on() -> None:
    data = HEADER + b"1,ok\n2,caf\xe9\n3,ok\n"
    bad_byte = data.index(b"\xe9")

    result = rows(data)

    assert result[1] == Row(2, bad_byte + 2, None, f"row is not valid UTF-8 (byte {bad_byte})")
    assert [row.fields for row in (result[0], result[2])] == [["1", "ok"], ["3", "ok"]]


def test_a_wrong_column_count_is_a_row_error() -> None:
    assert [row.error for row in rows(HEADER + b"1\n2,b,extra\n3,c\n")] == [
        "expected 2 columns, found 1",
        "expected 2 columns, found 3",
        None,
    ]


def test_a_malformed_record_is_a_row_error_and_the_next_row_still_parses() -> None:
    # csv's own limit on one field (128 KiB) bounds a quote that never closes
    huge_field = b'"' + b"x" * 200_000 + b'"'
    data = HEADER + b"1," + huge_field + b"\n2,b\n"

    result = rows(data)

    assert result[0].error is not None
    assert result[0].error.startswith("malformed CSV: field larger than field limit")
    assert result[1] == Row(2, len(data), ["2", "b"], None)


def test_an_over_long_line_is_cut_rejected_and_skipped_to_its_end() -> None:
    data = HEADER + b"1,a\n2," + b"y" * 5_000 + b"\n3,c\n" + b"4," + b"z" * 5_000

    result = rows(data, limits=RecordLimits(bytes=1_000), chunk_bytes=256)

    assert [(row.number, row.error) for row in result] == [
        (1, None),
        (2, "row is longer than 1000 bytes"),
        (3, None),
        (4, "row is longer than 1000 bytes"),
    ]
    assert data[result[1].end_offset :].startswith(b"3,c\n")
    assert result[3].end_offset == len(data)


def test_blank_lines_are_not_rows() -> None:
    result = rows(HEADER + b"\n1,a\n\r\n\n2,b\n\n")

    assert [(row.number, row.fields) for row in result] == [(1, ["1", "a"]), (2, ["2", "b"])]


def test_an_empty_file_has_no_header() -> None:
    with pytest.raises(HeaderError, match="empty file: no header"):
        CsvStream(io.BytesIO(b""))


def test_a_header_that_is_not_utf8_cannot_be_streamed() -> None:
    with pytest.raises(HeaderError, match=r"header is not valid UTF-8 \(byte 1\)"):
        CsvStream(io.BytesIO(b"i\xffd,note\n1,a\n"))


def test_a_malformed_header_cannot_be_streamed() -> None:
    with pytest.raises(HeaderError, match="header: field larger than field limit"):
        CsvStream(io.BytesIO(b'"' + b"h" * 200_000 + b'"\n'))


def test_resuming_past_the_header_needs_the_stored_header() -> None:
    with pytest.raises(ValueError, match="needs the header"):
        CsvStream(io.BytesIO(HEADER + b"1,a\n"), start_offset=len(HEADER))


def test_from_s3_streams_the_pinned_version_from_the_checkpoint_offset() -> None:
    body = (SAMPLES / "orders-with-rejects.csv").read_bytes()
    with mock_aws():
        s3 = create_buckets()
        version = s3.put_object(Bucket=RAW_BUCKET, Key="in/orders.csv", Body=body)["VersionId"]
        s3.put_object(Bucket=RAW_BUCKET, Key="in/orders.csv", Body=b"a newer version,x\n")
        obj = ObjectRef(bucket=RAW_BUCKET, key="in/orders.csv", version_id=version)
        first = CsvStream.from_s3(s3, obj)
        everything = list(first)
        row_20 = everything[19]

        rest = list(
            CsvStream.from_s3(s3, obj, start_offset=row_20.end_offset, first_row=21, header=first.header)
        )

    assert first.header[:2] == ["order_id", "customer_email"]
    assert len(everything) == 50
    assert rest == everything[20:]
    assert rest[0].fields is not None
    assert rest[0].fields[0] == "ORD-200021"
    assert everything[44].error == "expected 6 columns, found 5"


# --- one dialect: LF, CRLF and CR-only line ends --------------------------------------------

DIALECT_ROWS = [b"1,plain", b'2,"quoted, with a comma"', b"", "3,café".encode(), b'4,"say ""hi"""']


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"], ids=["crlf", "cr-only"])
@pytest.mark.parametrize("chunk_bytes", [1, 5, 1 << 16])
def test_crlf_and_cr_only_files_read_as_the_lf_file_does_from_every_checkpoint(
    line_end: bytes, chunk_bytes: int
) -> None:
    # GIVEN the same records with LF, and with CRLF or lone CR line ends (a blank line among them)
    lf = b"\xef\xbb\xbf" + b"\n".join([b"id,note", *DIALECT_ROWS]) + b"\n"
    other = lf.replace(b"\n", line_end)

    # WHEN both are read from the top
    expected, result = rows(lf), rows(other, chunk_bytes=chunk_bytes)

    # THEN they are the same rows, and each row's end is where the next record starts
    assert [(row.number, row.fields) for row in result] == [(row.number, row.fields) for row in expected]
    assert [row.fields for row in result][-1] == ["4", 'say "hi"']
    for row, after in zip(result, [*result[1:], None], strict=True):
        rest = other[row.end_offset :].lstrip(line_end)
        assert rest.startswith(after.fields[0].encode()) if after else rest == b""
        # AND resuming at that checkpoint offset gives exactly the rows after it
        assert resume(other, row, ["id", "note"], chunk_bytes=chunk_bytes) == result[row.number :]


def test_a_cr_at_a_chunk_end_waits_for_the_next_byte_so_crlf_is_one_line_end() -> None:
    data = b"id,note\r\n1,a\r\n2,b\r\n"

    result = rows(data, chunk_bytes=len(b"id,note\r"))  # the first chunk ends between CR and LF

    assert [(row.number, row.fields, row.end_offset) for row in result] == [
        (1, ["1", "a"], len(b"id,note\r\n1,a\r\n")),
        (2, ["2", "b"], len(data)),
    ]


# --- bounded records --------------------------------------------------------------------------


def test_a_quoted_field_reopened_over_100000_lines_is_rejected_in_bounded_records_then_rows_read() -> None:
    # GIVEN a quoted field that closes and reopens on every line, 100,000 lines long: one record
    # of 100,000 fields to a reader without caps
    hostile = b'1,"a\n' + b'b","c\n' * 100_000 + b'd"\n'
    data = HEADER + hostile + b"2,after\n3,more\n"

    result = rows(data)

    # THEN it is rejected as records of at most MAX_RECORD_LINES lines each, and the rows after it
    # are read: the reader started afresh at the line after each over-long record
    hostile_rows, after = result[:-2], result[-2:]
    assert len(hostile_rows) >= 100_000 // MAX_RECORD_LINES
    assert all(row.fields is None for row in hostile_rows)
    assert hostile_rows[0].error == f"row spans more than {MAX_RECORD_LINES} lines"
    # (the line that went over the cap is the rejected record's last)
    assert hostile_rows[0].end_offset == len(HEADER) + len(b'1,"a\n') + MAX_RECORD_LINES * len(b'b","c\n')
    assert [(row.fields, row.error) for row in after] == [(["2", "after"], None), (["3", "more"], None)]
    assert hostile_rows[-1].end_offset == len(HEADER + hostile)


def test_a_record_of_a_million_fields_is_rejected_and_the_next_row_read() -> None:
    data = HEADER + b"1" + b"," * 999_999 + b"\n2,after\n"  # under MAX_RECORD_BYTES

    result = rows(data)

    assert [(row.number, row.fields, row.error) for row in result] == [
        (1, None, f"row has more than {MAX_RECORD_FIELDS} fields"),
        (2, ["2", "after"], None),
    ]
    assert data[result[0].end_offset :] == b"2,after\n"


def test_a_header_of_too_many_fields_cannot_be_streamed() -> None:
    with pytest.raises(HeaderError, match=f"header: more than {MAX_RECORD_FIELDS} columns"):
        CsvStream(io.BytesIO(b",".join([b"h"] * (MAX_RECORD_FIELDS + 1)) + b"\n1\n"))


def test_a_file_without_line_ends_is_one_rejected_row() -> None:
    data = HEADER + b"1," + b"z" * (3 * MAX_RECORD_BYTES)

    assert rows(data) == [Row(1, len(data), None, f"row is longer than {MAX_RECORD_BYTES} bytes")]


def test_reading_25_mb_of_hostile_records_keeps_memory_to_one_record() -> None:
    # GIVEN 25 MB of hostile records: a quoted field reopened on every one of 25,000 lines of
    # 1,000 bytes, a line of a million fields, a 10 MB line, and a last line without a line end
    reopened = b'1,"' + (b"c" * 997 + b'","\n') * 25_000 + b'"\n'
    data = (
        HEADER
        + reopened
        + b"2"
        + b"," * 999_999
        + b"\n"
        + b"3,"
        + b"z" * 10_000_000
        + b"\n4,a\n5,"
        + b"y" * 10**6
    )
    assert len(data) > 25 * 10**6
    source = io.BytesIO(data)

    # WHEN it is read row by row (the rows are not kept, as ProcessObject keeps none)
    tracemalloc.start()
    try:
        good = [row.fields for row in CsvStream(source, chunk_bytes=CHUNK_BYTES) if row.fields]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # THEN the good row is read and at most one record was held at a time: MAX_RECORD_BYTES
    # (and a chunk) of bytes, their text, and the million fields' list (8 MB of pointers);
    # a reader without caps holds the 25 MB record's fields at once
    assert good == [["4", "a"]]
    assert peak < 16 * 1024**2, f"peak {peak / 1024**2:.1f} MiB"
