"""Every dialect through a running Sluice with the real openai SDK (sync and async)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from tests.conftest import ADMIN_KEY, CHAT_ALIASES, ServerThread

MSG: Any = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1},
            },
            "required": ["city", "unit", "days"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}
OPENAI_DIALECTS = [a for a in CHAT_ALIASES if a != "claude-chat"]


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_non_stream(client: openai.OpenAI, alias: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=alias, messages=MSG)
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert raw.headers["x-sluice-request-id"].startswith("req_")
    assert raw.headers["x-sluice-attempts"] == "1"
    assert raw.headers["x-sluice-provider"]


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_stream_with_usage(client: openai.OpenAI, alias: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=alias, messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == []  # the usage chunk comes last, with empty choices
    assert last.usage is not None and last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI, alias: str) -> None:
    chunks = list(client.chat.completions.create(model=alias, messages=MSG, stream=True))
    assert chunks
    assert all(c.choices for c in chunks), "no empty-choices usage chunk when the client did not ask"
    assert all(c.usage is None for c in chunks)


def _check_weather_args(arguments: str) -> None:
    args = json.loads(arguments)
    assert isinstance(args["city"], str)
    assert args["unit"] in ("c", "f")
    assert isinstance(args["days"], int) and args["days"] >= 1


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_forced_tool_call(client: openai.OpenAI, alias: str) -> None:
    reply = client.chat.completions.create(
        model=alias,
        messages=MSG,
        tools=[TIME_TOOL, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    _check_weather_args(calls[0].function.arguments)


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_streamed_parallel_tool_calls(client: openai.OpenAI, alias: str) -> None:
    with client.chat.completions.stream(
        model=alias,
        messages=[{"role": "user", "content": "weather and time @emulator(calls=2)"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    _check_weather_args(calls[0].function.arguments)
    assert json.loads(calls[1].function.arguments) == {"tz": "example"}
    assert final.choices[0].finish_reason == "tool_calls"
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_tool_result_round_trip(client: openai.OpenAI, alias: str) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"c","days":1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3 degrees"},
    ]
    reply = client.chat.completions.create(model=alias, messages=messages, tools=[WEATHER_TOOL])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_json_object_mode(client: openai.OpenAI, alias: str) -> None:
    reply = client.chat.completions.create(
        model=alias,
        messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_object"},
    )
    content = reply.choices[0].message.content
    assert content is not None
    assert isinstance(json.loads(content), dict)


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_json_schema_mode_stream(client: openai.OpenAI, alias: str) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    chunks = client.chat.completions.create(
        model=alias,
        messages=MSG,
        stream=True,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    value = json.loads(text)
    assert set(value) == {"name", "age", "tags"}
    assert isinstance(value["age"], int)
    assert all(isinstance(t, str) for t in value["tags"])


@pytest.mark.parametrize("alias", CHAT_ALIASES)
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates(client: openai.OpenAI, alias: str, field: str) -> None:
    reply = client.chat.completions.create(model=alias, messages=MSG, **{field: 3})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens <= 3 + 8  # reasoning may add tokens


@pytest.mark.parametrize("alias", OPENAI_DIALECTS)
def test_n_choices(client: openai.OpenAI, alias: str) -> None:
    reply = client.chat.completions.create(model=alias, messages=MSG, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    chunks = list(client.chat.completions.create(model=alias, messages=MSG, n=2, stream=True))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]


def test_n_above_one_is_refused_for_anthropic(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="claude-chat", messages=MSG, n=2)
    assert exc.value.body["param"] == "n"  # type: ignore[index]


@pytest.mark.parametrize("alias", ["ds-chat", "qwen-chat"])
def test_reasoning_content_passes_through(client: openai.OpenAI, alias: str) -> None:
    extra = {"enable_thinking": True} if alias == "qwen-chat" else {}
    chunks = list(client.chat.completions.create(model=alias, messages=MSG, stream=True, extra_body=extra))
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert reasoning
    if alias == "ds-chat":
        reply = client.chat.completions.create(model=alias, messages=MSG)
        assert getattr(reply.choices[0].message, "reasoning_content", None)


def test_temperature_is_dropped_for_new_anthropic_version(client: openai.OpenAI) -> None:
    # The emulator, like Anthropic on 2026-10-21, rejects temperature: the translation must drop it.
    reply = client.chat.completions.create(model="claude-chat", messages=MSG, temperature=0.2, top_p=0.5)
    assert reply.choices[0].message.content


def test_anthropic_cache_usage_is_counted_as_prompt(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="claude-chat",
        messages=[{"role": "user", "content": "x " * 200 + "@emulator(cache_read=60 cache_write=20)"}],
    )
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 60
    assert usage.prompt_tokens >= 80


def test_dashscope_thinking_without_stream_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="qwen-chat", messages=MSG, extra_body={"enable_thinking": True})
    assert "enable_thinking" in exc.value.message


def _run_async(gateway: ServerThread, alias: str) -> None:
    async def go() -> None:
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=ADMIN_KEY, max_retries=0) as c:
            reply = await c.chat.completions.create(model=alias, messages=MSG)
            assert reply.choices[0].message.content
            stream = await c.chat.completions.create(
                model=alias,
                messages=MSG,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            assert chunks[-1].usage is not None
            tool = await c.chat.completions.create(
                model=alias,
                messages=MSG,
                tools=[WEATHER_TOOL],
                tool_choice="required",
            )
            assert tool.choices[0].message.tool_calls
            results = await asyncio.gather(
                *[c.chat.completions.create(model=alias, messages=MSG) for _ in range(20)]
            )
            assert all(r.choices[0].message.content for r in results)

    asyncio.run(go())


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_async_client(gateway: ServerThread, alias: str) -> None:
    _run_async(gateway, alias)
