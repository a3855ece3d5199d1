"""A handler's unhandled exception, answered by the offline stack's Lambda runtime (awslambdaric):
the error document Step Functions carries as the Cause stays bounded whatever the message."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.stacks import REPO
from sluice.bounds import MAX_REASON_CHARS
from sluice_cli.offline.lambda_runtime import FunctionSpec, LambdaRuntime

MESSAGE_CHARS = 100_000
CAUSE_BOUND = 2048  # the message's 1 KiB, one stack frame, the type and the request id

HANDLER = '''
from sluice.observability import bounded_errors


class IdempotencyAlreadyInProgressError(Exception):
    """Named as Powertools' error, which the state machine retries by this name."""


def deep(depth):
    if depth:
        return deep(depth - 1)
    raise IdempotencyAlreadyInProgressError("x" * {chars})


@bounded_errors
def bounded_handler(event, context):
    return deep(50)
'''


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LambdaRuntime]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(textwrap.dedent(HANDLER.format(chars=MESSAGE_CHARS)))
    subject = LambdaRuntime(endpoint_url="http://127.0.0.1:9", log_dir=tmp_path / "logs")
    subject.start()
    subject.register(
        FunctionSpec(
            logical_id="BoundedFunction",
            name="bounded",
            arn="arn:aws:lambda:us-east-1:123456789012:function:bounded",
            handler="app.bounded_handler",
            code_dir=code,
            layer_dirs=(REPO / "layers" / "shared",),
            timeout_seconds=20,
        )
    )
    try:
        yield subject
    finally:
        subject.stop()


def test_a_100_kb_error_message_gives_a_bounded_cause_with_its_name(runtime: LambdaRuntime) -> None:
    # GIVEN a handler 50 frames deep raising a 100 KB message; WHEN Lambda's runtime answers it
    bounded = runtime.invoke("bounded", b"{}")

    # THEN the answer (what Step Functions carries as the Cause) is under 2 KiB, its type's name
    # kept (the ASL's Retry/Catch match it), and it says how much was cut
    assert bounded.function_error == "Unhandled"
    assert len(bounded.payload) <= CAUSE_BOUND, len(bounded.payload)
    answer = json.loads(bounded.payload)
    assert answer["errorType"] == "IdempotencyAlreadyInProgressError"
    kept = MAX_REASON_CHARS - 32
    assert answer["errorMessage"] == "x" * kept + f"…(+{MESSAGE_CHARS - kept} more characters)"
    assert len(answer["stackTrace"]) == 1
