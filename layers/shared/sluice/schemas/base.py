"""What every row schema is made of: a pydantic model of the columns, wrapped in a `RowSchema`."""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class RowModel(BaseModel):
    """Base of a schema's model: one field per CSV column; every value arrives as text."""

    model_config = ConfigDict(str_strip_whitespace=True, extra="forbid", frozen=True)

    schema_name: ClassVar[str]
    # True: the file's header names the columns (passthrough), any unique, non-empty names
    any_columns: ClassVar[bool] = False
    # The columns that identify a row (a schema file's `key`); () = the row's content identifies it
    key_columns: ClassVar[tuple[str, ...]] = ()

    def transform(self) -> dict[str, Any]:
        """The JSON-ready payload posted downstream for this row."""
        raise NotImplementedError

    def identity(self) -> list[Any]:
        """The key columns' values as sent: the row's identity when the schema declares key columns."""
        return []


def wire_body(payload: Mapping[str, Any]) -> bytes:
    """A payload as the API gets it: compact, strict JSON (no NaN or Infinity), UTF-8."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class RowResult:
    """Either `payload` and its `body` (the row is accepted) or `reason` (it is rejected)."""

    payload: dict[str, Any] | None = None
    reason: str | None = None
    body: bytes = b""  # wire_body(payload), encoded once: the body every attempt POSTs
    identity: list[Any] | None = None  # the key columns' values; None: the schema declares none

    @property
    def accepted(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class RowSchema:
    name: str
    model: type[RowModel]

    @property
    def columns(self) -> tuple[str, ...]:
        """The header's column names, in the model's (documented) order; () when any header goes.
        A field's alias is its column's name where the column is no Python name (schema files)."""
        return tuple(field.alias or name for name, field in self.model.model_fields.items())

    @property
    def any_header(self) -> bool:
        """Any unique, non-empty header is this schema's (passthrough)."""
        return self.model.any_columns

    def parse(self, row: Mapping[str, str]) -> RowResult:
        """The row's payload, or why it is rejected: whatever the row holds, this never raises for it.

        The payload is serialised here once, as the API will get it (strict JSON: no NaN), so that
        a row that cannot be sent (an integer past Python's 4,300-digit str limit, say) is this
        row's reject, not an exception in a delivery worker that fails the whole segment.
        """
        try:
            parsed = self.model.model_validate(dict(row))
        except ValidationError as error:
            return RowResult(reason=describe(error))
        try:
            payload = parsed.transform()
            body = wire_body(payload)
        except (ValueError, ArithmeticError) as error:
            return RowResult(reason=f"cannot be sent as JSON: {error}")
        identity = parsed.identity() if self.model.key_columns else None
        return RowResult(payload=payload, body=body, identity=identity)

    def json_schema(self) -> dict[str, Any]:
        """The columns as JSON Schema, for the docs."""
        return self.model.model_json_schema()


# pydantic's messages ("Input should be greater than or equal to 0") rewritten the way a person
# fixing the file reads them: "amount: must be >= 0".
_MESSAGES = {
    "missing": "is missing",
    "extra_forbidden": "is not a column of this schema",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "decimal_max_places": "must have at most {decimal_places} decimal places",
    "decimal_max_digits": "must have at most {max_digits} significant digits",
    "decimal_whole_digits": "must have at most {whole_digits} digits before the decimal point",
    "int_parsing_size": "is too large",
    "string_too_long": "must be at most {max_length} characters",
    "too_long": "must be at most {max_length} characters",
    "literal_error": "must be one of {expected}",
}


def describe(error: ValidationError) -> str:
    """One line naming each column at fault: `amount: must be >= 0; quantity: is missing`."""
    problems = []
    for item in error.errors(include_url=False):
        column = ".".join(str(part) for part in item["loc"]) or "row"
        template = _MESSAGES.get(item["type"])
        if template is not None:
            message = template.format(**item.get("ctx", {}))
        elif item["type"] == "value_error":
            message = str(item["ctx"]["error"])
        else:
            message = item["msg"][:1].lower() + item["msg"][1:]
        problems.append(f"{column}: {message}")
    return "; ".join(problems)
