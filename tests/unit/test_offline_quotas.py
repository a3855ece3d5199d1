"""The quota module's measures and request reading, without a server (the end-to-end cases are in
tests/integration/test_offline_quotas.py)."""

from __future__ import annotations

import datetime
import io
import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from moto.stepfunctions.parser.asl.component.common.error_name.error_equals_decl import ErrorEqualsDecl
from moto.stepfunctions.parser.asl.component.state import state
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

from sluice_cli.offline.quotas import (
    PAYLOAD_MAX_BYTES,
    S3_KEY_MAX_BYTES,
    SNS_MESSAGE_MAX_BYTES,
    QuotaGate,
    StepFunctionsQuotas,
    is_within_payload_quota,
    payload_size,
)

SCOPE = "AWS4-HMAC-SHA256 Credential=testing/20261202/us-east-1/{service}/aws4_request, SignedHeaders=host"


def environ(service: str, method: str, path: str, body: bytes = b"", **extra: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": extra.pop("query", ""),
        "HTTP_AUTHORIZATION": SCOPE.format(service=service),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        **extra,
    }


def test_payload_size_is_compact_json_in_utf8() -> None:
    assert payload_size({"a": [1, 2]}) == len('{"a":[1,2]}')
    assert payload_size({"s": "é"}) == len('{"s":""}') + 2
    assert payload_size("a string state") == len('"a string state"')


def test_sdk_results_with_datetimes_are_measured_as_moto_writes_them() -> None:
    """ssm:getParameter's result has a datetime (LastModifiedDate): measuring it must not fail the task."""
    moment = datetime.datetime(2026, 12, 2, 15, 0, tzinfo=datetime.UTC)
    assert payload_size({"at": moment}) == len('{"at":"2026-12-02T15:00:00+00:00"}')


def test_the_payload_bound_is_inclusive() -> None:
    at_limit = "x" * (PAYLOAD_MAX_BYTES - 2)  # the quotes make 262,144
    assert is_within_payload_quota(at_limit)
    assert not is_within_payload_quota(at_limit + "x")


def test_install_and_uninstall_leave_moto_as_found() -> None:
    before = (
        ErrorEqualsDecl._eval_body,
        state.is_within_size_quota,
        ExecutionWorker._get_evaluation_environment,
    )
    quotas = StepFunctionsQuotas().install()
    assert state.is_within_size_quota is is_within_payload_quota
    quotas.uninstall()
    after = (
        ErrorEqualsDecl._eval_body,
        state.is_within_size_quota,
        ExecutionWorker._get_evaluation_environment,
    )
    assert after == before


def test_s3_key_length_is_read_from_the_path_in_bytes() -> None:
    gate = QuotaGate()
    longest = quote("k" * S3_KEY_MAX_BYTES)
    assert gate.refuse(environ("s3", "PUT", f"/bucket/{longest}")) is None
    refused = gate.refuse(environ("s3", "PUT", "/bucket/" + quote("é" * 513)))
    assert refused is not None
    assert refused.status_code == 400
    assert b"<Code>KeyTooLongError</Code>" in refused.get_data()
    # Not a key write: a bucket subresource, a GET, a POST that is not CreateMultipartUpload.
    too_long = "/bucket/" + "k" * (S3_KEY_MAX_BYTES + 1)
    assert gate.refuse(environ("s3", "PUT", too_long, query="tagging")) is None
    assert gate.refuse(environ("s3", "GET", too_long)) is None
    assert gate.refuse(environ("s3", "POST", too_long, query="uploads")) is not None


def test_the_gate_puts_the_body_back_for_moto() -> None:
    body = urlencode({"Action": "Publish", "TopicArn": "arn", "Message": "hello"}).encode()
    request = environ("sns", "POST", "/", body)
    assert QuotaGate().refuse(request) is None
    assert request["wsgi.input"].read() == body


def test_sns_message_attributes_count_toward_the_size() -> None:
    fields = {
        "Action": "Publish",
        "Message": "x" * (SNS_MESSAGE_MAX_BYTES - 10),
        "MessageAttributes.entry.1.Name": "event",
        "MessageAttributes.entry.1.Value.DataType": "String",
        "MessageAttributes.entry.1.Value.StringValue": "file.invalid",
    }
    refused = QuotaGate().refuse(environ("sns", "POST", "/", urlencode(fields).encode()))
    assert refused is not None
    assert b"Message too long" in refused.get_data()


@pytest.mark.parametrize("subject", ["a\r\nb", "bell\x07", "   "])
def test_sns_subjects_with_control_characters_or_blank_are_refused(subject: str) -> None:
    body = urlencode({"Action": "Publish", "Message": "m", "Subject": subject}).encode()
    refused = QuotaGate().refuse(environ("sns", "POST", "/", body))
    assert refused is not None
    assert b"Invalid parameter: Subject" in refused.get_data()


def test_sns_subjects_in_utf8_pass() -> None:
    body = urlencode({"Action": "Publish", "Message": "m", "Subject": "Sluice: fichier refusé"}).encode()
    assert QuotaGate().refuse(environ("sns", "POST", "/", body)) is None


def test_requests_without_a_sigv4_scope_go_to_moto() -> None:
    request = environ("s3", "PUT", "/bucket/" + "k" * 2000)
    del request["HTTP_AUTHORIZATION"]
    assert QuotaGate().refuse(request) is None


def test_sqs_uses_the_queues_own_maximum() -> None:
    gate = QuotaGate(lambda region, url: 1024)
    body = json.dumps({"QueueUrl": "http://x/123456789012/q", "MessageBody": "x" * 1025}).encode()
    refused = gate.refuse(environ("sqs", "POST", "/", body, HTTP_X_AMZ_TARGET="AmazonSQS.SendMessage"))
    assert refused is not None
    assert refused.headers["x-amzn-query-error"] == "InvalidParameterValue;Sender"
    assert b"shorter than 1024 bytes" in refused.get_data()
