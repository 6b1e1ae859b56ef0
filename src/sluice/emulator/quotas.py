"""How each free tier says "slow down", "quota spent until the reset" and "here is your balance".

Bodies are the providers' own (shared/free-tiers.md §3–5; composed where the source says so): the
emulator plays them with ``quota=minute|day|credits``, its error bodies take each flavor's shape (no
``error`` wrapper for Mistral and Cerebras, Cloudflare's ``errors[]``, NVIDIA's ``{status,title}``),
and the rate-limit headers some providers put on every answer.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from sluice.emulator.http import Plan

_GROQ_TPD = (
    "Rate limit reached for model `{model}` in organization `org_emulated` service tier `on_demand` on "
    "tokens per day (TPD): Limit 200000, Used 197050, Requested 3619. Please try again in 9m38.016s. "
    "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
)
_GROQ_TPM = (
    "Rate limit reached for model `{model}` in organization `org_emulated` on tokens per minute (TPM): "
    "Limit 8000, Used 0, Requested ~12903. Please try again in 7.66s. Visit "
    "https://console.groq.com/docs/rate-limits for more information."
)
_GEMINI_DAY = (
    "You exceeded your current quota, please check your plan and billing details. \n* Quota exceeded for "
    "metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 250, model: "
    "{model}\nPlease retry in 39.225426742s."
)


_GEMINI_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"


def _gemini(model: str, per: str) -> Any:
    return {
        "error": {
            "code": 429,
            "message": _GEMINI_DAY.format(model=model),
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": _GEMINI_METRIC,
                            "quotaId": f"GenerateRequestsPer{per}PerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": model},
                        }
                    ],
                }
            ],
        }
    }


def _openrouter_day(now: float) -> Any:
    tomorrow = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
    reset_ms = int(datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC).timestamp() * 1000)
    return {
        "error": {
            "message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model "
            "requests per day",
            "code": 429,
            "metadata": {
                "headers": {
                    "X-RateLimit-Limit": "50",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset_ms),
                },
                "limit_source": "openrouter_free_tier_daily",
            },
        }
    }


def _openrouter_minute() -> Any:
    return {"error": {"message": "Rate limit exceeded: free-models-per-min. ", "code": 429, "metadata": {}}}


def _cloudflare(code: int, message: str) -> Any:
    return {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}


_CF_DAY = (
    "You have used up your daily free allocation of 10,000 neurons. Please upgrade to Cloudflare's Workers "
    "Paid plan if you would like to continue usage."
)
_COHERE_MONTH = "You are using a Trial key, which is limited to 1000 API calls / month."
_MISTRAL = {
    "object": "error",
    "message": "Rate limit exceeded",
    "type": "rate_limited",
    "param": None,
    "code": "1300",
}


def quota_plan(flavor: str, kind: str, model: str) -> Plan:
    """The provider's answer when its ``kind`` of allowance is used up: ``minute`` (slow down),
    ``day`` (the day's — or month's — allowance is spent) or ``credits`` (no balance left)."""
    status = 429
    headers: list[tuple[str, str]] = []
    body: Any
    day = kind == "day"
    if kind == "credits":
        status, body = _credits(flavor)
    elif flavor == "groq":
        body = {
            "error": {
                "message": (_GROQ_TPD if day else _GROQ_TPM).format(model=model),
                "type": "tokens",
                "code": "rate_limit_exceeded",
            }
        }
        headers = [("retry-after", "578" if day else "8")]
    elif flavor == "gemini":
        body = [_gemini(model, "Day" if day else "Minute")]
    elif flavor in ("openrouter", "openrouter_free"):
        body = _openrouter_day(time.time()) if day else _openrouter_minute()
    elif flavor == "cloudflare":
        body = (
            _cloudflare(3036, _CF_DAY)
            if day
            else _cloudflare(3040, "No more data centers to forward the request to")
        )
    elif flavor == "cohere":
        body = {"message": _COHERE_MONTH if day else "You are being rate limited. Please wait a minute."}
    elif flavor == "zai":
        body = {"error": {"code": "1302", "message": "您的账户已达到速率限制\uff0c请您控制请求频率"}}
        if day:
            body = {
                "error": {
                    "code": "1113",
                    "message": "Insufficient balance or no resource package. Please recharge.",
                }
            }
    elif flavor == "nvidia_nim":
        body = {"status": 429, "title": "Too Many Requests"}
    elif flavor == "mistral":
        body = _MISTRAL
    elif flavor == "sambanova" and day:
        body = {"error": {"message": "Rate limit exceeded: requests per day", "type": "rate_limit_exceeded"}}
    else:
        body = {
            "error": {
                "message": "Rate limit reached for requests.",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        }
        headers = [("retry-after", "2")]
    return Plan(status=status, headers=headers, body=orjson.dumps(body))


def _credits(flavor: str) -> tuple[int, Any]:
    if flavor in ("openrouter", "openrouter_free"):
        message = "Insufficient credits. Add more using https://openrouter.ai/settings/credits"
        return 402, {
            "error": {"message": message, "code": 402, "metadata": {"limit_source": "openrouter_credits"}}
        }
    if flavor == "zai":
        return 429, {
            "error": {
                "code": "1113",
                "message": "Insufficient balance or no resource package. Please recharge.",
            }
        }
    if flavor == "vercel":
        return 402, {"error": {"message": "Insufficient funds", "type": "quota_for_entity_exceeded"}}
    return 402, {
        "error": {
            "message": "Insufficient Balance",
            "type": "unknown_error",
            "param": None,
            "code": "invalid_request_error",
        }
    }


def error_body(flavor: str, status: int, message: str, kind: str) -> Any | None:
    """The error body in a free tier's own shape (None: the flavor uses OpenAI's envelope)."""
    if flavor in ("mistral", "cerebras"):
        return {"object": "error", "message": message, "type": kind, "param": None, "code": str(status)}
    if flavor == "cloudflare":
        return _cloudflare(5006 if status == 400 else status, message)
    if flavor == "nvidia_nim":
        return {"status": status, "title": message}
    if flavor == "zai":
        return {"error": {"code": str(1200 + status % 100), "message": message}}
    return None


def rate_headers(flavor: str, served: int) -> list[tuple[str, str]]:
    """Rate-limit headers on a successful answer (Groq: requests per day, tokens per minute)."""
    if flavor == "groq":
        return [
            ("x-ratelimit-limit-requests", "1000"),
            ("x-ratelimit-remaining-requests", str(max(0, 1000 - served))),
            ("x-ratelimit-reset-requests", "1m26.4s"),
            ("x-ratelimit-limit-tokens", "8000"),
            ("x-ratelimit-remaining-tokens", "7900"),
            ("x-ratelimit-reset-tokens", "0.75s"),
        ]
    if flavor == "sambanova":
        return [
            ("x-ratelimit-limit-requests", "20"),
            ("x-ratelimit-remaining-requests", "19"),
            ("x-ratelimit-limit-requests-day", "20"),
            ("x-ratelimit-remaining-requests-day", str(max(0, 20 - served))),
        ]
    return []


def balance_plan(flavor: str, path: str, served_today: int, balance: str) -> Plan | None:
    """The balance endpoints: OpenRouter's ``GET /api/v1/key`` and DeepSeek's ``GET /user/balance``
    (None: not a balance path of this flavor)."""
    if flavor in ("openrouter", "openrouter_free") and path.endswith(("/api/v1/key", "/api/v1/auth/key")):
        limit = 50
        data = {
            "label": "sk-or-v1-emu...",
            "limit": None,
            "limit_reset": None,
            "limit_remaining": None,
            "include_byok_in_limit": False,
            "usage": 0,
            "usage_daily": 0,
            "usage_weekly": 0,
            "usage_monthly": 0,
            "is_free_tier": True,
            "free_model_daily_requests": {
                "used": served_today,
                "limit": limit,
                "remaining": max(0, limit - served_today),
            },
        }
        return Plan(body=orjson.dumps({"data": data}))
    if flavor == "deepseek" and path.endswith("/user/balance"):
        info = {
            "currency": "USD",
            "total_balance": balance,
            "granted_balance": "0.00",
            "topped_up_balance": balance,
        }
        return Plan(body=orjson.dumps({"is_available": balance != "0.00", "balance_infos": [info]}))
    return None
