"""Generated CSV files: parseable, rejects where stated, invalid files really invalid."""

import csv
import datetime as dt
import io
import re
from collections import Counter
from pathlib import Path

import pytest

from sluice.models import FileState
from sluice.schemas import get_schema
from sluice_cli.apisim import UNKNOWN_CUSTOMER_DOMAIN
from sluice_cli.workload import (
    CURRENCIES,
    MAX_QUANTITY,
    SCHEMA_COLUMNS,
    InvalidKind,
    RejectKind,
    default_mix,
    generate_invalid_csv,
    generate_orders_csv,
    orders_csv_bytes,
    plan_rejects,
    rows_for_size,
)

EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[a-z]+$")


def is_iso_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


# An independent reading of the orders-v1 rules, in the order a validator would check them.
RULES = (
    (RejectKind.BAD_EMAIL, lambda r: not EMAIL.match(r["customer_email"])),
    (RejectKind.NEGATIVE_AMOUNT, lambda r: float(r["amount"]) < 0),
    (RejectKind.UNKNOWN_CURRENCY, lambda r: r["currency"] not in CURRENCIES),
    (RejectKind.BAD_DATE, lambda r: not is_iso_date(r["order_date"])),
    (RejectKind.ZERO_QUANTITY, lambda r: not 1 <= int(r["quantity"]) <= MAX_QUANTITY),
    (RejectKind.UNKNOWN_CUSTOMER, lambda r: r["customer_email"].endswith(UNKNOWN_CUSTOMER_DOMAIN)),
)


def reject_reason(row: dict[str, str]) -> RejectKind | None:
    """Why this row would be rejected (by validation or by the API), if at all."""
    return next((kind for kind, broken in RULES if broken(row)), None)


def parse(data: bytes) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
    assert tuple(reader.fieldnames or ()) == SCHEMA_COLUMNS
    return list(reader)


def test_a_clean_file_parses_with_every_row_valid_and_well_formed() -> None:
    data, generated = orders_csv_bytes(500, seed=11)
    rows = parse(data)

    assert len(rows) == generated.rows == 500
    assert generated.bytes_written == len(data)
    assert [r["order_id"] for r in rows[:3]] == ["ORD-000001", "ORD-000002", "ORD-000003"]
    assert all(reject_reason(r) is None for r in rows)
    assert all(re.fullmatch(r"\d+\.\d{2}", r["amount"]) for r in rows)
    assert {r["currency"] for r in rows} == set(CURRENCIES)  # 500 rows draw every currency
    assert generated.rejects == {}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    assert orders_csv_bytes(50, seed=1)[0] == orders_csv_bytes(50, seed=1)[0]
    assert orders_csv_bytes(50, seed=1)[0] != orders_csv_bytes(50, seed=2)[0]


def test_rejects_land_on_the_stated_rows_with_their_kind() -> None:
    wanted = {1: RejectKind.NEGATIVE_AMOUNT, 7: RejectKind.BAD_EMAIL, 8: RejectKind.UNKNOWN_CURRENCY}
    wanted |= {19: RejectKind.BAD_DATE, 20: RejectKind.ZERO_QUANTITY, 13: RejectKind.UNKNOWN_CUSTOMER}
    data, generated = orders_csv_bytes(20, rejects=wanted, seed=5)
    rows = parse(data)

    found = {number: reject_reason(row) for number, row in enumerate(rows, start=1) if reject_reason(row)}
    assert found == wanted
    assert generated.validation_rejects == 5
    assert generated.api_rejects == 1


def test_counted_rejects_are_spread_over_every_kind_and_api_rejects_avoid_them() -> None:
    data, generated = orders_csv_bytes(1000, rejects=10, api_rejects=4, seed=3)
    rows = parse(data)

    found = {n: kind for n, row in enumerate(rows, start=1) if (kind := reject_reason(row)) is not None}
    assert found == dict(generated.rejects)
    counts = Counter(found.values())
    assert counts == {kind: 2 for kind in RejectKind if kind is not RejectKind.UNKNOWN_CUSTOMER} | {
        RejectKind.UNKNOWN_CUSTOMER: 4
    }
    assert min(found) == 1
    assert max(found) > 900  # spread to the end of the file, not bunched at the start


def test_plan_rejects_refuses_impossible_plans() -> None:
    assert plan_rejects(10, 10) == {n: list(RejectKind)[(n - 1) % 5] for n in range(1, 11)}
    with pytest.raises(ValueError, match="cannot reject"):
        plan_rejects(3, 4)
    with pytest.raises(ValueError, match="outside"):
        orders_csv_bytes(3, rejects={4: RejectKind.BAD_DATE})
    with pytest.raises(ValueError, match="no room"):
        orders_csv_bytes(3, rejects=2, api_rejects=2)


def test_writing_to_a_path_streams_in_chunks_and_matches_the_in_memory_bytes(tmp_path: Path) -> None:
    target = tmp_path / "orders.csv"
    generated = generate_orders_csv(2_345, path=target, rejects=5, seed=9, chunk_rows=100)

    assert target.stat().st_size == generated.bytes_written
    assert target.read_bytes() == orders_csv_bytes(2_345, rejects=5, seed=9)[0]
    with pytest.raises(ValueError, match="exactly one"):
        generate_orders_csv(1, path=target, stream=io.BytesIO())
    with pytest.raises(ValueError, match="exactly one"):
        generate_orders_csv(1)


def test_rows_for_size_lands_near_the_asked_size() -> None:
    rows = rows_for_size(1_000_000)
    data, _ = orders_csv_bytes(rows)
    assert 0.97 < len(data) / 1_000_000 < 1.03


def test_invalid_kinds_are_really_invalid() -> None:
    bad_header = generate_invalid_csv(InvalidKind.BAD_HEADER)
    header = next(csv.reader(io.StringIO(bad_header.decode())))
    assert "customer_email" not in header
    assert len(header) == len(SCHEMA_COLUMNS)

    not_utf8 = generate_invalid_csv("not_utf8")
    with pytest.raises(UnicodeDecodeError) as error:
        not_utf8.decode("utf-8")
    first_row_start = not_utf8.index(b"\n") + 1
    assert first_row_start <= error.value.start < not_utf8.index(b"\n", first_row_start)  # in row 1
    assert not_utf8.decode("latin-1").splitlines()[0] == ",".join(SCHEMA_COLUMNS)

    assert generate_invalid_csv(InvalidKind.EMPTY) == b""
    with pytest.raises(ValueError, match="not a valid InvalidKind"):
        generate_invalid_csv("nonsense")


def test_default_mix_expectations_match_the_content_and_fit_the_run_budget(tmp_path: Path) -> None:
    mix = default_mix(seed=7, directory=tmp_path)

    states = [f.expected_state for f in mix]
    assert states.count(FileState.SUCCEEDED) >= 3
    assert states.count(FileState.SUCCEEDED_WITH_REJECTS) == 1
    assert states.count(FileState.INVALID) == 1
    assert len({f.name for f in mix}) == len(mix)
    assert len({f.rows for f in mix if f.expected_state is FileState.SUCCEEDED}) >= 3  # several sizes
    for file in mix:
        assert file.path is not None
        assert file.path.read_bytes() == file.data
        if file.expected_state is FileState.INVALID:
            assert file.expected_delivered == 0
            assert file.api_calls == 0
            continue
        rows = parse(file.data)
        reasons = [reject_reason(row) for row in rows]
        assert len(rows) == file.rows
        assert sum(r is not None for r in reasons) == file.expected_rejects
        assert sum(r is None for r in reasons) == file.expected_delivered
        assert sum(r is None or r is RejectKind.UNKNOWN_CUSTOMER for r in reasons) == file.api_calls
    # `sluice run` has < 2 minutes against a 50 requests/s API: the calls fit in 70 s at the full limit.
    assert sum(f.api_calls for f in mix) / 50 <= 70
    assert default_mix(seed=7)[0].data == mix[0].data


def test_the_orders_v1_schema_rejects_exactly_the_rows_the_workload_says_it_does() -> None:
    # The contract with ProcessObject's validation: what the generator calls a validation reject,
    # the deployed schema rejects, and nothing else (API rejects are valid rows).
    schema = get_schema("orders-v1")
    data, generated = orders_csv_bytes(1000, rejects=25, api_rejects=5, seed=4)
    refused = {
        number
        for number, row in enumerate(csv.DictReader(io.StringIO(data.decode())), start=1)
        if not schema.parse(row).accepted
    }
    assert refused == {n for n, kind in generated.rejects.items() if not kind.reaches_api}
