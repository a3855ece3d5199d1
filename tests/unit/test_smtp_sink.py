"""The offline stack's SMTP sink: receives on 127.0.0.1, keeps messages parsed, writes .eml files."""

import smtplib
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from sluice_cli.smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(30)


def send(port: int, subject: str, body: str = "body line\n") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.sendmail(
            "sluice@example.org",
            ["oncall@example.org"],
            f"From: sluice@example.org\r\nTo: oncall@example.org\r\nSubject: {subject}\r\n\r\n{body}",
        )


def test_received_messages_are_kept_parsed_and_written_as_eml(tmp_path: Path) -> None:
    mail_dir = tmp_path / "mail"
    with SmtpSink(port=0, mail_dir=mail_dir) as sink:
        assert sink.port > 0
        send(sink.port, "[Sluice ALARM] IngestDLQ not empty", "IngestDLQ holds 3 messages.\n")
        send(sink.port, "[Sluice] File INVALID: incoming/x.csv")
        received = sink.wait_for(2, timeout=5)

    assert [m["Subject"] for m in received] == [
        "[Sluice ALARM] IngestDLQ not empty",
        "[Sluice] File INVALID: incoming/x.csv",
    ]
    assert received[0].get_content() == "IngestDLQ holds 3 messages.\n"
    files = sorted(mail_dir.glob("*.eml"))
    assert [f.name[:5] for f in files] == ["0001-", "0002-"]
    reread = BytesParser(policy=policy.default).parsebytes(files[0].read_bytes())
    assert reread["Subject"] == "[Sluice ALARM] IngestDLQ not empty"


def test_without_a_mail_dir_nothing_is_written_and_messages_is_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a default .sluice/mail would appear
    sink = SmtpSink().start()
    try:
        send(sink.port, "one")
        first = sink.wait_for(1, timeout=5)
        first.clear()
        assert [m["Subject"] for m in sink.messages()] == ["one"]
    finally:
        sink.stop()
    assert list(tmp_path.iterdir()) == []


def test_wait_for_gives_up_at_its_deadline() -> None:
    with SmtpSink() as sink, pytest.raises(TimeoutError, match="got 0"):
        sink.wait_for(1, timeout=0.2)


def test_a_stopped_sink_no_longer_accepts_connections() -> None:
    sink = SmtpSink().start()
    port = sink.port
    sink.stop()

    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP("127.0.0.1", port, timeout=2)
