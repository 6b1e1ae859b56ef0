"""The model list, one model, and the probes."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import CHAT_ALIASES, EMBEDDING_ALIASES, ServerThread
from tests.test_errors import assert_envelope, request


def test_list_models(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert ids == sorted(ids, key=ids.index)  # stable config order
    assert set(ids) == set(CHAT_ALIASES) | set(EMBEDDING_ALIASES)
    assert all(m.object == "model" and isinstance(m.created, int) and m.owned_by for m in models)


def test_retrieve_model(client: openai.OpenAI) -> None:
    model = client.models.retrieve("claude-chat")
    assert model.id == "claude-chat"
    assert model.owned_by == "anthropic"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("nope")
    assert exc.value.code == "model_not_found"


def test_models_need_a_key(gateway: ServerThread) -> None:
    status, _h, body = request(gateway, "GET", "/v1/models", headers={})
    assert status == 401
    assert_envelope(body, "invalid_api_key")


def test_probes_need_no_key(gateway: ServerThread) -> None:
    assert request(gateway, "GET", "/healthz", headers={})[:3:2] == (200, {"status": "ok"})
    status, _h, body = request(gateway, "GET", "/readyz", headers={})
    assert status == 200
    assert body == {"status": "ready", "checks": {"store": True, "models": True}}
