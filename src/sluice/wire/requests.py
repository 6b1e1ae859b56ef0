"""Validation of OpenAI request bodies at the edge: types, ranges, and fields a client may not send.

Validation is a fixed table of checks: cheap, and every failure names its ``param`` the way OpenAI does.
Unknown fields pass through untouched (providers have their own extensions, e.g. ``enable_thinking``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from sluice.errors import InvalidRequest

# Fields that would let a request choose the upstream host or credentials: always refused.
_UPSTREAM_CHOSEN = "the upstream is chosen by the gateway's configuration, not by the request."
# OpenRouter's provider routing would make the provider choose what serves the request, bypassing the
# key's model list and the deployment's price. (Its ``models`` fallback list is ours to honour: below.)
_MODEL_CHOSEN = "the provider that serves a request is chosen by the gateway's configuration."
MAX_MODELS = 8  # aliases a request may list as its own fallbacks
# Fields a request may not send, each with the reason given back.
FORBIDDEN_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "api_base",
            "base_url",
            "api_key",
            "api_version",
            "custom_llm_provider",
            "extra_headers",
            "organization",
        ),
        _UPSTREAM_CHOSEN,
    ),
    "route": _MODEL_CHOSEN,
}
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TOOL_CHOICE_STRINGS = frozenset({"none", "auto", "required"})
_RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
_TOOL_CHOICE_TYPES = frozenset({"function", "allowed_tools", "custom"})
_MAX_N = 128


@dataclass(slots=True)
class ChatRequest:
    """A validated chat completion request, with the facts the gateway needs pulled out once."""

    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    n: int
    models: tuple[str, ...] = ()  # further aliases to fall back to, in order (OpenRouter's ``models``)


@dataclass(slots=True)
class EmbeddingRequest:
    """A validated embeddings request."""

    body: dict[str, Any]
    model: str
    encoding_format: str
    models: tuple[str, ...] = ()


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object."""
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg} (at byte {exc.pos}).") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _bad(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}.", param=param, code="invalid_type"
    )


def _range(param: str, detail: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {detail}.", param=param, code="invalid_value")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_int(lo: int, hi: int | None) -> Callable[[str, Any], None]:
    def check(param: str, v: Any) -> None:
        if not _is_int(v):
            raise _bad(param, "an integer")
        if v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise _range(param, f"must be {bound}, got {v}")

    return check


def _check_number(lo: float, hi: float) -> Callable[[str, Any], None]:
    def check(param: str, v: Any) -> None:
        if not _is_number(v):
            raise _bad(param, "a number")
        if not lo <= v <= hi:
            raise _range(param, f"must be between {lo:g} and {hi:g}, got {v}")

    return check


def _check_type(kind: type | tuple[type, ...], expected: str) -> Callable[[str, Any], None]:
    def check(param: str, v: Any) -> None:
        if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
            raise _bad(param, expected)

    return check


def _check_stop(param: str, v: Any) -> None:
    if isinstance(v, str):
        return
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _bad(param, "a string or an array of strings")
    if len(v) > 4:
        raise _range(param, "at most 4 stop sequences are allowed")


def _check_tools(param: str, v: Any) -> None:
    if not isinstance(v, list):
        raise _bad(param, "an array")
    for i, tool in enumerate(v):
        p = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise _bad(p, "an object")
        kind = tool.get("type", "function")
        if kind == "custom":
            continue
        if kind != "function":
            raise _range(f"{p}.type", f"unsupported tool type {kind!r}")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"{p}.function", "an object")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"{p}.function.name", "a non-empty string")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise _bad(f"{p}.function.parameters", "a JSON Schema object")


def _check_tool_choice(param: str, v: Any) -> None:
    if isinstance(v, str):
        if v not in _TOOL_CHOICE_STRINGS:
            raise _range(param, "must be 'none', 'auto', 'required' or a named tool")
        return
    if not isinstance(v, dict):
        raise _bad(param, "a string or an object")
    kind = v.get("type", "function")
    if not isinstance(kind, str) or kind not in _TOOL_CHOICE_TYPES:
        raise _range(f"{param}.type", "must be 'function', 'allowed_tools' or 'custom'")
    if kind == "function" or "function" in v:
        fn = v.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"{param}.function.name", "a string")


def _check_response_format(param: str, v: Any) -> None:
    if not isinstance(v, dict):
        raise _bad(param, "an object")
    kind = v.get("type")
    if not isinstance(kind, str) or kind not in _RESPONSE_FORMATS:
        raise _range(f"{param}.type", "must be 'text', 'json_object' or 'json_schema'")
    if kind == "json_schema":
        spec = v.get("json_schema")
        if not isinstance(spec, dict):
            raise _bad(f"{param}.json_schema", "an object")
        if not isinstance(spec.get("name"), str):
            raise _bad(f"{param}.json_schema.name", "a string")
        if "schema" in spec and not isinstance(spec["schema"], dict):
            raise _bad(f"{param}.json_schema.schema", "an object")


def _check_metadata(param: str, v: Any) -> None:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _bad(param, "an object of string values")


def _check_messages(param: str, v: Any) -> None:
    if not isinstance(v, list):
        raise _bad(param, "an array")
    if not v:
        raise _range(param, "must contain at least one message")
    for i, msg in enumerate(v):
        # a message's parameter names (``messages[3].role``) are built only for an error or a nested check
        if not isinstance(msg, dict):
            raise _bad(f"{param}[{i}]", "an object")
        role = msg.get("role")
        if not isinstance(role, str):
            raise _bad(f"{param}[{i}].role", "a string")
        if role not in MESSAGE_ROLES:
            raise _range(f"{param}[{i}].role", f"unknown role {role!r}")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"{param}[{i}].content", "a string or an array of content parts")
        if isinstance(content, list):
            _check_parts(f"{param}[{i}].content", content)
        calls = msg.get("tool_calls")
        if calls is not None:
            _check_tool_calls(f"{param}[{i}].tool_calls", calls)
        if role == "tool" and not isinstance(msg.get("tool_call_id"), str):
            raise _bad(f"{param}[{i}].tool_call_id", "a string")


def _check_parts(param: str, parts: list[Any]) -> None:
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise _bad(f"{param}[{j}]", "a content part object")
        if not isinstance(part.get("type"), str):
            raise _bad(f"{param}[{j}].type", "a string")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _bad(f"{param}[{j}].text", "a string")


def _check_tool_calls(param: str, v: Any) -> None:
    if not isinstance(v, list):
        raise _bad(param, "an array")
    for i, call in enumerate(v):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"{param}[{i}].function.name", "a string")
        if not isinstance(fn.get("arguments", ""), str):
            raise _bad(f"{param}[{i}].function.arguments", "a JSON string")


_CHAT_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "messages": _check_messages,
    "stream": _check_type(bool, "a boolean"),
    "stream_options": _check_type(dict, "an object"),
    "max_tokens": _check_int(1, None),
    "max_completion_tokens": _check_int(1, None),
    "n": _check_int(1, _MAX_N),
    "temperature": _check_number(0, 2),
    "top_p": _check_number(0, 1),
    "presence_penalty": _check_number(-2, 2),
    "frequency_penalty": _check_number(-2, 2),
    "seed": _check_type(int, "an integer"),
    "logprobs": _check_type(bool, "a boolean"),
    "top_logprobs": _check_int(0, 20),
    "logit_bias": _check_type(dict, "an object"),
    "parallel_tool_calls": _check_type(bool, "a boolean"),
    "stop": _check_stop,
    "tools": _check_tools,
    "tool_choice": _check_tool_choice,
    "response_format": _check_response_format,
    "user": _check_type(str, "a string"),
    "reasoning_effort": _check_type(str, "a string"),
    "safety_identifier": _check_type(str, "a string"),
    "metadata": _check_metadata,
}


def _check_common(body: dict[str, Any]) -> str:
    for name, reason in FORBIDDEN_FIELDS.items():
        if name in body:
            raise InvalidRequest(
                f"'{name}' is not accepted: {reason}", param=name, code="forbidden_parameter"
            )
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "You must provide a model parameter.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise _bad("model", "a non-empty string")
    return model


def _fallback_models(body: dict[str, Any], model: str) -> tuple[str, ...]:
    """The request's own fallback aliases (``models``), removed from the body sent upstream."""
    models = body.pop("models", None)
    if models is None:
        return ()
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise _bad("models", "an array of non-empty strings")
    if len(models) > MAX_MODELS:
        raise _range("models", f"must list at most {MAX_MODELS} models, got {len(models)}")
    return tuple(m for m in dict.fromkeys(models) if m != model)


def validate_chat(body: dict[str, Any]) -> ChatRequest:
    """Check a chat completion body; raise ``InvalidRequest`` naming the first bad parameter."""
    model = _check_common(body)
    if body.get("messages") is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    for name, value in body.items():
        check = _CHAT_CHECKS.get(name)
        if check is not None and value is not None:
            check(name, value)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    include_usage = False
    if isinstance(options, dict):
        flag = options.get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise _bad("stream_options.include_usage", "a boolean")
        include_usage = flag is True
    n = body.get("n")
    models = _fallback_models(body, model)
    return ChatRequest(body, model, stream, include_usage, n if isinstance(n, int) else 1, models)


def validate_embeddings(body: dict[str, Any]) -> EmbeddingRequest:
    """Check an embeddings body."""
    model = _check_common(body)
    if "input" not in body:
        raise InvalidRequest(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    _check_embedding_input(body["input"])
    fmt = body.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise _range("encoding_format", "must be 'float' or 'base64'")
    dims = body.get("dimensions")
    if dims is not None:
        _check_int(1, 65536)("dimensions", dims)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "a string")
    return EmbeddingRequest(body, model, fmt, _fallback_models(body, model))


def _check_embedding_input(v: Any) -> None:
    if isinstance(v, str):
        if not v:
            raise _range("input", "must not be empty")
        return
    if not isinstance(v, list) or not v:
        raise _bad("input", "a non-empty string or a non-empty array")
    if all(isinstance(s, str) for s in v):
        if any(not s for s in v):
            raise _range("input", "must not contain empty strings")
        return
    if all(_is_int(t) for t in v):
        return
    if all(isinstance(row, list) and row and all(_is_int(t) for t in row) for row in v):
        return
    raise _bad("input", "a string, an array of strings, or an array of token arrays")
