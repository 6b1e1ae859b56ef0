"""Whether a request is served from the cache, and under which key. Pure.

The key is a SHA-256 of the tenant scope (the virtual key by default, never everyone unless configured),
the endpoint, and the request body in canonical form (keys sorted) without the fields that do not change
the answer (``user``, ``safety_identifier``, ``metadata``, ``store``). Everything else — model alias,
messages, tools, response format, sampling parameters, ``n``, ``stream`` and ``stream_options`` — is
part of it, so a streamed request is only ever answered by a stream recorded for the same request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from sluice.errors import InvalidRequest
from sluice.settings import CacheSettings

USE, SKIP, REFRESH = "use", "skip", "refresh"
HIT, MISS = "hit", "miss"
_NEUTRAL = frozenset({"user", "safety_identifier", "metadata", "store"})
MAX_TTL_S = 30 * 86_400


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request: ``use`` (look up, store a miss), ``refresh`` (store only) or
    ``skip``; for how long; whether an answer that calls tools may be stored."""

    mode: str
    ttl_s: int = 0
    tools: bool = False
    key: str = ""


SKIPPED = Decision(SKIP)


def parse_header(value: str | None) -> tuple[str | None, int | None, bool]:
    """``x-sluice-cache: use | skip | refresh [, ttl=SECONDS] [, tools]`` → (mode, ttl, tools)."""
    if value is None:
        return None, None, False
    mode: str | None = None
    ttl: int | None = None
    tools = False
    for part in value.replace(";", ",").split(","):
        item = part.strip().lower()
        if item in (USE, SKIP, REFRESH):
            mode = item
        elif item.startswith("ttl="):
            text = item[4:].strip()
            if not text.isdigit() or not 1 <= int(text) <= MAX_TTL_S:
                raise InvalidRequest(
                    f"x-sluice-cache: ttl must be whole seconds from 1 to {MAX_TTL_S}.", code="invalid_header"
                )
            ttl = int(text)
        elif item == "tools":
            tools = True
        elif item:
            raise InvalidRequest(
                f"x-sluice-cache: unknown value {part.strip()!r}; "
                "expected use, skip, refresh, ttl=N or tools.",
                code="invalid_header",
            )
    return mode, ttl, tools


def scope_of(settings: CacheSettings, key_id: str, team: str | None) -> str:
    """Who shares this request's entries."""
    if settings.scope == "global":
        return "global"
    if settings.scope == "team" and team:
        return f"team:{team}"
    return f"key:{key_id}"


def cache_key(scope: str, endpoint: str, body: dict[str, Any]) -> str:
    """The entry's key: the scope, the endpoint and the canonical request."""
    canonical = {k: v for k, v in body.items() if k not in _NEUTRAL}
    digest = hashlib.sha256(f"{scope}\n{endpoint}\n".encode())
    digest.update(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def decide(
    settings: CacheSettings,
    header: str | None,
    *,
    endpoint: str,
    alias: str,
    key_name: str,
    body: dict[str, Any],
) -> tuple[str, int | None, bool]:
    """(mode, ttl from the request, tools allowed) for a request, before its key is computed."""
    asked, ttl, tools = parse_header(header)
    if asked is not None:
        return asked, ttl, tools or settings.tool_calls
    mode = settings.keys.get(key_name) or settings.aliases.get(alias) or settings.mode
    if mode == "off":
        return SKIP, None, False
    if mode == "auto" and endpoint == "chat" and body.get("temperature") != 0:
        return SKIP, None, False
    return USE, ttl, settings.tool_calls
