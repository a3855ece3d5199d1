"""Alerts end to end on the offline stack: the dispatcher publishes on AlertTopic, SNS invokes
AlertNotifierFunction (the stack's SNS → Lambda bridge), and the email reaches the stack's SMTP
sink on 127.0.0.1, which is where these tests read it.
"""

from __future__ import annotations

import json
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path

from typer.testing import CliRunner

from integration.pipeline import (
    MAX_RECEIVE_COUNT,
    queue_bodies,
    subscribe_queue,
    unique_key,
    upload,
    wait_for_state,
    with_failing_row,
)
from integration.stacks import REPO, stop_all
from sluice_cli.main import app
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.polling import wait_for
from sluice_cli.smtp_sink import ReceivedMail
from sluice_cli.workload import InvalidKind, generate_invalid_csv, orders_csv_bytes


def alert_email(stack: OfflineStack, subject: str, *, timeout: float = 30) -> ReceivedMail:
    sink = stack.smtp
    assert sink is not None

    def arrived() -> ReceivedMail | None:
        return next((mail for mail in sink.received() if mail.subject == subject), None)

    return wait_for(
        arrived,
        timeout=timeout,
        what=f"the alert email {subject!r} at the SMTP sink",
        describe=lambda: f"received: {[mail.subject for mail in sink.received()]}",
    )


def emails_with(stack: OfflineStack, subject: str) -> int:
    assert stack.smtp is not None
    return sum(1 for mail in stack.smtp.received() if mail.subject == subject)


def test_an_invalid_file_is_announced_by_an_email_naming_it_the_reason_and_what_to_run(
    pipeline_stack: OfflineStack,
) -> None:
    # A queue on AlertTopic beside the function: the email must carry the SNS message's own id.
    published = subscribe_queue(
        pipeline_stack, pipeline_stack.outputs["AlertTopicArn"], f"alert-watch-{time.time_ns()}"
    )
    obj = upload(
        pipeline_stack, unique_key("alert-invalid"), generate_invalid_csv(InvalidKind.BAD_HEADER, rows=5)
    )
    item = wait_for_state(pipeline_stack, obj, {"INVALID"})

    subject = f"[Sluice] File INVALID: {obj.key}"
    mail = alert_email(pipeline_stack, subject)

    body = mail.text()
    assert f"Reason:       {item['reason']}" in body
    assert "customer_email" in item["reason"]
    assert obj.id in body
    assert "Stage:" in body
    assert "sluice status" in body  # the commands that help, as they run offline
    assert "sluice logs -f ValidateObjectFunction" in body  # whose logs say why
    assert "--stack-name" not in body  # there is no CloudFormation stack offline
    assert mail.to == pipeline_stack.parameters["AlertRecipients"]
    assert mail.message["From"] == pipeline_stack.parameters["AlertSender"]
    # Sent with no AUTH and no password secret: the sink offers neither, and the mail came.
    parameters = pipeline_stack.parameters
    assert (parameters["SmtpUsername"], parameters["SmtpPasswordSecretArn"]) == ("", "")
    # The notifier is idempotent on the SNS MessageId, which names the mail: the real one.
    notifications = [json.loads(m["Body"]) for m in queue_bodies(pipeline_stack, published)]
    [notification] = [n for n in notifications if obj.key in n["Message"]]
    assert mail.message["Message-ID"] == f"<{notification['MessageId']}@sluice.alerts>"
    # Written where docs/offline.md says, as the mail that came over the wire.
    assert mail.path is not None
    assert mail.path.parent == pipeline_stack.mail_dir
    saved = BytesParser(policy=policy.default).parsebytes(mail.path.read_bytes())
    assert saved["Subject"] == subject
    assert emails_with(pipeline_stack, subject) == 1


def test_a_file_that_fails_for_good_is_announced_with_the_redrive_that_brings_it_back(
    pipeline_stack: OfflineStack,
) -> None:
    # One row the API fails with 503 every time (the whole API failing is an outage, waited out)
    obj = upload(
        pipeline_stack, unique_key("alert-failed"), with_failing_row(orders_csv_bytes(2, seed=30)[0])
    )

    item = wait_for_state(pipeline_stack, obj, {"FAILED"}, attempts=MAX_RECEIVE_COUNT, timeout=90)

    subject = f"[Sluice] File FAILED: {obj.key}"
    mail = alert_email(pipeline_stack, subject)
    body = mail.text()
    assert obj.id in body
    assert f"received {MAX_RECEIVE_COUNT} time(s)" in body  # the last delivery before the DLQ
    assert "IngestDLQ" in body
    assert "sluice redrive --source ingest-dlq --dry-run" in body
    assert "--stack-name" not in body
    assert "ProcessObjectFunction" in body
    assert item["error"].split(":", 1)[0] in body  # the error the state machine caught
    assert emails_with(pipeline_stack, subject) == 1  # one alert, on the last receive only


def test_sluice_run_lists_the_alerts_received_and_reports_them(tmp_path: Path) -> None:
    stop_all()  # `sluice run` starts its own stack; one per process
    invalid = tmp_path / "bad-header.csv"
    invalid.write_bytes(generate_invalid_csv(InvalidKind.BAD_HEADER, rows=3))
    report, state = tmp_path / "report.json", tmp_path / "state"

    result = CliRunner().invoke(
        app,
        [
            "run",
            "--files",
            str(invalid),
            "--report",
            str(report),
            "--state-dir",
            str(state),
            "--timeout",
            "60",
            "--template",
            str(REPO / "template.yaml"),
        ],
    )

    assert result.exit_code == 0, result.output
    subject = "[Sluice] File INVALID: incoming/bad-header.csv"
    assert "Alerts: 1 email(s) received by the SMTP sink" in result.output
    assert subject in result.output
    assert "What fired:" in result.output  # the first lines of the body
    summary = json.loads(report.read_text())
    [alert] = summary["alerts"]
    assert (alert["subject"], alert["to"]) == (subject, "oncall@localhost.localdomain")
    assert alert["received_at"].endswith("Z")
    assert [path.suffix for path in (state / "mail").iterdir()] == [".eml"]
