"""Real alert receivers on 127.0.0.1 for the alert tests: an HTTP server that records webhook (and Slack)
posts, and an SMTP server (aiosmtpd) with STARTTLS and AUTH that records mail. Either can be told to fail
(HTTP 500, SMTP 550) to exercise retries."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port

SMTP_USER, SMTP_PASSWORD = "alerts@example.test", "smtp-password-for-tests"


@dataclass(slots=True)
class Post:
    """One request the webhook receiver got."""

    path: str
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        return orjson.loads(self.raw)


class WebhookReceiver:
    """An aiohttp server in a thread; ``fail_status`` makes it answer that status instead of 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[Post] = []
        self.fail_status: int | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        with self._lock:
            self.posts.append(Post(request.path, dict(request.headers), raw))
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="down for the test")
        return web.Response(text="ok")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def at(self, path: str) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if p.path == path]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files), for the SMTP server's TLS."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp.crt", directory / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@dataclass
class _Handler:
    messages: list[EmailMessage] = field(default_factory=list)
    reject: bool = False
    tries: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.tries += 1
        if self.reject:
            return "550 5.7.1 rejected for the test"
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == (
        SMTP_USER,
        SMTP_PASSWORD,
    )
    return AuthResult(success=ok)


class SMTPReceiver:
    """aiosmtpd on 127.0.0.1 requiring STARTTLS and then AUTH (PLAIN/LOGIN) before mail."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = self_signed(directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.handler = _Handler()
        self.port = free_port()
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=_authenticate,
            auth_required=True,
        )

    @property
    def messages(self) -> list[EmailMessage]:
        return self.handler.messages

    def __enter__(self) -> SMTPReceiver:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def channel_yaml(self, name: str = "mail", extra: str = "") -> str:
        """The config block of an email channel pointed at this server."""
        return (
            f"    - name: {name}\n      type: email\n      host: 127.0.0.1\n      port: {self.port}\n"
            f"      security: starttls\n      ca_file: {self.cert}\n      username: {SMTP_USER}\n"
            "      password: env:ALERT_SMTP_PASSWORD\n      sender: sluice@example.test\n"
            f"      to: [oncall@example.test]\n{extra}"
        )
