"""Where alerts go: a generic webhook (JSON, HMAC-signed), a Slack incoming webhook, email over SMTP.

A channel sends one alert once and raises ``DeliveryFailed`` with a short reason if the other side did
not take it (no URL, no secret and no response body in the reason: it is stored in the alert log). The
delivery layer (``sluice.alerts.service``) retries. Channels open their own sockets, with their own
timeouts and a small connection pool: a slow receiver never touches the providers' pools.
"""

from __future__ import annotations

import fnmatch
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import aiosmtplib

from sluice.alerts import payload
from sluice.alerts.rules import THRESHOLD, Finding
from sluice.config_file import resolve_secret
from sluice.errors import ConfigError, DeliveryFailed
from sluice.settings import ChannelSettings

USER_AGENT = "sluice-alerts/1"


def wants(settings: ChannelSettings, finding: Finding) -> bool:
    """Whether this channel receives this finding (its rules, scopes and minimum threshold)."""
    if settings.rules is not None and finding.rule not in settings.rules:
        return False
    if settings.scopes and not any(fnmatch.fnmatchcase(finding.scope, p) for p in settings.scopes):
        return False
    pct = finding.facts.get("threshold_pct")
    return not (finding.rule == THRESHOLD and isinstance(pct, int) and pct < settings.min_threshold)


@dataclass(slots=True)
class Channel:
    """One configured channel, its secrets resolved at start-up."""

    settings: ChannelSettings
    url: str | None
    secret: str | None
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None = None  # email: made once (loading CA certificates is slow, and blocks)

    @property
    def name(self) -> str:
        """The channel's name."""
        return self.settings.name

    async def send(
        self, session: aiohttp.ClientSession, alert_id: str, finding: Finding, created_us: int, *, test: bool
    ) -> None:
        """Deliver once (raises ``DeliveryFailed``)."""
        kind = self.settings.type
        if kind == "email":
            await self._mail(alert_id, finding, created_us, test=test)
        elif kind == "slack":
            await self._post(session, payload.slack(finding, test=test), {})
        else:
            raw = payload.body(alert_id, finding, created_us, test=test)
            assert self.secret is not None, "validated: a webhook has a secret"
            signature = payload.sign(self.secret, int(time.time()), raw)
            headers = {payload.SIGNATURE_HEADER: signature, "x-sluice-alert-id": alert_id}
            await self._post(session, raw, headers)

    async def _post(self, session: aiohttp.ClientSession, raw: bytes, headers: dict[str, str]) -> None:
        assert self.url is not None, "validated: webhooks have a URL"
        sent = {"content-type": "application/json", "user-agent": USER_AGENT, **headers}
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with session.post(self.url, data=raw, headers=sent, timeout=timeout) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    raise DeliveryFailed(f"the receiver answered HTTP {response.status}")
        except aiohttp.ClientConnectorError as exc:
            raise DeliveryFailed(f"cannot connect ({exc.os_error.__class__.__name__})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"the request failed ({type(exc).__name__})") from None

    async def _mail(self, alert_id: str, finding: Finding, created_us: int, *, test: bool) -> None:
        s = self.settings
        assert s.host is not None, "validated: email has a host"
        assert s.sender is not None, "validated: email has a sender"
        message = payload.email(alert_id, finding, created_us, s.sender, s.to, test=test)
        port = s.port or {"tls": 465, "starttls": 587}.get(s.security, 25)
        try:
            await aiosmtplib.send(
                message,
                hostname=s.host,
                port=port,
                username=self.username,
                password=self.password,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                tls_context=self.tls,
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"the SMTP server refused it ({exc.code})") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryFailed(f"SMTP failed ({type(exc).__name__})") from None


def open_channels(channels: list[ChannelSettings], environ: Mapping[str, str]) -> dict[str, Channel]:
    """The configured channels with their ``env:`` references resolved (a missing variable is a
    configuration error at start-up, not a failed delivery at 3 a.m.)."""
    out: dict[str, Channel] = {}
    for c in channels:
        try:
            out[c.name] = Channel(
                c,
                resolve_secret(c.url, environ),
                resolve_secret(c.secret, environ),
                resolve_secret(c.username, environ),
                resolve_secret(c.password, environ),
                ssl.create_default_context(cafile=c.ca_file) if c.type == "email" else None,
            )
        except ConfigError as exc:
            raise ConfigError(f"alerts channel {c.name!r}: {exc.message}") from exc
        except OSError as exc:  # ca_file unreadable
            raise ConfigError(f"alerts channel {c.name!r}: cannot read ca_file ({exc.strerror})") from exc
    return out
