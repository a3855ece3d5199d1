"""SNS → Lambda in the offline stack: a topic's lambda subscriptions invoke the local runtime.

moto stores lambda-protocol subscriptions but delivers to them through its own Lambda backend,
which needs Docker, with an event whose MessageId and TopicArn are constants
(`send_sns_message`): useless for AlertNotifier, which is idempotent on the MessageId. While a
stack runs, `moto.sns.models.Subscription.publish` is wrapped: for protocol "lambda" it builds the
event SNS sends to Lambda and invokes the function *asynchronously* through the local runtime, as
SNS does (the runtime retries a failed invocation, then sends the record to the function's
failure destination). Every other protocol keeps moto's own delivery.

moto's backends are process-wide, so the wrapper is too: one bridge at a time, installed by the
stack at start and removed at stop, leaving moto as it found it.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from moto.sns.models import Subscription

logger = logging.getLogger(__name__)

InvokeAsync = Callable[[str, bytes], str]  # (function name or ARN, payload) → request id
_KEPT_DELIVERIES = 1000  # the latest ones, for tests and troubleshooting


@dataclass(frozen=True)
class PublishCall:
    """The arguments of moto's `Subscription.publish` (bound by name, however they were passed)."""

    message: str
    message_id: str
    subject: str | None = None
    message_attributes: dict[str, Any] | None = None
    group_id: str | None = None
    deduplication_id: str | None = None
    message_structure: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One SNS message handed to a function (request_id) or not (error)."""

    subscription_arn: str
    function_arn: str
    message_id: str
    request_id: str | None = None
    error: str | None = None


def lambda_event(
    subscription: Subscription,
    message: str,
    message_id: str,
    subject: str | None,
    message_attributes: dict[str, Any] | None,
) -> dict[str, Any]:
    """The event SNS invokes a subscribed function with (one record per message).

    Its Timestamp and signature fields come from moto's own notification body, the one an SQS or
    HTTP subscriber of the same topic receives; the Lambda event spells two of them differently
    (SigningCertUrl, UnsubscribeUrl) and has Subject null rather than absent.
    """
    notification = subscription.get_post_data(
        message, message_id, subject, message_attributes=message_attributes
    )
    region = subscription.topic_arn.split(":")[3]
    return {
        "Records": [
            {
                "EventVersion": "1.0",
                "EventSubscriptionArn": subscription.arn,
                "EventSource": "aws:sns",
                "Sns": {
                    "SignatureVersion": notification["SignatureVersion"],
                    "Timestamp": notification["Timestamp"],
                    "Signature": notification["Signature"],
                    "SigningCertUrl": notification["SigningCertURL"],
                    "MessageId": message_id,
                    "Message": message,
                    # moto already holds them in SNS's delivery shape: {"Type": ..., "Value": ...}
                    "MessageAttributes": dict(message_attributes or {}),
                    "Type": "Notification",
                    "UnsubscribeUrl": (
                        f"https://sns.{region}.amazonaws.com/?Action=Unsubscribe"
                        f"&SubscriptionArn={subscription.arn}"
                    ),
                    "TopicArn": subscription.topic_arn,
                    "Subject": subject or None,
                },
            }
        ]
    }


class SnsLambdaBridge:
    """Delivers SNS messages to lambda subscriptions through `invoke_async`, while installed."""

    def __init__(self, invoke_async: InvokeAsync) -> None:
        self._invoke_async = invoke_async
        self._original: Callable[..., None] | None = None
        self._wrapper: Callable[..., None] | None = None
        self._lock = threading.Lock()
        self._deliveries: deque[Delivery] = deque(maxlen=_KEPT_DELIVERIES)

    @property
    def installed(self) -> bool:
        return self._wrapper is not None

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def install(self) -> Self:
        global _installed  # noqa: PLW0603 - the process-wide guard below
        with _install_lock:
            if _installed is not None:
                raise RuntimeError("an SNS → Lambda bridge is already installed in this process")
            original = Subscription.publish
            signature = inspect.signature(original)
            bridge = self

            def publish(subscription: Subscription, *args: Any, **kwargs: Any) -> None:
                if subscription.protocol != "lambda":
                    original(subscription, *args, **kwargs)
                    return
                call = signature.bind(subscription, *args, **kwargs)
                call.apply_defaults()
                bridge._deliver(
                    subscription, PublishCall(**{k: v for k, v in call.arguments.items() if k != "self"})
                )

            Subscription.publish = publish  # type: ignore[method-assign, assignment]
            self._original, self._wrapper = original, publish
            _installed = self
        return self

    def uninstall(self) -> None:
        """Put moto's method back (only if it is still this bridge's wrapper); safe to repeat."""
        global _installed  # noqa: PLW0603
        with _install_lock:
            if self._wrapper is None:
                return
            if Subscription.publish is self._wrapper:
                Subscription.publish = self._original  # type: ignore[method-assign, assignment]
            self._original = self._wrapper = None
            if _installed is self:
                _installed = None

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def _deliver(self, subscription: Subscription, call: PublishCall) -> None:
        # What moto's publish checks first, kept in the same order: the filter policy, then the
        # per-protocol message of a MessageStructure=json publish.
        message = call.message
        matcher = getattr(subscription, "_filter_policy_matcher", None)
        if matcher is not None and not matcher.matches(call.message_attributes, message):
            return
        if call.message_structure == "json":
            message = subscription._parse_message_structure(message, subscription.protocol)
        event = lambda_event(subscription, message, call.message_id, call.subject, call.message_attributes)
        function_arn = subscription.endpoint
        try:
            request_id = self._invoke_async(function_arn, json.dumps(event).encode())
        except Exception as error:  # no such function, or the runtime is stopping
            # SNS accepted the message; a delivery it cannot make does not fail the publisher.
            logger.warning(
                "SNS → Lambda delivery of %s to %s failed: %s", call.message_id, function_arn, error
            )
            failure = f"{type(error).__name__}: {error}"
            delivery = Delivery(subscription.arn, function_arn, call.message_id, error=failure)
        else:
            delivery = Delivery(subscription.arn, function_arn, call.message_id, request_id=request_id)
        with self._lock:
            self._deliveries.append(delivery)


_installed: SnsLambdaBridge | None = None
_install_lock = threading.Lock()
