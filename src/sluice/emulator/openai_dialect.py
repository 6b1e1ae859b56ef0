"""The OpenAI chat dialect as each provider speaks it, quirks included (shared/providers.md §1–4, §6).

Flavors: ``openai``, ``deepseek`` (usage on the finish chunk, ``: keep-alive`` comments, reasoning on by
default, hit/miss usage), ``dashscope`` (``request_id`` in errors, ``enable_thinking``), ``openrouter``
(``: OPENROUTER PROCESSING``, usage with ``cost`` always sent, numeric error codes, 200-then-error
chunks), ``gemini`` (errors as a JSON array), and the plain ones (``groq``, ``ollama``, ``vllm``, …).
"""

from __future__ import annotations

import base64
import itertools
import time
from array import array
from typing import Any

import orjson

from sluice.emulator.content import count_tokens, embedding, prompt_tokens, reply_words, schema_instance
from sluice.emulator.faults import Faults
from sluice.emulator.http import Plan
from sluice.emulator.quotas import error_body

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Invalid request.", "invalid_request_error"),
    401: ("Incorrect API key provided.", "authentication_error"),
    402: ("Insufficient Balance", "insufficient_quota"),
    403: ("Permission denied.", "permission_error"),
    404: ("The model does not exist.", "not_found_error"),
    408: ("Request timed out.", "timeout"),
    413: ("Request too large.", "invalid_request_error"),
    422: ("Invalid parameters.", "invalid_request_error"),
    429: ("Rate limit reached for requests.", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error"),
    502: ("Bad gateway.", "server_error"),
    503: ("The engine is currently overloaded, please try again later.", "server_error"),
    504: ("Gateway timeout.", "server_error"),
    529: ("Overloaded.", "overloaded_error"),
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_ARG_PIECE = 12
_IDS = itertools.count(1)  # response ids: unique per emulator process, in order


def error_plan(flavor: str, status: int, f: Faults, message: str | None = None) -> Plan:
    """An error answer in the flavor's own shape."""
    default_msg, kind = _ERRORS.get(status, ("Error.", "api_error"))
    msg = message or default_msg
    body: Any
    if flavor == "openrouter":
        body = {"error": {"code": status, "message": msg, "metadata": {"provider_name": "Emulated"}}}
    elif flavor == "gemini":
        body = [{"error": {"code": status, "message": msg, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}]
    elif (own := error_body(flavor, status, msg, kind)) is not None:
        body = own
    else:
        code = "invalid_request_error" if flavor == "deepseek" else kind
        body = {"error": {"message": msg, "type": kind, "param": None, "code": code}}
        if flavor == "dashscope":
            body["request_id"] = "emu-req-0001"
    headers = [("retry-after", f.retry_after)] if f.retry_after else []
    return Plan(status=status, headers=headers, body=orjson.dumps(body))


def _reasoning_tokens(flavor: str, body: dict[str, Any], f: Faults) -> int:
    if f.reasoning >= 0:
        return f.reasoning
    if flavor == "deepseek":
        thinking = body.get("thinking")
        return 0 if isinstance(thinking, dict) and thinking.get("type") == "disabled" else 8
    if flavor == "dashscope" and body.get("enable_thinking") is True:
        return 8
    return 0


def _tool_calls(body: dict[str, Any], f: Faults) -> list[dict[str, Any]]:
    tools = [
        t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return []
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t["function"].get("name") == name][:1]
    elif choice == "required" or (choice == "auto" and _last_role(body) == "user"):
        chosen = tools[: max(1, f.calls)]
    else:
        chosen = []
    return [
        {
            "id": f"call_emu{i:04d}",
            "type": "function",
            "function": {
                "name": t["function"]["name"],
                "arguments": orjson.dumps(schema_instance(t["function"].get("parameters") or {})).decode(),
            },
        }
        for i, t in enumerate(chosen)
    ]


def _last_role(body: dict[str, Any]) -> str | None:
    msgs = body.get("messages") or []
    last = msgs[-1] if msgs else None
    return last.get("role") if isinstance(last, dict) else None


def _json_text(body: dict[str, Any], f: Faults) -> str | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if f.bad_json and fmt.get("type") in ("json_object", "json_schema"):  # a broken JSON mode: prose
        return "Sure! Here is the JSON you asked for: {answer: " + "".join(reply_words(f.tokens))
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        return orjson.dumps(schema_instance(spec.get("schema") or {"type": "object"})).decode()
    if fmt.get("type") == "json_object":
        return orjson.dumps({"answer": "".join(reply_words(f.tokens))}).decode()
    return None


class _Answer:
    """One choice's content, computed once and rendered either whole or as stream pieces."""

    def __init__(self, body: dict[str, Any], f: Faults, index: int, reasoning: int) -> None:
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or 1 << 30
        self.calls = _tool_calls(body, f)
        self.reasoning = reply_words(reasoning, offset=7) if reasoning else []
        self.pieces: list[str] = []
        self.finish = "stop"
        if self.calls:
            self.finish = "tool_calls"
            self.tokens = sum(
                count_tokens(c["function"]["name"] + c["function"]["arguments"]) for c in self.calls
            )
            return
        text = _json_text(body, f)
        if text is not None:
            if count_tokens(text) > cap:
                text, self.finish = text.encode()[: cap * 4].decode("utf-8", "ignore"), "length"
            self.pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
            self.tokens = count_tokens(text)
            return
        n = f.tokens
        if n > cap:
            n, self.finish = cap, "length"
        self.pieces = reply_words(n, offset=index)
        self.tokens = n

    @property
    def content(self) -> str | None:
        return "".join(self.pieces) if not self.calls else None


def _usage(
    flavor: str, body: dict[str, Any], f: Faults, answers: list[_Answer], reasoning: int
) -> dict[str, Any]:
    prompt = prompt_tokens(body.get("messages") or [], tools=body.get("tools"))
    cached = min(f.cache_read, prompt)
    completion = sum(a.tokens for a in answers) + reasoning * len(answers)
    details: dict[str, Any] = {"cached_tokens": cached}
    if f.cache_write:
        details["cache_write_tokens"] = min(f.cache_write, prompt - cached)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": reasoning * len(answers)},
    }
    if flavor == "deepseek":
        usage["prompt_cache_hit_tokens"] = cached
        usage["prompt_cache_miss_tokens"] = prompt - cached
    if flavor == "openrouter":
        # credits (USD) as OpenRouter reports them: $0.10 / $0.40 per million tokens in this emulator
        free = str(body.get("model") or "").endswith(":free")  # OpenRouter's free variants bill nothing
        usage["cost"] = 0 if free else round((prompt * 0.1 + completion * 0.4) / 1_000_000, 12)
        usage["is_byok"] = False
    return usage


def chat(flavor: str, body: dict[str, Any], f: Faults) -> Plan:
    """Answer a chat completion request."""
    if flavor == "dashscope" and body.get("enable_thinking") is True and body.get("stream") is not True:
        return error_plan(
            flavor, 400, f, "parameter.enable_thinking must be set to false for non-streaming calls"
        )
    n = body.get("n") or 1
    reasoning = _reasoning_tokens(flavor, body, f)
    answers = [_Answer(body, f, i, reasoning) for i in range(n)]
    usage = None if f.no_usage else _usage(flavor, body, f, answers, reasoning)
    head = {
        "id": f"chatcmpl-emu{next(_IDS):010d}",
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": "fp_emulator",
    }
    if body.get("stream") is True:
        return _stream(flavor, body, f, head, answers, usage)
    choices = []
    for i, a in enumerate(answers):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": a.content,
            "refusal": None,
            "annotations": [],
        }
        if a.calls:
            message["tool_calls"] = a.calls
        if a.reasoning:
            message["reasoning_content"] = "".join(a.reasoning)
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": a.finish})
    out: dict[str, Any] = {**head, "object": "chat.completion", "choices": choices, "service_tier": "default"}
    if usage is not None:
        out["usage"] = usage
    if flavor == "openrouter":
        out["provider"] = "Emulated"
    return Plan(body=orjson.dumps(out), latency=f.latency_ms / 1000)


def _stream(
    flavor: str,
    body: dict[str, Any],
    f: Faults,
    head: dict[str, Any],
    answers: list[_Answer],
    usage: dict[str, Any] | None,
) -> Plan:
    include = bool((body.get("stream_options") or {}).get("include_usage"))
    if flavor == "openrouter":
        include = True  # OpenRouter always sends usage; include_usage no longer does anything
    base = {**head, "object": "chat.completion.chunk"}
    null_usage = include and flavor != "openrouter"

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        c = {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if null_usage:
            c["usage"] = None
        return c

    events: list[dict[str, Any]] = [
        chunk(i, {"role": "assistant", "content": ""}) for i in range(len(answers))
    ]
    for i, a in enumerate(answers):
        events += [chunk(i, {"reasoning_content": w}) for w in a.reasoning]
        for k, call in enumerate(a.calls):
            fn = call["function"]
            events.append(
                chunk(
                    i,
                    {
                        "tool_calls": [
                            {
                                "index": k,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": fn["name"], "arguments": ""},
                            }
                        ]
                    },
                )
            )
            args = fn["arguments"]
            events += [
                chunk(i, {"tool_calls": [{"index": k, "function": {"arguments": args[j : j + _ARG_PIECE]}}]})
                for j in range(0, len(args), _ARG_PIECE)
            ]
    longest = max(len(a.pieces) for a in answers)
    for step in range(longest):  # interleave choices, as OpenAI does with n > 1
        events += [
            chunk(i, {"content": a.pieces[step]}) for i, a in enumerate(answers) if step < len(a.pieces)
        ]
    events += [chunk(i, {}, a.finish) for i, a in enumerate(answers)]
    if usage is not None and include:
        if flavor == "deepseek":
            events[-1]["usage"] = usage  # DeepSeek: usage rides on the finish chunk
        else:
            events.append({**base, "choices": [], "usage": usage})
    frames = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
    comment = b": OPENROUTER PROCESSING\n\n" if flavor == "openrouter" else b": keep-alive\n\n"
    prelude = [comment] * (f.keepalive + (1 if flavor == "openrouter" else 0))
    if f.mid_error >= 0:
        frames = [*frames[: f.mid_error], _mid_error(flavor, base)]
    elif f.malformed >= 0:
        frames = [
            *frames[: f.malformed],
            b'data: {"id": "broken\n\n',
            *frames[f.malformed :],
            b"data: [DONE]\n\n",
        ]
    else:
        frames.append(b"data: [DONE]\n\n")
    return Plan(
        content_type="text/event-stream",
        frames=prelude + frames,
        latency=f.latency_ms / 1000,
        ttft=f.ttft_ms / 1000,
        pace=f.pace_ms / 1000,
        cut_after=f.cut_after + len(prelude) if f.cut_after >= 0 else -1,
    )


def _mid_error(flavor: str, base: dict[str, Any]) -> bytes:
    if flavor == "openrouter":
        payload: dict[str, Any] = {
            **base,
            "provider": "Emulated",
            "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
    else:
        payload = {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": "server_error",
            }
        }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def embeddings(flavor: str, body: dict[str, Any], f: Faults) -> Plan:
    """Answer an embeddings request (float or base64)."""
    raw = body.get("input")
    if not isinstance(raw, (str, list)):
        return error_plan(flavor, 400, f, "'input' must be a string or an array.")
    inputs = [raw] if isinstance(raw, str) else list(raw)
    if not inputs:
        return error_plan(flavor, 400, f, "input must not be empty")
    dims = body.get("dimensions") or 1536
    texts = [x if isinstance(x, str) else orjson.dumps(x).decode() for x in inputs]
    data = []
    for i, text in enumerate(texts):
        vec: Any = embedding(text, dims)
        if body.get("encoding_format") == "base64":
            vec = base64.b64encode(array("f", vec).tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    tokens = sum(count_tokens(t) for t in texts)
    out: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
    if not f.no_usage:
        out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return Plan(body=orjson.dumps(out), latency=f.latency_ms / 1000)


def models(flavor: str, names: list[str]) -> Plan:
    """The model list; DeepSeek's entries have no ``created``."""
    data = []
    for name in names:
        card: dict[str, Any] = {"id": name, "object": "model", "owned_by": flavor}
        if flavor != "deepseek":
            card["created"] = 1_700_000_000
        data.append(card)
    return Plan(body=orjson.dumps({"object": "list", "data": data}))
