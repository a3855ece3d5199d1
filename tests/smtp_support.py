"""Real SMTP servers on 127.0.0.1 for the alert tests: TLS material, misbehaving handlers, a closed port.

Every server here is aiosmtpd in a thread (the same controller the offline stack's sink uses),
bound to 127.0.0.1 on a port the OS picks; the `smtp_server` context manager always stops it.
"""

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, cast

from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sluice_cli.smtp_sink import EphemeralPortController


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def self_signed_cert(directory: Path) -> TlsFiles:
    """A certificate for 127.0.0.1 and localhost that is its own CA (EC P-256: cheap to make)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluice-test-smtp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / "smtp-cert.pem", directory / "smtp-key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@dataclass
class Recorder:
    """Accepts every message, after `drops` dropped connections and `replies` canned DATA answers."""

    drops: int = 0  # the first N transactions: close the connection in the middle of DATA
    replies: list[str] = field(default_factory=list)  # then: answer DATA with these, in order
    transactions: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.transactions += 1
        if self.drops:
            self.drops -= 1
            server.transport.close()
            return "421 closing"
        if self.replies:
            return self.replies.pop(0)
        parsed = BytesParser(policy=policy.default).parsebytes(
            envelope.original_content.replace(b"\r\n", b"\n")
        )
        self.messages.append(cast(EmailMessage, parsed))
        return "250 OK"


def authenticator(username: str, password: str, recorder: Recorder) -> Any:
    """An aiosmtpd authenticator accepting one username/password pair and recording every try."""

    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        given = (auth_data.login.decode(), auth_data.password.decode())
        recorder.logins.append(given)
        # handled=False: aiosmtpd answers the failure (535) itself.
        return AuthResult(success=given == (username, password), handled=False)

    return check


@contextmanager
def smtp_server(handler: Any, **smtp_options: Any) -> Iterator[EphemeralPortController]:
    """aiosmtpd on 127.0.0.1, any free port; stopped when the block ends. Options go to aiosmtpd."""
    controller = EphemeralPortController(
        handler, hostname="127.0.0.1", port=0, ready_timeout=10, **smtp_options
    )
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound then released: connecting is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
