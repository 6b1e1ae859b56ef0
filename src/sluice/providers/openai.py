"""The OpenAI dialect, spoken by OpenAI, DeepSeek, DashScope, OpenRouter, Gemini, Groq, Ollama and vLLM.

The request passes through with the model renamed, usage always requested on streams and an output
cap injected when the client set none. Answers are passed through byte for byte unless a provider
quirk must be normalised: usage riding on the finish chunk (DeepSeek), usage sent although the client
did not ask (OpenRouter, and us asking on the client's behalf), errors inside a 200 stream (OpenRouter),
and required-but-null fields a provider left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sluice.errors import SluiceError, UpstreamError
from sluice.pricing.usage import TokenUsage, estimate_tokens, from_openai
from sluice.providers.base import Target, Translated, UpstreamCall
from sluice.providers.errors import in_band_error, map_error
from sluice.wire.requests import ChatRequest, EmbeddingRequest
from sluice.wire.sse import DONE_FRAME, Event, data_frame, raw_frame

_NO_HEADERS: dict[str, str] = {}


class OpenAIAdapter:
    """Adapter for every OpenAI-compatible provider."""

    def chat_call(self, req: ChatRequest, target: Target) -> UpstreamCall:
        """Rename the model, ask for stream usage, and bound the output."""
        body = dict(req.body)
        body["model"] = target.upstream_model
        if req.stream:
            options = body.get("stream_options")
            body["stream_options"] = {**(options or {}), "include_usage": True}
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body[target.cap_field] = target.max_output_tokens
        return UpstreamCall("/chat/completions", orjson.dumps(body), _NO_HEADERS)

    def chat_response(self, raw: bytes, req: ChatRequest, target: Target) -> Translated:
        """Pass a completion through, filling required-but-null fields a provider left out."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"Provider {target.provider!r} sent a response that is not JSON.") from exc
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            if isinstance(body, dict) and "error" in body:
                raise in_band_error(target.provider, body)
            raise UpstreamError(f"Provider {target.provider!r} sent a response without choices.")
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        tokens = from_openai(usage) if usage is not None else None
        if _complete_completion(body):
            return Translated(raw, usage, tokens)
        return Translated(orjson.dumps(body), usage, tokens)

    def chat_stream(self, req: ChatRequest, target: Target) -> OpenAIStream:
        """A translator that normalises usage placement and in-stream errors."""
        return OpenAIStream(target.provider, req.include_usage)

    def embeddings_call(self, req: EmbeddingRequest, target: Target) -> UpstreamCall:
        """Embeddings are always fetched as floats; the gateway encodes base64 itself when asked."""
        body = dict(req.body)
        body["model"] = target.upstream_model
        body["encoding_format"] = "float"
        return UpstreamCall("/embeddings", orjson.dumps(body), _NO_HEADERS)

    def error(self, provider: str, status: int, headers: Mapping[str, str], raw: bytes) -> SluiceError:
        """Map an upstream error response."""
        return map_error(provider, status, headers, raw)


def _complete_completion(body: dict[str, Any]) -> bool:
    """Fill fields OpenAI's spec marks required (nullable); return True if nothing was missing."""
    complete = True
    for choice in body["choices"]:
        if not isinstance(choice, dict):
            continue
        if "logprobs" not in choice:
            choice["logprobs"] = None
            complete = False
        msg = choice.get("message")
        if isinstance(msg, dict):
            for name in ("content", "refusal"):
                if name not in msg:
                    msg[name] = None
                    complete = False
    if "object" not in body:
        body["object"] = "chat.completion"
        complete = False
    return complete


class OpenAIStream:
    """Translate one OpenAI-dialect stream for a client."""

    __slots__ = ("_chars", "_head", "_include_usage", "_pieces", "_provider", "done", "started", "usage")

    def __init__(self, provider: str, include_usage: bool) -> None:
        self._provider = provider
        self._include_usage = include_usage
        self._head: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.started = False
        self._chars = 0  # text delivered (content, reasoning, tool arguments), for estimates
        self._pieces = 0

    def feed(self, event: Event) -> list[bytes]:
        """Frames for the client from one upstream event."""
        data = event.data
        if data is None:
            return []
        if data.startswith(b"[DONE]"):
            self.done = True
            return []
        try:
            chunk: Any = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"Provider {self._provider!r} sent a malformed stream event.") from exc
        if not isinstance(chunk, dict):
            raise UpstreamError(f"Provider {self._provider!r} sent a malformed stream event.")
        if "error" in chunk:
            raise in_band_error(self._provider, chunk)
        if self._head is None:
            self._head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        usage = chunk.get("usage")
        choices = chunk.get("choices")
        if isinstance(choices, list):
            if not self.started:
                self.started = any(_substantive(c) for c in choices)
            for choice in choices:
                size = _delta_chars(choice)
                if size:
                    self._chars += size
                    self._pieces += 1
        if usage:
            self.usage = usage
            if not choices:
                return []  # the usage chunk is re-emitted at the end, only if the client asked
            chunk["usage"] = None  # DeepSeek: usage rides on the finish chunk; move it to its own chunk
            _fill_chunk(choices)
            return [data_frame(chunk)]
        if (isinstance(choices, list) and _fill_chunk(choices)) or data.find(b"\n") >= 0:
            return [data_frame(chunk)]  # re-framed: a multi-line data field must not pass through as is
        return [raw_frame(data)]

    def tokens(self) -> TokenUsage | None:
        """The usage reported so far, normalised."""
        return from_openai(self.usage) if isinstance(self.usage, dict) else None

    def delivered(self) -> int:
        """Estimated output tokens delivered so far."""
        return estimate_tokens(self._chars, self._pieces)

    def finish(self, cost: str | None = None) -> list[bytes]:
        """The usage chunk (when asked and known, with our cost) and ``[DONE]``."""
        if self._include_usage and self.usage is not None:
            head = self._head or {}
            chunk: dict[str, Any] = {
                "id": head.get("id"),
                "object": "chat.completion.chunk",
                "created": head.get("created"),
                "model": head.get("model"),
                "system_fingerprint": head.get("system_fingerprint"),
                "choices": [],
                "usage": with_cost(self.usage, cost),
            }
            return [data_frame(chunk), DONE_FRAME]
        return [DONE_FRAME]


def _substantive(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    if choice.get("finish_reason"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(
        delta.get(k) for k in ("content", "tool_calls", "reasoning_content", "refusal", "function_call")
    )


def _delta_chars(choice: Any) -> int:
    """Characters of text in one streamed choice's delta."""
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        return 0
    size = 0
    for key in ("content", "reasoning_content", "refusal"):
        text = delta.get(key)
        if isinstance(text, str):
            size += len(text)
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            args = fn.get("arguments") if isinstance(fn, dict) else None
            if isinstance(args, str):
                size += len(args)
    return size


def with_cost(usage: dict[str, Any], cost: str | None) -> dict[str, Any]:
    """``usage`` with ``cost`` (USD, as OpenRouter reports it) set to ours, as an exact JSON number."""
    if cost is None:
        return usage
    return {**usage, "cost": orjson.Fragment(cost.encode())}


def _fill_chunk(choices: list[Any]) -> bool:
    """Add ``finish_reason: null`` where a provider left it out; True if anything changed."""
    changed = False
    for choice in choices:
        if isinstance(choice, dict) and "finish_reason" not in choice:
            choice["finish_reason"] = None
            changed = True
    return changed
