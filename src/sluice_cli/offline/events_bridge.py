"""EventBridge rule → Lambda in the offline stack: a rule's Lambda targets invoke the local runtime.

moto's `Rule.send_to_targets` delivers to SQS, CloudWatch Logs, archives and other buses; a
Lambda target raises NotImplementedError (its Lambda needs Docker), which moto's S3 notifications
swallow, so the rule's other targets after it would silently get nothing. The provisioner
therefore gives moto only the targets it can deliver to and hands the Lambda targets to this
bridge (`route`). While installed, `Rule.send_to_targets` is wrapped: moto delivers first, then
every Lambda target routed for that rule whose pattern matches the event is invoked
*asynchronously* through the local runtime, as EventBridge does, with the event (or the target's
constant `Input`) as its payload.

moto's backends are process-wide, so the wrapper is too: one bridge at a time, installed by the
stack at start and removed at stop, leaving moto as it found it (the same shape as sns_bridge).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from moto.events.models import Rule
from moto.events.utils import _BASE_EVENT_MESSAGE

logger = logging.getLogger(__name__)

InvokeAsync = Callable[[str, bytes], str]  # (function name or ARN, payload) → request id
_KEPT_DELIVERIES = 1000  # the latest ones, for tests and troubleshooting


@dataclass(frozen=True)
class Delivery:
    """One event handed to a function (request_id) or not (error)."""

    rule_arn: str
    function_arn: str
    event_id: str
    request_id: str | None = None
    error: str | None = None


def lambda_payload(event: dict[str, Any], target: dict[str, Any]) -> bytes:
    """What EventBridge invokes a Lambda target with: its constant Input, else the event itself.

    Two of moto's shortcuts are undone: it keeps `time` as epoch seconds until it delivers
    (EventBridge sends ISO-8601), and its S3 events all carry one constant `id` (EventBridge gives
    each event its own, which WakeDispatcher names its execution after): that one is replaced by
    an id derived from the event's content, so a redelivery of one event keeps its id.
    """
    if target.get("Input"):
        return str(target["Input"]).encode()
    body = {key: value for key, value in event.items() if key != "ingestion-time"}
    if isinstance(body.get("time"), int | float):
        body["time"] = datetime.fromtimestamp(body["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif "time" in body:
        body["time"] = str(body["time"])
    if body.get("id") == _BASE_EVENT_MESSAGE["id"]:
        content = json.dumps({k: v for k, v in body.items() if k != "id"}, sort_keys=True, default=str)
        body["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, content))
    return json.dumps(body, default=str).encode()


class EventsLambdaBridge:
    """Delivers matched events to the Lambda targets routed to it, while installed."""

    def __init__(self, invoke_async: InvokeAsync) -> None:
        self._invoke_async = invoke_async
        self._targets: dict[str, list[dict[str, Any]]] = {}  # rule ARN → its Lambda targets
        self._original: Callable[..., None] | None = None
        self._wrapper: Callable[..., None] | None = None
        self._lock = threading.Lock()
        self._deliveries: deque[Delivery] = deque(maxlen=_KEPT_DELIVERIES)

    def route(self, rule_arn: str, targets: list[dict[str, Any]]) -> None:
        """The Lambda targets of one rule (the provisioner's; moto never sees them)."""
        with self._lock:
            self._targets[rule_arn] = list(targets)

    def routes(self) -> dict[str, list[dict[str, Any]]]:
        """rule ARN → its Lambda targets, as routed."""
        with self._lock:
            return {arn: list(targets) for arn, targets in self._targets.items()}

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    @property
    def installed(self) -> bool:
        return self._wrapper is not None

    def install(self) -> Self:
        global _installed  # noqa: PLW0603 - the process-wide guard below
        with _install_lock:
            if _installed is not None:
                raise RuntimeError("an EventBridge → Lambda bridge is already installed in this process")
            original = Rule.send_to_targets
            bridge = self

            def send_to_targets(rule: Rule, original_event: Any, transform_input: bool = True) -> None:
                original(rule, original_event, transform_input)
                bridge._deliver(rule, original_event)

            Rule.send_to_targets = send_to_targets  # type: ignore[method-assign, assignment]
            self._original, self._wrapper = original, send_to_targets
            _installed = self
        return self

    def uninstall(self) -> None:
        """Put moto's method back (only if it is still this bridge's wrapper); safe to repeat."""
        global _installed  # noqa: PLW0603
        with _install_lock:
            if self._wrapper is None:
                return
            if Rule.send_to_targets is self._wrapper:
                Rule.send_to_targets = self._original  # type: ignore[method-assign, assignment]
            self._original = self._wrapper = None
            if _installed is self:
                _installed = None

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def _deliver(self, rule: Rule, event: dict[str, Any]) -> None:
        with self._lock:
            targets = self._targets.get(rule.arn, [])
        if not targets or rule.state != "ENABLED" or not rule.event_pattern.matches_event(event):  # type: ignore[arg-type]
            return
        for target in targets:
            function_arn = target["Arn"]
            payload = lambda_payload(event, target)
            event_id = str(json.loads(payload).get("id")) if not target.get("Input") else ""
            try:
                request_id = self._invoke_async(function_arn, payload)
            except Exception as error:  # no such function, or the runtime is stopping
                # EventBridge accepted the event; a delivery it cannot make does not fail the sender.
                logger.warning("EventBridge → Lambda delivery to %s failed: %s", function_arn, error)
                delivery = Delivery(rule.arn, function_arn, event_id, error=f"{error}")
            else:
                delivery = Delivery(rule.arn, function_arn, event_id, request_id=request_id)
            with self._lock:
                self._deliveries.append(delivery)


_installed: EventsLambdaBridge | None = None
_install_lock = threading.Lock()
