"""The contract every dialect adapter keeps, and the small value types it exchanges with the gateway."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sluice.errors import SluiceError
from sluice.pricing.usage import TokenUsage
from sluice.wire.requests import ChatRequest, EmbeddingRequest
from sluice.wire.sse import Event


@dataclass(frozen=True, slots=True)
class Target:
    """One deployment, resolved at startup: the provider to call and how to call it."""

    provider: str
    preset: str
    upstream_model: str
    max_output_tokens: int
    cap_field: str = "max_tokens"
    anthropic_version: str = "2026-10-21"


@dataclass(slots=True)
class UpstreamCall:
    """What to send upstream: path (appended to the provider's base URL), JSON body, extra headers."""

    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class Translated:
    """A complete non-stream answer in OpenAI's shape, with the usage it reported (if any)."""

    body: bytes
    usage: dict[str, Any] | None
    tokens: TokenUsage | None = None  # the same usage, normalised (for pricing and the ledger)


class StreamTranslator(Protocol):
    """Turns upstream SSE events into OpenAI chunk frames for the client."""

    usage: dict[str, Any] | None
    done: bool
    started: bool  # the provider sent content, a tool call, reasoning or a finish (not just a role)

    def feed(self, event: Event) -> list[bytes]:
        """Frames to send for one upstream event; raises ``SluiceError`` for an in-stream error."""
        ...

    def tokens(self) -> TokenUsage | None:
        """The usage reported so far, normalised (None if the provider never said)."""
        ...

    def delivered(self) -> int:
        """Estimated output tokens sent to the client so far (to price a stream that never finished)."""
        ...

    def finish(self, cost: str | None = None) -> list[bytes]:
        """Frames that close a stream that ended cleanly: the usage chunk if asked (with ``cost``, USD as a
        decimal string, when known), then ``[DONE]``."""
        ...


class Adapter(Protocol):
    """One wire dialect."""

    def chat_call(self, req: ChatRequest, target: Target) -> UpstreamCall:
        """Build the upstream request for a chat completion."""
        ...

    def chat_response(self, raw: bytes, req: ChatRequest, target: Target) -> Translated:
        """Translate a successful non-stream upstream body."""
        ...

    def chat_stream(self, req: ChatRequest, target: Target) -> StreamTranslator:
        """A translator for one stream."""
        ...

    def embeddings_call(self, req: EmbeddingRequest, target: Target) -> UpstreamCall:
        """Build the upstream request for embeddings."""
        ...

    def error(self, provider: str, status: int, headers: Mapping[str, str], raw: bytes) -> SluiceError:
        """Map an upstream error response to one of our errors."""
        ...
