"""Every emulator fault, through Sluice, becomes the right status or SSE error for the real SDK."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.conftest import CHAT_ALIASES, fault


def _call(client: openai.OpenAI, alias: str, spec: str, **kw: Any) -> Any:
    return client.chat.completions.create(model=alias, messages=[fault(spec)], **kw)


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    return body


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_upstream_429_passes_retry_after(client: openai.OpenAI, alias: str) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        _call(client, alias, "status=429 retry_after=7")
    assert exc.value.response.headers["retry-after"] == "7"
    assert _error_body(exc.value)["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("alias", CHAT_ALIASES)
@pytest.mark.parametrize("status", [500, 503, 529])
def test_upstream_5xx_becomes_502(client: openai.OpenAI, alias: str, status: int) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        _call(client, alias, f"status={status}")
    assert exc.value.status_code == 502
    assert _error_body(exc.value)["code"] == "upstream_error"


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_upstream_html_page_is_never_reflected(client: openai.OpenAI, alias: str) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        _call(client, alias, "html=1")
    assert exc.value.status_code == 502
    assert "<html" not in exc.value.response.text.lower()
    assert exc.value.response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("alias", ["oa-chat", "claude-chat", "or-chat"])
def test_upstream_hang_is_504(client: openai.OpenAI, alias: str) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        _call(client, alias, "hang=1", stream=True)
    assert exc.value.status_code == 504
    assert _error_body(exc.value)["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5  # first_byte is 1.5 s in the test config


def test_non_stream_hang_is_bounded_by_total(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        _call(client, "oa-chat", "hang=1")
    assert exc.value.status_code == 504


@pytest.mark.parametrize("alias", ["oa-chat", "ds-chat", "claude-chat"])
def test_slow_first_token_is_504(client: openai.OpenAI, alias: str) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        _call(client, alias, "ttft_ms=3000", stream=True)
    assert exc.value.status_code == 504


def test_latency_and_pacing_within_deadlines_succeed(client: openai.OpenAI) -> None:
    chunks = list(_call(client, "ds-chat", "latency_ms=100 ttft_ms=100 pace_ms=20 tokens=5", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_keepalive_comments_do_not_count_as_progress(client: openai.OpenAI) -> None:
    # comments arrive every 300 ms for ~6 s: the idle deadline (1 s) is not re-armed by them
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        _call(client, "ds-chat", "keepalive=20 pace_ms=300", stream=True)
    assert exc.value.status_code == 504
    assert time.monotonic() - started < 4


def test_keepalive_comments_are_harmless(client: openai.OpenAI) -> None:
    chunks = list(
        _call(client, "ds-chat", "keepalive=3", stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].usage is not None


@pytest.mark.parametrize("alias", CHAT_ALIASES)
@pytest.mark.parametrize("spec", ["cut_after=5", "mid_error=5", "malformed=5", "mid_error=6 pace_ms=5"])
def test_mid_stream_failures_become_an_sse_error(client: openai.OpenAI, alias: str, spec: str) -> None:
    received: list[Any] = []
    stream = _call(client, alias, spec, stream=True)
    with pytest.raises(openai.APIError) as exc:
        received.extend(stream)
    assert received, "the client got the chunks sent before the failure"
    assert "upstream" in str(exc.value.message).lower() or "provider" in str(exc.value.message).lower()


@pytest.mark.parametrize("alias", CHAT_ALIASES)
@pytest.mark.parametrize("spec", ["cut_after=1", "mid_error=1", "malformed=1", "mid_error=1 pace_ms=5"])
def test_failures_before_any_content_are_http_errors(client: openai.OpenAI, alias: str, spec: str) -> None:
    # only a role chunk (or for Anthropic, message_start) came before the failure: nothing of substance
    # reached the client, so it still gets a status it can act on (and the SDK can retry)
    with pytest.raises(openai.APIStatusError) as exc:
        list(_call(client, alias, spec, stream=True))
    assert exc.value.status_code == 502
    _error_body(exc.value)


def test_empty_event_stream_is_an_http_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        list(_call(client, "claude-chat", "cut_after=0", stream=True))
    assert exc.value.status_code == 502


@pytest.mark.parametrize("alias", CHAT_ALIASES)
def test_missing_usage_means_no_usage_chunk(client: openai.OpenAI, alias: str) -> None:
    chunks = list(_call(client, alias, "no_usage=1", stream=True, stream_options={"include_usage": True}))
    assert chunks
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [
        (400, 400, None),
        (401, 502, "upstream_auth_error"),
        (402, 502, "upstream_insufficient_credit"),
        (403, 502, "upstream_auth_error"),
        (404, 502, "upstream_not_found"),
        (408, 504, "upstream_timeout"),
        (413, 413, "request_too_large"),
        (422, 400, None),
    ],
)
@pytest.mark.parametrize("alias", ["oa-chat", "or-chat", "gem-chat", "claude-chat", "qwen-chat"])
def test_upstream_client_errors_map(
    client: openai.OpenAI, alias: str, status: int, expected: int, code: str | None
) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        _call(client, alias, f"status={status}")
    assert exc.value.status_code == expected
    body = _error_body(exc.value)
    if code is not None:
        assert body["code"] == code
    assert "sk-emu" not in exc.value.response.text


def test_upstream_400_message_is_passed_on(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="qwen-chat",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"enable_thinking": True},
        )
    assert "The provider rejected the request" in exc.value.message


def test_embedding_faults(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="oa-embed", input="@emulator(status=429)")
    with pytest.raises(openai.InternalServerError) as exc:
        client.embeddings.create(model="oa-embed", input="@emulator(html=1)")
    assert exc.value.status_code == 502


def test_provider_request_id_is_logged(client: openai.OpenAI, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="sluice.gateway"), pytest.raises(openai.InternalServerError):
        _call(client, "qwen-chat", "status=500")
    assert any("upstream_request_id=emu-req-0001" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("stream", [False, True])
def test_garbled_provider_answer_is_502_not_500(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        list(_call(client, "claude-chat", "garbled=1", stream=True)) if stream else _call(
            client, "claude-chat", "garbled=1"
        )
    assert exc.value.status_code == 502
    assert _error_body(exc.value)["code"] == "upstream_error"


def test_anthropic_pings_do_not_count_as_progress(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        list(_call(client, "claude-chat", "keepalive=20 pace_ms=300", stream=True))
    assert exc.value.status_code == 504  # nothing of substance came before the idle deadline (1 s)
    assert time.monotonic() - started < 4
