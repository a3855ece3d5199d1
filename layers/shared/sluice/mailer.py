"""Sending one email through the central SMTP server, with bounded retries.

smtplib is the client; what it lacks is the decision which faults are worth another attempt, so
that is written here: connection refused or dropped, timeouts and 4xx replies are temporary (retried
with exponential backoff and full jitter); 5xx replies, a failed certificate check and a server
that does not offer STARTTLS when it was asked for are not (raised at once). Either way the caller
gets a `MailDeliveryError`, which fails the Lambda invocation so that SNS/Lambda retry it and, in
the end, park it in the failure destination: an alert that could not be sent is never dropped.

The password is held in a field that `repr` leaves out and is never logged.
"""

import json
import random
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from enum import StrEnum

from sluice.observability import logger


class SmtpSecurity(StrEnum):
    STARTTLS = "starttls"  # plain connect, then upgrade; never falls back to plain text
    TLS = "tls"  # implicit TLS from the first byte (SMTPS, usually port 465)
    NONE = "none"  # only for the offline stack's sink on 127.0.0.1


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: SmtpSecurity = SmtpSecurity.STARTTLS
    username: str = ""
    password: str = field(default="", repr=False)
    timeout_seconds: float = 10.0
    ca_file: str | None = None  # a private CA's bundle; None: the system's trust store


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_seconds: float = 1.0
    max_seconds: float = 8.0

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        """Full jitter: a random wait up to the exponential step after failed attempt `attempt`."""
        return rand() * min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))


class MailDeliveryError(Exception):
    """The message could not be handed to the SMTP server."""

    def __init__(self, message: str, *, attempts: int, permanent: bool) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.permanent = permanent


def is_temporary(error: Exception) -> bool:
    """Whether another attempt later may succeed."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in error.recipients.values())
    if isinstance(error, smtplib.SMTPResponseException):
        return 400 <= error.smtp_code < 500
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(error, smtplib.SMTPException | ssl.SSLCertVerificationError):
        # SMTPNotSupportedError (no STARTTLS, no AUTH) and a certificate that fails to verify fail
        # the same way next time. (SMTPException is an OSError, so this test comes first.)
        return False
    # Refused, reset, timed out, TLS torn down mid-handshake: the network, not the message.
    return isinstance(error, OSError)


def password_from_secret(secret: str | bytes) -> str:
    """The SMTP password from its secret: a plain string, or JSON with a "password" field."""
    text = secret.decode() if isinstance(secret, bytes) else secret
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if isinstance(document, dict) and isinstance(document.get("password"), str):
        return document["password"]
    return text


class SmtpMailer:
    def __init__(
        self,
        config: SmtpConfig,
        retry: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rand = rand

    def send(self, message: EmailMessage) -> int:
        """Send `message`; answer how many attempts it took or raise `MailDeliveryError`."""
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                refused = self._send_once(message)
            except (smtplib.SMTPException, OSError) as error:
                failure = f"{type(error).__name__}: {error}"[:500]
                if not is_temporary(error):
                    logger.error("smtp send failed for good", extra={"attempt": attempt, "error": failure})
                    raise MailDeliveryError(
                        f"SMTP {self._where()}: {failure}", attempts=attempt, permanent=True
                    ) from error
                if attempt == self.retry.max_attempts:
                    logger.error(
                        "smtp send failed, attempts spent", extra={"attempt": attempt, "error": failure}
                    )
                    raise MailDeliveryError(
                        f"SMTP {self._where()}: {failure} (after {attempt} attempts)",
                        attempts=attempt,
                        permanent=False,
                    ) from error
                delay = self.retry.delay(attempt, self._rand)
                logger.warning(
                    "smtp send failed, retrying",
                    extra={"attempt": attempt, "error": failure, "retry_in_seconds": round(delay, 3)},
                )
                self._sleep(delay)
            else:
                if refused:  # some recipients took it: sending again would duplicate theirs
                    logger.warning("smtp refused some recipients", extra={"refused": sorted(refused)})
                return attempt
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port} ({self.config.security})"

    def _send_once(self, message: EmailMessage) -> dict:
        config = self.config
        context = ssl.create_default_context(cafile=config.ca_file or None)
        client: smtplib.SMTP
        if config.security is SmtpSecurity.TLS:
            client = smtplib.SMTP_SSL(
                config.host, config.port, timeout=config.timeout_seconds, context=context
            )
        else:
            client = smtplib.SMTP(config.host, config.port, timeout=config.timeout_seconds)
        with client:
            if config.security is SmtpSecurity.STARTTLS:
                # Raises SMTPNotSupportedError when the server does not offer it: no plain-text fallback.
                client.starttls(context=context)
            if config.username:
                client.login(config.username, config.password)
            return client.send_message(message)
