"""What arrives on AlertTopic, rendered as a plain-text email an on-call engineer can act on.

Four shapes arrive on the topic:

- CloudWatch alarm state changes (`AlarmName`, `NewStateValue`, `NewStateReason`, `Trigger`),
- Sluice's own file alerts, published by the dispatcher state machine (`FileAlert`),
- EventBridge "Step Functions Execution Status Change" events (FAILED, TIMED_OUT, ABORTED),
- anything else, rendered as it came.

Each becomes a subject that says what fired ("[Sluice ALARM] IngestDLQ not empty") and a body with
its state and reason, the file or execution, and the commands that help. Rendering never fails:
a message that does not parse as one of the known shapes is sent raw.

What a message carries (an object key, a reason, an error's cause, the raw message itself) is
written by whoever named the file or raised the error, so it is rendered inert: control and
format characters (newlines, CR, tabs, ANSI escapes, bidi overrides, zero-width characters) are
shown escaped (`\n`, `\x1b`, `\u202e`) and every value is cut to a bounded length, so that no
value can start a line of its own (a forged "What to do:") or repaint the reader's terminal.
"""

import json
import re
import unicodedata
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sluice.bounds import bounded
from sluice.models import ObjectRef
from sluice.schemas import GUIDE as SCHEMA_GUIDE

RUNBOOK = "docs/operations.md"
# Logical ids of the stack's functions: their deployed names contain them (CloudFormation naming).
FUNCTION_LOGICAL_IDS = (
    "DispatcherLeaseFunction",
    "PlanBatchFunction",
    "RegisterObjectFunction",
    "ValidateObjectFunction",
    "ProcessObjectFunction",
    "WriteOutputFunction",
    "AlertNotifierFunction",
    "RedriveFunction",
    "ScaleConcurrencyFunction",
    "WakeDispatcherFunction",
)
EXECUTION_STATUS_CHANGE = "Step Functions Execution Status Change"
FILE_ALERT_EVENTS = {"file.invalid": "file_invalid", "file.failed_for_good": "file_failed"}
# The stack-wide breaker's announcements (sluice.health), event → subject.
DOWNSTREAM_EVENTS = {
    "downstream.unhealthy": "Downstream unhealthy",
    "downstream.recovered": "Downstream recovered",
}
_SUBJECT_MAX = 200
# One rendered value: an S3 key is at most 1,024 bytes, so a key fits whole unless escapes
# lengthen it; a longer reason or cause is in the function's logs.
_VALUE_MAX = 1_500
_RAW_MAX = 20_000  # the raw message shown (SNS allows 256 KiB; the rest is in the topic's logs)


@dataclass(frozen=True)
class Notification:
    """One SNS message as the notifier received it (the idempotency key is `message_id`)."""

    message_id: str
    message: str
    subject: str = ""
    topic_arn: str = ""
    timestamp: str = ""


@dataclass(frozen=True)
class RenderedAlert:
    kind: Literal["alarm", "file_invalid", "file_failed", "execution", "downstream", "raw"]
    subject: str
    body: str


class FileAlert(BaseModel):
    """The dispatcher's alert for a file that ended INVALID or failed for good.

    Two spellings are read: `{"kind": "file_invalid" | "file_failed", "reason": ...}` and the state
    machine's `{"event": "file.invalid" | "file.failed_for_good", "reason" | "error" + "cause": ...}`.
    """

    kind: Literal["file_invalid", "file_failed"]
    object: ObjectRef
    reason: str = ""
    execution: str | None = None  # execution name or ARN that gave up on it
    attempt: int | None = None
    stage: str | None = None  # the state that decided, e.g. "Validate object"
    message_id: str | None = None  # the IngestQueue message of the object version
    receive_count: int | None = None
    next: str | None = None  # where the message goes now, e.g. "IngestDLQ"

    @model_validator(mode="before")
    @classmethod
    def _from_state_machine(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" not in data and data.get("event") in FILE_ALERT_EVENTS:
            cause = lambda_error_message(data["cause"]) if data.get("cause") else None
            error = ": ".join(str(part) for part in (data.get("error"), cause) if part)
            # Bounded: a Step Functions Cause may be 32 KiB, an email says what it is in 1 KiB.
            reason = bounded(str(data.get("reason") or error))
            data = {**data, "kind": FILE_ALERT_EVENTS[data["event"]], "reason": reason}
        return data


class DownstreamNotice(BaseModel):
    """ProcessObject's announcement that the stack-wide breaker opened or closed (sluice.health)."""

    event: Literal["downstream.unhealthy", "downstream.recovered"]
    reason: str = ""
    at: float  # epoch seconds of the transition

    @property
    def subject(self) -> str:
        return DOWNSTREAM_EVENTS[self.event]

    @property
    def opened(self) -> bool:
        return self.event == "downstream.unhealthy"


def lambda_error_message(cause: Any) -> str:
    """A Step Functions task failure's Cause, readable: a Lambda error document (errorType,
    errorMessage, stackTrace) becomes its message; the stack trace stays in the function's logs."""
    try:
        document = json.loads(cause) if isinstance(cause, str) else cause
    except ValueError:
        return str(cause)
    if isinstance(document, dict) and document.get("errorMessage"):
        return str(document["errorMessage"])
    return str(cause)


class AlarmDimension(BaseModel):
    name: str
    value: str


class AlarmTrigger(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    metric_name: str | None = Field(default=None, alias="MetricName")
    namespace: str | None = Field(default=None, alias="Namespace")
    statistic: str | None = Field(default=None, alias="Statistic")
    dimensions: list[AlarmDimension] = Field(default_factory=list, alias="Dimensions")
    comparison_operator: str | None = Field(default=None, alias="ComparisonOperator")
    threshold: float | None = Field(default=None, alias="Threshold")
    period: int | None = Field(default=None, alias="Period")
    evaluation_periods: int | None = Field(default=None, alias="EvaluationPeriods")
    metrics: list[dict[str, Any]] = Field(default_factory=list, alias="Metrics")  # metric math alarms

    def dimension_map(self) -> dict[str, str]:
        named = {d.name: d.value for d in self.dimensions}
        for query in self.metrics:  # metric math: the dimensions live in each MetricStat
            metric = (query.get("MetricStat") or {}).get("Metric") or {}
            for dimension in metric.get("Dimensions") or []:
                named.setdefault(str(dimension.get("name")), str(dimension.get("value")))
        return named

    def namespaces(self) -> set[str]:
        found = {self.namespace} if self.namespace else set()
        for query in self.metrics:
            metric = (query.get("MetricStat") or {}).get("Metric") or {}
            if metric.get("Namespace"):
                found.add(str(metric["Namespace"]))
        return found


class CloudWatchAlarm(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    alarm_name: str = Field(alias="AlarmName")
    alarm_description: str | None = Field(default=None, alias="AlarmDescription")
    new_state: str = Field(alias="NewStateValue")
    old_state: str | None = Field(default=None, alias="OldStateValue")
    reason: str = Field(default="", alias="NewStateReason")
    changed_at: str | None = Field(default=None, alias="StateChangeTime")
    region: str | None = Field(default=None, alias="Region")
    account: str | None = Field(default=None, alias="AWSAccountId")
    trigger: AlarmTrigger | None = Field(default=None, alias="Trigger")


class ExecutionStatusChange(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    execution_arn: str = Field(alias="executionArn")
    state_machine_arn: str = Field(default="", alias="stateMachineArn")
    name: str = ""
    status: str
    start_date: int | None = Field(default=None, alias="startDate")
    stop_date: int | None = Field(default=None, alias="stopDate")
    error: str | None = None
    cause: str | None = None


SIMULATED_API_LINE = "API: simulated (no row left the stack)"


def render_alert(
    notification: Notification, *, stack_name: str = "", api_mode: str = "http"
) -> RenderedAlert:
    """The email for one AlertTopic message; falls back to the raw message, never raises.
    A stack on the simulated API (ApiMode) says so first: its "delivered" rows reached no one."""
    alert = _render(notification, stack_name)
    if api_mode == "simulated":
        return replace(alert, body=f"{SIMULATED_API_LINE}\n\n{alert.body}")
    return alert


def _render(notification: Notification, stack_name: str) -> RenderedAlert:
    try:
        document = json.loads(notification.message)
    except ValueError:
        document = None
    if isinstance(document, dict):
        for render in (_render_alarm, _render_file_alert, _render_execution, _render_downstream):
            alert = render(document, notification, stack_name)
            if alert is not None:
                return alert
    return _render_raw(document, notification, stack_name)


def to_email(
    alert: RenderedAlert, notification: Notification, *, sender: str, recipients: list[str]
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = _safe(alert.subject, _SUBJECT_MAX)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(usegmt=True)
    # The SNS MessageId names the mail, so a resend after a failed attempt threads as the same alert.
    message["Message-ID"] = f"<{_token(notification.message_id)}@sluice.alerts>"
    message["X-Sluice-Alert-Kind"] = alert.kind
    message.set_content(alert.body)
    return message


# --- the five shapes ------------------------------------------------------------------------


def _render_alarm(document: dict, notification: Notification, stack_name: str) -> RenderedAlert | None:
    if "AlarmName" not in document or "NewStateValue" not in document:
        return None
    try:
        alarm = CloudWatchAlarm.model_validate(document)
    except ValidationError:
        return None
    description = (alarm.alarm_description or "").strip()
    title, _, meaning = description.partition("\n")
    title = title.strip() or alarm.alarm_name
    facts = [
        ("What fired", f'CloudWatch alarm "{alarm.alarm_name}"'),
        ("State", f"{alarm.new_state} (was {alarm.old_state or 'unknown'})"),
        ("Reason", alarm.reason or "-"),
        ("Metric", _describe_metric(alarm.trigger) if alarm.trigger else "-"),
        ("When", alarm.changed_at or notification.timestamp or "-"),
        ("Account", " / ".join(filter(None, [alarm.account, alarm.region])) or "-"),
    ]
    if alarm.new_state == "OK":
        advice = ["Nothing to do: the alarm has recovered."]
        commands = [_status(stack_name)]
    else:
        advice = [line.strip() for line in meaning.strip().splitlines() if line.strip()]
        commands = _alarm_commands(alarm, stack_name)
    body = _body(facts, advice, commands, notification, anchor=_anchor(title))
    return RenderedAlert("alarm", f"[Sluice {alarm.new_state}] {title}", body)


def _render_file_alert(document: dict, notification: Notification, stack_name: str) -> RenderedAlert | None:
    if (
        document.get("kind") not in ("file_invalid", "file_failed")
        and document.get("event") not in FILE_ALERT_EVENTS
    ):
        return None
    try:
        alert = FileAlert.model_validate(document)
    except ValidationError:
        return None
    ref = alert.object
    state = "INVALID" if alert.kind == "file_invalid" else "FAILED"
    facts = [
        ("What fired", f"file {state}"),
        ("File", f"s3://{ref.bucket}/{ref.key} (version {ref.version_id or 'null'}, {ref.size} bytes)"),
        ("Object id", ref.id),
        ("Reason", alert.reason or "-"),
        ("Stage", alert.stage or "-"),
        ("Attempt", str(alert.attempt) if alert.attempt is not None else "-"),
        ("Execution", alert.execution or "-"),
        ("SQS message", _message_fact(alert)),
    ]
    if alert.kind == "file_invalid":
        advice = [
            "The file can never succeed as it is, so it is not retried.",
            "Fix it at the source and upload it again: the new object version is processed afresh.",
            f"A CSV of another layout: {SCHEMA_GUIDE} lists the columns RowSchema expects and how to "
            "send yours (RowSchema=passthrough, or a schema of your own).",
        ]
        commands = [_status(stack_name), _logs("ValidateObjectFunction", stack_name)]
        anchor = "file-invalid"
    else:
        advice = [
            "Sluice gave up on this file after its retries; its rows delivered so far are kept.",
            f"Its message is {'now in ' + alert.next if alert.next else 'on its way to IngestDLQ'}.",
            "Find the cause in the logs; once fixed, send its message back for another attempt.",
        ]
        commands = [
            _logs("ProcessObjectFunction", stack_name),
            _redrive(stack_name, "ingest-dlq", dry_run=True),
            _redrive(stack_name, "ingest-dlq"),
        ]
        anchor = "file-failed"
    body = _body(facts, advice, commands, notification, anchor=anchor)
    return RenderedAlert(alert.kind, f"[Sluice] File {state}: {ref.key}", body)


def _render_execution(document: dict, notification: Notification, stack_name: str) -> RenderedAlert | None:
    if document.get("detail-type") != EXECUTION_STATUS_CHANGE:
        return None
    try:
        event = EventBridgeModel.model_validate(document)
        detail = ExecutionStatusChange.model_validate(event.detail)
    except ValidationError:
        return None
    facts = [
        ("What fired", "dispatcher execution status change"),
        ("State", detail.status),
        ("Reason", " - ".join(filter(None, [detail.error, detail.cause])) or "-"),
        ("Execution", detail.execution_arn),
        ("State machine", detail.state_machine_arn or "-"),
        ("When", event.time.isoformat()),
    ]
    advice = [
        "The messages this execution held become visible again in IngestQueue after their",
        "visibility timeout and the next scheduled execution takes them: nothing is lost.",
        "Redrive the execution if its in-flight files should finish now rather than later.",
    ]
    commands = [
        _status(stack_name),
        f"aws stepfunctions get-execution-history --execution-arn {detail.execution_arn} --reverse-order",
        _redrive(stack_name, "executions", dry_run=True),
    ]
    body = _body(facts, advice, commands, notification, anchor="dispatcher-executions-failed")
    name = detail.name or detail.execution_arn.rsplit(":", 1)[-1]
    return RenderedAlert("execution", f"[Sluice] Dispatcher execution {detail.status}: {name}", body)


def _render_downstream(document: dict, notification: Notification, stack_name: str) -> RenderedAlert | None:
    if document.get("event") not in DOWNSTREAM_EVENTS:
        return None
    try:
        notice = DownstreamNotice.model_validate(document)
    except ValidationError:
        return None
    facts = [
        ("What fired", f"the downstream API marked {'unhealthy' if notice.opened else 'healthy again'}"),
        ("Reason", notice.reason or "-"),
        ("When", datetime.fromtimestamp(notice.at, UTC).isoformat(timespec="seconds")),
    ]
    if notice.opened:
        advice = [
            "Delivery is paused for the whole stack: rows are neither rejected nor failed, and",
            "files in flight checkpoint and wait. One request at a time probes the API; the first",
            'answer resumes delivery by itself and sends "Downstream recovered".',
            "Fix the credential or ApiUrl if the reason names one, or wait for the API's owner.",
        ]
        commands = [_logs("ProcessObjectFunction", stack_name), _status(stack_name)]
    else:
        advice = ["Nothing to do: delivery has resumed; the paused files finish by themselves."]
        commands = [_status(stack_name)]
    body = _body(facts, advice, commands, notification, anchor="downstream-api-unhealthy")
    return RenderedAlert("downstream", f"[Sluice] {notice.subject}", body)


def _render_raw(document: Any, notification: Notification, stack_name: str) -> RenderedAlert:
    text = json.dumps(document, indent=2, sort_keys=True) if document is not None else notification.message
    facts = [
        ("What fired", "a message on AlertTopic of no known shape"),
        ("Topic", notification.topic_arn or "-"),
    ]
    # Line by line, so that each is indented and made safe like any other line of the body.
    shown = text[:_RAW_MAX].splitlines()
    if len(text) > _RAW_MAX:
        shown.append(f"... ({len(text) - _RAW_MAX} characters more)")
    advice = ["The message as it came:", "", *shown]
    body = _body(facts, advice, [_status(stack_name)], notification, anchor=None)
    subject = f"[Sluice] {_one_line(notification.subject) or 'Alert'}"
    return RenderedAlert("raw", subject, body)


# --- pieces ---------------------------------------------------------------------------------


def _message_fact(alert: FileAlert) -> str:
    if not alert.message_id:
        return "-"
    received = f", received {alert.receive_count} time(s)" if alert.receive_count is not None else ""
    return f"{alert.message_id}{received}"


def _alarm_commands(alarm: CloudWatchAlarm, stack_name: str) -> list[str]:
    trigger = alarm.trigger or AlarmTrigger()
    dimensions = trigger.dimension_map()
    namespaces = trigger.namespaces()
    haystack = _squash(" ".join([alarm.alarm_name, *dimensions.values()]))
    if "AWS/SQS" in namespaces or "dlq" in haystack or "queue" in haystack:
        if "failuredestination" in haystack:
            source = "failure-destination"
        elif "ruledlq" in haystack:
            source = "rule-dlq"
        elif "dlq" in haystack:
            source = "ingest-dlq"
        else:
            return [_status(stack_name), _logs("ProcessObjectFunction", stack_name)]
        return [_status(stack_name), _redrive(stack_name, source, dry_run=True), _redrive(stack_name, source)]
    if "AWS/Lambda" in namespaces or "FunctionName" in dimensions:
        function = _function_logical_id(dimensions.get("FunctionName", "")) or _function_logical_id(
            alarm.alarm_name
        )
        target = function or dimensions.get("FunctionName", "ProcessObjectFunction")
        return [_logs(target, stack_name), _status(stack_name)]
    if "AWS/States" in namespaces or "statemachine" in haystack or "dispatcher" in haystack:
        return [_status(stack_name), _redrive(stack_name, "executions", dry_run=True)]
    if "apithrottles" in haystack or "throttle" in haystack:
        return [_status(stack_name), _logs("ProcessObjectFunction", stack_name)]
    return [_status(stack_name)]


def _function_logical_id(name: str) -> str | None:
    squashed = _squash(name)
    for logical_id in FUNCTION_LOGICAL_IDS:
        if _squash(logical_id) in squashed:
            return logical_id
    return None


def _describe_metric(trigger: AlarmTrigger) -> str:
    if not trigger.metric_name:
        names = [
            str(
                ((q.get("MetricStat") or {}).get("Metric") or {}).get("MetricName")
                or q.get("Expression")
                or ""
            )
            for q in trigger.metrics
        ]
        return "metric math: " + ", ".join(n for n in names if n) if names else "-"
    dimensions = ", ".join(f"{d.name}={d.value}" for d in trigger.dimensions)
    text = f"{trigger.namespace} {trigger.metric_name}" + (f" ({dimensions})" if dimensions else "")
    if trigger.comparison_operator and trigger.threshold is not None:
        operator = _OPERATORS.get(trigger.comparison_operator, trigger.comparison_operator)
        text += f", {trigger.statistic or 'value'} {operator} {trigger.threshold:g}"
    if trigger.evaluation_periods and trigger.period:
        text += f" for {trigger.evaluation_periods} x {trigger.period} s"
    return text


_OPERATORS = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": ">=",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "<=",
}


def _body(
    facts: list[tuple[str, str]],
    advice: list[str],
    commands: list[str],
    notification: Notification,
    *,
    anchor: str | None,
) -> str:
    """Every line of the body; each value made safe here, where it becomes a line (`_safe`)."""
    width = max(len(label) for label, _ in facts) + 2
    lines = [f"{label + ':':<{width}} {_safe(value)}" for label, value in facts]
    if advice:
        lines += ["", "What it means:", *(f"  {_safe(line)}" if line else "" for line in advice)]
    lines += ["", "What to do:", *(f"  {_safe(command)}" for command in commands)]
    lines += ["", f"Runbook: {RUNBOOK}" + (f"#{anchor}" if anchor else "")]
    lines += [
        "",
        f"-- alert {_safe(notification.message_id)} on {_safe(notification.topic_arn or 'AlertTopic')}",
    ]
    return "\n".join(lines) + "\n"


def _status(stack_name: str) -> str:
    return f"sluice status --stack-name {stack_name}" if stack_name else "sluice status"


def _redrive(stack_name: str, source: str, *, dry_run: bool = False) -> str:
    where = f" --stack-name {stack_name}" if stack_name else ""
    return f"sluice redrive --source {source}{' --dry-run' if dry_run else ''}{where}"


def _logs(function: str, stack_name: str) -> str:
    if stack_name:
        return f"sam logs --tail --stack-name {stack_name} -n {function}"
    return f"sluice logs -f {function}"


def _anchor(title: str) -> str:
    """The runbook heading of an alarm title; one heading serves every function's alarm of a kind
    ("ProcessObjectFunction errors" → #function-errors)."""
    for logical_id in FUNCTION_LOGICAL_IDS:
        title = title.replace(logical_id, "Function")
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _one_line(text: str) -> str:
    return " ".join(text.split())


# Shown as themselves: the reader knows them; the rest as \xNN or \uNNNN.
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Cc: C0/C1 controls (ESC starts ANSI sequences); Cf: format (bidi overrides and isolates,
# zero-width); Zl/Zp: U+2028/U+2029, which str.splitlines and some mail readers break lines at.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _safe(text: str, limit: int = _VALUE_MAX) -> str:
    """`text` inert on one line: control and format characters escaped, at most `limit` characters."""
    head = text[: limit + 1]  # escaping only lengthens: nothing past here can be shown
    shown = "".join(_escape(char) for char in head)
    if len(shown) <= limit and len(head) == len(text):
        return shown
    return shown[: limit - 1] + "…"


def _escape(char: str) -> str:
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "", text) or "unknown"
