"""The Powertools singletons every function shares: one Logger, one Tracer, one Metrics.

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME and
POWERTOOLS_METRICS_NAMESPACE (set in the template's Globals), so tests and the offline stack can
set them too. Handlers decorate with these; domain modules log through `logger` and count through
`metrics` without knowing which function they run in.
"""

import functools
import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from sluice.bounds import MAX_REASON_CHARS, bounded

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "sluice")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Sluice")

# Defaults as the template sets them, so that importing this module outside Lambda (a test, the
# CLI) never yields a Metrics without a namespace, which fails at flush.
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)

__all__ = ["MetricUnit", "bounded_errors", "logger", "metrics", "tracer"]

Handler = Callable[[Any, Any], Any]


def bounded_errors(handler: Handler) -> Handler:
    """A handler's unhandled exception re-raised with a bounded message and a one-frame stack.

    Lambda answers an unhandled exception with its errorMessage, errorType and stackTrace, and
    Step Functions carries that JSON as the error's `Cause` into the Map item's state (bounded
    there only at 32,768 characters; JSONPath cannot cut a string). So the bound is set here:
    the message at most MAX_REASON_CHARS ("…(+N more characters)"), the stack this frame only.
    The error keeps its type's name, which the state machine's Retry and Catch match, and its
    class where Python allows a subclass of it. The whole exception is logged first.
    Apply outermost, above the Powertools decorators, so that their frames are not in the stack.
    """

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> Any:
        try:
            return handler(event, context)
        except Exception as error:
            logger.exception("Unhandled error", extra={"error_type": type(error).__name__})
            raise _bounded(error).with_traceback(None) from None

    return wrapper


def _bounded(error: Exception) -> Exception:
    message = str(error)
    if len(message) <= MAX_REASON_CHARS:
        return error
    kind = type(error)
    plain = {
        "__module__": kind.__module__,
        "__init__": BaseException.__init__,
        "__str__": BaseException.__str__,
    }
    try:
        return type(kind.__name__, (kind,), plain)(bounded(message))
    except TypeError:  # a class built in C whose constructor wants more (pydantic's ValidationError)
        return type(kind.__name__, (Exception,), {"__module__": kind.__module__})(bounded(message))
