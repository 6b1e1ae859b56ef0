"""Usage normalisation: every dialect's usage report → one record with explicit token classes.

The traps this exists for (each a real bug in a peer gateway):
- OpenAI's ``prompt_tokens`` *includes* cached tokens; counting cached tokens on top double-bills them.
- Anthropic's ``input_tokens`` *excludes* cache reads and writes; the total input is the sum of the three.
- DeepSeek reports cache hits as ``prompt_cache_hit_tokens`` (``cached_tokens`` mirrors it, when present).
- OpenRouter's ``usage.cost`` is the amount actually billed, in USD; it wins over any computed price.
- Reasoning tokens are part of the output count on every dialect here; they are broken out, not added.

Field names follow genai-prices' ``Usage`` keys so a record maps onto it one to one. Pure: no I/O, and
money only as ``Decimal`` (a float from JSON is converted through its shortest decimal text).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Any


@dataclass(slots=True)
class TokenUsage:
    """One request's usage. ``input_tokens`` and ``output_tokens`` are totals; the rest are parts of them.

    A value: never changed once built (``dataclasses.replace`` makes a new one). Not ``frozen``, because a
    frozen dataclass costs a microsecond more to build, on every request.
    """

    input_tokens: int = 0  # every prompt token: uncached + cache reads + cache writes
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # every cache write (5-minute and 1-hour)
    cache_write_1h_tokens: int = 0  # the 1-hour part of cache_write_tokens
    output_tokens: int = 0  # every completion token, reasoning included
    output_reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    web_searches: int = 0
    billed_usd: Decimal | None = None  # the provider's own charge for this request, when it states one

    @property
    def uncached_input_tokens(self) -> int:
        """Prompt tokens billed at the plain input rate."""
        return max(self.input_tokens - self.cache_read_tokens - self.cache_write_tokens, 0)

    def as_genai_usage(self) -> dict[str, int]:
        """The token counts under genai-prices' ``Usage`` keys (zero classes left out)."""
        return {
            f.name: value
            for f in fields(self)
            if f.name != "billed_usd" and isinstance(value := getattr(self, f.name), int) and value
        }


def _count(value: Any) -> int:
    """A token count as reported; anything that is not a non-negative integer counts as 0 (a bool is not a
    count; JSON has no other kind of int)."""
    return value if type(value) is int and value > 0 else 0


def _details(usage: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, Mapping) else {}


def _usd(value: Any) -> Decimal | None:
    """A provider-stated charge as Decimal; None when absent or not a finite non-negative number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        return None
    try:
        amount = Decimal(str(value))  # a JSON number's shortest round-tripping text, never its binary value
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def from_openai(usage: Mapping[str, Any]) -> TokenUsage:
    """OpenAI-dialect usage (OpenAI, DeepSeek, DashScope, OpenRouter, Gemini, Groq, vLLM, Ollama)."""
    prompt = usage.get("prompt_tokens_details")
    if type(prompt) is not dict and not isinstance(prompt, Mapping):  # JSON objects are dicts: checked first
        prompt = _EMPTY
    completion = usage.get("completion_tokens_details")
    if type(completion) is not dict and not isinstance(completion, Mapping):
        completion = _EMPTY
    input_tokens = _count(usage.get("prompt_tokens"))
    cache_read = _count(prompt.get("cached_tokens")) or _count(usage.get("prompt_cache_hit_tokens"))
    if not input_tokens and "prompt_cache_miss_tokens" in usage:  # DeepSeek: hit + miss = prompt
        input_tokens = cache_read + _count(usage.get("prompt_cache_miss_tokens"))
    cache_read = min(cache_read, input_tokens)
    cache_write = min(_count(prompt.get("cache_write_tokens")), input_tokens - cache_read)
    output = _count(usage.get("completion_tokens"))
    return TokenUsage(
        input_tokens,
        cache_read,
        cache_write,
        0,
        output,
        min(_count(completion.get("reasoning_tokens")), output),
        _count(prompt.get("audio_tokens")),
        _count(completion.get("audio_tokens")),
        _count(prompt.get("image_tokens")),
        0,
        _billed(usage) if "cost" in usage else None,
    )


_EMPTY: Mapping[str, Any] = {}


def _billed(usage: Mapping[str, Any]) -> Decimal | None:
    """OpenRouter's statement of the charge. With the operator's own provider key (``is_byok``), ``cost``
    is only OpenRouter's fee; the provider's charge is ``cost_details.upstream_inference_cost``."""
    cost = _usd(usage.get("cost"))
    if cost is not None and usage.get("is_byok") is True:
        upstream = _usd(_details(usage, "cost_details").get("upstream_inference_cost"))
        if upstream is not None:
            return cost + upstream
    return cost


def from_anthropic(usage: Mapping[str, Any]) -> TokenUsage:
    """Anthropic Messages usage: ``input_tokens`` excludes cache reads and writes."""
    read = _count(usage.get("cache_read_input_tokens"))
    written = _count(usage.get("cache_creation_input_tokens"))
    split = _details(usage, "cache_creation")
    write_1h = min(_count(split.get("ephemeral_1h_input_tokens")), written)
    server_tools = _details(usage, "server_tool_use")
    return TokenUsage(
        input_tokens=_count(usage.get("input_tokens")) + read + written,
        cache_read_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=write_1h,
        output_tokens=_count(usage.get("output_tokens")),
        web_searches=_count(server_tools.get("web_search_requests")),
    )


def from_embeddings(usage: Mapping[str, Any]) -> TokenUsage:
    """Embeddings bill input only."""
    return TokenUsage(input_tokens=_count(usage.get("prompt_tokens")) or _count(usage.get("total_tokens")))


def estimate_tokens(chars: int, pieces: int) -> int:
    """Tokens in ``chars`` characters of text that arrived in ``pieces`` deltas: providers stream about one
    token per delta, and English runs about four characters per token; the larger guess wins."""
    return max(pieces, -(-chars // 4))


def estimated(reported: TokenUsage | None, input_estimate: int, output_delivered: int) -> TokenUsage:
    """Usage for a request that did not finish: what the provider reported, else our estimates."""
    if reported is None:
        return TokenUsage(input_tokens=input_estimate, output_tokens=output_delivered)
    return replace(
        reported,
        input_tokens=reported.input_tokens or input_estimate,
        output_tokens=max(reported.output_tokens, output_delivered),
    )
