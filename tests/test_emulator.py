"""The emulator driven directly over real HTTP: every provider quirk and fault it must reproduce.

The facts pinned here come from shared/providers.md; the gateway's tests rely on the emulator
behaving like each real provider, so a regression here would make those tests meaningless.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any

import aiohttp
import orjson
import pytest

from sluice.emulator import Emulator

KEY = "sk-emu-test-key"
NEW_VERSION = "2026-10-21"
OLD_VERSION = "2023-06-01"
MSG: list[dict[str, Any]] = [{"role": "user", "content": "Say hello."}]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 3},
                "hourly": {"type": "boolean"},
                "note": {"type": "string"},
            },
            "required": ["city", "unit", "days", "hourly"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "score": {"type": "number", "minimum": 2.5},
        "level": {"type": "integer", "minimum": 4},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 2},
        "kind": {"const": "report"},
        "owner": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]}},
            "required": ["name", "age"],
        },
        "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    },
    "required": ["title", "score", "level", "tags", "kind", "owner", "either"],
}


# --- a small HTTP client and wire readers ---------------------------------------------------------


@dataclass
class Reply:
    """One HTTP answer, read whole."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return orjson.loads(self.body)

    def frames(self) -> list[bytes]:
        """The SSE frames (each ended by a blank line; the body must end on a frame boundary)."""
        assert self.body.endswith(b"\n\n"), self.body[-60:]
        return self.body[:-2].split(b"\n\n")

    def data(self) -> list[bytes]:
        """The ``data:`` payload of every frame that has one (single-line data only)."""
        out: list[bytes] = []
        for frame in self.frames():
            out.extend(line[6:] for line in frame.split(b"\n") if line.startswith(b"data: "))
        return out

    def chunks(self) -> list[dict[str, Any]]:
        """The JSON chunks of an OpenAI-style stream, without the ``[DONE]`` terminator."""
        return [orjson.loads(d) for d in self.data() if d != b"[DONE]"]

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """The named events of an Anthropic stream as (event line, data JSON)."""
        out = []
        for frame in self.frames():
            lines = frame.split(b"\n")
            assert len(lines) == 2, frame
            assert lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), frame
            out.append((lines[0][7:].decode(), orjson.loads(lines[1][6:])))
        return out


def request(url: str, data: bytes, headers: dict[str, str]) -> urllib.request.Request:
    """A POST to the emulator (plain http on 127.0.0.1, never another scheme)."""
    assert url.startswith("http://127.0.0.1:"), url
    return urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310


def post(
    url: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    auth: bool = True,
    timeout: float = 5.0,
) -> Reply:
    """POST JSON (or raw bytes) and read the whole answer, whatever its status."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"content-type": "application/json"}
    if auth:
        hdrs["authorization"] = f"Bearer {KEY}"
    hdrs.update(headers or {})
    req = request(url, data, hdrs)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


def chat(
    emu: Emulator,
    flavor: str,
    fault: str = "",
    *,
    model: str = "test-model",
    headers: dict[str, str] | None = None,
    auth: bool = True,
    timeout: float = 5.0,
    **fields: Any,
) -> Reply:
    """A chat completion against one OpenAI-dialect flavor."""
    body: dict[str, Any] = {"model": model, "messages": MSG, **fields}
    hdrs = dict(headers or {})
    if fault:
        hdrs["x-emulator-fault"] = fault
    return post(f"{emu.base_url(flavor)}/chat/completions", body, headers=hdrs, auth=auth, timeout=timeout)


def messages(
    emu: Emulator,
    fault: str = "",
    *,
    version: str | None = NEW_VERSION,
    headers: dict[str, str] | None = None,
    auth: bool = True,
    **fields: Any,
) -> Reply:
    """An Anthropic Messages request."""
    body: dict[str, Any] = {"model": "claude-x", "max_tokens": 100, "messages": MSG, **fields}
    hdrs = dict(headers or {})
    if version is not None:
        hdrs["anthropic-version"] = version
    if fault:
        hdrs["x-emulator-fault"] = fault
    return post(f"{emu.base_url('anthropic')}/messages", body, headers=hdrs, auth=auth)


def schema_errors(schema: Any, value: Any, path: str = "$") -> list[str]:
    """Why ``value`` does not satisfy ``schema`` (the JSON Schema subset tool schemas use)."""
    if not isinstance(schema, dict):
        return []
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} is not the const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "anyOf" in schema and all(schema_errors(s, value, path) for s in schema["anyOf"]):
        errors.append(f"{path}: {value!r} matches no anyOf option")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if kinds and not any(_is_type(value, k) for k in kinds):
        return [*errors, f"{path}: {value!r} is not of type {kind!r}"]
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        errors += [f"{path}: missing {n!r}" for n in schema.get("required", []) if n not in value]
        if schema.get("additionalProperties") is False:
            errors += [f"{path}: unexpected {n!r}" for n in value if n not in props]
        for name, sub in props.items():
            if name in value:
                errors += schema_errors(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += schema_errors(schema.get("items"), item, f"{path}[{i}]")
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: longer than {schema['maxLength']}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: {value} >= exclusiveMaximum {schema['exclusiveMaximum']}")
    return errors


def _is_type(value: Any, kind: str) -> bool:
    checks: dict[str, bool] = {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
    }
    return checks.get(kind, True)


def test_schema_checker_catches_violations() -> None:
    """The local checker itself must reject what it is meant to reject, or the tests below prove nothing."""
    params = WEATHER_TOOL["function"]["parameters"]
    assert schema_errors(params, {"city": "Oslo", "unit": "c", "days": 3, "hourly": True}) == []
    assert schema_errors(params, {"city": "Oslo", "unit": "k", "days": 3, "hourly": True})
    assert schema_errors(params, {"city": "Oslo", "unit": "c", "days": 2, "hourly": True})
    assert schema_errors(params, {"city": "Oslo", "unit": "c", "days": 3.0, "hourly": True})
    assert schema_errors(params, {"city": "Oslo", "unit": "c", "days": 3})
    assert schema_errors(params, {"city": "Oslo", "unit": "c", "days": 3, "hourly": True, "x": 1})
    assert schema_errors({"type": "string", "maxLength": 2}, "abc")
    assert schema_errors({"type": "integer", "exclusiveMinimum": 5}, 5)
    assert schema_errors({"type": "number", "exclusiveMaximum": 1}, 1)


@pytest.fixture
def own_emulator() -> Iterator[Emulator]:
    """A private emulator with config-level faults (stopped after the test)."""
    emu = Emulator(faults="tokens=3", model_faults={"m-cached": "cache_read=2", "m-seven": "tokens=7"})
    emu.start_in_thread()
    try:
        yield emu
    finally:
        emu.stop_thread()


# --- OpenAI flavor ------------------------------------------------------------------------------


def test_openai_non_stream_shape(emulator: Emulator) -> None:
    r = chat(emulator, "openai")
    assert r.status == 200
    assert r.headers.get_content_type() == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_openai_stream_framing_with_include_usage(emulator: Emulator) -> None:
    r = chat(emulator, "openai", stream=True, stream_options={"include_usage": True})
    assert r.status == 200
    assert r.headers.get_content_type() == "text/event-stream"
    frames = r.frames()
    assert all(f.startswith(b"data: ") and b"\n" not in f for f in frames), "one data line per frame"
    assert frames[-1] == b"data: [DONE]"
    assert frames.count(b"data: [DONE]") == 1
    chunks = r.chunks()
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *content, last = chunks
    assert all("usage" in c and c["usage"] is None for c in content), "other chunks carry usage: null"
    assert all(c["choices"] for c in content)
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 16
    finishes = [c["choices"][0]["finish_reason"] for c in content if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    assert content[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_stream_without_include_usage_has_no_usage(emulator: Emulator) -> None:
    r = chat(emulator, "openai", stream=True)
    chunks = r.chunks()
    assert r.frames()[-1] == b"data: [DONE]"
    assert all(c["choices"] for c in chunks), "no empty-choices usage chunk"
    assert all("usage" not in c for c in chunks)


# --- DeepSeek -----------------------------------------------------------------------------------


def test_deepseek_usage_rides_on_finish_chunk(emulator: Emulator) -> None:
    r = chat(emulator, "deepseek", stream=True, stream_options={"include_usage": True})
    assert r.frames()[-1] == b"data: [DONE]"
    chunks = r.chunks()
    assert all(c["choices"] for c in chunks), "DeepSeek sends no separate empty-choices usage chunk"
    *rest, last = chunks
    assert last["choices"][0]["finish_reason"] == "stop"
    assert isinstance(last["usage"], dict) and last["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in rest)
    assert all(c["choices"][0]["finish_reason"] is None for c in rest)


def test_deepseek_stream_without_include_usage(emulator: Emulator) -> None:
    chunks = chat(emulator, "deepseek", stream=True).chunks()
    assert all("usage" not in c for c in chunks)


def test_deepseek_keepalive_comments(emulator: Emulator) -> None:
    frames = chat(emulator, "deepseek", "keepalive=2", stream=True).frames()
    assert frames[:2] == [b": keep-alive", b": keep-alive"]
    assert frames[2].startswith(b"data: ")
    assert b": keep-alive" not in frames[3:]
    assert frames[-1] == b"data: [DONE]"


def test_deepseek_reasoning_on_by_default(emulator: Emulator) -> None:
    body = chat(emulator, "deepseek").json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"]
    assert message["content"]
    reasoning = body["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    assert body["usage"]["completion_tokens"] == 16 + reasoning

    chunks = chat(emulator, "deepseek", stream=True).chunks()
    kinds = [next(iter(c["choices"][0]["delta"]), None) for c in chunks[1:]]
    assert "reasoning_content" in kinds
    assert kinds.index("reasoning_content") < kinds.index("content"), "reasoning streams first"


def test_deepseek_thinking_disabled(emulator: Emulator) -> None:
    body = chat(emulator, "deepseek", thinking={"type": "disabled"}).json()
    assert "reasoning_content" not in body["choices"][0]["message"]
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    chunks = chat(emulator, "deepseek", stream=True, thinking={"type": "disabled"}).chunks()
    assert not any("reasoning_content" in c["choices"][0]["delta"] for c in chunks)


def test_deepseek_cache_hit_and_miss_usage(emulator: Emulator) -> None:
    usage = chat(emulator, "deepseek").json()["usage"]
    assert usage["prompt_cache_hit_tokens"] == 0
    assert usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"]
    usage = chat(emulator, "deepseek", "cache_read=2").json()["usage"]
    assert usage["prompt_cache_hit_tokens"] == 2
    assert usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 2


def test_deepseek_error_body_uses_invalid_request_error_code(emulator: Emulator) -> None:
    r = chat(emulator, "deepseek", "status=402")
    assert r.status == 402
    assert r.json()["error"]["code"] == "invalid_request_error"


# --- DashScope ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 429, 500])
def test_dashscope_error_has_request_id(emulator: Emulator, status: int) -> None:
    r = chat(emulator, "dashscope", f"status={status}")
    assert r.status == status
    body = r.json()
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert isinstance(body["error"]["message"], str)


def test_dashscope_enable_thinking_needs_stream(emulator: Emulator) -> None:
    r = chat(emulator, "dashscope", enable_thinking=True)
    assert r.status == 400
    body = r.json()
    assert "enable_thinking" in body["error"]["message"]
    assert body["request_id"]
    streamed = chat(emulator, "dashscope", stream=True, enable_thinking=True)
    assert streamed.status == 200
    assert any("reasoning_content" in c["choices"][0]["delta"] for c in streamed.chunks())
    plain = chat(emulator, "dashscope").json()["choices"][0]["message"]
    assert "reasoning_content" not in plain, "thinking is off by default on DashScope"


# --- OpenRouter ---------------------------------------------------------------------------------


def test_openrouter_processing_comment_and_usage_always(emulator: Emulator) -> None:
    r = chat(emulator, "openrouter", stream=True)  # no include_usage: OpenRouter sends usage anyway
    frames = r.frames()
    assert frames[0] == b": OPENROUTER PROCESSING"
    assert frames[-1] == b"data: [DONE]"
    chunks = r.chunks()
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["cost"] > 0
    assert (
        last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    )
    assert all(c["choices"] for c in chunks[:-1])


def test_openrouter_non_stream_usage_has_cost(emulator: Emulator) -> None:
    body = chat(emulator, "openrouter").json()
    assert body["usage"]["cost"] > 0
    assert body["provider"]


@pytest.mark.parametrize("status", [402, 429, 503])
def test_openrouter_error_code_is_numeric(emulator: Emulator, status: int) -> None:
    r = chat(emulator, "openrouter", f"status={status}")
    assert r.status == status
    code = r.json()["error"]["code"]
    assert type(code) is int and code == status


def test_openrouter_mid_stream_error(emulator: Emulator) -> None:
    r = chat(emulator, "openrouter", "mid_error=3", stream=True)
    assert r.status == 200
    data = r.data()
    assert b"[DONE]" not in data
    assert len(data) == 4, "three normal chunks, then the error chunk"
    chunks = r.chunks()
    assert all("error" not in c for c in chunks[:-1])
    last = chunks[-1]
    assert isinstance(last["error"], dict) and last["error"]["message"]
    assert last["choices"][0]["finish_reason"] == "error"


# --- Gemini -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "kind"), [("status=400", 400, "INVALID_ARGUMENT"), ("", 401, "")]
)
def test_gemini_error_is_json_array(emulator: Emulator, fault: str, status: int, kind: str) -> None:
    r = chat(emulator, "gemini", fault, auth=bool(fault))
    assert r.status == status
    body = r.json()
    assert isinstance(body, list) and len(body) == 1
    assert body[0]["error"]["code"] == status
    assert body[0]["error"]["status"] == (kind or "UNAUTHENTICATED")


def test_gemini_success(emulator: Emulator) -> None:
    assert chat(emulator, "gemini").json()["choices"][0]["message"]["content"]


# --- Anthropic ----------------------------------------------------------------------------------


def _anthropic_error(r: Reply, status: int, kind: str) -> str:
    assert r.status == status, r.body
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["request_id"].startswith("req_")
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize("version", [None, "2024-01-01"])
def test_anthropic_needs_known_version(emulator: Emulator, version: str | None) -> None:
    message = _anthropic_error(messages(emulator, version=version), 400, "invalid_request_error")
    assert "anthropic-version" in message


@pytest.mark.parametrize("version", [NEW_VERSION, OLD_VERSION])
@pytest.mark.parametrize(
    "auth_header", [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}], ids=["x-api-key", "bearer"]
)
def test_anthropic_accepts_both_auth_headers(
    emulator: Emulator, version: str, auth_header: dict[str, str]
) -> None:
    r = messages(emulator, version=version, headers=auth_header, auth=False)
    assert r.status == 200
    body = r.json()
    assert body["type"] == "message"
    assert body["id"].startswith("msg_")
    assert body["content"][0]["type"] == "text"
    assert body["stop_reason"] == "end_turn"


def test_anthropic_without_auth_is_401(emulator: Emulator) -> None:
    _anthropic_error(messages(emulator, auth=False), 401, "authentication_error")


@pytest.mark.parametrize(("name", "value"), [("temperature", 1.0), ("top_p", 0.9), ("top_k", 5)])
def test_anthropic_new_version_rejects_sampling(emulator: Emulator, name: str, value: float) -> None:
    message = _anthropic_error(messages(emulator, **{name: value}), 400, "invalid_request_error")
    assert name in message
    assert messages(emulator, version=OLD_VERSION, **{name: value}).status == 200


def test_anthropic_max_tokens_required(emulator: Emulator) -> None:
    body = {"model": "claude-x", "messages": MSG}
    r = post(f"{emulator.base_url('anthropic')}/messages", body, headers={"anthropic-version": NEW_VERSION})
    assert "max_tokens" in _anthropic_error(r, 400, "invalid_request_error")


def test_anthropic_rejects_system_role_in_messages(emulator: Emulator) -> None:
    r = messages(emulator, messages=[{"role": "system", "content": "be brief"}, *MSG])
    _anthropic_error(r, 400, "invalid_request_error")


def test_anthropic_event_stream(emulator: Emulator) -> None:
    r = messages(emulator, stream=True)
    assert r.status == 200
    assert r.headers.get_content_type() == "text/event-stream"
    assert b"[DONE]" not in r.body
    events = r.events()
    names = [name for name, _ in events]
    assert all(payload["type"] == name for name, payload in events), "data.type repeats the event line"
    assert names[0] == "message_start"
    assert names[-1] == "message_stop"
    assert "ping" in names
    assert names[-2] == "message_delta"
    assert names.index("content_block_start") < names.index("content_block_delta")
    assert names.index("content_block_stop") < names.index("message_delta")
    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0
    text = "".join(
        p["delta"]["text"]
        for n, p in events
        if n == "content_block_delta" and p["delta"]["type"] == "text_delta"
    )
    whole = messages(emulator).json()
    assert text == whole["content"][0]["text"]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == whole["usage"]["output_tokens"] == 16


def test_anthropic_cache_read_moves_input_tokens(emulator: Emulator) -> None:
    long = [{"role": "user", "content": "A long shared prefix worth caching. " * 8}]
    plain = messages(emulator, messages=long).json()["usage"]
    assert plain["input_tokens"] > 20
    cached = messages(emulator, "cache_read=10", messages=long).json()["usage"]
    assert plain["cache_read_input_tokens"] == 0
    assert cached["cache_read_input_tokens"] == 10
    assert cached["input_tokens"] == plain["input_tokens"] - 10
    written = messages(emulator, "cache_write=4", messages=long).json()["usage"]
    assert written["cache_creation_input_tokens"] == 4
    assert written["input_tokens"] == plain["input_tokens"] - 4


def test_anthropic_529_is_overloaded(emulator: Emulator) -> None:
    _anthropic_error(messages(emulator, "status=529"), 529, "overloaded_error")


def test_anthropic_429_has_retry_after(emulator: Emulator) -> None:
    r = messages(emulator, "status=429 retry_after=3")
    _anthropic_error(r, 429, "rate_limit_error")
    assert r.headers.get("retry-after") == "3"


def test_anthropic_max_tokens_cap(emulator: Emulator) -> None:
    body = messages(emulator, "tokens=5", max_tokens=3).json()
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 3


def test_anthropic_mid_stream_error_event(emulator: Emulator) -> None:
    events = messages(emulator, "mid_error=2", stream=True).events()
    assert len(events) == 3
    name, payload = events[-1]
    assert name == "error"
    assert payload["error"]["type"] == "overloaded_error"


def test_anthropic_no_usage_non_stream(emulator: Emulator) -> None:
    assert "usage" not in messages(emulator, "no_usage=1").json()


def test_anthropic_no_usage_stream(emulator: Emulator) -> None:
    events = messages(emulator, "no_usage=1", stream=True).events()
    assert [n for n, _ in events][-1] == "message_stop"
    assert not any(p.get("usage") for _n, p in events)
    assert not any(p.get("message", {}).get("usage") for _n, p in events)


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["openai", "deepseek", "dashscope", "openrouter", "gemini"])
def test_fault_status_with_retry_after(emulator: Emulator, flavor: str) -> None:
    r = chat(emulator, flavor, "status=429 retry_after=7")
    assert r.status == 429
    assert r.headers.get("retry-after") == "7"
    assert r.headers.get_content_type() == "application/json"


def test_fault_status_without_retry_after(emulator: Emulator) -> None:
    r = chat(emulator, "openai", "status=503")
    assert r.status == 503
    assert r.headers.get("retry-after") is None
    assert r.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("flavor", ["openai", "anthropic"])
def test_fault_html_502(emulator: Emulator, flavor: str) -> None:
    r = messages(emulator, "html=1") if flavor == "anthropic" else chat(emulator, flavor, "html=1")
    assert r.status == 502
    assert r.headers.get_content_type() == "text/html"
    assert r.body.startswith(b"<html>")


def test_fault_cut_after_urllib_sees_incomplete_read(emulator: Emulator) -> None:
    url = f"{emulator.base_url('openai')}/chat/completions"
    body = {"model": "m", "messages": MSG, "stream": True}
    req = request(
        url, orjson.dumps(body), {"authorization": f"Bearer {KEY}", "x-emulator-fault": "cut_after=2"}
    )
    with _OPENER.open(req, timeout=5) as resp:
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
    partial = info.value.partial
    assert b"[DONE]" not in partial
    frames = partial.split(b"\n\n")
    assert frames[-1] == b""
    assert len(frames[:-1]) == 2, "exactly two events before the cut"
    assert all(orjson.loads(f[6:])["choices"] for f in frames[:-1])


def test_fault_cut_after_aiohttp_sees_payload_error(emulator: Emulator) -> None:
    got = bytearray()

    async def drain(resp: aiohttp.ClientResponse) -> None:
        async for piece in resp.content.iter_any():
            got.extend(piece)

    async def run() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{emulator.base_url('deepseek')}/chat/completions",
                json={"model": "m", "messages": MSG, "stream": True},
                headers={"authorization": f"Bearer {KEY}", "x-emulator-fault": "cut_after=2 keepalive=1"},
            ) as resp,
        ):
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await drain(resp)

    asyncio.run(run())
    received = bytes(got)
    assert b"[DONE]" not in received
    assert b'finish_reason":"stop' not in received


def test_fault_cut_after_anthropic(emulator: Emulator) -> None:
    url = f"{emulator.base_url('anthropic')}/messages"
    body = {"model": "m", "max_tokens": 50, "messages": MSG, "stream": True}
    headers = {"x-api-key": KEY, "anthropic-version": NEW_VERSION, "x-emulator-fault": "cut_after=3"}
    req = request(url, orjson.dumps(body), headers)
    with _OPENER.open(req, timeout=5) as resp, pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    partial = info.value.partial
    assert partial.count(b"event: ") == 3
    assert b"message_stop" not in partial


def test_fault_hang_times_out(emulator: Emulator) -> None:
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        chat(emulator, "openai", "hang=1", timeout=0.3)
    assert time.monotonic() - started < 2
    assert chat(emulator, "openai").status == 200, "the emulator still answers others"


@pytest.mark.parametrize("stream", [False, True])
def test_fault_latency(emulator: Emulator, stream: bool) -> None:
    started = time.monotonic()
    r = chat(emulator, "openai", "latency_ms=200", stream=stream)
    elapsed = time.monotonic() - started
    assert r.status == 200
    assert 0.2 <= elapsed < 2


def test_fault_latency_applies_to_errors(emulator: Emulator) -> None:
    started = time.monotonic()
    assert chat(emulator, "openai", "latency_ms=150 status=500").status == 500
    assert time.monotonic() - started >= 0.15


def test_fault_malformed(emulator: Emulator) -> None:
    r = chat(emulator, "openai", "malformed=1", stream=True)
    data = r.data()
    assert data[-1] == b"[DONE]"
    broken = []
    for i, d in enumerate(data[:-1]):
        try:
            orjson.loads(d)
        except orjson.JSONDecodeError:
            broken.append(i)
    assert broken == [1]
    healthy = chat(emulator, "openai", stream=True).data()
    assert len(data) == len(healthy) + 1, "the broken line is inserted; nothing is lost"


def test_fault_no_usage(emulator: Emulator) -> None:
    assert "usage" not in chat(emulator, "openai", "no_usage=1").json()
    for flavor in ("openai", "deepseek", "openrouter"):
        chunks = chat(
            emulator, flavor, "no_usage=1", stream=True, stream_options={"include_usage": True}
        ).chunks()
        assert not any(c.get("usage") for c in chunks), flavor
        assert all(c["choices"] for c in chunks), flavor


def test_fault_tokens(emulator: Emulator) -> None:
    body = chat(emulator, "openai", "tokens=5").json()
    assert body["usage"]["completion_tokens"] == 5
    assert len(body["choices"][0]["message"]["content"].split()) == 5
    chunks = chat(
        emulator, "openai", "tokens=5", stream=True, stream_options={"include_usage": True}
    ).chunks()
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1] if c["choices"][0]["delta"]]
    assert len(pieces) == 5
    assert "".join(pieces) == body["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("cap_field", ["max_tokens", "max_completion_tokens"])
def test_fault_tokens_over_cap_is_length(emulator: Emulator, cap_field: str) -> None:
    body = chat(emulator, "openai", "tokens=5", **{cap_field: 3}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    chunks = chat(emulator, "openai", "tokens=5", stream=True, **{cap_field: 3}).chunks()
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    under = chat(emulator, "openai", "tokens=5", **{cap_field: 5}).json()
    assert under["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("where", ["header", "body"])
def test_fault_unknown_key_is_400(emulator: Emulator, where: str) -> None:
    if where == "header":
        r = chat(emulator, "openai", "bogus=1")
    else:
        r = chat(emulator, "openai", messages=[{"role": "user", "content": "hi @emulator(tokens=2 bogus=1)"}])
    assert r.status == 400
    assert "bogus" in r.json()["error"]["message"]


def test_fault_bad_value_is_400(emulator: Emulator) -> None:
    assert chat(emulator, "openai", "tokens=many").status == 400


def test_fault_from_body_directive(emulator: Emulator) -> None:
    msgs = [{"role": "user", "content": "hello @emulator(tokens=2, status=0)"}]
    body = chat(emulator, "openai", messages=msgs).json()
    assert body["usage"]["completion_tokens"] == 2
    # the directive is stronger than the header
    body = chat(emulator, "openai", "tokens=4", messages=msgs).json()
    assert body["usage"]["completion_tokens"] == 2
    # and it travels inside Anthropic-shaped bodies too
    r = messages(
        emulator, messages=[{"role": "user", "content": [{"type": "text", "text": "@emulator(status=529)"}]}]
    )
    assert r.status == 529


def test_fault_header_and_body_combine(emulator: Emulator) -> None:
    msgs = [{"role": "user", "content": "hello @emulator(tokens=2)"}]
    r = chat(emulator, "openai", "status=429 retry_after=1", messages=msgs)
    assert r.status == 429
    assert r.headers.get("retry-after") == "1"


def test_config_level_faults(own_emulator: Emulator) -> None:
    def completion(model: str, fault: str = "") -> dict[str, Any]:
        usage: dict[str, Any] = chat(own_emulator, "openai", fault, model=model).json()["usage"]
        return usage

    assert completion("any-model")["completion_tokens"] == 3
    assert completion("m-seven")["completion_tokens"] == 7
    layered = completion("m-cached")
    assert layered["completion_tokens"] == 3, "model faults layer on top of the config-wide faults"
    assert layered["prompt_tokens_details"]["cached_tokens"] == 2
    assert completion("m-seven", "tokens=2")["completion_tokens"] == 2, "the header beats the config"
    anth = post(
        f"{own_emulator.base_url('anthropic')}/messages",
        {"model": "m-seven", "max_tokens": 100, "messages": MSG},
        headers={"anthropic-version": NEW_VERSION},
    ).json()
    assert anth["usage"]["output_tokens"] == 7


def test_config_level_bad_fault_raises() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        Emulator(faults="nonsense=1")
    with pytest.raises(ValueError, match="nonsense"):
        Emulator(model_faults={"m": "nonsense=1"})


def test_unknown_route_and_bad_json(emulator: Emulator) -> None:
    assert post(f"{emulator.url}/nowhere/v1/chat/completions", {"model": "m"}).status == 404
    assert post(f"{emulator.base_url('openai')}/chat/completions", b"{not json").status == 400
    assert post(f"{emulator.base_url('openai')}/chat/completions", b"[1, 2]").status == 400
    assert chat(emulator, "openai", auth=False).status == 401
    assert chat(emulator, "ollama", auth=False).status == 200, "local servers need no key"


# --- tools and structured output ----------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["openai", "deepseek", "openrouter"])
def test_forced_tool_choice_non_stream(emulator: Emulator, flavor: str) -> None:
    body = chat(
        emulator,
        flavor,
        tools=[TIME_TOOL, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert len(calls) == 1
    assert calls[0]["type"] == "function"
    assert calls[0]["id"]
    assert calls[0]["function"]["name"] == "get_weather"
    args = orjson.loads(calls[0]["function"]["arguments"])
    assert schema_errors(WEATHER_TOOL["function"]["parameters"], args) == []


def test_forced_tool_choice_stream(emulator: Emulator) -> None:
    chunks = chat(
        emulator,
        "openai",
        "calls=2",
        stream=True,
        tools=[TIME_TOOL, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ).chunks()
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for tc in c["choices"][0]["delta"].get("tool_calls") or []:
            entry = calls.setdefault(tc["index"], {"name": None, "arguments": ""})
            if "id" in tc:
                assert tc["type"] == "function"
                entry["name"] = tc["function"]["name"]
            entry["arguments"] += tc["function"]["arguments"]
    assert list(calls) == [0], "a forced choice calls exactly that tool, even with calls=2"
    assert calls[0]["name"] == "get_weather"
    args = orjson.loads(calls[0]["arguments"])
    assert schema_errors(WEATHER_TOOL["function"]["parameters"], args) == []
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_required_tool_choice_parallel_calls(emulator: Emulator) -> None:
    body = chat(emulator, "openai", "calls=2", tools=[TIME_TOOL, WEATHER_TOOL], tool_choice="required").json()
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_time", "get_weather"]
    assert len({c["id"] for c in calls}) == 2
    none = chat(emulator, "openai", tools=[TIME_TOOL], tool_choice="none").json()
    assert "tool_calls" not in none["choices"][0]["message"]
    assert none["choices"][0]["finish_reason"] == "stop"


def test_anthropic_forced_tool(emulator: Emulator) -> None:
    tools = [
        {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]}
        for t in (TIME_TOOL, WEATHER_TOOL)
    ]
    body = messages(emulator, tools=tools, tool_choice={"type": "tool", "name": "get_weather"}).json()
    assert body["stop_reason"] == "tool_use"
    (block,) = body["content"]
    assert block["type"] == "tool_use"
    assert block["name"] == "get_weather"
    assert block["id"].startswith("toolu_")
    assert schema_errors(WEATHER_TOOL["function"]["parameters"], block["input"]) == []
    events = messages(
        emulator, tools=tools, tool_choice={"type": "tool", "name": "get_weather"}, stream=True
    ).events()
    partial = "".join(
        p["delta"]["partial_json"]
        for n, p in events
        if n == "content_block_delta" and p["delta"]["type"] == "input_json_delta"
    )
    assert orjson.loads(partial) == block["input"]


@pytest.mark.parametrize("flavor", ["openai", "dashscope", "gemini"])
def test_json_schema_response_format(emulator: Emulator, flavor: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "report", "schema": REPORT_SCHEMA}}
    body = chat(emulator, flavor, response_format=fmt).json()
    value = orjson.loads(body["choices"][0]["message"]["content"])
    assert schema_errors(REPORT_SCHEMA, value) == []
    chunks = chat(emulator, flavor, stream=True, response_format=fmt).chunks()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert orjson.loads(text) == value


def test_json_object_response_format(emulator: Emulator) -> None:
    body = chat(emulator, "openai", response_format={"type": "json_object"}).json()
    assert isinstance(orjson.loads(body["choices"][0]["message"]["content"]), dict)


def test_anthropic_output_config_format(emulator: Emulator) -> None:
    body = messages(
        emulator, output_config={"format": {"type": "json_schema", "schema": REPORT_SCHEMA}}
    ).json()
    assert schema_errors(REPORT_SCHEMA, orjson.loads(body["content"][0]["text"])) == []


def test_forced_tool_respects_bounds(emulator: Emulator) -> None:
    params = {
        "type": "object",
        "properties": {
            "country": {"type": "string", "maxLength": 2},
            "offset": {"type": "integer", "maximum": 0},
            "above": {"type": "integer", "exclusiveMinimum": 5},
            "below": {"type": "number", "exclusiveMaximum": 1},
            "window": {"type": "integer", "minimum": 10, "maximum": 12},
        },
        "required": ["country", "offset", "above", "below", "window"],
    }
    tool = {"type": "function", "function": {"name": "lookup", "parameters": params}}
    body = chat(emulator, "openai", tools=[tool], tool_choice="required").json()
    args = orjson.loads(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert schema_errors(params, args) == []


# --- embeddings ---------------------------------------------------------------------------------


def _embed(emu: Emulator, text: Any, **fields: Any) -> dict[str, Any]:
    r = post(
        f"{emu.base_url('openai')}/embeddings", {"model": "text-embedding-3-small", "input": text, **fields}
    )
    assert r.status == 200, r.body
    body: dict[str, Any] = r.json()
    return body


def test_embeddings_float_and_base64_agree(emulator: Emulator) -> None:
    floats = _embed(emulator, "the quick brown fox", encoding_format="float")
    encoded = _embed(emulator, "the quick brown fox", encoding_format="base64")
    vec = floats["data"][0]["embedding"]
    assert isinstance(vec, list) and len(vec) == 1536
    assert all(isinstance(x, float) for x in vec)
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert len(raw) == 4 * len(vec)
    decoded = struct.unpack(f"<{len(vec)}f", raw)  # little-endian float32, as the openai SDK decodes it
    as_f32 = struct.unpack(f"<{len(vec)}f", struct.pack(f"<{len(vec)}f", *vec))
    assert decoded == as_f32
    assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(decoded, vec, strict=True))
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] > 0


def test_embeddings_deterministic(emulator: Emulator) -> None:
    a = _embed(emulator, "same text")["data"][0]["embedding"]
    b = _embed(emulator, "same text")["data"][0]["embedding"]
    c = _embed(emulator, "other text")["data"][0]["embedding"]
    assert a == b
    assert a != c


def test_embeddings_batch_and_dimensions(emulator: Emulator) -> None:
    body = _embed(emulator, ["one", "two", "one"], dimensions=8)
    data = body["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in data)
    assert data[0]["embedding"] == data[2]["embedding"] != data[1]["embedding"]
    assert data[0]["embedding"] == _embed(emulator, "one", dimensions=8)["data"][0]["embedding"]
    assert body["object"] == "list"


def test_embeddings_errors(emulator: Emulator) -> None:
    url = emulator.base_url("openai")
    assert post(f"{url}/embeddings", {"model": "e", "input": []}).status == 400
    deepseek = post(f"{emulator.base_url('deepseek')}/embeddings", {"model": "e", "input": "x"})
    assert deepseek.status == 404, "DeepSeek serves no embeddings"


def test_pipelined_requests_are_answered_in_order(emulator: Emulator) -> None:
    """Three requests in one write, the first one slow: the answers keep the request order."""

    def raw(spec: str) -> bytes:
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": f"x @emulator({spec})"}]})
        return (
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )

    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(raw("latency_ms=150 tokens=1") + raw("tokens=2") + raw("tokens=3"))
        data = b""
        while data.count(b'"content":"sluice') < 3:
            chunk = sock.recv(65536)
            assert chunk, "connection closed early"
            data += chunk
    first = data.index(b'"content":"sluice"')
    second = data.index(b'"content":"sluice gates"')
    third = data.index(b'"content":"sluice gates measure"')
    assert first < second < third


def test_garbage_after_a_stream_is_answered_after_it(emulator: Emulator) -> None:
    body = orjson.dumps(
        {
            "model": "m",
            "stream": True,
            "messages": [{"role": "user", "content": "x @emulator(pace_ms=20 tokens=3)"}],
        }
    )
    request = (
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(request + b"NOT HTTP AT ALL\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.index(b"data: [DONE]") < data.index(b"HTTP/1.1 400")
    assert data.endswith(b"bad request")
