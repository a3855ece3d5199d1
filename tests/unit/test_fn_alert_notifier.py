"""AlertNotifier handler: SNS event → email received by a real SMTP server on 127.0.0.1.

moto provides the idempotency table and the Secrets Manager secret; the SMTP servers are aiosmtpd.
"""

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from conftest import load_function
from handler_support import FakeLambdaContext, capture_powertools_output, emitted_metrics, load_event
from moto import mock_aws
from smtp_support import Recorder, TlsFiles, authenticator, closed_port, self_signed_cert, smtp_server

from sluice.mailer import MailDeliveryError
from sluice.settings import IDEMPOTENCY_KEY_PREFIXES

pytestmark = pytest.mark.timeout(60)

EVENT = load_event("alert-sns.json")
MESSAGE_ID = EVENT["Records"][0]["Sns"]["MessageId"]
PASSWORD = "pw-7f3a9c1e-never-logged"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """moto with the idempotency table, the SMTP secret and a working environment for the handler."""
    environment = {
        "IDEMPOTENCY_TABLE": "IdempotencyTable",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_SECURITY": "none",
        "SMTP_SENDER": "sluice@example.org",
        "SMTP_RECIPIENTS": "oncall@example.org, data-team@example.org",
        "SMTP_MAX_ATTEMPTS": "3",
        "SMTP_BACKOFF_BASE_SECONDS": "0.01",
        "SMTP_BACKOFF_MAX_SECONDS": "0.02",
        "SMTP_TIMEOUT_SECONDS": "5",
        "SMTP_SECRET_MAX_AGE_SECONDS": "0",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    capture_powertools_output(monkeypatch)
    parameters.clear_caches()  # a secret cached by an earlier test (and its client) must not leak in
    with mock_aws():
        boto3.client("dynamodb").create_table(
            TableName="IdempotencyTable",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        secret = boto3.client("secretsmanager").create_secret(
            Name="sluice/smtp", SecretString=json.dumps({"username": "sluice", "password": PASSWORD})
        )
        yield secret["ARN"]
    parameters.clear_caches()


def handler(monkeypatch: pytest.MonkeyPatch, port: int, **environment: str) -> ModuleType:
    monkeypatch.setenv("SMTP_PORT", str(port))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return load_function("alert_notifier")


def event_with(message_id: str) -> dict[str, Any]:
    event = copy.deepcopy(EVENT)
    event["Records"][0]["Sns"]["MessageId"] = message_id
    return event


def idempotency_records() -> list[dict[str, Any]]:
    return boto3.client("dynamodb").scan(TableName="IdempotencyTable")["Items"]


def test_an_alarm_becomes_an_email_with_subject_state_reason_and_command(
    aws: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:
        answer = handler(monkeypatch, server.port).lambda_handler(EVENT, FakeLambdaContext())

    assert answer == {"delivered": [{"message_id": MESSAGE_ID, "kind": "alarm", "attempts": 1}]}
    [email] = recorder.messages
    assert email["Subject"] == "[Sluice ALARM] IngestDLQ not empty"
    assert email["To"] == "oncall@example.org, data-team@example.org"
    assert email["Message-ID"] == f"<{MESSAGE_ID}@sluice.alerts>"
    body = email.get_content()
    assert 'CloudWatch alarm "sluice-dev-IngestDLQNotEmpty"' in body
    assert "ALARM (was OK)" in body
    assert "Threshold Crossed" in body
    assert "sluice redrive --source ingest-dlq --dry-run" in body
    assert "simulated" not in body  # ApiMode's default, http: nothing to say
    assert emitted_metrics(capsys.readouterr().out)["AlertEmailsSent"] == 1


def test_the_same_sns_message_twice_sends_one_email(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:
        module = handler(monkeypatch, server.port)
        first = module.lambda_handler(EVENT, FakeLambdaContext())
        again = module.lambda_handler(EVENT, FakeLambdaContext())  # SNS at-least-once
        other = module.lambda_handler(event_with("another-message-id"), FakeLambdaContext())

    assert again == first
    assert other["delivered"][0]["message_id"] == "another-message-id"
    assert len(recorder.messages) == 2
    records = idempotency_records()
    assert len(records) == 2
    # its own key prefix: the template's dynamodb:LeadingKeys condition admits only these
    prefix = IDEMPOTENCY_KEY_PREFIXES["AlertNotifierFunction"]
    assert all(record["id"]["S"].startswith(f"{prefix}#") for record in records)


def test_starttls_and_the_password_from_secrets_manager_never_reach_the_logs(
    aws: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tls: TlsFiles = self_signed_cert(tmp_path)
    recorder = Recorder()
    options = {
        "tls_context": tls.server_context(),
        "require_starttls": True,
        "authenticator": authenticator("sluice", PASSWORD, recorder),
    }
    with smtp_server(recorder, **options) as server:
        module = handler(
            monkeypatch,
            server.port,
            SMTP_SECURITY="starttls",
            SMTP_CA_FILE=str(tls.cert),
            SMTP_USERNAME="sluice",
            SMTP_PASSWORD_SECRET=aws,
            POWERTOOLS_LOG_LEVEL="DEBUG",
        )
        module.lambda_handler(EVENT, FakeLambdaContext())
        # The secret rotated to a value the server rejects: the invocation fails, still no password.
        boto3.client("secretsmanager").put_secret_value(SecretId=aws, SecretString="rotated-" + PASSWORD)
        with pytest.raises(MailDeliveryError, match="535"):
            module.lambda_handler(event_with("second-alert"), FakeLambdaContext())

    # smtplib tries each offered mechanism (PLAIN, LOGIN) before giving up on a rejected password.
    assert recorder.logins[0] == ("sluice", PASSWORD)
    assert set(recorder.logins[1:]) == {("sluice", "rotated-" + PASSWORD)}
    assert len(recorder.messages) == 1
    output = capsys.readouterr()
    assert "alert email sent" in output.out  # the logs were captured...
    assert PASSWORD not in output.out + output.err  # ...and never held the password


def test_a_refused_connection_is_retried_then_fails_the_invocation_and_a_retry_sends(
    aws: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MailDeliveryError, match="after 3 attempts"):
        handler(monkeypatch, closed_port()).lambda_handler(EVENT, FakeLambdaContext())

    # Nothing marks the alert as sent, so Lambda's retry (or a redrive) delivers it.
    assert idempotency_records() == []
    output = capsys.readouterr().out
    assert output.count("smtp send failed, retrying") == 2
    recorder = Recorder()
    with smtp_server(recorder) as server:
        answer = handler(monkeypatch, server.port).lambda_handler(EVENT, FakeLambdaContext())
    assert answer["delivered"][0]["attempts"] == 1
    assert [m["Subject"] for m in recorder.messages] == ["[Sluice ALARM] IngestDLQ not empty"]


def test_a_connection_dropped_mid_transaction_is_retried_then_fails_the_invocation(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(drops=3)
    with smtp_server(recorder) as server, pytest.raises(MailDeliveryError, match="SMTPServerDisconnected"):
        handler(monkeypatch, server.port).lambda_handler(EVENT, FakeLambdaContext())

    assert recorder.transactions == 3
    assert recorder.messages == []
    assert idempotency_records() == []


def test_one_dropped_connection_still_delivers_exactly_once(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(drops=1)
    with smtp_server(recorder) as server:
        answer = handler(monkeypatch, server.port).lambda_handler(EVENT, FakeLambdaContext())

    assert answer["delivered"][0]["attempts"] == 2
    assert len(recorder.messages) == 1


def test_missing_configuration_fails_the_cold_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDEMPOTENCY_TABLE", "IdempotencyTable")
    monkeypatch.delenv("SMTP_HOST", raising=False)
    monkeypatch.delenv("SMTP_SENDER", raising=False)
    monkeypatch.setenv("SMTP_RECIPIENTS", "oncall@example.org")

    with pytest.raises(RuntimeError, match="SMTP_HOST") as failure:
        load_function("alert_notifier")
    assert "SMTP_SENDER" in str(failure.value)


def test_an_alert_of_a_stack_on_the_simulated_api_says_so_on_its_first_line(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:
        handler(monkeypatch, server.port, API_MODE="simulated").lambda_handler(EVENT, FakeLambdaContext())

    [email] = recorder.messages
    body = email.get_content()
    assert body.splitlines()[0] == "API: simulated (no row left the stack)"
    assert "sluice redrive --source ingest-dlq --dry-run" in body  # the alert itself follows
