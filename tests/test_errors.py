"""Bad input: every client mistake gets OpenAI's envelope with the right status and code; never a 500."""

from __future__ import annotations

import http.client
import json
from typing import Any

import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice import errors
from sluice.api.errors import envelope, error_body
from tests.conftest import ADMIN_KEY, ServerThread

AUTH = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}


def request(
    gw: ServerThread, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One raw HTTP request; returns status, lower-cased headers and parsed JSON (or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers if headers is not None else AUTH)
        resp = conn.getresponse()
        raw = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        return resp.status, hdrs, json.loads(raw)
    except ValueError:
        return resp.status, hdrs, raw.decode(errors="replace")


def assert_envelope(body: Any, code: str | None, param: str | None = None) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str)
    assert err["code"] == code
    if param is not None:
        assert err["param"] == param


def chat(
    gw: ServerThread, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(gw, "POST", "/v1/chat/completions", raw, headers)


GOOD: dict[str, Any] = {"model": "oa-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_request", None),
        (b"", 400, "invalid_request", None),
        (b"[1, 2]", 400, "invalid_request", None),
        (b'"a string"', 400, "invalid_request", None),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_required_parameter", "model"),
        ({"model": "oa-chat"}, 400, "missing_required_parameter", "messages"),
        ({"model": 5, "messages": []}, 400, "invalid_type", "model"),
        ({**GOOD, "messages": "hi"}, 400, "invalid_type", "messages"),
        ({**GOOD, "messages": []}, 400, "invalid_value", "messages"),
        (
            {**GOOD, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "invalid_value",
            "messages[0].role",
        ),
        ({**GOOD, "messages": [{"role": "user", "content": 5}]}, 400, "invalid_type", "messages[0].content"),
        (
            {**GOOD, "messages": [{"role": "tool", "content": "x"}]},
            400,
            "invalid_type",
            "messages[0].tool_call_id",
        ),
        ({**GOOD, "stream": "yes"}, 400, "invalid_type", "stream"),
        ({**GOOD, "max_tokens": "10"}, 400, "invalid_type", "max_tokens"),
        ({**GOOD, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
        ({**GOOD, "max_completion_tokens": True}, 400, "invalid_type", "max_completion_tokens"),
        ({**GOOD, "temperature": 3}, 400, "invalid_value", "temperature"),
        ({**GOOD, "temperature": "hot"}, 400, "invalid_type", "temperature"),
        ({**GOOD, "n": 0}, 400, "invalid_value", "n"),
        ({**GOOD, "tools": {}}, 400, "invalid_type", "tools"),
        ({**GOOD, "tools": [{"type": "function"}]}, 400, "invalid_type", "tools[0].function"),
        ({**GOOD, "tool_choice": "always"}, 400, "invalid_value", "tool_choice"),
        ({**GOOD, "response_format": {"type": "xml"}}, 400, "invalid_value", "response_format.type"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
        ({**GOOD, "stream_options": {"include_usage": True}}, 400, "invalid_value", "stream_options"),
        (
            {**GOOD, "stream": True, "stream_options": {"include_usage": 1}},
            400,
            "invalid_type",
            "stream_options.include_usage",
        ),
        ({**GOOD, "metadata": {"a": 1}}, 400, "invalid_type", "metadata"),
        ({**GOOD, "api_base": "http://evil.example"}, 400, "forbidden_parameter", "api_base"),
        ({**GOOD, "base_url": "http://evil.example"}, 400, "forbidden_parameter", "base_url"),
        ({**GOOD, "api_key": "sk-other"}, 400, "forbidden_parameter", "api_key"),
        ({**GOOD, "models": [1]}, 400, "invalid_type", "models"),
        ({**GOOD, "route": "fallback"}, 400, "forbidden_parameter", "route"),
        ({**GOOD, "messages": None}, 400, "missing_required_parameter", "messages"),
        ({**GOOD, "response_format": {"type": []}}, 400, "invalid_value", "response_format.type"),
        ({**GOOD, "model": "claude-chat", "reasoning_effort": []}, 400, "invalid_type", "reasoning_effort"),
        (
            {**GOOD, "model": "claude-chat", "tool_choice": {"function": "x"}},
            400,
            "invalid_type",
            "tool_choice.function.name",
        ),
        ({**GOOD, "tool_choice": {"type": []}}, 400, "invalid_value", "tool_choice.type"),
        (
            {**GOOD, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            400,
            "invalid_type",
            "messages[0].content[0].type",
        ),
        (
            {
                **GOOD,
                "model": "claude-chat",
                "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}],
            },
            400,
            "invalid_type",
            "messages[0].content[0].text",
        ),
        ({**GOOD, "model": "no-such-model"}, 404, "model_not_found", "model"),
        ({**GOOD, "model": "oa-embed"}, 400, "invalid_model", "model"),
    ],
)
def test_bad_chat_bodies(gateway: ServerThread, body: Any, status: int, code: str, param: str | None) -> None:
    got, headers, payload = chat(gateway, body)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert_envelope(payload, code, param)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"input": "x"}, "missing_required_parameter", "model"),
        ({"model": "oa-embed"}, "missing_required_parameter", "input"),
        ({"model": "oa-embed", "input": ""}, "invalid_value", "input"),
        ({"model": "oa-embed", "input": []}, "invalid_type", "input"),
        ({"model": "oa-embed", "input": [1, "a"]}, "invalid_type", "input"),
        ({"model": "oa-embed", "input": "x", "encoding_format": "hex"}, "invalid_value", "encoding_format"),
        ({"model": "oa-embed", "input": "x", "dimensions": -1}, "invalid_value", "dimensions"),
        ({"model": "oa-chat", "input": "x"}, "invalid_model", "model"),
    ],
)
def test_bad_embedding_bodies(gateway: ServerThread, body: Any, code: str, param: str) -> None:
    status, _h, payload = request(gateway, "POST", "/v1/embeddings", orjson.dumps(body))
    assert status == 400
    assert_envelope(payload, code, param)


def test_body_over_limit_is_413(gateway: ServerThread) -> None:
    big = orjson.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * (17 * 1024 * 1024)}]})
    status, _h, payload = chat(gateway, big)
    assert status == 413
    assert_envelope(payload, "request_too_large")


def test_chunked_body_over_limit_is_413(gateway: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    chunk = b"x" * (1024 * 1024)
    conn.request("POST", "/v1/chat/completions", body=iter([chunk] * 20), headers=AUTH, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413
    assert_envelope(json.loads(resp.read()), "request_too_large")
    conn.close()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer"},
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer sk-sluice-" + "A" * 43},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": f"Bearer {ADMIN_KEY}x"},
        {"x-api-key": "nope"},
    ],
)
def test_bad_keys_get_one_identical_401(gateway: ServerThread, headers: dict[str, str]) -> None:
    status, _h, payload = chat(gateway, GOOD, {**headers, "content-type": "application/json"})
    assert status == 401
    assert_envelope(payload, "invalid_api_key")
    _s, _h2, reference = chat(gateway, GOOD, {"content-type": "application/json"})
    assert payload == reference


def test_unknown_path_and_wrong_method(gateway: ServerThread) -> None:
    status, _h, payload = request(gateway, "GET", "/v1/nope")
    assert status == 404
    assert_envelope(payload, "not_found")
    status, headers, payload = request(gateway, "GET", "/v1/chat/completions")
    assert status == 405
    assert headers["allow"] == "POST"
    assert_envelope(payload, "method_not_allowed")
    status, _h, payload = request(gateway, "DELETE", "/v1/models")
    assert status == 405
    assert_envelope(payload, "method_not_allowed")


@pytest.mark.parametrize("name", ["x-api-base", "X-Base-URL", "openai_api_base", "x-upstream-url"])
def test_header_that_picks_the_upstream_is_refused(gateway: ServerThread, name: str) -> None:
    status, _h, payload = chat(gateway, GOOD, {**AUTH, name: "http://evil.example"})
    assert status == 400
    assert_envelope(payload, "forbidden_parameter")
    assert name.lower() in payload["error"]["message"]


def test_header_that_only_mentions_base_or_upstream_is_accepted(gateway: ServerThread) -> None:
    status, _h, _payload = chat(gateway, GOOD, {**AUTH, "x-database": "a", "x-upstream-hint": "b"})
    assert status == 200


def test_sdk_sees_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "model_not_found"
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    bad.close()


def _all_error_classes() -> list[type[errors.SluiceError]]:
    seen: list[type[errors.SluiceError]] = []
    stack: list[type[errors.SluiceError]] = [errors.SluiceError]
    while stack:
        cls = stack.pop()
        if cls is not errors.ConfigError:  # a startup error: it never reaches HTTP
            seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_envelope_shape_is_pinned_for_every_error_class(cls: type[errors.SluiceError]) -> None:
    err = cls("something went wrong", param="p")
    body = orjson.loads(error_body(err))
    assert body == {
        "error": {"message": "something went wrong", "type": cls.type, "param": "p", "code": cls.code}
    }
    assert envelope(err) == body
    assert 400 <= cls.status <= 599
    if issubclass(cls, errors.ClientError):
        assert cls.status < 500, "a client mistake is never a 5xx"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
chat_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["oa-chat", "claude-chat", "claude-chat", "ds-chat", "nope"]) | json_values,
        "reasoning_effort": json_values,
        "user": json_values,
        "parallel_tool_calls": json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | json_values},
                optional={
                    "content": json_values
                    | st.lists(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "type": st.sampled_from(["text", "image_url"]) | json_values,
                                "text": json_values,
                                "image_url": json_values,
                            },
                        ),
                        max_size=2,
                    ),
                    "tool_calls": json_values
                    | st.lists(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "id": json_values,
                                "function": st.fixed_dictionaries(
                                    {},
                                    optional={"name": json_values, "arguments": json_values | st.just("[1]")},
                                ),
                            },
                        ),
                        max_size=2,
                    ),
                    "tool_call_id": json_values,
                },
            ),
            max_size=3,
        )
        | json_values,
        "stream": json_values,
        "stream_options": json_values,
        "max_tokens": json_values,
        "n": st.integers(-2, 3) | json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "response_format": json_values,
        "temperature": json_values,
        "stop": json_values,
    },
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=chat_like | json_values)
def test_random_bodies_never_get_a_500(gateway: ServerThread, body: Any) -> None:
    status, _h, payload = chat(gateway, body)
    assert status < 500 or status in (502, 504), payload
    if status != 200:
        assert_envelope(payload, payload["error"]["code"])
