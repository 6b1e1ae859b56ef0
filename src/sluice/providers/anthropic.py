"""OpenAI chat ⇄ Anthropic Messages, both ways, including the event stream.

Conventions (shared/providers.md §5.5): system/developer messages are hoisted into ``system``; tool
calls become ``tool_use`` blocks and tool messages ``tool_result`` blocks in one user turn; a tool's
stream ``index`` counts tool blocks, not Anthropic's block index; usage counts cache reads and writes
as prompt tokens. On ``anthropic-version`` 2026-10-21 sampling parameters no longer exist and are
dropped; on 2023-06-01 ``temperature`` is clamped to Anthropic's 0–1 range.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from sluice.errors import InvalidRequest, SluiceError, UpstreamError
from sluice.pricing.usage import TokenUsage, estimate_tokens, from_anthropic
from sluice.providers.base import Target, Translated, UpstreamCall
from sluice.providers.errors import in_band_error, map_error
from sluice.providers.openai import with_cost
from sluice.wire.requests import ChatRequest, EmbeddingRequest
from sluice.wire.sse import DONE_FRAME, Event, data_frame

LEGACY_VERSION = "2023-06-01"
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_EFFORTS = frozenset({"low", "medium", "high", "max"})


def _finish(stop_reason: Any) -> str:
    """OpenAI finish_reason for an Anthropic stop_reason (unknown or malformed: stop)."""
    return STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def _image_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise InvalidRequest("image_url.url must be a string.", param=param, code="invalid_type")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0] or "image/png"
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """A block with the part's ``cache_control`` (Anthropic prompt caching passes through)."""
    control = part.get("cache_control")
    if isinstance(control, dict):
        block["cache_control"] = control
    return block


def _system_blocks(content: Any) -> list[dict[str, Any]]:
    """A system message as text blocks, keeping each part's ``cache_control``."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [
        _cached({"type": "text", "text": p.get("text", "")}, p)
        for p in content or []
        if isinstance(p, dict) and p.get("type") == "text" and p.get("text")
    ]


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content or []):
        kind = part.get("type")
        if kind == "text":
            blocks.append(_cached({"type": "text", "text": part.get("text", "")}, part))
        elif kind == "image_url":
            blocks.append(_cached(_image_block(part, f"{param}[{j}]"), part))
        else:
            raise InvalidRequest(
                f"Content part type {kind!r} is not supported for Anthropic models.",
                param=f"{param}[{j}].type",
                code="unsupported_value",
            )
    return blocks


def _assistant_blocks(msg: dict[str, Any], param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(msg.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for j, call in enumerate(msg.get("tool_calls") or []):
        fn = call["function"]
        bad = InvalidRequest(
            "Tool call arguments must be a JSON object string.",
            param=f"{param}.tool_calls[{j}].function.arguments",
            code="invalid_value",
        )
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError as exc:
            raise bad from exc
        if not isinstance(args, dict):
            raise bad
        blocks.append(
            {"type": "tool_use", "id": call.get("id") or f"call_{j}", "name": fn["name"], "input": args}
        )
    return blocks


def _messages(body: dict[str, Any]) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """The system prompt (text, or blocks when one asks for prompt caching) and the turns."""
    system: list[dict[str, Any]] = []
    texts: list[str] = []  # each system message's text, for the plain form
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(body["messages"]):
        role = msg["role"]
        param = f"messages[{i}]"
        if role in ("system", "developer"):
            system += _system_blocks(msg.get("content"))
            texts.append(_text_of(msg.get("content")))
            continue
        if role == "user":
            turn, blocks = "user", _user_blocks(msg.get("content"), f"{param}.content")
        elif role == "assistant":
            turn, blocks = "assistant", _assistant_blocks(msg, param)
        else:  # tool / legacy function results answer the previous assistant turn
            result = {
                "type": "tool_result",
                "tool_use_id": msg.get("tool_call_id") or msg.get("name") or "",
                "content": _text_of(msg.get("content")),
            }
            turn, blocks = "user", [result]
        if not blocks:
            continue
        if out and out[-1]["role"] == turn:
            out[-1]["content"].extend(blocks)  # Anthropic wants alternating turns
        else:
            out.append({"role": turn, "content": blocks})
    if any("cache_control" in block for block in system):
        return system, out
    return "\n\n".join(t for t in texts if t), out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice.get("type", "function") == "function":
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:  # allowed_tools / custom: no Anthropic equivalent narrower than letting the model choose
        out = {"type": "auto"}
    if parallel is False and (out is None or out["type"] != "none"):  # "none" takes no other field
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def _output_config(body: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        cfg["format"] = {
            "type": "json_schema",
            "schema": fmt["json_schema"].get("schema") or {"type": "object"},
        }
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        cfg["format"] = {"type": "json_schema", "schema": {"type": "object"}}
    effort = body.get("reasoning_effort")
    if effort in _EFFORTS:
        cfg["effort"] = effort
    return cfg


def to_messages_request(req: ChatRequest, target: Target) -> dict[str, Any]:
    """Translate an OpenAI chat request into an Anthropic Messages request."""
    body = req.body
    if req.n > 1:
        raise InvalidRequest(
            "Anthropic models return one choice; n must be 1.", param="n", code="unsupported_value"
        )
    system, messages = _messages(body)
    out: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or target.max_output_tokens,
    }
    if system:
        out["system"] = system
    if req.stream:
        out["stream"] = True
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in tools
            if t.get("type", "function") == "function"
        ]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and tools:
        out["tool_choice"] = choice
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str):
        out["metadata"] = {"user_id": user}
    cfg = _output_config(body)
    if cfg:
        out["output_config"] = cfg
    if target.anthropic_version == LEGACY_VERSION:
        if isinstance(body.get("temperature"), int | float):
            out["temperature"] = min(float(body["temperature"]), 1.0)
        if isinstance(body.get("top_p"), int | float):
            out["top_p"] = body["top_p"]
    return out


def openai_usage(u: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage → OpenAI usage: prompt tokens include cache reads and writes."""
    read = int(u.get("cache_read_input_tokens") or 0)
    write = int(u.get("cache_creation_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + read + write
    completion = int(u.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    }


class AnthropicAdapter:
    """Adapter for Anthropic's Messages API."""

    def chat_call(self, req: ChatRequest, target: Target) -> UpstreamCall:
        """Translate the request and set the version header."""
        body = orjson.dumps(to_messages_request(req, target))
        return UpstreamCall("/messages", body, {"anthropic-version": target.anthropic_version})

    def chat_response(self, raw: bytes, req: ChatRequest, target: Target) -> Translated:
        """Translate a Messages response into a chat completion."""
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"Provider {target.provider!r} sent a response that is not JSON.") from exc
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), list):
            raise UpstreamError(f"Provider {target.provider!r} sent a response without content.")
        texts: list[str] = []
        thinking: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in msg["content"]:
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text", ""))
            elif kind == "thinking":
                thinking.append(block.get("thinking", ""))
            elif kind == "tool_use":
                args = orjson.dumps(block.get("input") or {}).decode()
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": args},
                    }
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        if thinking:
            message["reasoning_content"] = "".join(thinking)
        raw_usage = msg.get("usage")
        usage: dict[str, Any] | None = None
        tokens: TokenUsage | None = None
        if isinstance(raw_usage, dict):
            usage, tokens = openai_usage(raw_usage), from_anthropic(raw_usage)
        out = {
            "id": msg.get("id"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": msg.get("model") or target.upstream_model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _finish(msg.get("stop_reason")),
                }
            ],
        }
        if usage is not None:
            out["usage"] = usage
        return Translated(orjson.dumps(out), usage, tokens)

    def chat_stream(self, req: ChatRequest, target: Target) -> AnthropicStream:
        """A translator from Anthropic events to chat completion chunks."""
        return AnthropicStream(target, req.include_usage)

    def embeddings_call(self, req: EmbeddingRequest, target: Target) -> UpstreamCall:
        """Anthropic has no embeddings endpoint."""
        raise InvalidRequest(
            "Anthropic models do not serve embeddings.", param="model", code="unsupported_model"
        )

    def error(self, provider: str, status: int, headers: Mapping[str, str], raw: bytes) -> SluiceError:
        """Map an upstream error response (Anthropic's envelope is understood by the shared mapper)."""
        return map_error(provider, status, headers, raw)


class AnthropicStream:
    """Translate one Anthropic event stream into chat completion chunks."""

    __slots__ = (
        "_chars",
        "_created",
        "_id",
        "_include_usage",
        "_model",
        "_pieces",
        "_provider",
        "_raw_usage",
        "_tools",
        "done",
        "started",
        "usage",
    )

    def __init__(self, target: Target, include_usage: bool) -> None:
        self._provider = target.provider
        self._include_usage = include_usage
        self._id = ""
        self._model = target.upstream_model
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool index
        self._raw_usage: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.started = False
        self._chars = 0  # text delivered (text, thinking, tool input), for estimates
        self._pieces = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            chunk["usage"] = None
        return data_frame(chunk)

    def feed(self, event: Event) -> list[bytes]:
        """Frames for one Anthropic event."""
        if event.data is None:
            return []
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"Provider {self._provider!r} sent a malformed stream event.") from exc
        if not isinstance(payload, dict):
            raise UpstreamError(f"Provider {self._provider!r} sent a malformed stream event.")
        kind = event.event or payload.get("type")
        if kind == "content_block_delta":
            out = self._delta(payload)
            self.started = self.started or bool(out)
            return out
        if kind == "message_start":
            msg = payload.get("message") or {}
            self._id = msg.get("id") or ""
            self._model = msg.get("model") or self._model
            self._raw_usage.update(msg.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                k = len(self._tools)
                self._tools[payload.get("index", 0)] = k
                call = {
                    "index": k,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                self.started = True
                return [self._chunk({"tool_calls": [call]})]
            text = block.get("text")
            if block.get("type") == "text" and text:
                self.started = True
                return [self._chunk({"content": text})]
            return []
        if kind == "message_delta":
            self._raw_usage.update({k: v for k, v in (payload.get("usage") or {}).items() if v is not None})
            if self._raw_usage:
                self.usage = openai_usage(self._raw_usage)
            reason = (payload.get("delta") or {}).get("stop_reason")
            self.started = True
            return [self._chunk({}, _finish(reason))]
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            raise in_band_error(self._provider, payload)
        return []  # ping, content_block_stop, and event types we do not know

    def _delta(self, payload: dict[str, Any]) -> list[bytes]:
        delta = payload.get("delta") or {}
        kind = delta.get("type")
        text = delta.get("text") or delta.get("partial_json") or delta.get("thinking")
        if isinstance(text, str) and text:
            self._chars += len(text)
            self._pieces += 1
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "input_json_delta":
            k = self._tools.get(payload.get("index", 0), 0)
            return [
                self._chunk(
                    {"tool_calls": [{"index": k, "function": {"arguments": delta.get("partial_json", "")}}]}
                )
            ]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
        return []

    def tokens(self) -> TokenUsage | None:
        """The usage reported so far (message_start, then message_delta's cumulative counts), normalised."""
        return from_anthropic(self._raw_usage) if self._raw_usage else None

    def delivered(self) -> int:
        """Estimated output tokens delivered so far."""
        return estimate_tokens(self._chars, self._pieces)

    def finish(self, cost: str | None = None) -> list[bytes]:
        """The usage chunk (if asked, with our cost) and ``[DONE]``."""
        if self._include_usage and self.usage is not None:
            chunk = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "system_fingerprint": None,
                "choices": [],
                "usage": with_cost(self.usage, cost),
            }
            return [data_frame(chunk), DONE_FRAME]
        return [DONE_FRAME]
