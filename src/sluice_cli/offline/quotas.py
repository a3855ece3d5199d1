"""AWS quotas the offline stack enforces where moto does not, answered the way AWS answers them.

A design that passes moto must not die on AWS: where a Sluice path can hit a quota, the offline
stack fails there too. Two seams:

- **Requests** (`QuotaGate.refuse`, called by the WSGI gateway before moto sees a request): S3 keys
  over 1,024 bytes, SQS messages over the queue's size in *bytes* (moto counts characters, and not
  the attributes), SNS messages over 256 KiB in bytes, SNS subjects that are empty or hold line
  breaks or control characters, Step Functions execution input over 256 KiB.
- **Step Functions executions** (`StepFunctionsQuotas`, patches on moto's ASL interpreter): moto
  has no option for these, so its classes are patched from this one module while a stack runs
  (installed at start, removed at stop, moto left as found), like `sns_bridge`:
  * the 25,000-event execution history: each execution's EventManager counts events as they are
    recorded; when event number 25,000 would be anything but ExecutionSucceeded, event 25,000 is
    ExecutionFailed with AWS's error and cause, and the execution stops there;
  * 256 KiB payloads: moto checks state output and task results, but with `<` (AWS allows exactly
    262,144 bytes) on `json.dumps` with spaces and `\\uXXXX` escapes (AWS counts compact UTF-8), and
    not state input nor task input; and its `States.ALL` matches `States.DataLimitExceeded`, which
    on AWS it does not (only a retrier or catcher naming the error takes it).

What moto already enforces as AWS does (SQS MaxNumberOfMessages 1..10, VisibilityTimeout ≤ 12 h,
DelaySeconds ≤ 900; SNS Subject ≤ 100 characters; DynamoDB's 400 KB item) is left to moto: the
tests in tests/integration/test_offline_quotas.py show each one.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlparse

from moto.sqs.models import sqs_backends
from moto.stepfunctions.parser.api import (
    ExecutionFailedEventDetails,
    HistoryEventType,
    TaskFailedEventDetails,
)
from moto.stepfunctions.parser.asl.component.common.error_name import error_equals_decl
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.state import state as state_module
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import iteration_worker
from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_lambda
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.eval.event.event_manager import EventHistoryContext, EventManager
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
from werkzeug.wrappers import Response

# -- the quotas (each documented in docs/offline.md, "Quotas enforced offline") ---------------------
# Step Functions, "Quotas related to state machine executions": hard quota, Standard workflows.
HISTORY_MAX_EVENTS: Final = 25_000
HISTORY_LIMIT_ERROR: Final = "States.Runtime"
# Step Functions, "Maximum input or output size for a task, state, or execution": 256 KiB.
PAYLOAD_MAX_BYTES: Final = 256 * 1024  # 262,144 bytes of UTF-8
DATA_LIMIT_ERROR: Final = "States.DataLimitExceeded"
# SQS SendMessage: "The maximum size is 1 MiB or 1,048,576 bytes" (the queue's MaximumMessageSize
# may be lower; body and message attributes count together).
SQS_MESSAGE_MAX_BYTES: Final = 1024 * 1024
# SNS Publish: "at most 256 KB in size (262,144 bytes, not 262,144 characters)".
SNS_MESSAGE_MAX_BYTES: Final = 256 * 1024
# S3: a key is "a sequence of Unicode characters whose UTF-8 encoding is at most 1,024 bytes long".
S3_KEY_MAX_BYTES: Final = 1024

_SQS_SENDS: Final = ("AmazonSQS.SendMessage", "AmazonSQS.SendMessageBatch")
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request")
# (event details, the payload in them, what names the state/task) for the inputs AWS checks.
_CHECKED_INPUTS: Final = (
    ("stateEnteredEventDetails", "input", "name"),
    ("taskScheduledEventDetails", "parameters", "resourceType"),
    ("lambdaFunctionScheduledEventDetails", "input", "resource"),
)
_TERMINAL_EVENTS = frozenset(
    {
        HistoryEventType.ExecutionSucceeded,
        HistoryEventType.ExecutionFailed,
        HistoryEventType.ExecutionAborted,
        HistoryEventType.ExecutionTimedOut,
    }
)


def _type_name(event_type: HistoryEventType) -> str:
    """'TaskScheduled', as GetExecutionHistory spells the type."""
    return str(getattr(event_type, "value", event_type))


def _details(**one: Any) -> EventDetails:
    """moto's EventDetails with its one key (moto's TypedDict declares every key required)."""
    return cast(EventDetails, one)


def _json_default(value: Any) -> str:
    """What moto's interpreter writes for values JSON has no type for (an SDK result's datetimes)."""
    return value.isoformat() if isinstance(value, (datetime.date, datetime.datetime)) else str(value)


def payload_size(value: Any) -> int:
    """Bytes of `value` as Step Functions measures a payload: compact JSON, UTF-8."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return len(text.encode("utf-8"))


def _serialised_size(serialised: str) -> int:
    """The payload size of a value moto already serialised (spaces, \\uXXXX escapes).

    That form is never smaller than the compact UTF-8 one, so short strings need no second pass.
    """
    if len(serialised) <= PAYLOAD_MAX_BYTES:
        return len(serialised)
    try:
        return payload_size(json.loads(serialised))
    except ValueError:
        return len(serialised.encode("utf-8"))


def is_within_payload_quota(value: Any) -> bool:
    """moto's `is_within_size_quota`, measured as AWS does and with AWS's bound (≤, not <)."""
    return payload_size(value) <= PAYLOAD_MAX_BYTES


def history_limit_cause(limit: int) -> str:
    """AWS's cause for an execution that reached its history quota (ExecutionFailed, States.Runtime)."""
    return f"The execution reached the maximum number of history events ({limit})."


class HistoryLimitReached(Exception):
    """Unwinds moto's interpreter once the execution has failed on its history quota."""


class QuotaEventManager(EventManager):
    """moto's EventManager for one execution, counting its events and enforcing the quotas.

    Events are the ones moto's interpreter records (its GetExecutionHistory returns them); moto's
    parser was built from AWS's recorded histories, so the types and their order follow AWS's.
    """

    def __init__(self, env: Environment, execution_arn: str, quotas: StepFunctionsQuotas) -> None:
        super().__init__(cloud_watch_logging_session=env.cloud_watch_logging_session)
        self._env = env
        self.execution_arn = execution_arn
        self._quotas = quotas
        self._count_lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failure: ExecutionFailedEventDetails | None = None

    def add_event(
        self,
        context: EventHistoryContext,
        event_type: HistoryEventType,
        event_details: EventDetails | None = None,
        timestamp: Any = None,
        update_source_event_id: bool = True,
    ) -> int:
        self._check_payload(event_type, event_details)
        with self._count_lock:
            if self.failure is not None:
                if event_type in _TERMINAL_EVENTS:
                    # moto's program ends with its own failure; the execution already failed on ours.
                    self._env.set_error(self.failure)
                    return self.total_unlocked()
                raise HistoryLimitReached(self.failure["cause"])
            limit = self._quotas.history_event_limit
            # AWS: at 24,999 events the execution waits for the next; if event 25,000 is not
            # ExecutionSucceeded, event 25,000 is ExecutionFailed and the execution fails.
            if self.total_unlocked() + 1 >= limit and event_type != HistoryEventType.ExecutionSucceeded:
                self.failure = ExecutionFailedEventDetails(
                    error=HISTORY_LIMIT_ERROR, cause=history_limit_cause(limit)
                )
                self._record(context, HistoryEventType.ExecutionFailed, self.failure)
                self._env.set_error(self.failure)
                raise HistoryLimitReached(self.failure["cause"])
            self.counts[_type_name(event_type)] += 1
            return super().add_event(context, event_type, event_details, timestamp, update_source_event_id)

    def total_unlocked(self) -> int:
        return sum(self.counts.values())

    def _record(
        self, context: EventHistoryContext, event_type: HistoryEventType, failure: ExecutionFailedEventDetails
    ) -> None:
        self.counts[_type_name(event_type)] += 1
        super().add_event(context, event_type, _details(executionFailedEventDetails=failure))

    def _check_payload(self, event_type: HistoryEventType, event_details: EventDetails | None) -> None:
        """State input on entering a state, task input on scheduling it: AWS checks both.

        A state's input is checked where moto records StateEntered, outside any Catch's reach; a
        task's where it records TaskScheduled / LambdaFunctionScheduled, inside the Task's own
        Retry/Catch (which, as on AWS, `States.ALL` does not match).
        """
        recorded: dict[str, Any] = dict(event_details or {})
        for details_key, payload_key, name_key in _CHECKED_INPUTS:
            details = recorded.get(details_key)
            if (
                details
                and payload_key in details
                and _serialised_size(details[payload_key]) > PAYLOAD_MAX_BYTES
            ):
                self._data_limit(
                    f"The state/task '{details.get(name_key)}' has an input with a size exceeding"
                )

    def _data_limit(self, cause_start: str) -> None:
        error = StatesErrorNameType.StatesStatesDataLimitExceeded
        raise FailureEventException(
            failure_event=FailureEvent(
                env=self._env,
                error_name=StatesErrorName(typ=error),
                event_type=HistoryEventType.TaskFailed,
                event_details=_details(
                    taskFailedEventDetails=TaskFailedEventDetails(
                        error=error.to_name(),
                        cause=f"{cause_start} the maximum number of bytes service limit.",
                    )
                ),
            )
        )


def _iteration_error_name(error_name: Any) -> Any:
    """The error a failed Map iteration passes to its Map state, keeping `States.` errors.

    moto wraps every iteration error in CustomErrorName, which refuses `States.` names, so a
    DataLimitExceeded (or Runtime, Timeout...) inside an iteration became a ValueError.
    """
    if str(error_name).startswith("States."):
        try:
            return StatesErrorName.from_name(str(error_name))
        except (KeyError, ValueError):
            return StatesErrorName(typ=StatesErrorNameType.StatesRuntime)
    return CustomErrorName(error_name)


class StepFunctionsQuotas:
    """The history and payload quotas on moto's interpreter, process-wide while installed.

    `history_event_limit` is AWS's 25,000 unless a test lowers it (a 25,000-event execution takes
    tens of seconds in moto); `history(arn)` gives an execution's events per type as counted.
    """

    _patched: Final[list[tuple[Any, str, Any]]]

    def __init__(self, history_event_limit: int = HISTORY_MAX_EVENTS) -> None:
        self.history_event_limit = history_event_limit
        self._managers: dict[str, QuotaEventManager] = {}
        self._lock = threading.Lock()
        self._patched = []

    # -- reading what was counted --------------------------------------------------------------------

    def history(self, execution_arn: str) -> Counter[str]:
        """The execution's history events per type, as recorded so far (KeyError if not seen)."""
        manager = self._managers[execution_arn]
        with manager._count_lock:
            return Counter(manager.counts)

    def history_event_count(self, execution_arn: str) -> int:
        return sum(self.history(execution_arn).values())

    # -- installing ----------------------------------------------------------------------------------

    def install(self) -> StepFunctionsQuotas:
        if self._patched:
            return self
        quotas = self
        original_environment = ExecutionWorker._get_evaluation_environment

        def evaluation_environment(worker: ExecutionWorker) -> Environment:
            env = original_environment(worker)
            arn = worker._evaluation_details.execution_details.arn
            manager = QuotaEventManager(env, arn, quotas)
            env.event_manager = manager
            with quotas._lock:
                quotas._managers[arn] = manager
            return env

        self._patch(ExecutionWorker, "_get_evaluation_environment", evaluation_environment)
        for module in (state_module, state_task_lambda, state_task_service):
            self._patch(module, "is_within_size_quota", is_within_payload_quota)

        original_error_equals = error_equals_decl.ErrorEqualsDecl._eval_body

        def error_equals(decl: Any, env: Environment) -> None:
            # AWS: "States.ALL ... can't catch the States.DataLimitExceeded terminal error"; naming it does.
            error_name = env.stack[-1]
            if (
                getattr(error_name, "error_name", None) == DATA_LIMIT_ERROR
                and error_equals_decl.ErrorEqualsDecl._STATE_ALL_ERROR in decl.error_names
            ):
                env.stack.pop()
                env.stack.append(False)
                return
            original_error_equals(decl, env)

        self._patch(error_equals_decl.ErrorEqualsDecl, "_eval_body", error_equals)
        self._patch(iteration_worker, "CustomErrorName", _iteration_error_name)
        return self

    def uninstall(self) -> None:
        while self._patched:
            owner, name, original = self._patched.pop()
            setattr(owner, name, original)
        with self._lock:
            self._managers.clear()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)


# -- requests --------------------------------------------------------------------------------------

Refusal = Response
QueueSizeLookup = Callable[[str, str], int | None]  # (region, queue URL) → MaximumMessageSize


def _sqs_error(code: str, message: str) -> Response:
    """SQS's JSON-protocol error (boto3 reads __type and the query-compatible code header)."""
    body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message})
    return Response(
        body,
        status=400,
        headers={"x-amzn-query-error": f"{code};Sender"},
        content_type="application/x-amz-json-1.0",
    )


def _sns_error(code: str, message: str) -> Response:
    body = (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>Sender</Type>'
        f"<Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    )
    return Response(body, status=400, content_type="text/xml")


def _s3_error(code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>0</RequestId></Error>"
    )
    return Response(body, status=400, content_type="application/xml")


def _states_error(code: str, message: str) -> Response:
    body = json.dumps({"__type": f"com.amazonaws.swf.service.v2.model#{code}", "message": message})
    return Response(body, status=400, content_type="application/x-amz-json-1.0")


def _attributes_size(attributes: Mapping[str, Any]) -> int:
    """Message attributes count toward SQS's and SNS's message size: name, type and value."""
    size = 0
    for name, attribute in attributes.items():
        size += len(name.encode("utf-8")) + len(str(attribute.get("DataType", "")).encode("utf-8"))
        for key in ("StringValue", "BinaryValue"):
            if (value := attribute.get(key)) is not None:
                size += len(value.encode("utf-8")) if isinstance(value, str) else len(value)
    return size


def _sns_attributes(form: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Publish's MessageAttributes.entry.N.{Name,Value.DataType,Value.StringValue} → a mapping."""
    attributes: dict[str, dict[str, str]] = {}
    for key, name in form.items():
        match = re.fullmatch(r"MessageAttributes\.entry\.(\d+)\.Name", key)
        if match:
            prefix = f"MessageAttributes.entry.{match.group(1)}.Value."
            attributes[name] = {
                field: form[prefix + field]
                for field in ("DataType", "StringValue", "BinaryValue")
                if prefix + field in form
            }
    return attributes


def _bad_subject(subject: str) -> bool:
    """SNS: "Subjects must be UTF-8 text with no line breaks or control characters" and not empty."""
    return not subject.strip() or any(unicodedata.category(char).startswith("C") for char in subject)


class QuotaGate:
    """Refuses, before moto sees them, the requests AWS refuses and moto accepts."""

    def __init__(self, queue_size: QueueSizeLookup | None = None) -> None:
        self._queue_size = queue_size

    def refuse(self, environ: dict[str, Any]) -> Response | None:
        scope = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        if scope is None:
            return None
        service, region = scope.group("service"), scope.group("region")
        method = environ.get("REQUEST_METHOD", "")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if service == "s3":
            return self._s3(environ, method)
        if method == "POST" and service == "sqs" and target in _SQS_SENDS:
            return self._sqs(target, _json_body(environ), region)
        if method == "POST" and service == "sns":
            return self._sns_publish(_form_body(environ))
        if method == "POST" and service == "states" and target == "AWSStepFunctions.StartExecution":
            return self._start_execution(_json_body(environ))
        return None

    def _start_execution(self, body: Mapping[str, Any]) -> Response | None:
        execution_input = body.get("input")
        if isinstance(execution_input, str) and len(execution_input.encode("utf-8")) > PAYLOAD_MAX_BYTES:
            return _states_error(
                "ValidationException",
                "1 validation error detected: Value at 'input' failed to satisfy constraint: "
                f"Member must have length less than or equal to {PAYLOAD_MAX_BYTES}",
            )
        return None

    def _s3(self, environ: dict[str, Any], method: str) -> Response | None:
        """PutObject, CopyObject (PUT with x-amz-copy-source), CreateMultipartUpload (POST ?uploads)."""
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        writes_key = (method == "PUT" and not query.keys() - {"partNumber", "uploadId", "versionId"}) or (
            method == "POST" and "uploads" in query
        )
        if not writes_key:
            return None
        _, _, key = unquote(environ.get("PATH_INFO", "")).lstrip("/").partition("/")
        if key and len(key.encode("utf-8")) > S3_KEY_MAX_BYTES:
            return _s3_error("KeyTooLongError", "Your key is too long.")
        return None

    def _sqs(self, target: str, body: Mapping[str, Any], region: str) -> Response | None:
        queue_url = str(body.get("QueueUrl", ""))
        limit = (self._queue_size(region, queue_url) if self._queue_size else None) or SQS_MESSAGE_MAX_BYTES
        entries = (body.get("Entries") or []) if target.endswith("Batch") else [body]
        sizes = [
            len(str(entry.get("MessageBody", "")).encode("utf-8"))
            + _attributes_size(entry.get("MessageAttributes") or {})
            for entry in entries
        ]
        if target.endswith("Batch") and sum(sizes) > SQS_MESSAGE_MAX_BYTES:
            return _sqs_error(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {SQS_MESSAGE_MAX_BYTES} bytes. "
                f"You have sent {sum(sizes)} bytes.",
            )
        if any(size > limit for size in sizes):
            return _sqs_error(
                "InvalidParameterValue",
                f"One or more parameters are invalid. Reason: Message must be shorter than {limit} bytes.",
            )
        return None

    def _sns_publish(self, form: Mapping[str, str]) -> Response | None:
        if form.get("Action") != "Publish":
            return None
        size = len(form.get("Message", "").encode("utf-8")) + _attributes_size(_sns_attributes(form))
        if size > SNS_MESSAGE_MAX_BYTES:
            return _sns_error("InvalidParameter", "Invalid parameter: Message too long")
        if "Subject" in form and _bad_subject(form["Subject"]):
            return _sns_error("InvalidParameter", "Invalid parameter: Subject")
        return None


def _read_body(environ: dict[str, Any]) -> bytes:
    """Read the request body and put it back, so moto reads the same bytes after us."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return bytes(body)


def _json_body(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        parsed = json.loads(_read_body(environ) or b"{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _form_body(environ: dict[str, Any]) -> dict[str, str]:
    fields = parse_qs(_read_body(environ).decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


def moto_queue_size(region: str, queue_url: str) -> int | None:
    """The queue's MaximumMessageSize from moto's backend (None if the queue is unknown)."""
    path = urlparse(queue_url).path.strip("/").split("/")
    if len(path) < 2:
        return None
    account, name = path[-2], path[-1]
    try:
        queue: Any = sqs_backends[account][region].get_queue(name)
        return int(queue.maximum_message_size)
    except Exception:  # an unknown queue: moto answers the request with its own error
        return None
