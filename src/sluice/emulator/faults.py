"""Fault specs: what the emulator should do wrong (or slowly) for a request.

A spec is ``key=value`` pairs separated by spaces or commas. It comes, weakest first, from the
emulator's config (``faults``, then ``model_faults[model]``), the ``x-emulator-fault`` request header,
and a ``@emulator(...)`` directive anywhere in the request body (for example inside a message), which
travels through any gateway and any dialect translation unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

_DIRECTIVE = re.compile(rb"@emulator\(([^)]*)\)")


@dataclass(frozen=True, slots=True)
class Faults:
    """Every knob; defaults mean a healthy, instant provider."""

    latency_ms: float = 0  # before response headers
    ttft_ms: float = 0  # after headers, before the first event
    pace_ms: float = 0  # between stream events
    status: int = 0  # answer with this error status (dialect-shaped body)
    retry_after: str = ""  # retry-after header on an error
    cut_after: int = -1  # close the connection after N stream events (no terminator)
    mid_error: int = -1  # send an in-stream error after N events
    malformed: int = -1  # send a malformed event after N events
    keepalive: int = 0  # keep-alives before the content: comments (DeepSeek, OpenRouter) or Anthropic pings
    no_usage: bool = False  # omit usage everywhere
    html: bool = False  # answer 502 with an HTML page
    hang: bool = False  # accept the request and never answer
    reset: bool = False  # drop the connection without answering (a reset)
    echo_key: bool = False  # put the presented API key in the error message (as some providers do)
    garbled: bool = False  # valid JSON of the wrong shape (Anthropic: content blocks that are not objects)
    tokens: int = 16  # completion length in tokens (words)
    calls: int = 1  # parallel tool calls when a tool is called
    cache_read: int = 0  # prompt tokens reported as cache reads
    cache_write: int = 0  # prompt tokens reported as cache writes
    reasoning: int = -1  # reasoning tokens (-1: the dialect's default)
    bad_key: str = ""  # answer 401 to a presented API key containing this text
    busy_key: str = ""  # answer 429 (retry-after 30) to a presented API key containing this text
    quota: str = ""  # minute | day | credits: answer as the provider does when that allowance is spent
    bad_json: bool = False  # JSON mode answers text that is not JSON
    raw_error: bool = False  # error bodies outside OpenAI's envelope ({"detail": "..."})


_FIELDS = {f.name: f.type for f in fields(Faults)}


def parse_spec(spec: str | bytes, base: Faults | None = None) -> Faults:
    """Apply a spec on top of ``base``; unknown keys raise ``ValueError`` (the emulator answers 400)."""
    text = spec.decode("utf-8", "replace") if isinstance(spec, bytes) else spec
    changes: dict[str, object] = {}
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        key, _, value = item.partition("=")
        kind = _FIELDS.get(key)
        if kind is None:
            raise ValueError(f"unknown emulator fault {key!r}")
        if kind == "bool":
            changes[key] = value in ("", "1", "true", "yes")
        elif kind == "int":
            changes[key] = int(value)
        elif kind == "float":
            changes[key] = float(value)
        else:
            changes[key] = value
    return replace(base or Faults(), **changes)  # type: ignore[arg-type]


def from_body(raw: bytes, base: Faults) -> Faults:
    """Apply every ``@emulator(...)`` directive found in a raw body."""
    for match in _DIRECTIVE.finditer(raw):
        base = parse_spec(match.group(1), base)
    return base
