"""Each function's configuration, read once from its environment at cold start.

The environment variable of a field is its name in upper case (template.yaml sets them).
A missing or malformed variable fails the cold start with a message naming it, rather than a
KeyError deep inside an invocation.
"""

import os
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        values = {name: env[name.upper()] for name in cls.model_fields if name.upper() in env}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{str(e['loc'][0]).upper()}: {e['msg']}" for e in error.errors(include_url=False)
            )
            raise RuntimeError(f"{cls.__name__}: bad or missing environment variables: {problems}") from None


class LeaseSettings(Settings):
    control_table: str
    max_rounds_per_execution: int = Field(default=50, ge=1)
    execution_time_budget_seconds: int = Field(default=840, ge=10)


class PlanSettings(Settings):
    stagger_seconds: float = Field(default=2.0, ge=0)  # base gap between two items of a batch
    max_stagger_seconds: int = Field(default=60, ge=0)
    # "prefix=priority" pairs, comma separated; 0 is most urgent. Keys matching none get the default.
    priority_prefixes: str = ""
    default_priority: int = Field(default=5, ge=0, le=9)


class RegisterSettings(Settings):
    metadata_table: str


class ValidateSettings(Settings):
    metadata_table: str
    row_schema: str = "orders-v1"
    max_file_bytes: int = Field(default=5 * 1024**3, ge=1)


class ProcessSettings(Settings):
    metadata_table: str
    control_table: str
    idempotency_table: str
    processed_bucket: str
    row_schema: str = "orders-v1"
    api_url: str = ""  # empty: the simulated API of seed 002, in-process
    api_rate_limit: float = Field(default=50.0, gt=0)  # requests per second, for the whole stack
    api_concurrency: int = Field(default=16, ge=1)  # requests in flight in one invocation
    api_timeout_seconds: float = Field(default=10.0, gt=0)
    api_max_attempts: int = Field(default=5, ge=1)
    api_backoff_base_seconds: float = Field(default=0.5, gt=0)
    api_backoff_max_seconds: float = Field(default=20.0, gt=0)
    simulated_latency_min_seconds: float = Field(default=5.0, ge=0)
    simulated_latency_max_seconds: float = Field(default=30.0, ge=0)
    simulated_failure_rate: float = Field(default=0.05, ge=0, le=1)
    segment_safety_seconds: float = Field(default=30.0, ge=0)  # stop taking rows this long before timeout
    checkpoint_every_rows: int = Field(default=500, ge=1)


class OutputSettings(Settings):
    processed_bucket: str
