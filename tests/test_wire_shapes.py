"""Raw responses carry every field OpenAI's published OpenAPI spec marks required (nullable ones as null).

The required lists below are read from the spec's components (openai/openai-openapi, openapi.json):
CreateChatCompletionResponse, its choice and ChatCompletionResponseMessage; CreateChatCompletionStreamResponse
and its choice; ChatCompletionMessageToolCall and ...ToolCallChunk; CompletionUsage; CreateEmbeddingResponse
and Embedding; ListModelsResponse and Model; ErrorResponse and Error. The SDK tolerates missing keys, so
this checks the bytes, not the parsed objects.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, CHAT_ALIASES, EMBEDDING_ALIASES, ServerThread

COMPLETION = {"choices", "created", "id", "model", "object"}
COMPLETION_CHOICE = {"finish_reason", "index", "message", "logprobs"}
MESSAGE = {"role", "content", "refusal"}
CHUNK = {"choices", "created", "id", "model", "object"}
CHUNK_CHOICE = {"delta", "finish_reason", "index"}
TOOL_CALL = {"id", "type", "function"}
USAGE = {"prompt_tokens", "completion_tokens", "total_tokens"}
EMBEDDINGS = {"object", "model", "data", "usage"}
EMBEDDING = {"index", "object", "embedding"}
MODEL = {"id", "object", "created", "owned_by"}
ERROR = {"type", "message", "param", "code"}
TOOL: Any = {
    "type": "function",
    "function": {
        "name": "f",
        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    },
}


def post(gw: ServerThread, path: str, body: Any) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def has(obj: Any, keys: set[str], what: str) -> None:
    assert isinstance(obj, dict), what
    missing = keys - set(obj)
    assert not missing, f"{what} lacks required {sorted(missing)}"


@pytest.mark.parametrize("alias", CHAT_ALIASES)
@pytest.mark.parametrize("tools", [False, True])
def test_completion_shape(gateway: ServerThread, alias: str, tools: bool) -> None:
    body: dict[str, Any] = {"model": alias, "messages": [{"role": "user", "content": "hi"}]}
    if tools:
        body |= {"tools": [TOOL], "tool_choice": "required"}
    status, raw = post(gateway, "/v1/chat/completions", body)
    assert status == 200
    out = json.loads(raw)
    has(out, COMPLETION, "chat.completion")
    assert out["object"] == "chat.completion"
    has(out["usage"], USAGE, "usage")
    for choice in out["choices"]:
        has(choice, COMPLETION_CHOICE, "choice")
        has(choice["message"], MESSAGE, "message")
        for call in choice["message"].get("tool_calls") or []:
            has(call, TOOL_CALL, "tool call")
    if tools:
        assert out["choices"][0]["message"]["tool_calls"]


@pytest.mark.parametrize("alias", CHAT_ALIASES)
@pytest.mark.parametrize("tools", [False, True])
def test_chunk_shape(gateway: ServerThread, alias: str, tools: bool) -> None:
    body: dict[str, Any] = {
        "model": alias,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    if tools:
        body |= {"tools": [TOOL], "tool_choice": "required"}
    status, raw = post(gateway, "/v1/chat/completions", body)
    assert status == 200
    frames = [f for f in raw.decode().split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    assert all(f.startswith("data: ") and "\n" not in f for f in frames), "one data line per event"
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    for chunk in chunks:
        has(chunk, CHUNK, "chunk")
        assert chunk["object"] == "chat.completion.chunk"
        for choice in chunk["choices"]:
            has(choice, CHUNK_CHOICE, "chunk choice")
            for call in choice["delta"].get("tool_calls") or []:
                assert "index" in call
    assert chunks[-1]["choices"] == []
    has(chunks[-1]["usage"], USAGE, "usage")


@pytest.mark.parametrize("alias", EMBEDDING_ALIASES)
def test_embeddings_shape(gateway: ServerThread, alias: str) -> None:
    status, raw = post(gateway, "/v1/embeddings", {"model": alias, "input": ["a", "b"]})
    assert status == 200
    out = json.loads(raw)
    has(out, EMBEDDINGS, "embeddings")
    has(out["usage"], {"prompt_tokens", "total_tokens"}, "embedding usage")
    for item in out["data"]:
        has(item, EMBEDDING, "embedding")


def test_models_and_error_shapes(gateway: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    conn.request("GET", "/v1/models", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    out = json.loads(conn.getresponse().read())
    conn.close()
    has(out, {"object", "data"}, "model list")
    for model in out["data"]:
        has(model, MODEL, "model")
    status, raw = post(gateway, "/v1/chat/completions", {"model": "nope", "messages": []})
    assert status == 400
    err = json.loads(raw)
    has(err, {"error"}, "error response")
    has(err["error"], ERROR, "error")
