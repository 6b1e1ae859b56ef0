"""Usage normalisation per dialect, on the shapes providers really send (shared/providers.md)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sluice.pricing.usage import TokenUsage, from_anthropic, from_embeddings, from_openai


def test_openai_prompt_includes_cached_tokens() -> None:
    # guards against double-billing cached tokens (Bifrost #904, LiteLLM #11364): 1000 = 600 + 400 cached
    u = from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 50,
            "total_tokens": 1050,
            "prompt_tokens_details": {"cached_tokens": 400},
            "completion_tokens_details": {"reasoning_tokens": 20},
        }
    )
    assert u == TokenUsage(
        input_tokens=1000, cache_read_tokens=400, output_tokens=50, output_reasoning_tokens=20
    )
    assert u.uncached_input_tokens == 600


def test_deepseek_hit_and_miss() -> None:
    # a real DeepSeek usage block (providers.md §2), cache hits reported two ways
    u = from_openai(
        {
            "prompt_tokens": 14,
            "completion_tokens": 25,
            "total_tokens": 39,
            "prompt_tokens_details": {"cached_tokens": 0},
            "prompt_cache_hit_tokens": 0,
            "prompt_cache_miss_tokens": 14,
        }
    )
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (14, 0, 25)
    only_hits = from_openai(
        {"prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36, "completion_tokens": 5}
    )
    assert (only_hits.input_tokens, only_hits.cache_read_tokens) == (100, 64)


def test_openrouter_cost_is_kept_exactly() -> None:
    u = from_openai({"prompt_tokens": 10, "completion_tokens": 2, "cost": 1.2e-05, "is_byok": False})
    assert u.billed_usd == Decimal("0.000012")
    assert from_openai({"prompt_tokens": 1, "cost": "bad"}).billed_usd is None
    assert from_openai({"prompt_tokens": 1, "cost": -1}).billed_usd is None
    assert from_openai({"prompt_tokens": 1, "cost": True}).billed_usd is None


def test_anthropic_input_excludes_cache() -> None:
    # guards against billing cache reads as input (Bifrost #3451): total = 100 + 300 + 50
    u = from_anthropic(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 300,
            "cache_creation_input_tokens": 50,
            "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30},
            "output_tokens": 7,
            "server_tool_use": {"web_search_requests": 2},
        }
    )
    assert u == TokenUsage(
        input_tokens=450,
        cache_read_tokens=300,
        cache_write_tokens=50,
        cache_write_1h_tokens=30,
        output_tokens=7,
        web_searches=2,
    )
    assert u.uncached_input_tokens == 100


def test_embeddings_bill_input_only() -> None:
    assert from_embeddings({"prompt_tokens": 8, "total_tokens": 8}) == TokenUsage(input_tokens=8)


def test_garbage_counts_as_zero() -> None:
    u = from_openai(
        {
            "prompt_tokens": "12",
            "completion_tokens": -3,
            "prompt_tokens_details": [1],
            "completion_tokens_details": {"reasoning_tokens": True},
        }
    )
    assert u == TokenUsage()


def test_genai_prices_keys() -> None:
    u = TokenUsage(input_tokens=10, cache_read_tokens=4, output_tokens=3)
    assert u.as_genai_usage() == {"input_tokens": 10, "cache_read_tokens": 4, "output_tokens": 3}


counts = st.integers(0, 10**9) | st.none() | st.text(max_size=3) | st.floats() | st.booleans()


def test_openai_flags_and_junk_are_not_counts() -> None:
    u = from_openai(
        {
            "prompt_tokens": True,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": "3", "audio_tokens": 2.0},
            "completion_tokens_details": {"reasoning_tokens": False},
        }
    )
    assert (u.input_tokens, u.cache_read_tokens, u.input_audio_tokens) == (0, 0, 0)
    assert (u.output_tokens, u.output_reasoning_tokens) == (7, 0)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": counts,
            "completion_tokens": counts,
            "prompt_cache_hit_tokens": counts,
            "prompt_cache_miss_tokens": counts,
            "prompt_tokens_details": st.fixed_dictionaries(
                {}, optional={"cached_tokens": counts, "cache_write_tokens": counts}
            ),
            "completion_tokens_details": st.fixed_dictionaries({}, optional={"reasoning_tokens": counts}),
        },
    )
)
def test_openai_parts_never_exceed_totals(usage: dict[str, Any]) -> None:
    u = from_openai(usage)
    assert 0 <= u.cache_read_tokens + u.cache_write_tokens <= u.input_tokens
    assert 0 <= u.output_reasoning_tokens <= u.output_tokens
    assert u.uncached_input_tokens >= 0


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "input_tokens": counts,
            "output_tokens": counts,
            "cache_read_input_tokens": counts,
            "cache_creation_input_tokens": counts,
            "cache_creation": st.fixed_dictionaries({}, optional={"ephemeral_1h_input_tokens": counts}),
        },
    )
)
def test_anthropic_parts_never_exceed_totals(usage: dict[str, Any]) -> None:
    u = from_anthropic(usage)
    assert u.cache_read_tokens + u.cache_write_tokens <= u.input_tokens
    assert 0 <= u.cache_write_1h_tokens <= u.cache_write_tokens
    assert u.uncached_input_tokens >= 0


def _target(preset: str) -> Any:
    from sluice.providers.base import Target  # noqa: PLC0415

    return Target(provider=preset, preset=preset, upstream_model="m", max_output_tokens=100)


def test_deepseek_stream_usage_on_the_finish_chunk_is_normalised() -> None:
    from sluice.providers.openai import OpenAIStream  # noqa: PLC0415
    from sluice.wire.sse import Event  # noqa: PLC0415

    stream = OpenAIStream("deepseek", include_usage=False)
    assert stream.tokens() is None
    stream.feed(
        Event(data=b'{"id":"a","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}')
    )
    stream.feed(
        Event(
            data=b'{"id":"a","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":30,"completion_tokens":2,"prompt_cache_hit_tokens":10,'
            b'"prompt_cache_miss_tokens":20,"prompt_tokens_details":{"cached_tokens":10}}}'
        )
    )
    assert stream.tokens() == TokenUsage(input_tokens=30, cache_read_tokens=10, output_tokens=2)


def test_anthropic_stream_usage_keeps_the_cache_write_split() -> None:
    from sluice.providers.anthropic import AnthropicStream  # noqa: PLC0415
    from sluice.wire.sse import Event  # noqa: PLC0415

    stream = AnthropicStream(_target("anthropic"), include_usage=True)
    start = (
        b'{"type":"message_start","message":{"id":"m","usage":{"input_tokens":5,'
        b'"cache_read_input_tokens":40,"cache_creation_input_tokens":12,'
        b'"cache_creation":{"ephemeral_5m_input_tokens":2,"ephemeral_1h_input_tokens":10},"output_tokens":1}}}'
    )
    stream.feed(Event(data=start, event="message_start"))
    stream.feed(
        Event(
            data=b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}',
            event="message_delta",
        )
    )
    assert stream.tokens() == TokenUsage(
        input_tokens=57,
        cache_read_tokens=40,
        cache_write_tokens=12,
        cache_write_1h_tokens=10,
        output_tokens=9,
    )


def test_non_stream_adapters_return_normalised_tokens() -> None:
    import orjson  # noqa: PLC0415

    from sluice.providers.anthropic import AnthropicAdapter  # noqa: PLC0415
    from sluice.providers.openai import OpenAIAdapter  # noqa: PLC0415
    from sluice.wire.requests import validate_chat  # noqa: PLC0415

    req = validate_chat({"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    body = orjson.dumps(
        {
            "id": "a",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "cost": 0.5},
        }
    )
    out = OpenAIAdapter().chat_response(body, req, _target("openrouter"))
    assert out.tokens == TokenUsage(input_tokens=9, output_tokens=3, billed_usd=Decimal("0.5"))
    msg = orjson.dumps(
        {
            "id": "m",
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 4, "cache_read_input_tokens": 6, "output_tokens": 2},
        }
    )
    out = AnthropicAdapter().chat_response(msg, req, _target("anthropic"))
    assert out.tokens == TokenUsage(input_tokens=10, cache_read_tokens=6, output_tokens=2)
