"""An SMTP sink on 127.0.0.1 for the offline stack: the central SMTP server the alerts go to.

aiosmtpd serves the protocol; the sink keeps every received message parsed in memory and, when
given a directory, writes each one to `<mail_dir>/NNNN-<timestamp>.eml` so `sluice run` (and a
person) can show the alerts that were sent.

    sink = SmtpSink(port=0).start()      # port 0: any free port, read sink.port afterwards
    ...                                  # SMTP_HOST=127.0.0.1 SMTP_PORT=sink.port SMTP_SECURITY=none
    sink.messages()                      # list[EmailMessage]
    sink.stop()
"""

import asyncio
import time
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


class _Collector:
    """aiosmtpd handler: parse each message, keep it, maybe write it out."""

    def __init__(self, mail_dir: Path | None) -> None:
        self.mail_dir = mail_dir
        self.messages: list[EmailMessage] = []
        self.changed = Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        # policy.default parses into EmailMessage (the typeshed answer is the base Message).
        # SMTP carries CRLF line ends; parsed, the text reads with \n like any Python string.
        message = cast(
            EmailMessage, BytesParser(policy=policy.default).parsebytes(data.replace(b"\r\n", b"\n"))
        )
        with self.changed:
            self.messages.append(message)
            number = len(self.messages)
            self.changed.notify_all()
        if self.mail_dir is not None:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            (self.mail_dir / f"{number:04d}-{stamp}.eml").write_bytes(data)
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", mail_dir: Path | None = None) -> None:
        self.host = host
        self.mail_dir = mail_dir
        self._collector = _Collector(mail_dir)
        self._controller = EphemeralPortController(self._collector, hostname=host, port=port)

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def start(self) -> Self:
        if self.mail_dir is not None:
            self.mail_dir.mkdir(parents=True, exist_ok=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def messages(self) -> list[EmailMessage]:
        """Every message received so far, oldest first."""
        with self._collector.changed:
            return list(self._collector.messages)

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
