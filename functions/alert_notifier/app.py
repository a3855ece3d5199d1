"""AlertNotifier: every message on AlertTopic becomes an email through the central SMTP server.

SNS invokes it asynchronously. Rendering lives in `sluice.alerting`, sending in `sluice.mailer`.
A message that cannot be sent raises, so the invocation fails: Lambda retries it and then parks it
in the failure destination (`sluice redrive --source failure-destination` sends it later).
SNS delivers at least once, so the send is idempotent on the SNS MessageId (Powertools idempotency).
"""

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.data_classes import SNSEvent, event_source
from aws_lambda_powertools.utilities.data_classes.sns_event import SNSEventRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from sluice.alerting import Notification, render_alert, to_email
from sluice.mailer import RetryPolicy, SmtpConfig, SmtpMailer, SmtpSecurity, password_from_secret
from sluice.observability import MetricUnit, bounded_errors, logger, metrics, tracer
from sluice.settings import IDEMPOTENCY_KEY_PREFIXES, AlertSettings

settings = AlertSettings.from_env()
idempotency = IdempotencyConfig(
    event_key_jmespath="message_id",
    raise_on_no_idempotency_key=True,
    expires_after_seconds=settings.alert_idempotency_ttl_seconds,
)
retry = RetryPolicy(
    settings.smtp_max_attempts, settings.smtp_backoff_base_seconds, settings.smtp_backoff_max_seconds
)


def smtp_config() -> SmtpConfig:
    password = ""
    if settings.smtp_password_secret:  # cached by Powertools for smtp_secret_max_age_seconds
        secret = parameters.get_secret(
            settings.smtp_password_secret, max_age=settings.smtp_secret_max_age_seconds
        )
        password = password_from_secret(secret)
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=SmtpSecurity(settings.smtp_security),
        username=settings.smtp_username,
        password=password,
        timeout_seconds=settings.smtp_timeout_seconds,
        ca_file=settings.smtp_ca_file or None,
    )


@idempotent_function(
    data_keyword_argument="notification",
    persistence_store=DynamoDBPersistenceLayer(table_name=settings.idempotency_table),
    config=idempotency,
    key_prefix=IDEMPOTENCY_KEY_PREFIXES["AlertNotifierFunction"],
)
def deliver(notification: dict[str, Any]) -> dict[str, Any]:
    received = Notification(**notification)
    alert = render_alert(received, stack_name=settings.stack_name, api_mode=settings.api_mode)
    email = to_email(alert, received, sender=settings.smtp_sender, recipients=settings.recipients)
    attempts = SmtpMailer(smtp_config(), retry).send(email)
    metrics.add_metric(name="AlertEmailsSent", unit=MetricUnit.Count, value=1)
    logger.info(
        "alert email sent", extra={"kind": alert.kind, "subject": email["Subject"], "attempts": attempts}
    )
    return {"message_id": received.message_id, "kind": alert.kind, "attempts": attempts}


def notification_of(record: SNSEventRecord) -> dict[str, Any]:
    sns = record.sns
    return asdict(
        Notification(
            message_id=sns.message_id,
            message=sns.message,
            subject=sns.subject or "",
            topic_arn=sns.topic_arn,
            timestamp=sns.timestamp,
        )
    )


@bounded_errors  # outermost: the error Lambda answers stays short (sluice/observability.py)
@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=SNSEvent)
def lambda_handler(event: SNSEvent, context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    delivered = [deliver(notification=notification_of(record)) for record in event.records]
    return {"delivered": delivered}
