"""An SMTP sink on 127.0.0.1 for the offline stack: the central SMTP server the alerts go to.

aiosmtpd serves the protocol; the sink keeps every received message parsed in memory and, when
given a directory, writes each one to `<mail_dir>/NNNN-<timestamp>.eml` so `sluice run` (and a
person) can show the alerts that were sent.

    sink = SmtpSink(port=0).start()      # port 0: any free port, read sink.port afterwards
    ...                                  # SMTP_HOST=127.0.0.1 SMTP_PORT=sink.port SMTP_SECURITY=none
    sink.messages()                      # list[EmailMessage]
    sink.received()                      # list[ReceivedMail]: each message, when it came, its .eml
    sink.stop()

The offline stack starts one by default (`stack.smtp`) and points AlertNotifierFunction at it
through `parameter_overrides()`.
"""

import asyncio
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from threading import Condition
from typing import Any, Self, cast

from aiosmtpd.controller import Controller

DEFAULT_MAIL_DIR = Path(".sluice/mail")


class EphemeralPortController(Controller):
    """aiosmtpd's Controller, able to bind port 0: it learns the port the OS chose before its
    readiness probe connects (the stock one would probe port 0)."""

    def _trigger_server(self) -> None:
        if self.port == 0 and isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the sink received it."""

    message: EmailMessage
    received_at: float  # epoch seconds
    path: Path | None  # its .eml file, when the sink writes them

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    @property
    def to(self) -> str:
        return str(self.message["To"] or "")

    def text(self) -> str:
        """The plain-text body ("" when the message has none)."""
        body = self.message.get_body(preferencelist=("plain",))
        return str(body.get_content()) if body is not None else ""


class _Collector:
    """aiosmtpd handler: parse each message, keep it, maybe write it out."""

    def __init__(self, mail_dir: Path | None) -> None:
        self.mail_dir = mail_dir
        self.messages: list[EmailMessage] = []
        self.received: list[ReceivedMail] = []
        self.changed = Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        # policy.default parses into EmailMessage (the typeshed answer is the base Message).
        # SMTP carries CRLF line ends; parsed, the text reads with \n like any Python string.
        message = cast(
            EmailMessage, BytesParser(policy=policy.default).parsebytes(data.replace(b"\r\n", b"\n"))
        )
        received_at = time.time()
        with self.changed:
            number = len(self.messages) + 1
            path = None
            if self.mail_dir is not None:
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(received_at))
                path = self.mail_dir / f"{number:04d}-{stamp}.eml"
                path.write_bytes(data)  # before the message is announced: a reader finds its file
            self.messages.append(message)
            self.received.append(ReceivedMail(message, received_at, path))
            self.changed.notify_all()
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", mail_dir: Path | None = None) -> None:
        self.host = host
        self.mail_dir = mail_dir
        self._collector = _Collector(mail_dir)
        self._controller = EphemeralPortController(self._collector, hostname=host, port=port)
        self._running = False

    @property
    def port(self) -> int:
        return int(self._controller.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> Self:
        if self.mail_dir is not None:
            self.mail_dir.mkdir(parents=True, exist_ok=True)
        self._controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop serving; safe to repeat, and on a sink that never started (a stack that failed early)."""
        if self._running:
            self._controller.stop()
            self._running = False

    def parameter_overrides(self) -> dict[str, str]:
        """Template parameters that send the stack's alert emails here (the stack keeps the ones
        its template declares): plain SMTP on 127.0.0.1, no TLS, no AUTH."""
        return {"SmtpHost": self.host, "SmtpPort": str(self.port), "SmtpSecurity": "none"}

    def messages(self) -> list[EmailMessage]:
        """Every message received so far, oldest first."""
        with self._collector.changed:
            return list(self._collector.messages)

    def received(self) -> list[ReceivedMail]:
        """Every message received so far with when it came and its file, oldest first."""
        with self._collector.changed:
            return list(self._collector.received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until at least `count` messages arrived; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._collector.changed:
            while len(self._collector.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = len(self._collector.messages)
                    raise TimeoutError(
                        f"waited {timeout}s for {count} message(s) on port {self.port}, got {got}"
                    )
                self._collector.changed.wait(left)
            return list(self._collector.messages)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
