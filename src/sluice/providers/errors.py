"""Map any provider's error response (OpenAI, OpenRouter, DashScope, Gemini array, Anthropic) to ours.

Provider text is reflected only where it describes the client's own request (400/422), scrubbed of
anything that looks like a credential; auth, quota and server failures get our own wording, so a key
fragment or an HTML error page never reaches the client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sluice.errors import (
    InvalidRequest,
    PayloadTooLarge,
    SluiceError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)

_SECRETISH = re.compile(r"\b(?:sk|key|api|rk|pk)[-_][A-Za-z0-9_\-]{6,}|\*{2,}[A-Za-z0-9]{2,}", re.IGNORECASE)
_WORD = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_PARAM = re.compile(r"^[A-Za-z0-9_.\[\]\-]{1,128}$")  # e.g. messages[0].content
_MAX_MESSAGE = 500


@dataclass(slots=True)
class ProviderError:
    """The useful parts of a provider's error body, whatever its shape."""

    message: str | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None
    # the provider's id for the failed call (DashScope and Anthropic put it in the body)
    request_id: str | None = None


def parse_error_body(raw: bytes) -> ProviderError:
    """Extract message/type/code/param from any known error shape; empty for HTML or garbage."""
    try:
        return parse_error(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return ProviderError()


def parse_error(body: Any) -> ProviderError:
    """The same, from an already parsed body (an error inside a stream chunk, say)."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # Gemini's OpenAI-compatible endpoint wraps the error in an array
    if not isinstance(body, dict):
        return ProviderError()
    request_id = _word(body.get("request_id"))
    err = body.get("error", body)
    if isinstance(err, str):
        return ProviderError(message=err, request_id=request_id)
    if not isinstance(err, dict):
        return ProviderError(request_id=request_id)
    message = err.get("message")
    code = err.get("code")
    return ProviderError(
        message=message if isinstance(message, str) else None,
        type=_word(err.get("type") or err.get("status")),
        code=_word(code) if isinstance(code, str) else None,
        param=_word(err.get("param"), 128, _PARAM),
        request_id=request_id,
    )


def _word(v: Any, limit: int = 64, shape: re.Pattern[str] | None = None) -> str | None:
    """A short identifier-like string from a provider, or None (never free text, never a secret)."""
    if not isinstance(v, str) or len(v) > limit or not (shape or _WORD).match(v):
        return None
    return None if _SECRETISH.search(v) else v


def scrub(text: str) -> str:
    """Remove credential-looking tokens and bound the length of provider text we pass on."""
    text = _SECRETISH.sub("[redacted]", text)
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"


def map_error(provider: str, status: int, headers: Mapping[str, str], raw: bytes) -> SluiceError:
    """The one mapping from an upstream HTTP error to a Sluice error."""
    parsed = parse_error_body(raw)
    if status in (400, 422):
        detail = scrub(parsed.message) if parsed.message else "no detail given"
        return InvalidRequest(
            f"The provider rejected the request: {detail}",
            param=parsed.param,
            code=parsed.code or "upstream_bad_request",
        )
    if status == 413:
        return PayloadTooLarge(f"The request is too large for provider {provider!r}.")
    if status == 429:
        retry = headers.get("retry-after")
        extra = {"retry-after": retry} if retry and _WORD.match(retry) else {}
        hint = f" Retry after {retry} s." if extra else ""
        return UpstreamRateLimited(f"Provider {provider!r} is rate limiting requests.{hint}", headers=extra)
    if status in (408, 504):
        return UpstreamTimeout(f"Provider {provider!r} timed out ({status}).")
    if status in (401, 403):
        return UpstreamError(
            f"Provider {provider!r} refused the gateway's credentials ({status}); "
            "the operator must check its key.",
            code="upstream_auth_error",
        )
    if status == 402:
        return UpstreamError(
            f"Provider {provider!r} reports insufficient balance or credit (402).",
            code="upstream_insufficient_credit",
        )
    if status == 404:
        return UpstreamError(
            f"Provider {provider!r} does not know the configured model (404).", code="upstream_not_found"
        )
    kind = f", {parsed.type}" if parsed.type else ""
    return UpstreamError(f"Provider {provider!r} failed with status {status}{kind}.")


def in_band_error(provider: str, payload: Any) -> SluiceError:
    """An error inside a 200 answer (OpenRouter chunk, Anthropic ``error`` event, an error body)."""
    parsed = parse_error(payload)
    code = parsed.code or parsed.type
    if code in ("rate_limit_error", "rate_limit_exceeded"):
        return UpstreamRateLimited(f"Provider {provider!r} rate limited the stream.")
    detail = f" ({code})" if code else ""
    return UpstreamError(f"Provider {provider!r} failed during the stream{detail}.")
