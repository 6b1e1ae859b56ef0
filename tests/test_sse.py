"""Unit tests of the SSE decoder and of the OpenAI-dialect stream translator."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluice.errors import SluiceError, UpstreamError, UpstreamRateLimited
from sluice.providers.openai import OpenAIStream
from sluice.wire.sse import DONE_FRAME, Event, SSEDecoder, data_frame, named_frame, raw_frame

# A stream with everything a provider sends: comments, named events, multi-line data, a terminator.
STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"a":1}\n\n'
    b'event: message_start\ndata: {"type":"message_start"}\n\n'
    b"data: line one\ndata: line two\n\n"
    b": keep-alive\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    Event(data=None, comment=b"OPENROUTER PROCESSING"),
    Event(data=b'{"a":1}'),
    Event(data=b'{"type":"message_start"}', event="message_start"),
    Event(data=b"line one\nline two"),
    Event(data=None, comment=b"keep-alive"),
    Event(data=b"[DONE]"),
]


def decode_all(*pieces: bytes) -> list[Event]:
    decoder = SSEDecoder()
    events: list[Event] = []
    for piece in pieces:
        events += decoder.feed(piece)
    assert decoder.pending() == b""
    return events


# --- SSEDecoder ---------------------------------------------------------------------------------


def test_whole_stream_in_one_feed() -> None:
    assert decode_all(STREAM) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_at_every_byte(cut: int) -> None:
    assert decode_all(STREAM[:cut], STREAM[cut:]) == EXPECTED


def test_one_byte_at_a_time() -> None:
    assert decode_all(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_three_way_splits() -> None:
    n = len(STREAM)
    for a in range(1, n, 7):
        for b in range(a + 1, n, 5):
            assert decode_all(STREAM[:a], STREAM[a:b], STREAM[b:]) == EXPECTED, (a, b)


def test_crlf_line_endings() -> None:
    assert decode_all(STREAM.replace(b"\n", b"\r\n")) == EXPECTED


def test_lone_cr_line_endings() -> None:
    assert decode_all(STREAM.replace(b"\n", b"\r")) == EXPECTED


def test_crlf_split_between_frames() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    boundaries = [i for i in range(1, len(crlf)) if crlf[:i].endswith(b"\r\n\r\n")]
    assert len(boundaries) == len(EXPECTED) - 1  # every boundary but the end of the stream
    for cut in boundaries:
        assert decode_all(crlf[:cut], crlf[cut:]) == EXPECTED


def test_crlf_split_at_every_byte() -> None:
    """A CRLF split between two reads must not become two line endings (a spurious blank line)."""
    crlf = STREAM.replace(b"\n", b"\r\n")
    bad = [cut for cut in range(1, len(crlf)) if decode_all(crlf[:cut], crlf[cut:]) != EXPECTED]
    assert bad == []


def test_comments() -> None:
    assert decode_all(b": keep-alive\n\n") == [Event(data=None, comment=b"keep-alive")]
    assert decode_all(b":\n\n") == [Event(data=None, comment=b"")]
    # a comment inside a data frame does not hide the data
    assert decode_all(b': note\ndata: {"x":1}\n\n') == [Event(data=b'{"x":1}')]


def test_multi_line_data_and_event_line() -> None:
    events = decode_all(b"event: content_block_delta\ndata: a\ndata:\ndata: b\n\n")
    assert events == [Event(data=b"a\n\nb", event="content_block_delta")]


def test_field_without_space_and_extra_space() -> None:
    assert decode_all(b"data:{}\n\n") == [Event(data=b"{}")]
    assert decode_all(b"data:  x\n\n") == [Event(data=b" x")], "only one leading space is removed"
    assert decode_all(b"event:ping\ndata:{}\n\n") == [Event(data=b"{}", event="ping")]


def test_unknown_fields_are_ignored() -> None:
    assert decode_all(b"id: 7\nretry: 1000\ndata: x\n\n") == [Event(data=b"x")]


def test_blank_line_runs_yield_nothing() -> None:
    assert decode_all(b"\n\n\n\n") == []
    assert decode_all(b"\n\ndata: x\n\n\n\n") == [Event(data=b"x")]


def test_event_without_data() -> None:
    assert decode_all(b"event: ping\n\n") == [Event(data=None, event="ping")]


def test_pending_after_a_cut() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b'data: {"a":1}\n\ndata: {"b"')
    assert events == [Event(data=b'{"a":1}')]
    assert decoder.pending() == b'data: {"b"'
    assert decoder.feed(b":2}\n") == []
    assert decoder.pending() == b'data: {"b":2}\n'
    assert decoder.feed(b"\n") == [Event(data=b'{"b":2}')]
    assert decoder.pending() == b""


def test_pending_is_empty_on_a_frame_boundary() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: x\n\n")
    assert decoder.pending() == b""
    assert decoder.feed(b"") == []


def test_encoders_round_trip() -> None:
    payload = {"id": "c1", "choices": [], "text": "naïve\nline"}
    assert data_frame(payload) == b"data: " + orjson.dumps(payload) + b"\n\n"
    assert decode_all(data_frame(payload)) == [Event(data=orjson.dumps(payload))]
    assert decode_all(raw_frame(b'{"x":1}')) == [Event(data=b'{"x":1}')]
    assert decode_all(named_frame("ping", {"type": "ping"})) == [Event(data=b'{"type":"ping"}', event="ping")]
    assert decode_all(DONE_FRAME) == [Event(data=b"[DONE]")]


# --- OpenAIStream -------------------------------------------------------------------------------

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def ev(payload: Any) -> Event:
    return Event(data=orjson.dumps(payload))


def parse(frames: list[bytes]) -> list[Any]:
    out = []
    for frame in frames:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n"), frame
        body = frame[6:-2]
        out.append(body.decode() if body == b"[DONE]" else orjson.loads(body))
    return out


def run(stream: OpenAIStream, payloads: list[Any]) -> list[Any]:
    frames: list[bytes] = []
    for p in payloads:
        frames += stream.feed(ev(p))
    frames += stream.feed(Event(data=b"[DONE]"))
    assert stream.done
    return parse(frames + stream.finish())


def test_plain_chunks_pass_through_byte_for_byte() -> None:
    raw = orjson.dumps(chunk({"content": "hi"}))
    stream = OpenAIStream("openai", include_usage=False)
    assert stream.feed(Event(data=raw)) == [b"data: " + raw + b"\n\n"]


def test_comments_and_done() -> None:
    stream = OpenAIStream("deepseek", include_usage=False)
    assert stream.feed(Event(data=None, comment=b"keep-alive")) == []
    before = stream.done
    assert stream.feed(Event(data=b"[DONE]")) == []
    assert (before, stream.done) == (False, True)
    assert stream.finish() == [DONE_FRAME]


def test_deepseek_usage_moves_to_its_own_chunk_when_asked() -> None:
    stream = OpenAIStream("deepseek", include_usage=True)
    out = run(
        stream,
        [
            chunk({"role": "assistant", "content": ""}, usage=None),
            chunk({"content": "hello"}, usage=None),
            chunk({}, "stop", usage=USAGE),
        ],
    )
    assert stream.usage == USAGE
    *body, usage_chunk, done = out
    assert done == "[DONE]"
    assert [c["choices"][0]["finish_reason"] for c in body] == [None, None, "stop"]
    assert all(c["usage"] is None for c in body), "usage no longer rides on the finish chunk"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == USAGE
    assert usage_chunk["id"] == HEAD["id"]
    assert usage_chunk["model"] == HEAD["model"]
    assert usage_chunk["created"] == HEAD["created"]
    assert usage_chunk["object"] == "chat.completion.chunk"


def test_deepseek_usage_dropped_when_not_asked() -> None:
    stream = OpenAIStream("deepseek", include_usage=False)
    out = run(stream, [chunk({"content": "hello"}), chunk({}, "stop", usage=USAGE)])
    assert stream.usage == USAGE, "the gateway still learns the usage for accounting"
    assert out[-1] == "[DONE]"
    assert all(c["choices"] for c in out[:-1])
    assert not any(c.get("usage") for c in out[:-1])
    assert out[-2]["choices"][0]["finish_reason"] == "stop"


def test_separate_usage_chunk_reemitted_at_the_end_when_asked() -> None:
    stream = OpenAIStream("openai", include_usage=True)
    out = run(
        stream,
        [
            chunk({"content": "a"}, usage=None),
            chunk({}, "stop", usage=None),
            {**HEAD, "choices": [], "usage": USAGE},
        ],
    )
    assert out[-2] == {
        "id": HEAD["id"],
        "object": "chat.completion.chunk",
        "created": HEAD["created"],
        "model": HEAD["model"],
        "system_fingerprint": None,
        "choices": [],
        "usage": USAGE,
    }
    assert out[-1] == "[DONE]"
    assert len(out) == 4


def test_separate_usage_chunk_dropped_when_not_asked() -> None:
    stream = OpenAIStream("openrouter", include_usage=False)
    out = run(stream, [chunk({"content": "a"}), chunk({}, "stop"), {**HEAD, "choices": [], "usage": USAGE}])
    assert stream.usage == USAGE
    assert len(out) == 3
    assert out[-1] == "[DONE]"
    assert all(c["choices"] for c in out[:-1])


def test_no_usage_chunk_when_provider_sent_none() -> None:
    stream = OpenAIStream("openai", include_usage=True)
    out = run(stream, [chunk({"content": "a"}), chunk({}, "stop")])
    assert stream.usage is None
    assert out[-1] == "[DONE]"
    assert all(c["choices"] for c in out[:-1])


def test_openrouter_error_chunk_raises() -> None:
    stream = OpenAIStream("openrouter", include_usage=False)
    assert stream.feed(ev(chunk({"content": "partial"})))
    error_chunk = {
        **HEAD,
        "provider": "Emulated",
        "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    with pytest.raises(SluiceError) as info:
        stream.feed(ev(error_chunk))
    assert isinstance(info.value, UpstreamError)
    assert "openrouter" in info.value.message
    assert not stream.done


def test_openai_style_error_chunk_raises() -> None:
    stream = OpenAIStream("openai", include_usage=False)
    payload = {"error": {"message": "boom", "type": "server_error", "param": None, "code": "server_error"}}
    with pytest.raises(UpstreamError):
        stream.feed(ev(payload))


def test_rate_limit_error_chunk_raises_rate_limited() -> None:
    stream = OpenAIStream("openrouter", include_usage=False)
    with pytest.raises(UpstreamRateLimited):
        stream.feed(ev({"error": {"code": "rate_limit_exceeded", "message": "slow down"}}))


@pytest.mark.parametrize("data", [b'{"id": "broken', b"not json", b"[1, 2]", b'"text"', b"42"])
def test_malformed_data_raises_upstream_error(data: bytes) -> None:
    stream = OpenAIStream("openai", include_usage=False)
    with pytest.raises(UpstreamError, match="malformed"):
        stream.feed(Event(data=data))


def test_missing_finish_reason_is_filled_with_null() -> None:
    stream = OpenAIStream("gemini", include_usage=False)
    payload = {**HEAD, "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    (frame,) = stream.feed(ev(payload))
    out = parse([frame])[0]
    assert "finish_reason" in out["choices"][0]
    assert out["choices"][0]["finish_reason"] is None
    assert out["choices"][0]["delta"] == {"content": "hi"}


def test_missing_finish_reason_filled_on_deepseek_usage_chunk() -> None:
    stream = OpenAIStream("deepseek", include_usage=True)
    payload = {**HEAD, "choices": [{"index": 0, "delta": {}}], "usage": USAGE}
    out = parse(stream.feed(ev(payload)))[0]
    assert out["choices"][0]["finish_reason"] is None
    assert out["usage"] is None


def test_finish_uses_the_first_chunk_head() -> None:
    stream = OpenAIStream("openai", include_usage=True)
    stream.feed(ev({**chunk({"content": "a"}), "system_fingerprint": "fp_1"}))
    stream.feed(ev({**HEAD, "id": "other", "choices": [], "usage": USAGE}))
    usage_chunk = parse(stream.finish())[0]
    assert usage_chunk["id"] == HEAD["id"]
    assert usage_chunk["system_fingerprint"] == "fp_1"


def test_oversized_event_is_refused() -> None:
    decoder = SSEDecoder(limit=1024)
    decoder.feed(b"data: " + b"x" * 1000)
    with pytest.raises(ValueError, match="larger than 1024"):
        decoder.feed(b"x" * 100)


def test_many_small_reads_of_one_big_event() -> None:
    decoder = SSEDecoder()
    payload = b"data: " + b"y" * 200_000 + b"\n\n"
    events = [e for i in range(0, len(payload), 997) for e in decoder.feed(payload[i : i + 997])]
    assert len(events) == 1
    assert events[0].data == b"y" * 200_000
