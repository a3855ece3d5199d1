"""passthrough: any CSV, each row sent as a JSON object keyed by the header, values as read.

Nothing is checked but the header (ValidateObject): every column needs a name, unique after
trimming spaces, or the file ends INVALID saying which. Values travel as the CSV text they are
(`"0042"` stays a string with its zeros), empty ones as `""`. A row with another number of
fields than the header is rejected by the reader, as with any schema.
"""

from typing import Any, ClassVar

from pydantic import ConfigDict

from sluice.schemas.base import RowModel


class Passthrough(RowModel):
    # extra="allow": the columns are the file's, not declared here; no stripping, no coercion.
    model_config = ConfigDict(extra="allow", frozen=True)

    schema_name: ClassVar[str] = "passthrough"
    any_columns: ClassVar[bool] = True

    def transform(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
