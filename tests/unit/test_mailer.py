"""sluice.mailer against real SMTP servers on 127.0.0.1: plain, STARTTLS with AUTH, implicit TLS, and
servers that refuse, drop or defer."""

import smtplib
import ssl
from email.message import EmailMessage

import pytest
from smtp_support import Recorder, TlsFiles, authenticator, closed_port, self_signed_cert, smtp_server

from sluice.mailer import (
    MailDeliveryError,
    RetryPolicy,
    SmtpConfig,
    SmtpMailer,
    SmtpSecurity,
    is_temporary,
    password_from_secret,
)

pytestmark = pytest.mark.timeout(60)


def message(subject: str = "[Sluice ALARM] IngestDLQ not empty") -> EmailMessage:
    email = EmailMessage()
    email["Subject"] = subject
    email["From"] = "sluice@example.org"
    email["To"] = "oncall@example.org, data@example.org"
    email.set_content("IngestDLQ holds 3 messages.\n")
    return email


class Sleeps(list[float]):
    """Records the backoff instead of sleeping it."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def mailer(port: int, *, attempts: int = 3, sleeps: Sleeps | None = None, **config: object) -> SmtpMailer:
    settings = {"security": SmtpSecurity.NONE, "timeout_seconds": 5.0, **config}
    return SmtpMailer(
        SmtpConfig("127.0.0.1", port, **settings),  # type: ignore[arg-type]
        RetryPolicy(max_attempts=attempts, base_seconds=0.5, max_seconds=2.0),
        sleep=sleeps if sleeps is not None else Sleeps(),
        rand=lambda: 1.0,  # the full backoff step, so the test can assert it
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def test_plain_smtp_delivers_the_message_as_sent() -> None:
    recorder = Recorder()
    with smtp_server(recorder) as server:
        attempts = mailer(server.port).send(message())

    assert attempts == 1
    [received] = recorder.messages
    assert received["Subject"] == "[Sluice ALARM] IngestDLQ not empty"
    assert received.get_content() == "IngestDLQ holds 3 messages.\n"


def test_starttls_with_auth_logs_in_over_tls_and_delivers(tls: TlsFiles) -> None:
    recorder = Recorder()
    options = {
        "tls_context": tls.server_context(),
        "require_starttls": True,
        "authenticator": authenticator("sluice", "s3cr3t-pw", recorder),
        "auth_require_tls": True,
    }
    with smtp_server(recorder, **options) as server:
        attempts = mailer(
            server.port,
            security=SmtpSecurity.STARTTLS,
            ca_file=str(tls.cert),
            username="sluice",
            password="s3cr3t-pw",
        ).send(message())

    assert attempts == 1
    assert recorder.logins == [("sluice", "s3cr3t-pw")]
    assert [m["Subject"] for m in recorder.messages] == ["[Sluice ALARM] IngestDLQ not empty"]


def test_implicit_tls_delivers(tls: TlsFiles) -> None:
    recorder = Recorder()
    with smtp_server(recorder, ssl_context=tls.server_context()) as server:
        attempts = mailer(server.port, security=SmtpSecurity.TLS, ca_file=str(tls.cert)).send(message())

    assert attempts == 1
    assert len(recorder.messages) == 1


def test_a_wrong_password_fails_at_once_and_is_never_retried(tls: TlsFiles) -> None:
    recorder, sleeps = Recorder(), Sleeps()
    options = {
        "tls_context": tls.server_context(),
        "authenticator": authenticator("sluice", "right", recorder),
    }
    with smtp_server(recorder, **options) as server:
        send = mailer(
            server.port,
            sleeps=sleeps,
            security=SmtpSecurity.STARTTLS,
            ca_file=str(tls.cert),
            username="sluice",
            password="wrong",
        )
        with pytest.raises(MailDeliveryError) as failure:
            send.send(message())

    assert failure.value.permanent
    assert failure.value.attempts == 1
    assert "535" in str(failure.value)
    assert sleeps == []
    assert recorder.messages == []


def test_starttls_missing_on_the_server_never_falls_back_to_plain_text() -> None:
    # GIVEN a server that does not offer STARTTLS WHEN the mailer requires it
    recorder, sleeps = Recorder(), Sleeps()
    with smtp_server(recorder) as server, pytest.raises(MailDeliveryError) as failure:
        mailer(server.port, sleeps=sleeps, security=SmtpSecurity.STARTTLS).send(message())

    # THEN it fails for good (a configuration fault, not a network one) and sent nothing in clear
    assert failure.value.permanent
    assert failure.value.attempts == 1
    assert "STARTTLS" in str(failure.value)
    assert recorder.transactions == 0
    assert sleeps == []


def test_a_certificate_from_an_unknown_ca_is_refused_for_good(tls: TlsFiles) -> None:
    recorder = Recorder()
    with (
        smtp_server(recorder, tls_context=tls.server_context()) as server,
        pytest.raises(MailDeliveryError) as failure,
    ):
        mailer(server.port, security=SmtpSecurity.STARTTLS).send(message())  # system CAs only

    assert failure.value.permanent
    assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value)
    assert recorder.transactions == 0


def test_refused_connections_are_retried_with_backoff_then_raised() -> None:
    sleeps = Sleeps()

    with pytest.raises(MailDeliveryError) as failure:
        mailer(closed_port(), attempts=4, sleeps=sleeps).send(message())

    assert failure.value.attempts == 4
    assert not failure.value.permanent
    assert "ConnectionRefusedError" in str(failure.value)
    assert sleeps == [0.5, 1.0, 2.0]  # exponential, capped at max_seconds, none after the last


def test_a_dropped_connection_is_retried_and_the_mail_arrives_once() -> None:
    recorder, sleeps = Recorder(drops=2), Sleeps()
    with smtp_server(recorder) as server:
        attempts = mailer(server.port, attempts=3, sleeps=sleeps).send(message())

    assert attempts == 3
    assert recorder.transactions == 3
    assert len(recorder.messages) == 1
    assert len(sleeps) == 2


def test_a_connection_dropped_every_time_raises_after_the_last_attempt() -> None:
    recorder = Recorder(drops=10)
    with smtp_server(recorder) as server, pytest.raises(MailDeliveryError) as failure:
        mailer(server.port, attempts=3).send(message())

    assert failure.value.attempts == 3
    assert "SMTPServerDisconnected" in str(failure.value)
    assert recorder.transactions == 3
    assert recorder.messages == []


def test_a_temporary_4xx_is_retried_and_a_permanent_5xx_is_not() -> None:
    deferred = Recorder(replies=["451 4.3.0 try again later"])
    with smtp_server(deferred) as server:
        assert mailer(server.port).send(message()) == 2
    assert len(deferred.messages) == 1

    rejected = Recorder(replies=["554 5.7.1 rejected"])
    with smtp_server(rejected) as server, pytest.raises(MailDeliveryError) as failure:
        mailer(server.port).send(message())
    assert failure.value.permanent
    assert failure.value.attempts == 1
    assert rejected.messages == []


def test_some_recipients_refused_is_not_a_failure() -> None:
    class RefuseOne(Recorder):
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
            if address.startswith("data@"):
                return "550 no such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

    recorder = RefuseOne()
    with smtp_server(recorder) as server:
        assert mailer(server.port).send(message()) == 1

    assert len(recorder.messages) == 1  # oncall@ got it; sending again would duplicate theirs


@pytest.mark.parametrize(
    ("error", "temporary"),
    [
        (smtplib.SMTPRecipientsRefused({"a@x": (450, b"busy"), "b@x": (451, b"later")}), True),
        (smtplib.SMTPRecipientsRefused({"a@x": (450, b"busy"), "b@x": (550, b"unknown")}), False),
        (smtplib.SMTPConnectError(421, "too many connections"), True),
        (smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."), False),
        (ssl.SSLCertVerificationError("bad certificate"), False),
        (TimeoutError("timed out"), True),
    ],
)
def test_which_faults_are_temporary(error: Exception, temporary: bool) -> None:
    assert is_temporary(error) is temporary


def test_password_from_secret_takes_a_string_or_a_json_password_field() -> None:
    assert password_from_secret("plain-pw") == "plain-pw"
    assert password_from_secret(b'{"password": "json-pw", "username": "u"}') == "json-pw"
    assert password_from_secret('{"other": 1}') == '{"other": 1}'
    assert password_from_secret("[1, 2]") == "[1, 2]"


def test_the_password_is_not_in_the_configs_repr() -> None:
    config = SmtpConfig("smtp.example.org", 587, username="sluice", password="hunter2")
    assert "hunter2" not in repr(config)
    assert "sluice" in repr(config)


def test_full_jitter_backoff_stays_within_the_exponential_step() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=1.0, max_seconds=8.0)
    assert [policy.delay(n, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.delay(3, lambda: 0.25) == 1.0
