"""The Validate stage's checks, on objects in a moto bucket, reading only the first 64 KiB."""

import io
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import SAMPLES
from datapath_support import RAW_BUCKET, create_buckets
from moto import mock_aws

from sluice.bounds import MAX_REASON_CHARS
from sluice.csvstream import MAX_RECORD_FIELDS, MAX_RECORD_LINES
from sluice.filecheck import (
    MAX_HEADER_COLUMNS,
    SAMPLE_BYTES,
    Deliverable,
    check_object,
    check_sample,
)
from sluice.models import ObjectRef
from sluice.schemas import get_schema

SCHEMA = get_schema("orders-v1")
HEADER = b"order_id,customer_email,amount,currency,order_date,quantity\n"
ROW = b"ORD-000001,a@example.com,1.00,USD,2026-01-01,1\n"


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        yield create_buckets()


def put(s3: Any, body: bytes, key: str = "in/file.csv") -> ObjectRef:
    version = s3.put_object(Bucket=RAW_BUCKET, Key=key, Body=body)["VersionId"]
    return ObjectRef(bucket=RAW_BUCKET, key=key, version_id=version, size=len(body))


def check(s3: Any, body: bytes, *, max_file_bytes: int = 10**9) -> Any:
    return check_object(s3, put(s3, body), SCHEMA, max_file_bytes=max_file_bytes)


def test_the_valid_sample_is_valid_and_its_header_returned(s3: Any) -> None:
    result = check(s3, (SAMPLES / "orders-valid.csv").read_bytes())

    assert result.valid
    assert result.reason is None
    assert result.header == list(SCHEMA.columns)


def test_the_sample_with_rejects_is_still_a_valid_file(s3: Any) -> None:
    assert check(s3, (SAMPLES / "orders-with-rejects.csv").read_bytes()).valid


def test_the_invalid_sample_names_what_is_wrong_with_its_header(s3: Any) -> None:
    result = check(s3, (SAMPLES / "orders-invalid.csv").read_bytes())

    assert not result.valid
    assert result.header is None
    assert result.reason == (
        "header: missing columns 'customer_email', 'order_date', 'quantity'; "
        "unexpected columns 'email', 'date', 'qty'"
    )


def test_an_empty_file_is_invalid(s3: Any) -> None:
    assert check(s3, b"").reason == "empty file"


def test_a_file_over_the_size_limit_is_invalid(s3: Any) -> None:
    assert check(s3, HEADER + ROW * 10, max_file_bytes=100).reason == (
        f"file is {len(HEADER + ROW * 10)} bytes, more than MAX_FILE_BYTES (100)"
    )


def test_a_vanished_version_is_invalid(s3: Any) -> None:
    missing = ObjectRef(bucket=RAW_BUCKET, key="in/never.csv", version_id=None)

    result = check_object(s3, missing, SCHEMA, max_file_bytes=10**9)

    assert result.reason == "object not found (deleted before it was validated)"


def test_a_bom_is_allowed(s3: Any) -> None:
    assert check(s3, b"\xef\xbb\xbf" + HEADER + ROW).header == list(SCHEMA.columns)


def test_bytes_that_are_not_utf8_at_the_top_make_the_file_invalid(s3: Any) -> None:
    body = HEADER + ROW + b"ORD-000002,caf\xe9@example.com,1.00,USD,2026-01-01,1\n"

    result = check(s3, body)

    offset = len(HEADER + ROW) + len(b"ORD-000002,caf")
    assert result.reason == f"encoding: not UTF-8 (byte 0xe9 at offset {offset})"


def test_only_the_first_64_kib_are_read_with_a_ranged_get(s3: Any) -> None:
    # GIVEN a 1 MiB file whose only bad byte is past the sample
    rows = ROW * ((1024 * 1024) // len(ROW))
    body = HEADER + rows + b"ORD-999999,\xff@example.com,1.00,USD,2026-01-01,1\n"
    gets: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        gets.append(params)

    s3.meta.events.register("before-call.s3.GetObject", record)
    try:
        result = check(s3, body)
    finally:
        s3.meta.events.unregister("before-call.s3.GetObject", record)

    # THEN it is valid (the bad row will be rejected when processed) and one ranged GET was made
    assert result.valid
    assert [get["headers"].get("Range") for get in gets] == [f"bytes=0-{SAMPLE_BYTES - 1}"]


def test_a_multibyte_character_cut_by_the_sample_end_is_not_an_encoding_error(s3: Any) -> None:
    # "é" is 2 bytes: place it so that its first byte is the sample's last
    filler_row = b"ORD-000001,a@example.com,1.00,USD,2026-01-01,1,"
    prefix = HEADER + ROW * ((SAMPLE_BYTES - len(HEADER)) // len(ROW) - 2)
    pad = SAMPLE_BYTES - 1 - len(prefix) - len(filler_row)
    body = prefix + filler_row + b"x" * pad + "é".encode() + b"\n" + ROW * 3
    assert body[SAMPLE_BYTES - 1 : SAMPLE_BYTES + 1] == "é".encode()

    assert check(s3, body).valid


def test_a_header_longer_than_the_sample_is_invalid(s3: Any) -> None:
    assert (
        check(s3, b"x" * (SAMPLE_BYTES + 10)).reason
        == f"header: no line end in the first {SAMPLE_BYTES} bytes"
    )


def test_header_names_are_compared_as_a_set_after_trimming(s3: Any) -> None:
    reordered = b" quantity,order_date , currency,amount,customer_email,order_id\n"

    result = check(s3, reordered + b"1,2026-01-01,USD,1.00,a@example.com,ORD-000001\n")

    assert result.valid
    assert result.header == ["quantity", "order_date", "currency", "amount", "customer_email", "order_id"]


def test_repeated_and_case_changed_names_are_named(s3: Any) -> None:
    header = b"order_id,Customer_Email,amount,currency,order_date,quantity,amount\n"

    assert check(s3, header + ROW).reason == (
        "header: missing column 'customer_email'; unexpected column 'Customer_Email'; "
        "repeated column 'amount'"
    )


def test_a_blank_first_line_is_not_a_header(s3: Any) -> None:
    assert check(s3, b"\n" + HEADER + ROW).reason == "header: no column names on the first line"


def test_a_sample_row_with_another_column_count_makes_the_file_invalid(s3: Any) -> None:
    body = HEADER + ROW + ROW + b"ORD-000003;a@example.com;1.00;USD;2026-01-01;1\n"

    assert check(s3, body).reason == "row 3: expected 6 columns, found 1"


def test_a_bad_column_count_after_the_sampled_rows_is_left_to_row_rejects(s3: Any) -> None:
    assert check(s3, HEADER + ROW * 5 + b"ORD-000006,short\n" + ROW).valid


def test_a_header_only_file_is_valid(s3: Any) -> None:
    assert check(s3, HEADER).valid


def test_a_quoted_newline_in_the_sampled_rows_is_one_row(s3: Any) -> None:
    assert check(s3, HEADER + b'ORD-000001,"a\n@example.com",1.00,USD,2026-01-01,1\n').valid


def test_a_record_cut_by_the_sample_end_is_not_counted(s3: Any) -> None:
    # GIVEN a quoted multi-line field that opens inside the sample and closes after it: cut at the
    # sample's last line end, it would look like a row of 2 columns
    lines = (b"y" * 99 + b"\n") * (SAMPLE_BYTES // 100 + 10)
    body = HEADER + ROW * 2 + b'ORD-000003,"' + lines + b'",1.00,USD,2026-01-01,1\n'

    assert check(s3, body).valid


def test_a_whole_record_that_ends_the_sample_is_judged(s3: Any) -> None:
    # GIVEN a bad row whose line end is the sample's last byte: whole, not cut by the sample
    bad = b"ORD-000003;a@example.com;1.00;USD;2026-01-01;1\n"
    pad = SAMPLE_BYTES - len(HEADER + ROW + bad) - len(b'ORD-000002,"",1.00,USD,2026-01-01,1\n')
    long_row = b'ORD-000002,"' + b"a" * pad + b'",1.00,USD,2026-01-01,1\n'
    body = HEADER + ROW + long_row + bad + ROW * 10
    assert len(HEADER + ROW + long_row + bad) == SAMPLE_BYTES

    # THEN it is judged as any other sampled row
    assert check(s3, body).reason == "row 3: expected 6 columns, found 1"


@pytest.mark.parametrize("line_end", [b"\r", b"\r\n"], ids=["cr-only", "crlf"])
def test_cr_only_and_crlf_files_are_read_as_processing_reads_them(s3: Any, line_end: bytes) -> None:
    body = (HEADER + ROW * 3).replace(b"\n", line_end)

    assert check(s3, body).valid
    assert check(s3, body + b"ORD-000004,short" + line_end).reason == "row 4: expected 6 columns, found 2"


def test_a_quoted_field_reopened_on_every_line_of_the_sample_makes_the_file_invalid(s3: Any) -> None:
    # GIVEN a first row whose quoted field closes and reopens on every line (the sample sees only
    # part of it): it is over the record's line cap within the sample
    body = HEADER + b'ORD-000001,"a\n' + b'b","c\n' * 100_000 + b'd",1.00,USD,2026-01-01,1\n'

    assert check(s3, body).reason == f"row 1: row spans more than {MAX_RECORD_LINES} lines"


def test_a_hostile_header_is_invalid_with_a_short_reason() -> None:
    # 50,000 one-letter columns: more than a 64 KiB sample holds, so the file goes on after it
    header = ",".join(f"c{index}" for index in range(50_000)).encode()
    check = check_sample(header[:SAMPLE_BYTES] + b"\n", SCHEMA, truncated=True)

    assert not check.valid
    assert check.reason is not None
    assert len(check.reason) <= MAX_REASON_CHARS
    assert check.reason.startswith("header: ")
    # refused by its count alone, before any name is listed: the reader's cap on fields
    assert check.reason == f"header: more than {MAX_RECORD_FIELDS} columns"
    # under the reader's cap, over the schema-level one: still by count, never a listing of names
    wide = check_sample(
        (",".join(f"c{index}" for index in range(300)) + "\n").encode(), SCHEMA, truncated=False
    )
    assert wide.reason == f"header: 300 columns, more than MAX_HEADER_COLUMNS ({MAX_HEADER_COLUMNS})"


def test_every_reason_is_bounded_and_says_how_much_was_cut() -> None:
    # a header under the column bound whose names are long: the listing is cut, with the count
    names = ["order_id", *(f"unexpected_{'x' * 40}_{index}" for index in range(200))]
    check = check_sample((",".join(names) + "\n").encode(), SCHEMA, truncated=False)

    assert check.reason is not None
    assert len(check.reason) <= MAX_REASON_CHARS
    assert re.search(r"…\(\+\d+ more characters\)$", check.reason)


def test_a_file_the_settings_cannot_deliver_before_glacier_is_invalid_with_the_estimate() -> None:
    # GIVEN rows of ~28 bytes in a 1 GiB file: ~38 M rows, at 50 rows/s paced at 50 / 1.05 = 47.6/s
    # about 9.3 days, and raw objects readable 7 days
    rows = b"".join(b"%d,a@b.c,1,EUR,2026-01-01,1\n" % i for i in range(50))
    sample = (SAMPLES / "orders-valid.csv").read_bytes().split(b"\n")[0] + b"\n" + rows
    deliverable = Deliverable(api_rate_limit=50, api_rate_lateness_seconds=0.05, raw_readable_days=7)

    class Sized:
        def head_object(self, **_: Any) -> dict:
            return {"ContentLength": 2**30}

        def get_object(self, **_: Any) -> dict:
            return {"Body": io.BytesIO(sample)}

    obj = ObjectRef(bucket=RAW_BUCKET, key="big.csv", version_id="v1", size=2**30)
    check = check_object(Sized(), obj, SCHEMA, max_file_bytes=5 * 2**30, deliverable=deliverable)
    near = check_object(Sized(), obj, SCHEMA, max_file_bytes=5 * 2**30, deliverable=None)

    assert check.reason is not None
    assert re.match(
        r"about \d+ rows \(1073741824 bytes\): at the API rate they take about [\d.]+ days", check.reason
    )
    assert check.reason.endswith("(RawGlacierDays 7)")
    assert near.valid  # the same file is fine when nothing bounds the time
    # AND in batches of 10 rows a request, the same rows take ~0.9 days: deliverable
    batched = replace(deliverable, api_batch_size=10)
    assert check_object(Sized(), obj, SCHEMA, max_file_bytes=5 * 2**30, deliverable=batched).valid
    # while batches of 2 still take ~4.7 days of 3 readable ones, and the reason says batches
    three_days = replace(deliverable, api_batch_size=2, raw_readable_days=3)
    slow = check_object(Sized(), obj, SCHEMA, max_file_bytes=5 * 2**30, deliverable=three_days)
    assert slow.reason is not None
    assert "at the API rate in batches of 2 they take about 4." in slow.reason


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (b"id,name,price\n1,a,2\n", None),
        (b"sku;qty\nA;1\n", None),  # one column named "sku;qty": any name goes
        (b"id,,price\n1,a,2\n", "header: column 2 without a name"),
        (b"id,name,id\n1,a,2\n", "header: repeated column 'id'"),
        (b",\n1,2\n", "header: no column names on the first line"),
    ],
)
def test_passthrough_takes_any_header_with_unique_non_empty_names(sample: bytes, reason: str | None) -> None:
    check = check_sample(sample, get_schema("passthrough"), truncated=False)

    assert check.valid is (reason is None), check.reason
    if reason is not None:
        assert check.reason is not None
        assert check.reason.startswith(reason)


def test_a_header_without_a_column_that_api_url_names_is_invalid() -> None:
    schema = get_schema("passthrough")
    sample = b"sku,name\nA,b\n"

    assert check_sample(sample, schema, truncated=False, url_columns=("sku",)).valid
    check = check_sample(sample, schema, truncated=False, url_columns=("id", "sku", "tenant"))
    assert check.reason == "header: ApiUrl's {id}, {tenant} names no column of this file"
