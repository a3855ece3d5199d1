"""Schema files: a row schema declared in JSON, no Python (docs/your-own-csv.md, Schema files).

`schemas/files/{name}.json`, shipped in the layer beside this module, selected by
`RowSchema={name}`:

    {"name": "products-v1",
     "columns": {"sku":   {"type": "string", "pattern": "[A-Z0-9-]{3,20}"},
                 "price": {"type": "decimal", "min": 0, "decimals": 2, "send_as": "price_eur"},
                 "stock": {"type": "integer", "min": 0, "required": false}},
     "send": ["sku", "price"]}

Each column: `type` string | integer | decimal | boolean | date; `required` (default true: an
empty value rejects the row; false: it is sent as null); `min`/`max` (numbers), `decimals`
(decimal places at most), `max_digits` (significant digits at most), `min_length`/`max_length`,
`pattern` (full match; `message` is the reason a value that breaks it gets) and `case` (lower |
upper, applied before the checks) for strings, `enum` (allowed values), `send_as` (the key it is
sent under), `send_scaled` (a decimal sent as an exact integer of 10^n units: cents are 2),
`description` and `example` (for the JSON Schema of the docs). `send`: the columns sent, in order
(default: all). `key`: the columns that identify a row (its Idempotency-Key, docs/interfaces.md).
The header must name exactly the columns, as with any schema. Values are sent typed: integer as
a JSON integer, decimal as a string (exact: no float rounding), boolean as true/false (from
true/false/1/0/yes/no, any case), date as YYYY-MM-DD.

The file becomes a pydantic model, so the checks and their messages are pydantic's machinery, as
in a hand-written schema. A malformed file fails the import with its name and what is wrong:
every function's cold start, rather than a row at a time.
"""

import json
import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)

from sluice.schemas.base import RowModel

FILES = Path(__file__).parent / "files"

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["string", "integer", "decimal", "boolean", "date"] = "string"
    required: bool = True
    min: Decimal | None = None
    max: Decimal | None = None
    decimals: int | None = Field(default=None, ge=0)
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=1)
    pattern: str | None = None
    enum: list[str] | None = None
    send_as: str | None = None
    max_digits: int | None = Field(default=None, ge=1)
    message: str | None = None
    case: Literal["lower", "upper"] | None = None
    send_scaled: int | None = Field(default=None, ge=0, le=18)
    description: str | None = None
    example: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ColumnSpec":
        if self.send_scaled is not None and (self.type != "decimal" or self.decimals is None):
            raise ValueError("send_scaled needs a decimal column with decimals")
        if self.send_scaled is not None and self.decimals is not None and self.decimals > self.send_scaled:
            raise ValueError("send_scaled must be at least decimals: the integer would be rounded")
        # The integer sent has at most max_digits - decimals + send_scaled digits: at most 15 keeps
        # it below 2**53, exact in any JSON reader (JavaScript's doubles too) and in the decimal context.
        if self.send_scaled is not None and (
            self.max_digits is None or self.max_digits - (self.decimals or 0) + self.send_scaled > 15
        ):
            raise ValueError("send_scaled needs max_digits - decimals + send_scaled <= 15 (below 2**53)")
        if (self.case or self.message) and self.type != "string":
            raise ValueError("case and message are for string columns")
        return self


class SchemaFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")  # template RowSchema's AllowedPattern
    description: str = ""
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    send: list[str] | None = None
    key: list[str] | None = Field(default=None, min_length=1)


_SHAPES: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "integer": (r"-?\d+", "must be a whole number", int),
    "decimal": (r"-?\d+(\.\d+)?", "must be a decimal number like 12.50", Decimal),
    "date": (r"\d{4}-\d{2}-\d{2}", "must be a date YYYY-MM-DD", date.fromisoformat),
}


def _parse(spec: ColumnSpec) -> Callable[[Any], Any]:
    """The column's check of its text (shape, enum, pattern), then its conversion."""
    pattern = re.compile(spec.pattern) if spec.pattern else None

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            if spec.required:
                raise ValueError("is empty")
            return None
        if spec.case is not None:
            value = value.lower() if spec.case == "lower" else value.upper()
        if spec.enum is not None and value not in spec.enum:
            raise ValueError(f"must be one of {', '.join(spec.enum)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise ValueError(spec.message or f"must match {spec.pattern}")
        if spec.type == "boolean":
            if value.lower() not in _TRUE | _FALSE:
                raise ValueError("must be true or false")
            return value.lower() in _TRUE
        if spec.type in _SHAPES:
            shape, problem, convert = _SHAPES[spec.type]
            if not re.fullmatch(shape, value):
                raise ValueError(problem)
            try:
                return convert(value)
            except ValueError:  # a date past the calendar, an integer past Python's 4,300 digits
                raise ValueError(
                    "is not a calendar date" if spec.type == "date" else "is too large"
                ) from None
        return value

    return parse


def _field(column: str, spec: ColumnSpec) -> tuple[Any, Any]:
    kind: Any = {"string": str, "integer": int, "decimal": Decimal, "boolean": bool, "date": date}[spec.type]
    bounds: dict[str, Any] = {}
    if spec.type in {"integer", "decimal"}:
        bounds = {"ge": spec.min, "le": spec.max}
        if spec.type == "integer":
            bounds = {key: int(value) for key, value in bounds.items() if value is not None}
        if spec.decimals is not None:
            bounds["decimal_places"] = spec.decimals
        if spec.max_digits is not None:
            bounds["max_digits"] = spec.max_digits
    if spec.type == "string":
        bounds = {"min_length": spec.min_length, "max_length": spec.max_length}
    bounds = {key: value for key, value in bounds.items() if value is not None}
    value_type: Any = kind if spec.required else kind | None
    annotated: Any = Annotated[  # built at run time, from the file
        value_type, BeforeValidator(_parse(spec)), WithJsonSchema(_csv_text(spec))
    ]
    return annotated, Field(alias=column, **bounds)


def _text_pattern(spec: ColumnSpec) -> str | None:
    """The regular expression a column's text matches, as tight as its bounds say."""
    if spec.type == "date":
        return r"\d{4}-\d{2}-\d{2}"
    if spec.type not in {"integer", "decimal"}:
        return spec.pattern
    sign = "" if spec.min is not None and spec.min >= 0 else "-?"
    if spec.type == "integer":
        return rf"{sign}\d+"
    places = f"{{1,{spec.decimals}}}" if spec.decimals is not None else "+"
    whole = f"{{1,{spec.max_digits - (spec.decimals or 0)}}}" if spec.max_digits is not None else "+"
    return rf"{sign}\d{whole}(\.\d{places})?"


def _csv_text(spec: ColumnSpec) -> dict[str, Any]:
    """The column as the CSV text it is, for the docs' JSON Schema (a file holds no numbers)."""
    schema: dict[str, Any] = {"type": "string"}
    if spec.enum is not None:
        schema["enum"] = spec.enum
    pattern = _text_pattern(spec)
    if pattern is not None:
        schema["pattern"] = f"^{pattern}$"
    schema |= {name: value for name, value in (("description", spec.description),) if value}
    if spec.example is not None:
        schema["examples"] = [spec.example]
    return schema


def _sent(value: Any, spec: ColumnSpec) -> Any:
    if isinstance(value, Decimal):
        if spec.send_scaled is not None:  # exact: decimals <= send_scaled, so no digit is cut
            return int(value.scaleb(spec.send_scaled))
        return str(value)  # exact: a float would round
    if isinstance(value, date):
        return value.isoformat()
    return value


def model_from_file(path: Path) -> type[RowModel]:
    """The row model a schema file declares; ValueError naming the file and the problem."""
    try:
        declared = SchemaFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as error:
        raise ValueError(f"schema file {path.name}: {error}") from None
    if declared.name != path.stem:
        raise ValueError(f"schema file {path.name}: its name is {declared.name!r}, not {path.stem!r}")
    for field in ("send", "key"):
        unknown = sorted(set(getattr(declared, field) or []) - set(declared.columns))
        if unknown:
            raise ValueError(f"schema file {path.name}: {field} names columns it does not declare: {unknown}")
    names = {column: f"c{index}" for index, column in enumerate(declared.columns)}
    send = declared.send or list(declared.columns)
    keys = {column: declared.columns[column].send_as or column for column in send}
    specs = declared.columns

    def transform(self: RowModel) -> dict[str, Any]:
        return {keys[column]: _sent(getattr(self, names[column]), specs[column]) for column in send}

    def identity(self: RowModel) -> list[Any]:
        return [_sent(getattr(self, names[column]), specs[column]) for column in declared.key or ()]

    fields = {names[column]: _field(column, spec) for column, spec in declared.columns.items()}
    model: type[RowModel] = create_model(  # type: ignore[call-overload]
        f"Declared_{declared.name.replace('-', '_')}",
        __base__=RowModel,
        __doc__=declared.description or f"Schema file {path.name}.",
        **fields,
    )
    model.schema_name = declared.name  # type: ignore[misc]
    model.key_columns = tuple(declared.key or ())  # type: ignore[misc]
    model.transform = transform  # type: ignore[method-assign]
    model.identity = identity  # type: ignore[method-assign]
    return model


def declared_models(directory: Path = FILES) -> list[type[RowModel]]:
    """Every schema file's model, in name order."""
    return [model_from_file(path) for path in sorted(directory.glob("*.json"))]


__all__ = ["FILES", "declared_models", "model_from_file"]
