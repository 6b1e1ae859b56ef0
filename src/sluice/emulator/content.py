"""Deterministic content for the emulator: token counts, reply text, and values matching a JSON Schema."""

from __future__ import annotations

import functools
import hashlib
import random
from typing import Any

import orjson

WORDS = (
    "sluice",
    "gates",
    "measure",
    "every",
    "token",
    "before",
    "money",
    "flows",
    "upstream",
    "and",
    "settles",
    "what",
    "was",
    "spent",
    "exactly",
    "once",
    "streams",
    "arrive",
    "in",
    "order",
)


def count_tokens(text: str) -> int:
    """Deterministic token count: one token per four UTF-8 bytes, at least one for non-empty text."""
    n = len(text.encode())
    return (n + 3) // 4 if n else 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif isinstance(part.get("content"), str | list):
                    out.append(_text_of(part["content"]))
                elif isinstance(part.get("input"), dict):
                    out.append(orjson.dumps(part["input"]).decode())
        return " ".join(out)
    return ""


def prompt_tokens(messages: list[Any], system: Any = None, tools: Any = None) -> int:
    """Tokens for a prompt: each message's text plus 3 for its framing, tools by their JSON size."""
    total = count_tokens(_text_of(system)) if system else 0
    for msg in messages:
        if isinstance(msg, dict):
            total += 3 + count_tokens(_text_of(msg.get("content")))
            calls = msg.get("tool_calls")
            if calls:
                total += count_tokens(orjson.dumps(calls).decode())
    if tools:
        total += count_tokens(orjson.dumps(tools).decode())
    return max(total, 1)


def reply_words(n: int, offset: int = 0) -> list[str]:
    """``n`` words of reply, each one completion token (the first without a leading space)."""
    return list(_reply_words(n, offset))


@functools.lru_cache(maxsize=1024)
def _reply_words(n: int, offset: int) -> tuple[str, ...]:
    return tuple(("" if i == 0 else " ") + WORDS[(i + offset) % len(WORDS)] for i in range(n))


def schema_instance(schema: Any, depth: int = 0) -> Any:
    """A value valid against a (reasonable) JSON Schema: required properties, types, enums, consts."""
    if not isinstance(schema, dict) or depth > 8:
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return schema_instance(options[0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required")
        names = required if isinstance(required, list) else list(props)
        return {name: schema_instance(props.get(name, {}), depth + 1) for name in names}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [schema_instance(schema.get("items", {}), depth + 1) for _ in range(count)]
    if kind == "string":
        text = "example"
        text += "x" * max(0, int(schema.get("minLength", 0)) - len(text))
        return text[: int(schema.get("maxLength", len(text)))]
    if kind in ("integer", "number"):
        return _number(schema, kind)
    if kind == "boolean":
        return True
    return None


def _number(schema: dict[str, Any], kind: str) -> int | float:
    """A number inside the schema's bounds (inclusive or exclusive), preferring 1."""
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    value: float = 1 if kind == "integer" else 1.5
    if lo is not None and value <= lo:
        value = lo + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    if hi is not None and value >= hi:
        value = hi - (1 if "exclusiveMaximum" in schema and "maximum" not in schema else 0)
    return int(value) if kind == "integer" else value


def embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit-ish vector for a text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    rng = random.Random(seed)
    return [round(rng.uniform(-1, 1), 6) for _ in range(dims)]
