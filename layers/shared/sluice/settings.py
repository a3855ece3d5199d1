"""Each function's configuration, read once from its environment at cold start.

The environment variable of a field is its name in upper case (template.yaml sets them).
A missing or malformed variable fails the cold start with a message naming it, rather than a
KeyError deep inside an invocation.
"""

import json
import os
import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluice.ratelimit import DEFAULT_LATENESS_SECONDS, STOPPED_GRACE_SECONDS, ApiPolicy, RateForm

# The downstream API choice (template parameters Stage, ApiMode, ApiUrl). The rule below is the one
# place it is written in Python; template.yaml's `Rules` (ApiMode…, ApiUrl…) state the same for
# deploy time, and tests/unit/test_settings_api_mode.py runs one table of cases against both.
Stage = Literal["local", "dev", "staging", "prod"]  # the template's Stage AllowedValues
ApiMode = Literal["http", "simulated"]  # http: POST to API_URL; simulated: seed 002, nothing leaves the stack
LOCAL_STAGE = "local"  # the offline stack's stage: its downstream is a loopback http:// server
NO_SIMULATION_STAGES = frozenset({"prod"})  # a stage whose rows must reach the real API
# https anywhere; plain http only to a loopback server (the offline stack's simulator), which
# api_choice_problem further keeps to the local stage. template.yaml's ApiUrl AllowedPattern is this.
API_URL_PATTERN = r"^(https://\S+|http://(127\.0\.0\.1|localhost)(:[0-9]+)?(/\S*)?)?$"
# issue 12: the request's shape and its credential (template parameters ApiMethod, ApiHeaders,
# ApiAuthType, ApiAuthSecretArn; docs/interfaces.md, Authentication).
ApiMethod = Literal["POST", "PUT", "PATCH"]
ApiAuthType = Literal["none", "api-key", "basic", "bearer", "oauth2-client-credentials"]
# `{column}` in ApiUrl: filled from the row, URL-encoded (downstream.RequestTarget)
URL_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
# Headers Sluice sets itself: ApiHeaders may not name them (any case).
MAX_BATCH_SIZE = 500  # rows per request (template ApiBatchSize MaxValue)
RESERVED_HEADERS = frozenset({"authorization", "content-type", "content-length", "host", "idempotency-key"})
# ProcessObject's time (template.yaml: its Timeout, the bounds of SegmentSafetySeconds and
# ApiTimeoutSeconds; tests/unit/test_template.py holds them equal). A request never outlives half
# the margin after its segment's stop (delivery.py), so the margin covers what still runs after
# the stop: a rate slot due just after it and its request, then the flush and checkpoint.
PROCESS_TIMEOUT_SECONDS = 300
MAX_SEGMENT_SAFETY_SECONDS = 240  # at least 60 s of work per segment
MIN_SEGMENT_SAFETY_SECONDS = 2 * STOPPED_GRACE_SECONDS  # a slot due within 1 s of the stop; as long to flush
MAX_API_TIMEOUT_SECONDS = PROCESS_TIMEOUT_SECONDS - MAX_SEGMENT_SAFETY_SECONDS  # fits the shortest segment


def url_problem(url: str, stage: str, what: str = "API_URL") -> str | None:
    """Why `url` may not be called on `stage`: https:// anywhere, plain http:// only to loopback on local."""
    if not re.fullmatch(API_URL_PATTERN, url) or (not url.startswith("https://") and stage != LOCAL_STAGE):
        return (
            f"{what}={url!r} on stage {stage}: it must start with https:// "
            f"(plain http:// only to 127.0.0.1 on the {LOCAL_STAGE} stage)"
        )
    if "{" in URL_PLACEHOLDER.sub("", url) or "}" in URL_PLACEHOLDER.sub("", url):
        return f"{what}={url!r}: a brace that is not part of a {{column}} placeholder"
    return None


def headers_problem(value: str) -> str | None:
    """What is wrong with API_HEADERS (a JSON object of header name -> text), None if nothing."""
    try:
        headers = json.loads(value) if value.strip() else {}
    except ValueError as error:
        return f"API_HEADERS is not JSON: {error}"
    if not isinstance(headers, dict) or not all(
        isinstance(name, str) and isinstance(text, str) for name, text in headers.items()
    ):
        return 'API_HEADERS must be a JSON object of strings, e.g. {"X-Tenant": "acme"}'
    if reserved := sorted(name for name in headers if name.lower() in RESERVED_HEADERS):
        return f"API_HEADERS may not set {', '.join(reserved)}: Sluice sets it (ApiAuthType for credentials)"
    if bad := sorted(name for name in headers if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name)):
        return f"API_HEADERS: not a header name: {', '.join(map(repr, bad))}"
    return None


def api_choice_problem(stage: str, api_mode: str, api_url: str) -> str | None:
    """What is wrong with this choice of downstream API on `stage`, in words a person can act on.

    http needs an ApiUrl, https:// on every stage but local (where the offline stack's loopback
    http:// simulator serves); simulated is refused on the stages in NO_SIMULATION_STAGES.
    """
    if api_mode == "simulated":
        if stage in NO_SIMULATION_STAGES:
            return (
                f"API_MODE=simulated is refused on stage {stage}: rows would be reported delivered "
                "while none leaves the stack; set ApiMode=http and ApiUrl=https://<your API>"
            )
        return None
    if not api_url:
        return (
            "API_URL is empty with API_MODE=http: set ApiUrl=https://<your API> "
            "(or ApiMode=simulated for a performance run outside prod)"
        )
    return url_problem(api_url, stage)


def batch_problem(batch_size: int, api_url: str) -> str | None:
    """A batch has no one row to fill ApiUrl's placeholders from."""
    if batch_size > 1 and URL_PLACEHOLDER.search(api_url):
        return (
            f"API_BATCH_SIZE={batch_size} with {{column}} placeholders in API_URL: a batch has no one row "
            "to fill them from; use ApiBatchSize=1 or a URL without placeholders"
        )
    return None


# The Powertools idempotency key prefix of each function that keeps records in IdempotencyTable
# ("{prefix}#{hash}"): template.yaml's dynamodb:LeadingKeys conditions hold each function to its
# own records (tests/unit/test_least_privilege.py).
IDEMPOTENCY_KEY_PREFIXES = {
    "ProcessObjectFunction": "process-object",
    "AlertNotifierFunction": "alert-notifier",
}


def api_auth_problem(auth_type: str, secret_arn: str) -> str | None:
    """An ApiAuthType needs its secret, and a secret needs an ApiAuthType (template Rules say the same)."""
    if auth_type != "none" and not secret_arn:
        return (
            f"API_AUTH_TYPE={auth_type} needs API_AUTH_SECRET_ARN: set ApiAuthSecretArn to the "
            "Secrets Manager secret holding the credential (docs/interfaces.md, Authentication)"
        )
    if auth_type == "none" and secret_arn:
        return "API_AUTH_SECRET_ARN is set with API_AUTH_TYPE=none: set ApiAuthType to the secret's kind"
    return None


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
    # How long the lease outlives the budget: the round running at the deadline still has to finish.
    lease_margin_seconds: int = Field(default=300, ge=0)


class WakeSettings(LeaseSettings):
    """WakeDispatcher: the lease it reads (LeaseSettings) and the state machine it starts."""

    dispatcher_state_machine_arn: str
    ingest_queue_url: str  # a scheduled wake starts nothing while it is empty


class PlanSettings(Settings):
    stagger_seconds: float = Field(default=2.0, ge=0)  # base gap between two items of a batch
    max_stagger_seconds: int = Field(default=60, ge=0)
    # "prefix=priority" pairs, comma separated; 0 is most urgent. Keys matching none get the default.
    priority_prefixes: str = ""
    default_priority: int = Field(default=5, ge=0, le=9)


class MetadataSettings(Settings):
    """What every function that writes the metadata table reads: the table and the claim's length."""

    metadata_table: str
    # docs/metadata.md, The claim: metadata.CLAIM_SECONDS, at most metadata.MAX_VISIBILITY_SECONDS
    # (written out: importing metadata would load boto3 into PlanBatch's cold start; test_template
    # checks they agree)
    claim_seconds: int = Field(default=900, ge=10, le=43_200)


class RegisterSettings(MetadataSettings):
    """RegisterObject reads nothing more."""


class ValidateSettings(MetadataSettings):
    row_schema: str = "orders-v1"
    max_file_bytes: int = Field(default=5 * 1024**3, ge=1)
    # What the stack can deliver before a raw object leaves for Glacier (filecheck.Deliverable).
    api_rate_limit: float = Field(default=50.0, gt=0)
    api_rate_lateness_seconds: float = Field(default=DEFAULT_LATENESS_SECONDS, ge=0, le=1)
    raw_glacier_days: int = Field(default=30, ge=1)
    api_batch_size: int = Field(default=1, ge=1, le=MAX_BATCH_SIZE)  # the rate counts requests
    api_url: str = ""  # its {column} placeholders must name columns of every file (issue 12)

    @property
    def url_columns(self) -> tuple[str, ...]:
        """The columns ApiUrl's placeholders name, in order, each once."""
        return tuple(dict.fromkeys(URL_PLACEHOLDER.findall(self.api_url)))


class ProcessSettings(MetadataSettings):
    control_table: str
    idempotency_table: str
    processed_bucket: str
    row_schema: str = "orders-v1"
    stage: Stage
    api_mode: ApiMode = "http"
    api_url: str = ""  # with api_mode http: the endpoint (api_choice_problem says which are refused)
    api_method: ApiMethod = "POST"
    api_headers: str = ""  # a JSON object of static headers sent with every request
    api_auth_type: ApiAuthType = "none"
    api_auth_secret_arn: str = ""  # the secret's ARN; the credential itself is read at run time
    api_auth_secret_max_age_seconds: int = Field(default=300, ge=0)  # Powertools parameters cache
    api_batch_size: int = Field(
        default=1, ge=1, le=MAX_BATCH_SIZE
    )  # rows per request (a JSON array when > 1)
    # The API's policy as it documents it (template ApiRateLimit, ApiBurst, ApiMaxInFlight;
    # sluice/ratelimit.py paces the whole stack by it)
    api_rate_limit: float = Field(default=50.0, gt=0)  # requests per second, for the whole stack
    api_burst: int = Field(default=5, ge=0)  # requests tolerated at once beyond the rate; 0: strict spacing
    api_rate_form: RateForm = "token-bucket"  # or N = rate x window per window, sliding or fixed
    api_rate_window_seconds: float = Field(default=1.0, gt=0)  # the window of a window form
    api_max_in_flight: int = Field(default=0, ge=0)  # requests in flight, whole stack; 0: no cap
    concurrency_max: int = Field(default=1, ge=1)  # ProcessObject invocations at once, at most
    # slot → arrival lateness assumed until the stack has measured its own
    api_rate_lateness_seconds: float = Field(default=DEFAULT_LATENESS_SECONDS, ge=0, le=1)
    api_concurrency: int = Field(default=16, ge=1)  # worker threads (requests in flight) in one invocation
    api_timeout_seconds: float = Field(
        default=10.0, gt=0, le=MAX_API_TIMEOUT_SECONDS
    )  # or the stop, if sooner
    api_max_attempts: int = Field(default=5, ge=1)
    api_backoff_base_seconds: float = Field(default=0.5, gt=0)
    api_backoff_max_seconds: float = Field(default=20.0, gt=0)
    simulated_latency_min_seconds: float = Field(default=5.0, ge=0)
    simulated_latency_max_seconds: float = Field(default=30.0, ge=0)
    simulated_failure_rate: float = Field(default=0.05, ge=0, le=1)
    # stop taking rows this long before the timeout
    segment_safety_seconds: float = Field(
        default=30.0, ge=MIN_SEGMENT_SAFETY_SECONDS, le=MAX_SEGMENT_SAFETY_SECONDS
    )
    checkpoint_every_rows: int = Field(default=500, ge=1)
    # The downstream's shared circuit breaker (sluice/health.py)
    downstream_failure_threshold: int = Field(default=8, ge=1)  # failed attempts in a row: unhealthy
    downstream_probe_seconds: float = Field(default=5.0, gt=0)  # first probe this long after opening
    downstream_probe_max_seconds: float = Field(default=60.0, gt=0)  # probes back off to this
    alert_topic_arn: str = ""  # breaker opened / closed is published here; empty: not published

    def model_post_init(self, context: object) -> None:
        # RuntimeError, not ValueError: pydantic would wrap a ValueError into a location-less error.
        problem = (
            api_choice_problem(self.stage, self.api_mode, self.api_url)
            or batch_problem(self.api_batch_size, self.api_url)
            or headers_problem(self.api_headers)
            or api_auth_problem(self.api_auth_type, self.api_auth_secret_arn)
        )
        if problem:
            raise RuntimeError(f"ProcessSettings: {problem}")
        try:
            self.api_policy  # noqa: B018 - checks ApiRateForm's window against ApiRateLimit
        except ValueError as error:
            raise RuntimeError(f"ProcessSettings: API policy: {error}") from error
        if 0 < self.api_max_in_flight < self.concurrency_max:
            raise RuntimeError(
                f"ProcessSettings: API_MAX_IN_FLIGHT ({self.api_max_in_flight}) is below CONCURRENCY_MAX "
                f"({self.concurrency_max}): every invocation needs one request in flight at least"
            )

    @property
    def api_policy(self) -> ApiPolicy:
        return ApiPolicy(
            rate=self.api_rate_limit,
            burst=self.api_burst,
            form=self.api_rate_form,
            window_seconds=self.api_rate_window_seconds,
        )

    @property
    def api_in_flight_per_invocation(self) -> int:
        """ApiMaxInFlight is stack-wide; each invocation keeps to an equal share of it (at most
        CONCURRENCY_MAX run at once), so the sum holds without a shared counter (0: no cap)."""
        if not self.api_max_in_flight:
            return 0
        return self.api_max_in_flight // self.concurrency_max

    @property
    def extra_headers(self) -> dict[str, str]:
        """API_HEADERS, parsed (model_post_init has checked it)."""
        return dict(json.loads(self.api_headers)) if self.api_headers.strip() else {}


class OutputSettings(Settings):
    processed_bucket: str


class AlertSettings(Settings):
    """AlertNotifier: AlertTopic → email through the central SMTP server."""

    idempotency_table: str
    smtp_host: str = Field(min_length=1)
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str = ""  # empty: no AUTH
    smtp_password_secret: str = ""  # Secrets Manager ARN or name; the password itself is never in the env
    smtp_sender: str = Field(min_length=3)
    smtp_recipients: str = Field(min_length=3)  # comma separated
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    smtp_max_attempts: int = Field(default=4, ge=1, le=10)
    smtp_backoff_base_seconds: float = Field(default=1.0, gt=0)
    smtp_backoff_max_seconds: float = Field(default=8.0, gt=0)
    smtp_ca_file: str = ""  # a private CA bundle for the SMTP server's certificate; empty: system trust
    smtp_secret_max_age_seconds: int = Field(default=300, ge=0)  # Powertools parameters cache
    alert_idempotency_ttl_seconds: int = Field(default=86400, ge=60)  # covers SNS + Lambda async retries
    stack_name: str = ""  # named in the commands an alert suggests
    api_mode: ApiMode = "http"  # ProcessObject's: an alert of a simulating stack says so

    @property
    def recipients(self) -> list[str]:
        return [address.strip() for address in self.smtp_recipients.split(",") if address.strip()]


class RedriveSettings(Settings):
    """Redrive: dead letters back to where they can be processed again."""

    ingest_queue_url: str
    ingest_dlq_url: str
    ingest_rule_dlq_url: str = ""
    failure_destination_queue_url: str = ""
    dispatcher_state_machine_arn: str = ""
    redrive_rate_per_second: int = Field(default=50, ge=1, le=500)  # StartMessageMoveTask's limit is 500
    redrive_max_messages: int = Field(default=1000, ge=1)
    redrive_move_task_wait_seconds: float = Field(default=60.0, ge=0)


class ScaleSettings(Settings):
    """ScaleConcurrency: the setting it writes, what it reads, and the policy's knobs (docs/scaling.md)."""

    concurrency_parameter: str  # SSM parameter name; its value is a bare integer
    control_table: str  # its health#downstream item: the downstream's breaker (sluice/health.py)
    concurrency_min: int = Field(ge=1)
    concurrency_max: int = Field(ge=1)
    ingest_queue_url: str
    ingest_queue_name: str  # the QueueName dimension of the AWS/SQS metrics
    metrics_namespace: str = "Sluice"  # where ProcessObject's ApiThrottles, ApiRetries, RowsDelivered go
    powertools_service_name: str = "sluice"  # their `service` dimension (template Globals set it)
    api_rate_limit: float = Field(default=50.0, ge=0)  # ProcessObject's stack-wide limit; 0: never saturated
    api_concurrency: int = Field(default=16, ge=1)  # requests in flight per ProcessObject invocation
    files_per_worker: float = Field(default=1.0, gt=0)  # target = ceil(backlog / files_per_worker)
    max_step_up: int = Field(default=4, ge=1)  # an increase adds max(max_step_up, step_up_ratio x current)
    step_up_ratio: float = Field(default=0.5, ge=0)
    max_step_down: int = Field(default=2, ge=1)  # a drain removes max(max_step_down, ratio x current)
    step_down_ratio: float = Field(default=0.25, ge=0)
    age_boost_seconds: float = Field(default=300.0, ge=0)  # oldest message this old: the step grows...
    age_boost_factor: float = Field(default=2.0, ge=1)  # ...by this factor
    min_attempts: int = Field(default=20, ge=1)  # fewer API attempts than this: no ratio is trusted
    throttle_decrease_ratio: float = Field(default=0.05, gt=0, le=1)  # throttles / attempts: back off
    throttle_decrease_factor: float = Field(default=0.5, gt=0, lt=1)
    error_decrease_ratio: float = Field(default=0.10, gt=0, le=1)  # 5xx+timeouts / attempts: back off
    error_decrease_factor: float = Field(default=0.75, gt=0, lt=1)
    error_hold_ratio: float = Field(default=0.02, ge=0, le=1)  # errors this high, or a throttle: no increase
    saturation_ratio: float = Field(default=0.9, gt=0)  # attempts/s >= this x api_rate_limit: no increase
    backoff_cooldown_seconds: float = Field(default=60.0, ge=0)  # since the last change, before backing off
    step_cooldown_seconds: float = Field(default=120.0, ge=0)  # since the last change, before a backlog step
    down_hysteresis: int = Field(default=1, ge=0)  # drain only when current - target exceeds this
    health_window_seconds: int = Field(default=300, ge=60)  # how far back the health metrics are read

    def model_post_init(self, context: object) -> None:
        # RuntimeError, not ValueError: pydantic would wrap a ValueError into a location-less error.
        if self.concurrency_min > self.concurrency_max:
            raise RuntimeError(
                f"ScaleSettings: CONCURRENCY_MIN ({self.concurrency_min}) is above "
                f"CONCURRENCY_MAX ({self.concurrency_max})"
            )
