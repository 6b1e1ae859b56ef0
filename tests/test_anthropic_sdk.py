"""The real anthropic SDK parses everything the emulator's Anthropic flavour sends (so the gateway is
tested against a faithful Anthropic)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from sluice.emulator import Emulator

MODEL = "claude-sonnet-5"
MSG: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def sdk(emulator: Emulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emulator.url + "/anthropic", api_key="sk-ant-test", max_retries=0) as c:
        yield c


def test_message_and_usage(sdk: anthropic.Anthropic) -> None:
    msg = sdk.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "x " * 100 + "@emulator(cache_read=20 cache_write=10)"}],
    )
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text"
    assert msg.usage.cache_read_input_tokens == 20
    assert msg.usage.cache_creation_input_tokens == 10
    assert msg.usage.output_tokens == 16


def test_stream_accumulates(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model=MODEL, max_tokens=5, messages=MSG) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "sluice gates measure every token"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 5


def test_forced_tool_use_streamed(sdk: anthropic.Anthropic) -> None:
    tool: Any = {
        "name": "lookup",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=MSG,
        tools=[tool],
        tool_choice={"type": "tool", "name": "lookup"},
    ) as stream:
        final = stream.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use"
    assert block.name == "lookup"
    assert block.input == {"q": "example"}
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("status=529", anthropic.InternalServerError),
        ("status=429 retry_after=3", anthropic.RateLimitError),
        ("status=401", anthropic.AuthenticationError),
        ("status=400", anthropic.BadRequestError),
    ],
)
def test_errors_are_typed(sdk: anthropic.Anthropic, spec: str, error: type[Exception]) -> None:
    with pytest.raises(error) as exc:
        sdk.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": f"@emulator({spec})"}]
        )
    assert isinstance(exc.value, anthropic.APIStatusError)
    if "retry_after" in spec:
        assert exc.value.response.headers["retry-after"] == "3"


def test_in_stream_error_event_raises(sdk: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError),
        sdk.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "@emulator(mid_error=4)"}]
        ) as stream,
    ):
        stream.get_final_message()


def test_new_version_refuses_temperature(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        sdk.messages.create(model=MODEL, max_tokens=10, messages=MSG, extra_body={"temperature": 0.5})
    assert "temperature" in exc.value.message
