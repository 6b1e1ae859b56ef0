"""What an entry holds, and how a hit is replayed. Pure.

A complete answer is kept as its body; a stream as its SSE events (without the final ``[DONE]``), so a
hit replays the same chunk sequence. The usage chunk's ``cost`` (present when the client asked for
usage) is set to 0 on replay: a hit costs nothing. With them: what the original cost (the saving of
every hit), its usage, and who answered it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from sluice.pricing.usage import TokenUsage

_VERSION = 1
_TOOL_CALL = re.compile(rb'"tool_calls"\s*:\s*\[\s*[^\]\s]')
COMPLETE, STREAM = "complete", "stream"
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Record:
    """One cached answer."""

    kind: str  # "complete" or "stream"
    body: bytes  # a complete answer's JSON body (empty for a stream)
    events: tuple[bytes, ...]  # a stream's events, each ending in a blank line, without [DONE]
    cost_nanos: int  # what the original request cost: each hit saves it
    input_tokens: int
    output_tokens: int
    provider: str
    model: str
    stored_us: int

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": _VERSION,
                "kind": self.kind,
                "body": self.body.decode(),
                "events": [e.decode() for e in self.events],
                "cost_nanos": self.cost_nanos,
                "usage": [self.input_tokens, self.output_tokens],
                "provider": self.provider,
                "model": self.model,
                "stored_us": self.stored_us,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Record | None:
        """The record, or None for anything else (an older format, a damaged value)."""
        try:
            d = orjson.loads(raw)
            if d.get("v") != _VERSION:
                return None
            usage = d["usage"]
            return cls(
                str(d["kind"]),
                str(d["body"]).encode(),
                tuple(str(e).encode() for e in d["events"]),
                int(d["cost_nanos"]),
                int(usage[0]),
                int(usage[1]),
                str(d["provider"]),
                str(d["model"]),
                int(d["stored_us"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage(input_tokens=self.input_tokens, output_tokens=self.output_tokens)

    def answer(self) -> bytes:
        """A complete answer's body as a hit sends it: its ``usage.cost`` (OpenRouter's) at 0."""
        if b'"cost"' not in self.body:
            return self.body
        try:
            body: dict[str, Any] = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return self.body
        usage = body.get("usage")
        if not isinstance(usage, dict) or "cost" not in usage:
            return self.body
        usage["cost"] = 0
        return orjson.dumps(body)

    def replay(self) -> bytes:
        """A stream's bytes as a hit sends them: the same events, the usage chunk's cost at 0."""
        return b"".join(_free(e) for e in self.events) + DONE


def split_events(frames: list[bytes]) -> tuple[bytes, ...] | None:
    """A finished stream's frames as events, without [DONE] (None: it did not end with [DONE])."""
    joined = b"".join(frames)
    if not joined.endswith(DONE):
        return None
    body = joined[: -len(DONE)]
    return tuple(part + b"\n\n" for part in body.split(b"\n\n") if part)


def calls_tools(payload: bytes) -> bool:
    """True if an answer (body or stream) calls a tool anywhere (a ``null`` or empty list is no call)."""
    return b'"tool_calls"' in payload and _TOOL_CALL.search(payload) is not None


def _free(event: bytes) -> bytes:
    if b'"cost"' not in event or not event.startswith(b"data: {"):
        return event
    try:
        chunk: dict[str, Any] = orjson.loads(event[6:])
    except orjson.JSONDecodeError:
        return event
    usage = chunk.get("usage")
    if not isinstance(usage, dict) or "cost" not in usage:
        return event
    usage["cost"] = 0
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
