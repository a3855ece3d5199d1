"""CSV rows from any byte offset: offsets, resume, embedded newlines, and bad rows as row errors."""

import io

import pytest
from conftest import SAMPLES
from datapath_support import RAW_BUCKET, create_buckets
from moto import mock_aws

from sluice.csvstream import CsvStream, HeaderError, Row
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

    result = rows(data, max_line_bytes=1_000, chunk_bytes=256)

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
