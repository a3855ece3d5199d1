"""`sluice run`'s alert check: which emails a run's outcome calls for, and how they are reported."""

from __future__ import annotations

import json

import pytest
import typer
from rich.console import Console

from sluice.alerting import Notification, render_alert
from sluice_cli.commands.local import own_api, parse_secrets
from sluice_cli.commands.run import print_alerts, print_summary
from sluice_cli.commands.runreport import (
    AlertMail,
    TrackedFile,
    alert_subject,
    emf_values,
    expected_alerts,
    summarize,
)

RECEIVED_AT = 1_800_000_000.25  # 2027-01-15T08:00:00.250Z


def tracked(key: str, state: str, expected: str, **item: object) -> TrackedFile:
    return TrackedFile(
        key=key,
        data_size=10,
        rows=None,
        expected_states=frozenset({expected}),
        uploaded_at=RECEIVED_AT - 5,
        version_id="v1",
        item={"state": state, **item},
    )


def mail(subject: str) -> AlertMail:
    return AlertMail(subject, "oncall@localhost.localdomain", RECEIVED_AT, "What fired:  file INVALID\n")


@pytest.mark.parametrize(("state", "kind"), [("INVALID", "file_invalid"), ("FAILED", "file_failed")])
def test_the_expected_subject_is_the_one_the_notifier_renders(state: str, kind: str) -> None:
    message = {"kind": kind, "object": {"bucket": "raw", "key": "incoming/x.csv", "version_id": "v1"}}
    rendered = render_alert(Notification(message_id="m-1", message=json.dumps(message)))
    assert rendered.subject == alert_subject(state, "incoming/x.csv")


def test_invalid_and_failed_for_good_files_call_for_an_alert_each() -> None:
    files = [
        tracked("incoming/ok.csv", "SUCCEEDED", "SUCCEEDED"),
        tracked("incoming/bad.csv", "INVALID", "INVALID"),
        tracked("incoming/failing.csv", "FAILED", "SUCCEEDED", attempts=2),
        tracked("incoming/retrying.csv", "FAILED", "SUCCEEDED", attempts=1),  # one more delivery to go
    ]

    assert expected_alerts(files, max_receive_count=2) == [
        "[Sluice] File INVALID: incoming/bad.csv",
        "[Sluice] File FAILED: incoming/failing.csv",
    ]


def test_a_missing_alert_fails_the_run_and_a_received_one_is_reported() -> None:
    files = [tracked("incoming/bad.csv", "INVALID", "INVALID")]

    missing = summarize(files, None, rate_limit=10, wall_seconds=3, max_receive_count=2, alerts=[])
    received = summarize(
        files,
        None,
        rate_limit=10,
        wall_seconds=3,
        max_receive_count=2,
        alerts=[mail("[Sluice] File INVALID: incoming/bad.csv")],
    )

    assert not missing.ok
    assert missing.problems == [
        "no alert email “[Sluice] File INVALID: incoming/bad.csv” reached the SMTP sink"
    ]
    assert received.ok
    assert received.as_dict()["alerts"] == [
        {
            "subject": "[Sluice] File INVALID: incoming/bad.csv",
            "to": "oncall@localhost.localdomain",
            "received_at": "2027-01-15T08:00:00.250Z",
        }
    ]


def test_without_a_sink_alerts_are_not_checked() -> None:
    files = [tracked("incoming/bad.csv", "INVALID", "INVALID")]

    summary = summarize(files, None, rate_limit=10, wall_seconds=3, max_receive_count=2)

    assert summary.ok
    assert summary.as_dict()["alerts"] is None


def test_the_alerts_section_shows_each_subject_and_the_first_lines_of_its_body() -> None:
    console = Console(record=True, width=100)
    body = "What fired:  file INVALID\nFile:  s3://raw/incoming/bad.csv\n\nA\nB\nC\n"
    alert = AlertMail("[Sluice] File INVALID: incoming/bad.csv", "oncall@x", RECEIVED_AT, body)

    print_alerts([alert], console, mail_dir=None)

    text = console.export_text()
    assert "[Sluice] File INVALID: incoming/bad.csv" in text  # printed as text, not read as markup
    assert "What fired:  file INVALID" in text
    assert "File:  s3://raw/incoming/bad.csv" in text
    lines = text.splitlines()
    assert [line.strip() for line in lines[-2:]] == ["A", "B"]  # four non-empty lines at most
    assert len(lines) == 6  # the heading, the subject, four lines of the body


def test_a_run_whose_api_refused_everything_fails_even_if_rejects_were_allowed() -> None:
    # GIVEN files given on the command line (rejects allowed) that the API refused row by row
    files = [
        tracked(
            "incoming/a.csv",
            "SUCCEEDED_WITH_REJECTS",
            "SUCCEEDED_WITH_REJECTS",
            rows_total=5,
            rows_rejected=5,
        ),
        tracked(
            "incoming/b.csv",
            "SUCCEEDED_WITH_REJECTS",
            "SUCCEEDED_WITH_REJECTS",
            rows_total=5,
            rows_rejected=1,
        ),
    ]

    summary = summarize(files, None, rate_limit=10, wall_seconds=3, max_receive_count=2)

    assert not summary.ok
    assert summary.problems == [
        "incoming/a.csv: every one of its 5 rows was rejected: "
        "the API or the format refused the file, not its rows"
    ]


def test_a_downstream_unhealthy_at_the_end_fails_the_run() -> None:
    files = [tracked("incoming/a.csv", "PROCESSING", "SUCCEEDED")]
    unhealthy = {"state": "open", "reason": "api 401: token expired"}

    summary = summarize(files, None, rate_limit=10, wall_seconds=3, max_receive_count=2, downstream=unhealthy)
    healthy = summarize(
        [tracked("incoming/a.csv", "SUCCEEDED", "SUCCEEDED")],
        None,
        rate_limit=10,
        wall_seconds=3,
        max_receive_count=2,
        downstream={"state": "closed"},
    )

    assert not summary.ok
    assert (
        "the downstream API was unhealthy at the end of the run (api 401: token expired)"
        in summary.problems[-1]
    )
    assert summary.as_dict()["downstream"] == unhealthy
    assert healthy.ok


def test_without_the_simulator_the_api_figures_are_sluices_own_and_the_rejects_are_kept() -> None:
    # GIVEN ProcessObject's metrics as Powertools writes them (EMF), and a file with two rejects
    emf = [
        {
            "_aws": {"CloudWatchMetrics": [{"Metrics": [{"Name": "ApiLatency"}, {"Name": "ApiThrottles"}]}]},
            "ApiLatency": [10.0, 20.0, 30.0],
            "ApiThrottles": 1,
        },
        {"_aws": {"CloudWatchMetrics": [{"Metrics": [{"Name": "ApiLatency"}]}]}, "ApiLatency": 40.0},
        {"level": "INFO", "message": "not a metric"},
    ]
    files = [
        tracked(
            "incoming/mine.csv",
            "SUCCEEDED_WITH_REJECTS",
            "SUCCEEDED_WITH_REJECTS",
            rows_total=10,
            rows_delivered=8,
            rows_rejected=2,
            finished_at="2027-01-15T08:00:05.250Z",  # 10 s after the upload
        )
    ]
    rejects = {
        "incoming/mine.csv": ([{"row": 3, "reason": "id: is empty"}, {"row": 9, "reason": "api 422"}], 2)
    }

    summary = summarize(
        files,
        None,
        rate_limit=5,
        wall_seconds=30,
        max_receive_count=2,
        rejects=rejects,
        own_metrics=emf_values(emf),
        api_url="http://127.0.0.1:9/items/{id}",
    )

    assert summary.api == {
        "source": "sluice",
        "url": "http://127.0.0.1:9/items/{id}",
        "limit": 5,
        "requests": 4,
        "accepted": 8,
        "accepted_rate": 0.8,
        "throttled_429": 1,
        "latency_ms": {"p50": 20.0, "p95": 40.0},
    }
    record = summary.as_dict()["files"][0]
    assert record["rejects"] == rejects["incoming/mine.csv"][0]
    assert record["rejects_not_listed"] == 0
    console = Console(record=True, width=200)
    print_summary(summary, console)
    text = console.export_text()
    assert "no simulator, so these are Sluice's own figures" in text
    assert "0.0 accepted/s" not in text
    assert "docs/your-own-csv.md" in text


def test_a_secret_option_is_name_equals_value_and_an_error_never_shows_the_value() -> None:
    assert parse_secrets(['tok={"token": "a=b"}', "other=x"]) == {"tok": '{"token": "a=b"}', "other": "x"}
    with pytest.raises(typer.BadParameter) as error:
        parse_secrets(["s3cr3t-without-a-name"])
    assert "s3cr3t" not in str(error.value)
    assert own_api(None, {"A": "1"}) == (True, {"A": "1"})
    assert own_api("http://127.0.0.1:9/x", {}) == (False, {"ApiUrl": "http://127.0.0.1:9/x"})
