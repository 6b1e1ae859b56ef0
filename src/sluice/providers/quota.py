"""Tell "slow down" from "quota spent until the reset" in a provider's refusal. Pure.

A provider that throttles says one of two things, each in its own words (docs/providers.md, "Free
tiers"): wait a moment (requests or tokens per minute, capacity) — the deployment cools down briefly —
or the day's (month's, credit's) allowance is used up — the deployment is out of rotation until the
reset, and the credit-runway alert is raised. ``classify`` reads the status, headers and body of one
refusal, in the preset's dialect of refusals, and says which, for how long, and whether it is the whole
account (every model) or only this model that is out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from sluice.providers.accounts import next_midnight

Kind = Literal["cooldown", "exhausted"]
COOLDOWN: Kind = "cooldown"
EXHAUSTED: Kind = "exhausted"
DEFAULT_COOLDOWN_S = 5.0  # a "slow down" that says nothing of how long
CREDIT_RECHECK_S = 900.0  # credit used up: tried again after this long (someone may top it up)
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?")
_TRY_AGAIN = re.compile(r"(?:try again|retry) in ((?:\d+h)?(?:\d+m)?(?:\d+(?:\.\d+)?s)?)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Throttle:
    """What a refusal means: cool down for ``seconds``, or out until the reset ``seconds`` from now."""

    kind: Kind
    seconds: float
    account: bool  # the whole account is affected (else this model only)
    reason: str  # for people and the alert: "tokens per day", "daily free allocation", …


def cooldown(seconds: float | None, reason: str, *, account: bool = False) -> Throttle:
    return Throttle(COOLDOWN, seconds if seconds and seconds > 0 else DEFAULT_COOLDOWN_S, account, reason)


def exhausted(seconds: float, reason: str, *, account: bool = True) -> Throttle:
    return Throttle(EXHAUSTED, max(seconds, 1.0), account, reason)


def duration_s(text: str) -> float | None:
    """Seconds in Groq's and Gemini's durations (``9m38.016s``, ``2m59.56s``, ``39.2s``), or None."""
    m = _DURATION.fullmatch(text.strip())
    if not m or not any(m.groups()):
        return None
    h, mins, s = m.groups()
    return int(h or 0) * 3600 + int(mins or 0) * 60 + float(s or 0)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _try_again(message: str) -> float | None:
    m = _TRY_AGAIN.search(message)
    return duration_s(m.group(1)) if m else None


def _until_midnight(now: datetime, zone: str = "UTC") -> float:
    return (next_midnight(now, zone) - now).total_seconds()


def _until_next_month(now: datetime) -> float:
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return ((first + timedelta(days=32)).replace(day=1) - now).total_seconds()


def _body(raw: bytes) -> Any:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, list) and body:  # Gemini's OpenAI-compatible endpoint wraps errors in an array
        body = body[0]
    return body if isinstance(body, dict) else None


def _error(body: Any) -> dict[str, Any]:
    """The error object, wrapped (``{"error": {...}}``) or not (Mistral, Cerebras), or Cloudflare's first
    ``errors[]`` entry."""
    if not isinstance(body, dict):
        return {}
    err = body.get("error")
    if isinstance(err, dict):
        return err
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return errors[0]
    return body


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value) if isinstance(value, int) else ""


Headers = Mapping[str, str]
Err = dict[str, Any]
Rule = Callable[[int, Headers, Err, datetime], Throttle | None]


def _groq(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    if status != 429:
        return None  # 413 is one request larger than the minute's tokens: the client's to fix
    message = _text(err.get("message"))
    wait = _try_again(message) or _retry_after(headers)
    if "per day" in message or "(TPD)" in message or "(RPD)" in message:
        return exhausted(wait or _until_midnight(now), "daily allowance (Groq TPD/RPD)", account=False)
    if headers.get("x-ratelimit-remaining-requests") == "0":  # that header counts requests per day
        return exhausted(wait or _until_midnight(now), "requests per day (Groq)", account=False)
    return cooldown(wait, "per-minute limit (Groq)")


def _gemini(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    if status != 429:
        return None
    quota_ids = [
        _text(v.get("quotaId"))
        for d in err.get("details") or []
        if isinstance(d, dict)
        for v in d.get("violations") or []
        if isinstance(v, dict)
    ]
    message = _text(err.get("message"))
    if any("PerDay" in q for q in quota_ids):
        return exhausted(
            _until_midnight(now, "America/Los_Angeles"), "requests per day (Gemini)", account=False
        )
    if "limit: 0" in message:
        return exhausted(
            _until_midnight(now, "America/Los_Angeles"), "model outside the free tier", account=False
        )
    return cooldown(_try_again(message) or _retry_after(headers), "per-minute quota (Gemini)")


def _openrouter(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    if status != 429:
        return None
    message = _text(err.get("message"))
    meta = _dict(err.get("metadata"))
    source = _text(meta.get("limit_source"))
    if "per-day" in message or "daily" in source:
        reset = _text(_dict(meta.get("headers")).get("X-RateLimit-Reset")) or headers.get(
            "x-ratelimit-reset", ""
        )
        wait = int(reset) / 1000 - now.timestamp() if reset.isdigit() else _until_midnight(now)
        return exhausted(wait, "free models per day (OpenRouter)")
    every_free_model = "per-min" in message
    return cooldown(_retry_after(headers), "free models per minute (OpenRouter)", account=every_free_model)


def _openrouter_free(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    """A free account's 402 is a negative balance: even the free models are refused until a top-up."""
    if status == 402:
        return exhausted(CREDIT_RECHECK_S, "credits used up (OpenRouter)")
    return _openrouter(status, headers, err, now)


def _cloudflare(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    if status != 429:
        return None
    code = _text(err.get("code"))
    message = _text(err.get("message"))
    if code == "3036" or "daily free allocation" in message:
        return exhausted(_until_midnight(now), "daily free neurons (Cloudflare 3036)")
    return cooldown(_retry_after(headers), f"capacity (Cloudflare {code or '429'})")


def _cohere(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    if status != 429:
        return None
    message = _text(err.get("message"))
    if "Trial key" in message and "month" in message:
        return exhausted(_until_next_month(now), "trial calls per month (Cohere)")
    return cooldown(_retry_after(headers), "per-minute limit (Cohere)")


def _zai(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    del now  # Z.ai's refusals say nothing of a reset
    if status != 429:
        return None
    if _text(err.get("code")) == "1113":
        return exhausted(CREDIT_RECHECK_S, "no balance or resource package (Z.ai 1113)")
    return cooldown(_retry_after(headers), "rate limit (Z.ai 1302)")


def _vercel(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    if status == 402:
        return exhausted(CREDIT_RECHECK_S, "credits used up (Vercel AI Gateway)")
    return _free(status, headers, err, now)


def _generic(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    """A paid provider: a 429 that names a day is the day's allowance. Anything else is left to the
    request's own retry-after, key rotation and the ejection rules: a 402 or ``insufficient_quota`` may
    be about this request's size (OpenRouter: "can only afford 3324 tokens") or one key's balance."""
    if status != 429:
        return None
    message = _text(err.get("message")).lower()
    if "per day" in message or "daily" in message or "requests/day" in message:
        return exhausted(_retry_after(headers) or _until_midnight(now), "daily allowance", account=False)
    return None


def _free(status: int, headers: Headers, err: Err, now: datetime) -> Throttle | None:
    """A free tier without a signal of its own (SambaNova, Mistral's 1300, Cerebras, NVIDIA's
    ``{status,title}``, SiliconFlow): as a paid provider, and any other 429 cools the model down."""
    if status == 402:  # a free or trial account has no balance to fall back on: until a top-up
        return exhausted(CREDIT_RECHECK_S, "credit used up, or a payment method needed")
    found = _generic(status, headers, err, now)
    if found is None and status == 429:
        return cooldown(_retry_after(headers), "rate limit")
    return found


_RULES: dict[str, Rule] = {
    "groq": _groq,
    "gemini": _gemini,
    "openrouter": _openrouter,
    "openrouter_free": _openrouter_free,
    "cloudflare": _cloudflare,
    "cohere": _cohere,
    "zai": _zai,
    "vercel": _vercel,
    "mistral": _free,
    "nvidia_nim": _free,
    "sambanova": _free,
    "siliconflow": _free,
    "cerebras": _free,
}


def classify(
    preset: str, status: int, headers: Mapping[str, str], raw: bytes, now: datetime
) -> Throttle | None:
    """What a refusal from a provider of this preset means (None: not a throttle at all). ``headers``
    are lower-case; ``now`` is timezone-aware."""
    if status not in (402, 429):
        return None
    return _RULES.get(preset, _generic)(status, headers, _error(_body(raw)), now)
