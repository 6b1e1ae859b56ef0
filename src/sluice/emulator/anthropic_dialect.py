"""Anthropic's Messages API as the emulator plays it (shared/providers.md §5).

Both auth headers and both versions are accepted; on 2026-10-21 ``temperature``/``top_p``/``top_k`` are a
400. Streams are named events with ``ping``s; usage counts ``input_tokens`` without cache reads and writes.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from sluice.emulator.content import count_tokens, prompt_tokens, reply_words, schema_instance
from sluice.emulator.faults import Faults
from sluice.emulator.http import Plan

NEW_VERSION = "2026-10-21"
KNOWN_VERSIONS = frozenset({"2023-06-01", NEW_VERSION})
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low."),
    403: ("permission_error", "Permission denied."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error."),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}


def error_plan(status: int, f: Faults, message: str | None = None) -> Plan:
    """An error in Anthropic's envelope."""
    kind, default = _ERRORS.get(status, ("api_error", "Error."))
    body = {
        "type": "error",
        "error": {"type": kind, "message": message or default},
        "request_id": "req_emu0001",
    }
    headers = [("retry-after", f.retry_after)] if f.retry_after else []
    return Plan(status=status, headers=headers, body=orjson.dumps(body))


def _check(headers: dict[str, str], body: dict[str, Any], f: Faults) -> Plan | None:
    version = headers.get("anthropic-version")
    if version not in KNOWN_VERSIONS:
        return error_plan(400, f, f"anthropic-version: unknown or missing ({version!r})")
    if version == NEW_VERSION:
        for name in ("temperature", "top_p", "top_k"):
            if name in body:
                return error_plan(400, f, f"{name}: Extra inputs are not permitted")
    elif isinstance(body.get("temperature"), int | float) and not 0 <= body["temperature"] <= 1:
        return error_plan(400, f, "temperature: must be between 0 and 1")
    if not isinstance(body.get("max_tokens"), int):
        return error_plan(400, f, "max_tokens: Field required")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return error_plan(400, f, "messages: at least one message is required")
    if any(isinstance(m, dict) and m.get("role") not in ("user", "assistant") for m in msgs):
        return error_plan(400, f, "messages: roles must be 'user' or 'assistant'; use the top-level system")
    return None


def _blocks(body: dict[str, Any], f: Faults) -> tuple[list[dict[str, Any]], str]:
    cap = body["max_tokens"]
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice") or {"type": "auto"}
    last = body["messages"][-1]
    answering_tool = isinstance(last.get("content"), list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"]
    )
    chosen: list[dict[str, Any]] = []
    if tools and choice.get("type") != "none":
        if choice.get("type") == "tool":
            chosen = [t for t in tools if t.get("name") == choice.get("name")][:1]
        elif choice.get("type") == "any" or not answering_tool:
            chosen = tools[: max(1, f.calls)]
        if choice.get("disable_parallel_tool_use"):
            chosen = chosen[:1]
    if chosen:
        blocks = [
            {
                "type": "tool_use",
                "id": f"toolu_emu{i:04d}",
                "name": t["name"],
                "input": schema_instance(t.get("input_schema") or {}),
            }
            for i, t in enumerate(chosen)
        ]
        return blocks, "tool_use"
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        text = orjson.dumps(schema_instance(fmt.get("schema") or {"type": "object"})).decode()
        return [{"type": "text", "text": text}], "end_turn"
    n = min(f.tokens, cap)
    return [{"type": "text", "text": "".join(reply_words(n))}], "max_tokens" if f.tokens > cap else "end_turn"


def _output_tokens(blocks: list[dict[str, Any]]) -> int:
    total = 0
    for b in blocks:
        if b["type"] == "text":
            text = b["text"]
            total += len(text.split()) if not text.startswith(("{", "[")) else count_tokens(text)
        else:
            total += count_tokens(b["name"] + orjson.dumps(b["input"]).decode())
    return total


def messages(headers: dict[str, str], body: dict[str, Any], f: Faults) -> Plan:
    """Answer ``POST /v1/messages``."""
    bad = _check(headers, body, f)
    if bad is not None:
        return bad
    blocks, stop = _blocks(body, f)
    if f.garbled:
        if body.get("stream"):
            frame = _event("content_block_start", {"index": [], "content_block": {"type": "tool_use"}})
            return Plan(content_type="text/event-stream", frames=[frame])
        return Plan(body=orjson.dumps({"type": "message", "content": [1, "x"], "usage": []}))
    total_in = prompt_tokens(body["messages"], system=body.get("system"), tools=body.get("tools"))
    read = min(f.cache_read, total_in)
    write = min(f.cache_write, total_in - read)
    usage = {
        "input_tokens": total_in - read - write,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": _output_tokens(blocks),
        "service_tier": "standard",
    }
    msg_id = f"msg_emu{zlib.crc32(orjson.dumps(body)):010d}"
    message = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        if f.no_usage:
            message.pop("usage")
        return Plan(body=orjson.dumps(message), latency=f.latency_ms / 1000)
    return _stream(message, f)


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **payload}) + b"\n\n"


def _stream(message: dict[str, Any], f: Faults) -> Plan:
    usage = message["usage"]
    start_usage = {} if f.no_usage else {**usage, "output_tokens": 1}
    frames = [
        _event(
            "message_start",
            {"message": {**message, "content": [], "stop_reason": None, "usage": start_usage}},
        ),
        *[_event("ping", {})] * (1 + f.keepalive),  # Anthropic's keep-alives are `ping` events
    ]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            frames.append(
                _event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}})
            )
            words = block["text"].split(" ")
            pieces = [w if j == 0 else " " + w for j, w in enumerate(words)]
            frames += [
                _event("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": p}})
                for p in pieces
            ]
        else:
            frames.append(
                _event(
                    "content_block_start",
                    {
                        "index": i,
                        "content_block": {
                            "type": "tool_use",
                            "id": block["id"],
                            "name": block["name"],
                            "input": {},
                        },
                    },
                )
            )
            args = orjson.dumps(block["input"]).decode()
            frames += [
                _event(
                    "content_block_delta",
                    {"index": i, "delta": {"type": "input_json_delta", "partial_json": args[j : j + 10]}},
                )
                for j in range(0, len(args), 10)
            ]
        frames.append(_event("content_block_stop", {"index": i}))
    end_usage = {} if f.no_usage else {"output_tokens": usage["output_tokens"]}
    frames.append(
        _event(
            "message_delta",
            {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}, "usage": end_usage},
        )
    )
    frames.append(_event("message_stop", {}))
    if f.mid_error >= 0:
        frames = [
            *frames[: f.mid_error],
            _event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ]
    elif f.malformed >= 0:
        frames = [
            *frames[: f.malformed],
            b'event: content_block_delta\ndata: {"type\n\n',
            *frames[f.malformed :],
        ]
    return Plan(
        content_type="text/event-stream",
        frames=frames,
        latency=f.latency_ms / 1000,
        ttft=f.ttft_ms / 1000,
        pace=f.pace_ms / 1000,
        cut_after=f.cut_after,
    )
