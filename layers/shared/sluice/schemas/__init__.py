"""Row schemas: what one CSV data row must look like and what Sluice sends downstream for it.

A schema is declared once: a JSON schema file in `files/` (orders-v1.json; declared.py turns it
into a pydantic model whose fields are the CSV columns), or a pydantic model in Python.
`RowSchema` wraps the model with what the pipeline needs: the columns the header must name
(ValidateObject), `parse` turning a row into the JSON-ready payload for the API or a one-line
reason naming the column(s) at fault (ProcessObject), and the JSON Schema for the docs.
The ROW_SCHEMA setting picks one through `get_schema`; a new schema is one JSON file in `files/`
(docs/your-own-csv.md), or one module plus one line in `_MODELS`. `passthrough` takes any CSV
with a unique, non-empty header and sends each row as it is.
"""

from sluice.schemas.base import RowModel, RowResult, RowSchema, describe
from sluice.schemas.declared import declared_models
from sluice.schemas.passthrough import Passthrough

_MODELS: list[type[RowModel]] = [Passthrough, *declared_models()]  # declared: files/*.json
SCHEMAS: dict[str, RowSchema] = {model.schema_name: RowSchema(model.schema_name, model) for model in _MODELS}
GUIDE = "docs/your-own-csv.md"  # how to send another CSV: named by INVALID alerts and `sluice run`


def get_schema(name: str) -> RowSchema:
    """The schema ROW_SCHEMA names; a ValueError listing the known ones otherwise."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown row schema {name!r}; known: {', '.join(sorted(SCHEMAS))}") from None


__all__ = ["GUIDE", "SCHEMAS", "RowModel", "RowResult", "RowSchema", "describe", "get_schema"]
