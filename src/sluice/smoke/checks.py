"""What each smoke check sends, and how it judges what came back. Pure.

The requests are small (a one-line prompt, ``max_tokens`` 64) so a whole run costs fractions of a cent
on paid models. The judgements are about what production needs: an answer at all, within the latency
limits; a stream that starts soon and reports its usage; JSON mode that returns JSON; a tool call that
goes round (call, result, answer); errors in OpenAI's envelope; usage that prices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from sluice.errors import SluiceError
from sluice.pricing.cost import Pricer
from sluice.pricing.usage import TokenUsage, from_embeddings
from sluice.settings import SmokeSettings
from sluice.smoke.report import FAIL, PASS, SKIP, WARN, Check, usd

MAX_TOKENS = 64
PROMPT = "This is a smoke test of the API. Reply with the single word OK."
JSON_MODE: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You answer in JSON."},
        {"role": "user", "content": 'Reply with a JSON object {"ok": true} and nothing else.'},
    ],
    "response_format": {"type": "json_object"},
}
_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
_ASK = {"role": "user", "content": "What is the weather in Paris? Use the tool."}
TOOLS: dict[str, Any] = {"messages": [_ASK], "tools": [_WEATHER], "tool_choice": "required"}
_RATE_HEADERS = ("x-ratelimit-", "ratelimit-", "retry-after", "anthropic-ratelimit-")


@dataclass(slots=True)
class Outcome:
    """What one call brought back: the provider's status, headers and body, and our measures."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""  # an error answer's body, as the provider sent it
    body: dict[str, Any] | None = None  # a complete answer, in OpenAI's shape
    text: str = ""  # a stream's content, joined
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tokens: TokenUsage | None = None
    usage_reported: bool = False
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    error: SluiceError | None = None
    cost_nanos: int = 0


def body(alias: str, model: str, **extra: Any) -> dict[str, Any]:
    """A chat request for a check (``model`` is the alias: the adapter puts the upstream name)."""
    del model  # the deployment's own model goes upstream; the alias is what a client would send
    out: dict[str, Any] = {
        "model": alias,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }
    out.update(extra)
    return out


def embed_body(alias: str) -> dict[str, Any]:
    return {"model": alias, "input": "Sluice smoke test."}


def tool_result(calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The second half of a tool round trip: the call, its result, and a request for the answer."""
    results = [
        {
            "role": "tool",
            "tool_call_id": c.get("id") or "call_0",
            "content": '{"temperature_c": 18, "sky": "clear"}',
        }
        for c in calls
    ]
    assistant = {"role": "assistant", "content": None, "tool_calls": list(calls)}
    return {"messages": [_ASK, assistant, *results], "tools": [_WEATHER], "tool_choice": "none"}


def broken(upstream_body: bytes) -> bytes:
    """A deliberately bad request in the provider's own dialect: the first message's role is invalid
    (an embeddings request gets an input of the wrong type)."""
    parsed = orjson.loads(upstream_body)
    if isinstance(parsed.get("messages"), list) and parsed["messages"]:
        parsed["messages"][0]["role"] = "sluice-smoke-invalid-role"
    else:
        parsed["input"] = {"sluice-smoke": "not a string"}
    return orjson.dumps(parsed)


def chunk_content(frame: bytes) -> tuple[str, list[dict[str, Any]]]:
    """The content and tool calls in one OpenAI chunk frame (``data: {...}``)."""
    if not frame.startswith(b"data: {"):
        return "", []
    try:
        chunk = orjson.loads(frame[6:])
    except orjson.JSONDecodeError:
        return "", []
    text, calls = "", list[dict[str, Any]]()
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        calls += delta.get("tool_calls") or []
    return text, calls


def embedding_usage(answer: Mapping[str, Any]) -> tuple[TokenUsage | None, bool]:
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return None, False
    return from_embeddings(usage), True


def model_ids(raw: bytes) -> list[str]:
    try:
        listed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    data = listed.get("data") if isinstance(listed, dict) else None
    return [str(m.get("id")) for m in data or [] if isinstance(m, dict)]


def _failed(name: str, out: Outcome) -> Check | None:
    if out.error is None:
        return None
    return Check(name, FAIL, f"{out.error.message}", {"status_code": out.status, "error": out.error.code})


def _message(out: Outcome) -> dict[str, Any]:
    choices = (out.body or {}).get("choices") or [{}]
    message: dict[str, Any] = choices[0].get("message") or {}
    return message


def models(model: str, listed: tuple[int, list[str]]) -> Check:
    status, ids = listed
    if status in (401, 403):
        return Check("models", FAIL, f"the provider refused the key ({status})", {"status_code": status})
    if status != 200:
        return Check("models", WARN, f"no model list (status {status or 'none'}); the key is tested below")
    if model in ids:
        return Check("models", PASS, f"key valid; {model} listed", {"listed": len(ids)})
    return Check(
        "models", WARN, f"key valid, but {model} is not in the provider's list", {"listed": len(ids)}
    )


def complete(out: Outcome, s: SmokeSettings) -> Check:
    failed = _failed("complete", out)
    if failed is not None:
        return failed
    text = _message(out).get("content") or ""
    data = {"latency_ms": round(out.latency_ms, 1)}
    if not text:
        return Check("complete", FAIL, "the answer has no content", data)
    return _in_time("complete", out, s, data)


def _in_time(name: str, out: Outcome, s: SmokeSettings, data: dict[str, Any]) -> Check:
    """A complete answer judged by its latency."""
    if out.latency_ms > s.max_latency_ms:
        return Check(name, FAIL, f"answered in {out.latency_ms:.0f} ms (limit {s.max_latency_ms:.0f})", data)
    return Check(name, PASS, f"answered in {out.latency_ms:.0f} ms", data)


def stream(out: Outcome, s: SmokeSettings) -> Check:
    failed = _failed("stream", out)
    if failed is not None:
        return failed
    data: dict[str, Any] = {"latency_ms": round(out.latency_ms, 1)}
    if out.ttft_ms is None:
        return Check("stream", FAIL, "the stream carried no content", data)
    data["ttft_ms"] = round(out.ttft_ms, 1)
    rate = ""
    if out.tokens_per_s is not None:
        data["tokens_per_s"] = round(out.tokens_per_s, 1)
        rate = f", {out.tokens_per_s:.0f} tokens/s"
    if out.ttft_ms > s.max_ttft_ms:
        return Check(
            "stream", FAIL, f"first token after {out.ttft_ms:.0f} ms (limit {s.max_ttft_ms:.0f})", data
        )
    return Check("stream", PASS, f"first token after {out.ttft_ms:.0f} ms{rate}", data)


def stream_usage(out: Outcome) -> Check:
    if out.error is not None:
        return Check("stream_usage", SKIP, "the stream failed")
    if out.usage_reported and out.tokens is not None:
        t = out.tokens
        return Check("stream_usage", PASS, f"{t.input_tokens} in, {t.output_tokens} out", {"reported": True})
    return Check(
        "stream_usage", FAIL, "no usage in the stream: its cost can only be estimated", {"reported": False}
    )


def json_mode(out: Outcome) -> Check:
    failed = _failed("json_mode", out)
    if failed is not None:
        return failed
    text = _message(out).get("content") or ""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Check("json_mode", FAIL, f"not JSON: {text[:60]!r}", {"parsed": False})
    if not isinstance(parsed, dict):
        return Check("json_mode", FAIL, "JSON, but not an object", {"parsed": False})
    return Check("json_mode", PASS, "a JSON object", {"parsed": True})


def tool_calls_of(out: Outcome) -> list[dict[str, Any]]:
    calls = _message(out).get("tool_calls") if out.body else None
    return list(calls) if isinstance(calls, list) else []


def tool_call(first: Outcome, second: Outcome | None) -> Check:
    failed = _failed("tool_call", first)
    if failed is not None:
        return failed
    calls = tool_calls_of(first)
    if not calls:
        return Check("tool_call", FAIL, "no tool call when one was required", {"round_trip": False})
    try:
        args = orjson.loads(calls[0]["function"]["arguments"])
    except (KeyError, TypeError, orjson.JSONDecodeError):
        return Check("tool_call", FAIL, "the tool call's arguments are not JSON", {"round_trip": False})
    if not isinstance(args, dict):
        return Check("tool_call", FAIL, "the tool call's arguments are not an object", {"round_trip": False})
    if second is None:
        return Check("tool_call", SKIP, "the tool result was not sent")
    failed = _failed("tool_call", second)
    if failed is not None:
        failed.detail = f"the tool result was refused: {failed.detail}"
        return failed
    if not (_message(second).get("content") or ""):
        return Check("tool_call", FAIL, "no answer after the tool result", {"round_trip": False})
    return Check("tool_call", PASS, "call, result and answer", {"round_trip": True})


def shape_of(raw: bytes) -> str:
    """``openai`` ({"error": {"message": …}}), ``anthropic`` ({"type": "error", "error": {…}}),
    ``array`` (Gemini's list around it), or ``other``."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "other"
    wrapped = isinstance(parsed, list)
    if wrapped and parsed:
        parsed = parsed[0]
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        return "other"
    if wrapped:
        return "array"
    return "anthropic" if parsed.get("type") == "error" else "openai"


def error_shape(out: Outcome) -> Check:
    if out.status == 0:
        detail = out.error.message if out.error is not None else "no answer"
        return Check("error_shape", FAIL, f"no answer to a bad request: {detail}")
    if out.status < 400:
        return Check(
            "error_shape", FAIL, f"a bad request was accepted ({out.status})", {"status_code": out.status}
        )
    shape = shape_of(out.raw)
    data = {"status_code": out.status, "shape": shape}
    if out.status >= 500:
        return Check(
            "error_shape", FAIL, f"a bad request got a server error ({out.status}), {shape} shape", data
        )
    if shape == "other":
        return Check("error_shape", FAIL, f"{out.status}, not OpenAI's error envelope", data)
    if shape == "openai":
        return Check("error_shape", PASS, f"{out.status} in OpenAI's error envelope", data)
    return Check("error_shape", WARN, f"{out.status} in the {shape} shape (Sluice translates it)", data)


def rate_limit_headers(headers: Mapping[str, str]) -> Check:
    seen = sorted(h for h in headers if h.startswith(_RATE_HEADERS))
    if not seen:
        return Check("rate_limit_headers", WARN, "none seen: the remaining allowance cannot be watched")
    return Check(
        "rate_limit_headers", PASS, ", ".join(seen[:4]) + ("…" if len(seen) > 4 else ""), {"headers": seen}
    )


def pricing(pricer: Pricer, outcomes: Sequence[Outcome], at_us: int) -> Check:
    """Every answer's usage priced; a provider's own billed amount compared with the price table."""
    if not pricer.chargeable:
        return Check("pricing", FAIL, "no price: requests to this model are refused until one is configured")
    if not outcomes:
        return Check("pricing", SKIP, "no answer to price")
    ours = billed = 0
    has_billed = False
    for out in outcomes:
        if out.tokens is None:
            continue
        table = pricer.charge(replace(out.tokens, billed_usd=None), at_us)
        ours += table.nanos
        if out.tokens.billed_usd is not None:
            has_billed = True
            billed += pricer.charge(out.tokens, at_us).nanos
        elif table.at_ceiling:
            return Check(
                "pricing", WARN, "charged at the configured ceiling (no real price)", {"ceiling": True}
            )
    data: dict[str, Any] = {"table_usd": usd(ours), "source": pricer.charge(TokenUsage(), at_us).source}
    if not has_billed:
        return Check("pricing", PASS, f"usage priced: ${usd(ours)} by the price table", data)
    data["billed_usd"] = usd(billed)
    if abs(billed - ours) > max(ours // 100, len(outcomes)):  # 1 % (and a nano-dollar a request)
        return Check(
            "pricing", WARN, f"the provider billed ${usd(billed)}, the table says ${usd(ours)}", data
        )
    return Check("pricing", PASS, f"the provider billed ${usd(billed)}, as the table says", data)


def embed(out: Outcome, s: SmokeSettings) -> Check:
    failed = _failed("embed", out)
    if failed is not None:
        return failed
    data = (out.body or {}).get("data") or []
    timing = {"latency_ms": round(out.latency_ms, 1)}
    if not data:
        return Check("embed", FAIL, "no embedding in the answer", timing)
    if not out.usage_reported:
        return Check("embed", FAIL, "no usage in the answer", timing)
    return _in_time("embed", out, s, timing)
