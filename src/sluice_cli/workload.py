"""Realistic CSV files for the orders-v1 schema, and the mix of files `sluice run` pushes through the stack.

Every file's expected outcome is known when it is generated (which rows the validator rejects,
which the downstream API answers 422), so a run can check that each file ended in the state its
content calls for. Row numbers are 1-based data rows: row 1 is the line after the header.

Files are written in chunks of encoded lines, so a 1 GB file costs one chunk of memory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from sluice.models import FileState
from sluice.schemas import get_schema
from sluice_cli.apisim import UNKNOWN_CUSTOMER_DOMAIN

# The columns and currencies come from the deployed schema, so the generator cannot drift from it.
SCHEMA_COLUMNS: tuple[str, ...] = get_schema("orders-v1").columns
CURRENCIES: tuple[str, ...] = tuple(get_schema("orders-v1").json_schema()["properties"]["currency"]["enum"])
MAX_QUANTITY = 10_000


class RejectKind(StrEnum):
    """Why a row is rejected. All but UNKNOWN_CUSTOMER fail Sluice's row validation;
    UNKNOWN_CUSTOMER is a valid row that the downstream API answers 422 ("unknown customer")."""

    NEGATIVE_AMOUNT = "negative_amount"
    BAD_EMAIL = "bad_email"
    UNKNOWN_CURRENCY = "unknown_currency"
    BAD_DATE = "bad_date"
    ZERO_QUANTITY = "zero_quantity"
    UNKNOWN_CUSTOMER = "unknown_customer"

    @property
    def reaches_api(self) -> bool:
        return self is RejectKind.UNKNOWN_CUSTOMER


VALIDATION_REJECTS: tuple[RejectKind, ...] = tuple(kind for kind in RejectKind if not kind.reaches_api)


class InvalidKind(StrEnum):
    """Files that can never succeed: the whole file ends INVALID."""

    BAD_HEADER = "bad_header"  # `customer_email` is missing (named `customer`)
    NOT_UTF8 = "not_utf8"  # a Latin-1 byte in the first data row
    EMPTY = "empty"  # zero bytes, not even a header


@dataclass(frozen=True)
class GeneratedCsv:
    rows: int  # data rows written (the header is not a row)
    bytes_written: int
    rejects: Mapping[int, RejectKind]  # row number -> why it is rejected

    @property
    def validation_rejects(self) -> int:
        return sum(1 for kind in self.rejects.values() if not kind.reaches_api)

    @property
    def api_rejects(self) -> int:
        return sum(1 for kind in self.rejects.values() if kind.reaches_api)


@dataclass(frozen=True)
class WorkloadFile:
    """One file of a workload and the outcome its content calls for."""

    name: str  # object key (without any prefix the stack's ingest rule needs)
    data: bytes
    rows: int  # data rows in the file
    expected_state: FileState
    expected_rejects: int  # rows rejected by validation or by the API (422)
    expected_delivered: int  # rows the API must accept, each exactly once
    api_calls: int  # API requests the file needs at least (rows that pass validation; retries add more)
    rejects: Mapping[int, RejectKind] = field(default_factory=dict)
    path: Path | None = None  # where it was written, when default_mix was given a directory


# -- rows --------------------------------------------------------------------------------------

_FIRST_NAMES = (
    "ana", "ben", "chloe", "david", "elena", "farid", "grace", "hiro", "ines", "jonas", "kofi", "lena",
    "mateo", "nadia", "omar", "priya", "quinn", "rosa", "sven", "tariq", "uma", "victor", "wei", "yara",
)  # fmt: skip
_LAST_NAMES = (
    "silva", "smith", "muller", "rossi", "tanaka", "kowalski", "okafor", "nguyen", "garcia", "novak",
    "larsen", "haddad", "oconnor", "petrov", "schmidt", "dubois", "kim", "jensen", "moreau", "costa",
)  # fmt: skip
_DOMAINS = ("example.com", "example.org", "mail.example", "shop.example", "corp.example")
_FIRST_DAY = dt.date(2025, 1, 1)
_DATES = tuple((_FIRST_DAY + dt.timedelta(days=n)).isoformat() for n in range(730))  # 2025 and 2026

# The value each kind puts in its column. None of them contains a comma, a quote or a newline, so
# rows are formatted directly (csv.writer would quote nothing and cost a third of the throughput).
_BAD_VALUES: dict[RejectKind, tuple[int, str]] = {
    RejectKind.NEGATIVE_AMOUNT: (2, "-42.50"),
    RejectKind.BAD_EMAIL: (1, "not-an-email"),
    RejectKind.UNKNOWN_CURRENCY: (3, "XYZ"),
    RejectKind.BAD_DATE: (4, "31/12/2025"),
    RejectKind.ZERO_QUANTITY: (5, "0"),
}


def _good_row(number: int, rnd: random.Random) -> list[str]:
    first = _FIRST_NAMES[int(rnd.random() * len(_FIRST_NAMES))]
    last = _LAST_NAMES[int(rnd.random() * len(_LAST_NAMES))]
    domain = _DOMAINS[int(rnd.random() * len(_DOMAINS))]
    cents = 100 + int(rnd.random() * 250_000)  # 1.00 .. 2500.99
    # Most orders are a handful of items, a few are bulk: a Pareto tail, capped at the schema's max.
    quantity = min(MAX_QUANTITY, int(rnd.paretovariate(1.3)))
    return [
        f"ORD-{number:06d}",
        f"{first}.{last}{int(rnd.random() * 1000)}@{domain}",
        f"{cents // 100}.{cents % 100:02d}",
        CURRENCIES[int(rnd.random() * len(CURRENCIES))],
        _DATES[int(rnd.random() * len(_DATES))],
        str(quantity),
    ]


def _row(number: int, rnd: random.Random, reject: RejectKind | None) -> str:
    values = _good_row(number, rnd)
    if reject is RejectKind.UNKNOWN_CUSTOMER:
        values[1] = f"customer{number}{UNKNOWN_CUSTOMER_DOMAIN}"
    elif reject is not None:
        column, value = _BAD_VALUES[reject]
        values[column] = value
    return ",".join(values) + "\n"


def plan_rejects(
    rows: int, count: int, *, kinds: Sequence[RejectKind] = VALIDATION_REJECTS
) -> dict[int, RejectKind]:
    """`count` row numbers spread evenly over 1..rows (the first is row 1), cycling through `kinds`."""
    if not 0 <= count <= rows:
        raise ValueError(f"cannot reject {count} of {rows} rows")
    step = rows / count if count else 0
    return {1 + int(i * step): kinds[i % len(kinds)] for i in range(count)}


def _resolve_rejects(
    rows: int, rejects: int | Mapping[int, RejectKind], api_rejects: int
) -> dict[int, RejectKind]:
    planned = dict(rejects) if isinstance(rejects, Mapping) else plan_rejects(rows, rejects)
    outside = [n for n in planned if not 1 <= n <= rows]
    if outside:
        raise ValueError(f"reject rows {sorted(outside)} are outside 1..{rows}")
    if api_rejects < 0 or len(planned) + api_rejects > rows:
        raise ValueError(f"no room for {api_rejects} API rejects among {rows} rows")
    # Half a step off the validation rejects' spread, moving on to the next free row on a collision.
    step = rows / api_rejects if api_rejects else 0
    for i in range(api_rejects):
        number = 1 + int((i + 0.5) * step)
        while number in planned:
            number = number % rows + 1
        planned[number] = RejectKind.UNKNOWN_CUSTOMER
    return planned


def _lines(rows: int, rejects: Mapping[int, RejectKind], seed: int) -> Iterator[str]:
    rnd = random.Random(seed)
    yield ",".join(SCHEMA_COLUMNS) + "\n"
    for number in range(1, rows + 1):
        yield _row(number, rnd, rejects.get(number))


def generate_orders_csv(
    rows: int,
    *,
    path: str | os.PathLike[str] | None = None,
    stream: BinaryIO | None = None,
    rejects: int | Mapping[int, RejectKind] = 0,
    api_rejects: int = 0,
    seed: int = 0,
    chunk_rows: int = 20_000,
) -> GeneratedCsv:
    """Write an orders-v1 CSV of `rows` data rows to `path` or `stream` (exactly one), UTF-8.

    `rejects`: how many rows fail validation (spread evenly, cycling through the kinds), or an
    explicit {row number: kind}. `api_rejects`: how many more rows are valid but carry a customer the
    API simulator answers 422. The same arguments always give the same bytes.
    """
    if rows < 0:
        raise ValueError("rows must be >= 0")
    planned = _resolve_rejects(rows, rejects, api_rejects)
    lines = _lines(rows, planned, seed)
    if path is not None and stream is None:
        with open(path, "wb") as file:
            written = _write_chunks(file, lines, chunk_rows)
    elif stream is not None and path is None:
        written = _write_chunks(stream, lines, chunk_rows)
    else:
        raise ValueError("give exactly one of path or stream")
    return GeneratedCsv(rows=rows, bytes_written=written, rejects=planned)


def _write_chunks(target: BinaryIO, lines: Iterator[str], chunk_rows: int) -> int:
    written = 0
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= chunk_rows:
            written += target.write("".join(chunk).encode())
            chunk.clear()
    if chunk:
        written += target.write("".join(chunk).encode())
    return written


def orders_csv_bytes(
    rows: int, *, rejects: int | Mapping[int, RejectKind] = 0, api_rejects: int = 0, seed: int = 0
) -> tuple[bytes, GeneratedCsv]:
    """A small file in memory (uploads, tests): its bytes and what was generated."""
    buffer = io.BytesIO()
    generated = generate_orders_csv(rows, stream=buffer, rejects=rejects, api_rejects=api_rejects, seed=seed)
    return buffer.getvalue(), generated


def rows_for_size(size_bytes: int, *, seed: int = 0) -> int:
    """About how many rows make a file of `size_bytes` (from the mean length of 2,000 sample rows)."""
    sample, generated = orders_csv_bytes(2_000, seed=seed)
    header = len(",".join(SCHEMA_COLUMNS)) + 1
    return max(0, round((size_bytes - header) / ((len(sample) - header) / generated.rows)))


def generate_invalid_csv(kind: InvalidKind | str, *, rows: int = 10, seed: int = 0) -> bytes:
    """A file whose content makes it INVALID as a whole."""
    kind = InvalidKind(kind)
    if kind is InvalidKind.EMPTY:
        return b""
    data, _ = orders_csv_bytes(rows, seed=seed)
    header, _, body = data.partition(b"\n")
    if kind is InvalidKind.BAD_HEADER:
        return header.replace(b"customer_email", b"customer") + b"\n" + body
    # NOT_UTF8: a Latin-1 encoded name in the first data row (b"\xfc" is never valid UTF-8 alone).
    first, _, rest = body.partition(b"\n")
    return header + b"\n" + first.replace(b"ORD-", "ORD-Müller-".encode("latin-1"), 1) + b"\n" + rest


# -- the default mix ---------------------------------------------------------------------------

# Budget: `sluice run` must finish in < 2 minutes on 2 cores against an API limit of 50 requests/s.
# The mix needs 20 + 200 + 800 + 1500 + (400 - 16) = 2,904 API calls: 58 s at the full limit,
# 65 s at 90% of it, plus a few percent of retried 503s. That leaves ~45 s for starting the stack,
# the dispatcher's first rounds and writing outputs. The invalid file costs no API call.
_MIX_SIZES = (20, 200, 800, 1500)
_MIX_REJECT_ROWS = 400
_MIX_VALIDATION_REJECTS = 16  # 5 kinds, cycled
_MIX_API_REJECTS = 4


def default_mix(seed: int = 7, directory: str | os.PathLike[str] | None = None) -> list[WorkloadFile]:
    """The files `sluice run` uploads: four clean sizes, one with rejectable rows, one invalid.

    With `directory`, each file is also written there and its `path` set.
    """
    files: list[WorkloadFile] = []
    for index, rows in enumerate(_MIX_SIZES):
        data, _ = orders_csv_bytes(rows, seed=seed + index)
        files.append(
            WorkloadFile(
                name=f"orders-{rows:05d}-rows.csv",
                data=data,
                rows=rows,
                expected_state=FileState.SUCCEEDED,
                expected_rejects=0,
                expected_delivered=rows,
                api_calls=rows,
            )
        )
    data, generated = orders_csv_bytes(
        _MIX_REJECT_ROWS, rejects=_MIX_VALIDATION_REJECTS, api_rejects=_MIX_API_REJECTS, seed=seed + 10
    )
    files.append(
        WorkloadFile(
            name=f"orders-{_MIX_REJECT_ROWS:05d}-rows-with-rejects.csv",
            data=data,
            rows=_MIX_REJECT_ROWS,
            expected_state=FileState.SUCCEEDED_WITH_REJECTS,
            expected_rejects=len(generated.rejects),
            expected_delivered=_MIX_REJECT_ROWS - len(generated.rejects),
            api_calls=_MIX_REJECT_ROWS - generated.validation_rejects,
            rejects=generated.rejects,
        )
    )
    invalid = generate_invalid_csv(InvalidKind.BAD_HEADER, rows=10, seed=seed + 20)
    files.append(
        WorkloadFile(
            name="orders-bad-header.csv",
            data=invalid,
            rows=10,
            expected_state=FileState.INVALID,
            expected_rejects=0,
            expected_delivered=0,
            api_calls=0,
        )
    )
    if directory is not None:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for file in files:
            target = folder / file.name
            target.write_bytes(file.data)
            written.append(dataclasses.replace(file, path=target))
        files = written
    return files
