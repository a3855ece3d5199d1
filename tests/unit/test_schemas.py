"""Row schemas: orders-v1's rules, its transform, its reasons, and the registry."""

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sluice.schemas import SCHEMAS, RowModel, RowSchema, get_schema
from sluice.schemas.declared import model_from_file

ORDERS = get_schema("orders-v1")
GOOD = {
    "order_id": "ORD-000123",
    "customer_email": "Jane.Doe@Example.COM",
    "amount": "19.99",
    "currency": "eur",
    "order_date": "2026-11-02",
    "quantity": "3",
}


def reason(**changes: str) -> str | None:
    return ORDERS.parse({**GOOD, **changes}).reason


def test_a_good_row_becomes_the_json_ready_payload() -> None:
    result = ORDERS.parse(GOOD)

    assert result.accepted
    assert result.payload == {
        "order_id": "ORD-000123",
        "customer_email": "jane.doe@example.com",
        "amount_cents": 1999,
        "currency": "EUR",
        "order_date": "2026-11-02",
        "quantity": 3,
    }


def test_surrounding_spaces_are_ignored_everywhere() -> None:
    padded = {name: f"  {value} " for name, value in GOOD.items()}

    assert ORDERS.parse(padded).payload == ORDERS.parse(GOOD).payload


@pytest.mark.parametrize(
    ("amount", "cents"), [("0", 0), ("0.1", 10), ("0.29", 29), ("1234567.89", 123456789), ("7.5", 750)]
)
def test_amounts_are_exact_cents(amount: str, cents: int) -> None:
    # Decimal, not float: 0.29 * 100 would be 28.999999999999996
    assert ORDERS.parse({**GOOD, "amount": amount}).payload["amount_cents"] == cents  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"amount": "-1"}, "amount: must be >= 0"),
        ({"amount": "1.234"}, "amount: must have at most 2 decimal places"),
        ({"amount": "1e3"}, "amount: must be a decimal number like 12.50"),
        ({"amount": "NaN"}, "amount: must be a decimal number like 12.50"),
        ({"quantity": "0"}, "quantity: must be >= 1"),
        ({"quantity": "10001"}, "quantity: must be <= 10000"),
        ({"quantity": "5.0"}, "quantity: must be a whole number"),
        ({"quantity": "1_000"}, "quantity: must be a whole number"),
        ({"order_date": "2026-02-30"}, "order_date: is not a calendar date"),
        ({"order_date": "2026/01/05"}, "order_date: must be a date YYYY-MM-DD"),
        ({"order_date": "2026-01-05T00:00:00"}, "order_date: must be a date YYYY-MM-DD"),
        ({"order_id": "ORD-12"}, "order_id: must look like ORD-000123"),
        (
            {"customer_email": "jane at example"},
            "customer_email: must be an email address like name@example.com",
        ),
        ({"customer_email": f"{'j' * 250}@example.com"}, "customer_email: must be at most 254 characters"),
        ({"currency": "XYZ"}, "currency: must be one of USD, EUR, GBP, JPY, CAD, AUD, CHF"),
        ({"amount": ""}, "amount: is empty"),
        ({"currency": "  "}, "currency: is empty"),
    ],
)
def test_each_rule_names_its_column(changes: dict[str, str], expected: str) -> None:
    assert reason(**changes) == expected


def test_several_faults_make_one_line_naming_each_column() -> None:
    result = ORDERS.parse({**GOOD, "amount": "-5", "quantity": "0"})

    assert not result.accepted
    assert result.payload is None
    assert result.reason == "amount: must be >= 0; quantity: must be >= 1"
    assert "\n" not in result.reason


def test_missing_and_unexpected_columns_are_named() -> None:
    row = {name: value for name, value in GOOD.items() if name != "quantity"} | {"note": "x"}

    assert ORDERS.parse(row).reason == "quantity: is missing; note: is not a column of this schema"


def test_the_schema_exposes_its_columns_and_a_json_schema_for_the_docs() -> None:
    assert ORDERS.columns == ("order_id", "customer_email", "amount", "currency", "order_date", "quantity")
    document = ORDERS.json_schema()
    assert document["required"] == list(ORDERS.columns)
    assert document["properties"]["amount"]["pattern"] == r"^\d{1,12}(\.\d{1,2})?$"
    assert document["properties"]["currency"]["enum"] == ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF"]
    assert all(column["type"] == "string" for column in document["properties"].values())  # CSV text


def test_the_registry_knows_orders_v1_and_names_the_known_ones_otherwise() -> None:
    assert set(SCHEMAS) == {"orders-v1", "passthrough", "products-v1"}
    assert get_schema("orders-v1").name == "orders-v1"
    with pytest.raises(ValueError, match=r"unknown row schema 'orders-v9'; known: orders-v1"):
        get_schema("orders-v9")


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("9" * 5_000, "amount: must have at most 14 significant digits"),
        ("123456789012345678901234567.89", "amount: must have at most 14 significant digits"),
        ("1000000000000", "amount: must have at most 12 digits before the decimal point"),
    ],
    ids=["5000-digits", "30-significant-digits", "over-the-maximum"],
)
def test_an_amount_that_cannot_be_exact_cents_is_rejected_not_rounded(amount: str, expected: str) -> None:
    assert reason(amount=amount) == expected


def test_the_largest_amount_is_exact_cents_below_2_to_the_53() -> None:
    cents = ORDERS.parse({**GOOD, "amount": "999999999999.99"}).payload["amount_cents"]  # type: ignore[index]

    assert cents == 99_999_999_999_999 < 2**53


def test_a_quantity_too_long_to_parse_is_rejected() -> None:
    assert reason(quantity="9" * 5_000) == "quantity: is too large"


class _NotJson(RowModel):
    schema_name: ClassVar[str] = "test-not-json"

    value: str

    def transform(self) -> dict[str, Any]:
        return {"value": float(self.value)}  # "nan" is no JSON number


def test_a_payload_that_cannot_be_sent_as_json_is_the_rows_reject() -> None:
    schema = RowSchema("test-not-json", _NotJson)

    assert schema.parse({"value": "1.5"}).payload == {"value": 1.5}
    assert (
        schema.parse({"value": "nan"}).reason
        == "cannot be sent as JSON: Out of range float values are not JSON compliant: nan"
    )


def test_passthrough_sends_each_row_keyed_by_its_header_as_read() -> None:
    schema = get_schema("passthrough")
    parsed = schema.parse({"id": "0042", "note": " two words ", "model_config": "", "amount": "1e3"})

    assert parsed.payload == {"id": "0042", "note": " two words ", "model_config": "", "amount": "1e3"}
    assert parsed.body == b'{"id":"0042","note":" two words ","model_config":"","amount":"1e3"}'
    assert schema.any_header
    assert not get_schema("orders-v1").any_header


PRODUCT = {
    "sku": "AB-1",
    "product name": " Saw ",
    "price": "12.50",
    "stock": "",
    "active": "Yes",
    "category": "tools",
    "released": "2026-01-31",
    "internal note": "not sent",
}


def test_a_schema_file_checks_types_bounds_patterns_and_sends_its_body() -> None:
    schema = get_schema("products-v1")  # layers/shared/sluice/schemas/files/products-v1.json

    assert schema.columns == tuple(PRODUCT)  # names that are no Python names are fine
    assert schema.parse(PRODUCT).payload == {
        "sku": "AB-1",
        "name": "Saw",  # renamed (send_as), trimmed
        "price_eur": "12.50",  # exact, as a string
        "stock": None,  # optional and empty
        "active": True,
        "category": "tools",
        "released": "2026-01-31",
    }  # "internal note" is not in `send`
    bad = {
        **PRODUCT,
        "sku": "ab",
        "price": "1.005",
        "stock": "-1",
        "active": "maybe",
        "released": "2026-02-30",
    }
    assert schema.parse(bad).reason == (
        "sku: must match [A-Z0-9-]{3,20}; price: must have at most 2 decimal places; stock: must be >= 0; "
        "active: must be true or false; released: is not a calendar date"
    )
    assert schema.parse({**PRODUCT, "price": ""}).reason == "price: is empty"
    assert (
        schema.parse({**PRODUCT, "category": "toys"}).reason
        == "category: must be one of tools, garden, kitchen"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"name": "x-v1", "columns": {"a": {"type": "float"}}}', "columns.a.type"),
        ('{"name": "other", "columns": {"a": {}}}', "its name is 'other', not 'x-v1'"),
        (
            '{"name": "x-v1", "columns": {"a": {}}, "send": ["b"]}',
            "send names columns it does not declare: ['b']",
        ),
        ('{"name": "x-v1", "columns": {}}', "columns"),
        ("{not json", "schema file x-v1.json"),
    ],
)
def test_a_malformed_schema_file_is_refused_naming_the_file_and_the_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "x-v1.json"
    path.write_text(content)

    with pytest.raises(ValueError, match=re.escape(problem)):
        model_from_file(path)


def test_orders_v1_is_a_schema_file() -> None:
    # layers/shared/sluice/schemas/files/orders-v1.json: no Python behind the sample schema
    assert ORDERS.model.__name__ == "Declared_orders_v1"
    assert ORDERS.model.key_columns == ()  # the row's content is its identity (docs/interfaces.md)


def test_key_columns_make_the_rows_identity_as_sent(tmp_path: Path) -> None:
    (tmp_path / "keyed-v1.json").write_text(
        '{"name": "keyed-v1", "key": ["id", "day"],'
        ' "columns": {"id": {"case": "upper"}, "day": {"type": "date"}, "note": {"required": false}}}'
    )
    schema = RowSchema("keyed-v1", model_from_file(tmp_path / "keyed-v1.json"))

    first = schema.parse({"id": " a-1", "day": "2026-12-03", "note": "x"})
    again = schema.parse({"id": "A-1 ", "day": "2026-12-03", "note": "changed"})

    assert first.identity == again.identity == ["A-1", "2026-12-03"]
    assert ORDERS.parse(GOOD).identity is None  # no key columns: content identity


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ('{"a": {"type": "decimal", "decimals": 2, "send_scaled": 2}}', "max_digits - decimals"),
        ('{"a": {"type": "decimal", "decimals": 2, "max_digits": 17, "send_scaled": 2}}', "<= 15"),
        ('{"a": {"type": "decimal", "decimals": 3, "max_digits": 9, "send_scaled": 2}}', "would be rounded"),
        ('{"a": {"type": "integer", "send_scaled": 2}}', "needs a decimal column"),
        ('{"a": {"type": "integer", "case": "upper"}}', "for string columns"),
    ],
)
def test_a_scaled_decimal_must_stay_exact(tmp_path: Path, columns: str, problem: str) -> None:
    path = tmp_path / "x-v1.json"
    path.write_text(f'{{"name": "x-v1", "columns": {columns}}}')

    with pytest.raises(ValueError, match=re.escape(problem)):
        model_from_file(path)


def test_a_key_must_name_declared_columns(tmp_path: Path) -> None:
    path = tmp_path / "x-v1.json"
    path.write_text('{"name": "x-v1", "columns": {"a": {}}, "key": ["b"]}')

    with pytest.raises(ValueError, match=re.escape("key names columns it does not declare: ['b']")):
        model_from_file(path)
