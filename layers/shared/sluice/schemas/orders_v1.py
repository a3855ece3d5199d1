"""orders-v1: one order per row (the sample files in samples/).

| column | rule | sent downstream as |
|---|---|---|
| order_id | `ORD-` and 6 to 12 digits | `order_id`, as is |
| customer_email | an address `local@domain.tld`, at most 254 characters | lower-cased |
| amount | a decimal 0..999999999999.99, at most 2 decimals (`12.5`, `0.99`) | `amount_cents`, an integer |
| currency | one of CURRENCIES, any case | upper-cased |
| order_date | `YYYY-MM-DD`, a real calendar date | ISO date |
| quantity | a whole number 1..10000 | an integer |

Surrounding spaces are ignored. Each column's shape is checked before its range: pydantic's lax
mode would otherwise take `1e3` as an amount or `5.0` as a quantity, which an order file never
means. The JSON Schema describes the columns as the CSV text they are.

Money is exact or rejected, never rounded: an amount is at most AMOUNT_MAX and has at most
AMOUNT_MAX_DIGITS significant digits, so `amount_cents` is computed exactly (the decimal context
keeps 28 digits) and stays below 2**53 (99,999,999,999,999 < 9,007,199,254,740,992), which any
JSON reader, JavaScript's doubles included, reads exactly. A longer amount (5,000 digits, or 30
significant ones) is the row's reject, as is a quantity too long to parse.
"""

import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from sluice.schemas.base import RowModel

CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF")
Currency = Literal["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF"]

_ORDER_ID = r"ORD-\d{6,12}"
# Deliberately loose: one @, no spaces, a dot in the domain. Deliverability is not ours to judge.
_EMAIL = r"[^@\s]+@[^@\s]+\.[^@\s.]+"
_DECIMAL = r"-?\d+(\.\d+)?"
_INTEGER = r"-?\d+"
_DATE = r"\d{4}-\d{2}-\d{2}"
AMOUNT_DECIMALS = 2
AMOUNT_MAX_DIGITS = 14  # significant: exact in the decimal context's 28 (see above)
AMOUNT_MAX = Decimal("999999999999.99")  # 12 digits before the point: amount_cents < 10**14 < 2**53


def _shaped(pattern: str, problem: str, convert: Callable[[str], Any] = str) -> BeforeValidator:
    """A before-validator: the stripped text must match `pattern` (else `problem`), then `convert`.

    One validator per column keeps the order of checks readable: pydantic runs several
    before-validators of one field last-declared first.
    """
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            raise ValueError("is empty")
        if not compiled.fullmatch(value):
            raise ValueError(problem)
        return convert(value)

    return BeforeValidator(check)


def _column(pattern: str, description: str, example: str) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "string", "pattern": f"^{pattern}$", "description": description, "examples": [example]}
    )


def _calendar_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value} is not a calendar date") from None


def _at_most_amount_max(value: Decimal) -> Decimal:
    # Not Field(le=...): pydantic words a Decimal bound as "Decimal('999999999999.99')".
    if value > AMOUNT_MAX:
        raise ValueError(f"must be at most {AMOUNT_MAX}")
    return value


def _currency(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("is empty")
        return value.strip().upper()
    return value


class OrderV1(RowModel):
    schema_name: ClassVar[str] = "orders-v1"

    order_id: Annotated[
        str,
        _shaped(_ORDER_ID, "must look like ORD-000123"),
        _column(_ORDER_ID, "The order's id.", "ORD-000123"),
    ]
    customer_email: Annotated[
        str,
        _shaped(_EMAIL, "must be an email address like name@example.com"),
        Field(max_length=254),
        AfterValidator(str.lower),
        _column(_EMAIL, "Sent lower-cased.", "jane.doe@example.com"),
    ]
    amount: Annotated[
        Decimal,
        _shaped(_DECIMAL, "must be a decimal number like 12.50"),
        Field(ge=0, max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMALS),
        AfterValidator(_at_most_amount_max),
        _column(
            rf"\d{{1,{AMOUNT_MAX_DIGITS - AMOUNT_DECIMALS}}}(\.\d{{1,{AMOUNT_DECIMALS}}})?",
            "0 to 999999999999.99, at most 2 decimals; sent as amount_cents.",
            "19.99",
        ),
    ]
    currency: Annotated[
        Currency,
        BeforeValidator(_currency),
        WithJsonSchema(
            {"type": "string", "enum": list(CURRENCIES), "description": "Any case; sent upper-cased."}
        ),
    ]
    order_date: Annotated[
        date,
        _shaped(_DATE, "must be a date YYYY-MM-DD", _calendar_date),
        _column(_DATE, "A calendar date.", "2026-11-02"),
    ]
    quantity: Annotated[
        int,
        _shaped(_INTEGER, "must be a whole number"),
        Field(ge=1, le=10_000),
        _column(r"\d+", "1 to 10000.", "3"),
    ]

    def transform(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "customer_email": self.customer_email,
            "amount_cents": int(self.amount * 100),  # exact: at most 14 digits (AMOUNT_MAX_DIGITS)
            "currency": self.currency,
            "order_date": self.order_date.isoformat(),
            "quantity": self.quantity,
        }
