"""What an alert looks like on the wire: the webhook's JSON body and signature, Slack's message. Pure.

Webhook body (``application/json``)::

    {"id": "alrt_…", "type": "alert", "rule": "threshold", "key": "threshold:key:k1:usd/day:…:80",
     "scope": "key:k1", "summary": "…", "facts": {…}, "created_at": "2026-11-25T13:05:00Z",
     "test": false}

Signature header ``x-sluice-signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is
HMAC-SHA256(channel secret, ``"<t>." + raw body``) — the scheme Stripe uses: a receiver recomputes it
over the raw bytes it received, compares in constant time, and refuses a ``t`` too far from its clock
(replays). The secret is never in a payload.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import orjson

from sluice.alerts.rules import Finding

SIGNATURE_HEADER = "x-sluice-signature"
USD_FACTS = ("spent", "cap", "projected", "last_window", "baseline_per_window", "remaining", "burn_per_day")


def body(alert_id: str, finding: Finding, created_us: int, *, test: bool = False) -> bytes:
    """The webhook's JSON body for a finding."""
    created = datetime.fromtimestamp(created_us // 1_000_000, UTC).isoformat().replace("+00:00", "Z")
    doc: dict[str, Any] = {
        "id": alert_id,
        "type": "alert",
        "rule": finding.rule,
        "key": finding.key,
        "scope": finding.scope,
        "summary": finding.summary,
        "facts": finding.facts,
        "created_at": created,
        "test": test,
    }
    return orjson.dumps(doc)


def sign(secret: str, timestamp: int, raw: bytes) -> str:
    """The signature header's value for ``raw`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + raw, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, raw: bytes, now: int, tolerance_s: int = 300) -> bool:
    """Check a signature header as a receiver should (constant-time, replay window)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, raw).rsplit("=", 1)[1]
    return hmac.compare_digest(expected, given)


def usd(nanos: int) -> str:
    """Nano-dollars as dollars for a person: two decimals, more when the amount is small."""
    sign_ = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), 1_000_000_000)
    digits = f"{frac:09d}"
    shown = digits[:2] if whole or digits[:2] != "00" else digits.rstrip("0") or "00"
    return f"{sign_}${whole}.{shown}"


def _facts(finding: Finding) -> list[str]:
    money = finding.facts.get("metric", "usd") == "usd"
    out = []
    for name, value in finding.facts.items():
        shown = usd(value) if money and name in USD_FACTS and isinstance(value, int) else str(value)
        out.append(f"{name}: {shown}")
    return out


def slack(finding: Finding, *, test: bool = False) -> bytes:
    """A Slack incoming-webhook message: the summary, then the facts (money in dollars)."""
    title = "*Sluice test alert:*" if test else "*Sluice alert:*"
    lines = [f"{title} {finding.summary}", f"scope `{finding.scope}` · rule `{finding.rule}`"]
    lines += [f"• {line}" for line in _facts(finding)]
    return orjson.dumps({"text": "\n".join(lines)})


def email(
    alert_id: str, finding: Finding, created_us: int, sender: str, to: list[str], *, test: bool = False
) -> EmailMessage:
    """The alert as a plain-text email."""
    msg = EmailMessage()
    msg["Subject"] = f"[Sluice{' test' if test else ''}] {finding.summary}"
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Message-ID"] = f"<{alert_id}@sluice>"
    created = datetime.fromtimestamp(created_us // 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [finding.summary, "", f"scope: {finding.scope}", f"rule: {finding.rule}", *_facts(finding)]
    lines += ["", f"alert {alert_id} at {created}", f"key: {finding.key}"]
    msg.set_content("\n".join(lines) + "\n")
    return msg
