"""Unit tests of the OpenAI chat ⇄ Anthropic Messages translation (shared/providers.md §5.5)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluice.errors import InvalidRequest, SluiceError, UpstreamError, UpstreamRateLimited
from sluice.providers.anthropic import AnthropicAdapter, AnthropicStream, to_messages_request
from sluice.providers.base import Target
from sluice.wire.requests import ChatRequest, validate_chat
from sluice.wire.sse import DONE_FRAME, Event, named_frame

NEW = "2026-10-21"
LEGACY = "2023-06-01"
USER: dict[str, Any] = {"role": "user", "content": "Hi"}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def target(version: str = NEW) -> Target:
    return Target(
        provider="anthropic",
        preset="anthropic",
        upstream_model="claude-x",
        max_output_tokens=123,
        anthropic_version=version,
    )


def req(messages: list[dict[str, Any]] | None = None, **fields: Any) -> ChatRequest:
    return validate_chat({"model": "claude-chat", "messages": messages or [USER], **fields})


def translate(
    messages: list[dict[str, Any]] | None = None, version: str = NEW, **fields: Any
) -> dict[str, Any]:
    return to_messages_request(req(messages, **fields), target(version))


# --- request translation ------------------------------------------------------------------------


def test_minimal_request() -> None:
    out = translate()
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 123,
    }


def test_system_and_developer_are_hoisted_and_joined() -> None:
    out = translate(
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Answer in "}, {"type": "text", "text": "French."}],
            },
            USER,
            {"role": "system", "content": "Late rule."},
        ]
    )
    assert out["system"] == "Be brief.\n\nAnswer in French.\n\nLate rule."
    assert [m["role"] for m in out["messages"]] == ["user"]


def test_no_system_key_without_system_messages() -> None:
    assert "system" not in translate()
    assert "system" not in translate([{"role": "system", "content": ""}, USER])


def test_tool_round_trip_messages() -> None:
    out = translate(
        [
            USER,
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        ]
    )
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assistant = out["messages"][1]["content"]
    assert assistant == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    results = out["messages"][2]["content"]
    assert results == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
    ], "consecutive tool messages collapse into one user turn"


def test_user_after_tool_results_joins_the_same_turn() -> None:
    out = translate(
        [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
            {"role": "user", "content": "And now?"},
        ]
    )
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in out["messages"][2]["content"]] == ["tool_result", "text"]
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}]


def test_invalid_tool_arguments_name_the_param() -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"city": '}},
            ],
        },
    ]
    with pytest.raises(InvalidRequest) as info:
        translate(messages)
    assert info.value.param == "messages[1].tool_calls[1].function.arguments"
    assert info.value.status == 400


@pytest.mark.parametrize("arguments", ["[1, 2]", "3", '"text"', "null"])
def test_non_object_tool_arguments_are_rejected(arguments: str) -> None:
    """Anthropic's tool_use.input must be an object."""
    messages = [
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
    ]
    with pytest.raises(InvalidRequest) as info:
        translate(messages)
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tools_translate_to_input_schema() -> None:
    bare = {"type": "function", "function": {"name": "ping"}}
    out = translate(tools=[TOOL, bare])
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": TOOL["function"]["parameters"],
        },
        {"name": "ping", "description": "", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_mapping(choice: Any, expected: dict[str, Any]) -> None:
    assert translate(tools=[TOOL], tool_choice=choice)["tool_choice"] == expected


def test_parallel_tool_calls_false() -> None:
    out = translate(tools=[TOOL], tool_choice="required", parallel_tool_calls=False)
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    out = translate(tools=[TOOL], parallel_tool_calls=False)
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out = translate(tools=[TOOL], tool_choice="auto", parallel_tool_calls=True)
    assert out["tool_choice"] == {"type": "auto"}


def test_parallel_tool_calls_false_with_tool_choice_none() -> None:
    """Anthropic's ToolChoiceNone has only 'type'; any other field is a 400."""
    out = translate(tools=[TOOL], tool_choice="none", parallel_tool_calls=False)
    assert out["tool_choice"] == {"type": "none"}


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in translate(tool_choice="none")


@pytest.mark.parametrize(("stop", "expected"), [("END", ["END"]), (["a", "b"], ["a", "b"])])
def test_stop_becomes_stop_sequences(stop: Any, expected: list[str]) -> None:
    out = translate(stop=stop)
    assert out["stop_sequences"] == expected
    assert "stop" not in out


def test_user_becomes_metadata_user_id() -> None:
    assert translate(user="user-42")["metadata"] == {"user_id": "user-42"}
    assert translate(safety_identifier="sid-1")["metadata"] == {"user_id": "sid-1"}
    assert "user" not in translate(user="user-42")


def test_response_format_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    out = translate(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "response_format" not in out
    plain = translate(response_format={"type": "json_object"})
    assert plain["output_config"]["format"]["type"] == "json_schema"
    assert "output_config" not in translate(response_format={"type": "text"})


def test_reasoning_effort_goes_to_output_config() -> None:
    assert translate(reasoning_effort="high")["output_config"] == {"effort": "high"}
    assert "output_config" not in translate(reasoning_effort="nonsense")


def test_sampling_dropped_on_new_version() -> None:
    out = translate(version=NEW, temperature=0.3, top_p=0.5)
    assert "temperature" not in out
    assert "top_p" not in out


@pytest.mark.parametrize(("given", "sent"), [(0, 0.0), (0.4, 0.4), (1.0, 1.0), (1.7, 1.0), (2, 1.0)])
def test_temperature_clamped_on_legacy_version(given: float, sent: float) -> None:
    out = translate(version=LEGACY, temperature=given)
    assert out["temperature"] == sent
    assert isinstance(out["temperature"], float)


def test_top_p_kept_on_legacy_version() -> None:
    assert translate(version=LEGACY, top_p=0.5)["top_p"] == 0.5


def test_max_tokens() -> None:
    assert translate()["max_tokens"] == 123, "the Target's default when the client set none"
    assert translate(max_tokens=50)["max_tokens"] == 50
    assert translate(max_completion_tokens=60)["max_tokens"] == 60
    assert translate(max_tokens=50, max_completion_tokens=60)["max_tokens"] == 60


def test_stream_flag() -> None:
    assert translate(stream=True, stream_options={"include_usage": True})["stream"] is True
    assert "stream" not in translate()


def test_image_url_data_url_becomes_base64_block() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    out = translate([{"role": "user", "content": content}])
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]


def test_unsupported_content_part_names_the_param() -> None:
    content = [{"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "x"}}]
    with pytest.raises(InvalidRequest) as info:
        translate([USER, {"role": "assistant", "content": "ok"}, {"role": "user", "content": content}])
    assert info.value.param == "messages[2].content[1].type"


def test_n_above_one_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(n=2)
    assert info.value.param == "n"


def test_chat_call_sets_version_header() -> None:
    adapter = AnthropicAdapter()
    call = adapter.chat_call(req(), target(LEGACY))
    assert call.path == "/messages"
    assert call.headers == {"anthropic-version": LEGACY}
    assert orjson.loads(call.body) == to_messages_request(req(), target(LEGACY))


# --- response translation -----------------------------------------------------------------------


def response(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x-20260101",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
        }
    )


def chat_response(raw: bytes) -> tuple[dict[str, Any], dict[str, Any] | None]:
    translated = AnthropicAdapter().chat_response(raw, req(), target())
    body: dict[str, Any] = orjson.loads(translated.body)
    return body, translated.usage


def test_text_response() -> None:
    body, usage = chat_response(response([{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]))
    assert body["object"] == "chat.completion"
    assert body["id"] == "msg_1"
    assert body["model"] == "claude-x-20260101"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "Hello", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    assert usage == body["usage"]


def test_tool_use_response() -> None:
    blocks = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
    ]
    body, _ = chat_response(response(blocks, "tool_use"))
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["reasoning_content"] == "hmm"
    assert message["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        },
        {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_stop_reason_mapping(stop_reason: str, finish: str) -> None:
    body, _ = chat_response(response([{"type": "text", "text": "x"}], stop_reason))
    assert body["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_reads_and_writes_as_prompt() -> None:
    body, usage = chat_response(
        response([{"type": "text", "text": "x"}], cache_read_input_tokens=30, cache_creation_input_tokens=7)
    )
    assert usage == {
        "prompt_tokens": 47,
        "completion_tokens": 5,
        "total_tokens": 52,
        "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 7},
    }
    assert body["usage"] == usage


def test_response_without_usage_reports_unknown_usage() -> None:
    """Unknown usage is None (as in OpenAIAdapter and AnthropicStream), never invented zeros."""
    raw = orjson.loads(response([{"type": "text", "text": "x"}]))
    del raw["usage"]
    body, usage = chat_response(orjson.dumps(raw))
    assert usage is None
    assert "usage" not in body


@pytest.mark.parametrize("raw", [b"<html>oops</html>", b"[]", b'{"type": "message"}', b'{"content": "x"}'])
def test_unusable_response_raises_upstream_error(raw: bytes) -> None:
    with pytest.raises(UpstreamError):
        chat_response(raw)


# --- stream translation -------------------------------------------------------------------------


def ev(name: str, **payload: Any) -> Event:
    frame = named_frame(name, {"type": name, **payload})
    head, data = frame[:-2].split(b"\n")
    return Event(data=data[6:], event=head[7:].decode())


def message_start(**usage: int) -> Event:
    return ev(
        "message_start",
        message={
            "id": "msg_s",
            "type": "message",
            "role": "assistant",
            "model": "claude-x-20260101",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 10, "output_tokens": 1, **usage},
        },
    )


def feed_all(stream: AnthropicStream, events: list[Event]) -> list[dict[str, Any]]:
    frames: list[bytes] = []
    for event in events:
        frames += stream.feed(event)
    out = []
    for frame in frames:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
        out.append(orjson.loads(frame[6:-2]))
    return out


def test_text_stream() -> None:
    stream = AnthropicStream(target(), include_usage=False)
    chunks = feed_all(
        stream,
        [
            message_start(),
            ev("ping"),
            ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            ev("ping"),
            ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"}),
            ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
            ev("content_block_stop", index=0),
            ev(
                "message_delta",
                delta={"stop_reason": "end_turn", "stop_sequence": None},
                usage={"output_tokens": 2},
            ),
            ev("message_stop"),
        ],
    )
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ], "ping, content_block_start (empty text) and content_block_stop produce nothing"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert {c["id"] for c in chunks} == {"msg_s"}
    assert {c["model"] for c in chunks} == {"claude-x-20260101"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert stream.done
    assert stream.finish() == [DONE_FRAME]
    assert stream.usage is not None and stream.usage["completion_tokens"] == 2


def test_tool_index_counts_tool_blocks_only() -> None:
    stream = AnthropicStream(target(), include_usage=False)
    chunks = feed_all(
        stream,
        [
            message_start(),
            ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
            ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "plan"}),
            ev("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "s"}),
            ev("content_block_stop", index=0),
            ev("content_block_start", index=1, content_block={"type": "text", "text": ""}),
            ev("content_block_delta", index=1, delta={"type": "text_delta", "text": "Checking."}),
            ev("content_block_stop", index=1),
            ev(
                "content_block_start",
                index=2,
                content_block={"type": "tool_use", "id": "toolu_a", "name": "a", "input": {}},
            ),
            ev("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '{"x":'}),
            ev(
                "content_block_start",
                index=3,
                content_block={"type": "tool_use", "id": "toolu_b", "name": "b", "input": {}},
            ),
            ev("content_block_delta", index=3, delta={"type": "input_json_delta", "partial_json": "{}"}),
            ev("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": "1}"}),
            ev("content_block_stop", index=2),
            ev("content_block_stop", index=3),
            ev("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9}),
            ev("message_stop"),
        ],
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1] == {"reasoning_content": "plan"}
    assert deltas[2] == {"content": "Checking."}
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tool_deltas == [
        {"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "a", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"x":'}},
        {"index": 1, "id": "toolu_b", "type": "function", "function": {"name": "b", "arguments": ""}},
        {"index": 1, "function": {"arguments": "{}"}},
        {"index": 0, "function": {"arguments": "1}"}},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_usage_chunk_when_asked() -> None:
    stream = AnthropicStream(target(), include_usage=True)
    chunks = feed_all(
        stream,
        [
            message_start(cache_read_input_tokens=30, cache_creation_input_tokens=5),
            ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "x"}),
            ev("message_delta", delta={"stop_reason": "max_tokens"}, usage={"output_tokens": 12}),
            ev("message_stop"),
        ],
    )
    assert all(c["usage"] is None for c in chunks), "usage: null on every chunk when asked"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    expected = {
        "prompt_tokens": 45,
        "completion_tokens": 12,
        "total_tokens": 57,
        "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 5},
    }
    assert stream.usage == expected
    usage_frame, done = stream.finish()
    assert done == DONE_FRAME
    usage_chunk = orjson.loads(usage_frame[6:-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == expected
    assert usage_chunk["id"] == "msg_s"


def test_message_delta_usage_is_cumulative_and_overrides_start() -> None:
    stream = AnthropicStream(target(), include_usage=True)
    feed_all(
        stream,
        [
            message_start(),
            ev(
                "message_delta",
                delta={"stop_reason": "end_turn"},
                usage={"input_tokens": 12, "output_tokens": 4},
            ),
        ],
    )
    assert stream.usage is not None
    assert stream.usage["prompt_tokens"] == 12
    assert stream.usage["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("kind", "error"), [("overloaded_error", UpstreamError), ("rate_limit_error", UpstreamRateLimited)]
)
def test_error_event_raises(kind: str, error: type[SluiceError]) -> None:
    stream = AnthropicStream(target(), include_usage=False)
    feed_all(stream, [message_start()])
    with pytest.raises(error) as info:
        stream.feed(ev("error", error={"type": kind, "message": "Overloaded"}))
    assert "anthropic" in info.value.message
    assert not stream.done


def test_malformed_event_raises() -> None:
    stream = AnthropicStream(target(), include_usage=False)
    with pytest.raises(UpstreamError, match="malformed"):
        stream.feed(Event(data=b'{"type', event="content_block_delta"))
    with pytest.raises(UpstreamError, match="malformed"):
        stream.feed(Event(data=b"[1]", event="content_block_delta"))


def test_comments_and_unknown_events_are_ignored() -> None:
    stream = AnthropicStream(target(), include_usage=False)
    assert stream.feed(Event(data=None, comment=b"keep-alive")) == []
    assert stream.feed(ev("some_future_event", foo=1)) == []
    assert stream.feed(ev("ping")) == []


def test_event_type_from_data_when_no_event_line() -> None:
    stream = AnthropicStream(target(), include_usage=False)
    (frame,) = stream.feed(
        Event(data=b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}')
    )
    assert orjson.loads(frame[6:-2])["choices"][0]["delta"] == {"content": "x"}


def test_stream_via_adapter_uses_include_usage() -> None:
    adapter = AnthropicAdapter()
    with_usage = adapter.chat_stream(req(stream=True, stream_options={"include_usage": True}), target())
    without = adapter.chat_stream(req(stream=True), target())
    events = [
        message_start(),
        ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3}),
    ]
    feed_all(with_usage, events)
    feed_all(without, events)
    assert len(with_usage.finish()) == 2
    assert without.finish() == [DONE_FRAME]


def test_stream_without_any_usage_leaves_usage_unknown() -> None:
    stream = AnthropicStream(target(), include_usage=True)
    start = ev(
        "message_start",
        message={"id": "msg_n", "type": "message", "role": "assistant", "model": "m", "content": []},
    )
    chunks = feed_all(stream, [start, ev("message_delta", delta={"stop_reason": "end_turn"}, usage={})])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert stream.usage is None
    assert stream.finish() == [DONE_FRAME], "no usage chunk invented from nothing"
