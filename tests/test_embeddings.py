"""Embeddings through Sluice: float and base64 (the SDK's default), for every provider that has them."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.conftest import ADMIN_KEY, EMBEDDING_ALIASES, ServerThread


@pytest.mark.parametrize("alias", EMBEDDING_ALIASES)
def test_default_base64_and_float_agree(client: openai.OpenAI, alias: str) -> None:
    as_b64 = client.embeddings.create(model=alias, input=["hello", "world"])  # SDK sends base64
    as_float = client.embeddings.create(model=alias, input=["hello", "world"], encoding_format="float")
    assert [d.index for d in as_b64.data] == [0, 1]
    assert len(as_b64.data[0].embedding) == 1536
    for a, b in zip(as_b64.data, as_float.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert as_b64.usage.prompt_tokens > 0
    assert as_b64.usage.total_tokens == as_b64.usage.prompt_tokens


@pytest.mark.parametrize("alias", EMBEDDING_ALIASES)
def test_dimensions_and_token_input(client: openai.OpenAI, alias: str) -> None:
    reply = client.embeddings.create(
        model=alias, input=[[1, 2, 3], [4, 5]], dimensions=8, encoding_format="float"
    )
    assert [len(d.embedding) for d in reply.data] == [8, 8]


def test_async_embeddings(gateway: ServerThread) -> None:
    async def go() -> None:
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=ADMIN_KEY, max_retries=0) as c:
            replies = await asyncio.gather(
                *[c.embeddings.create(model="oa-embed", input=f"t{i}") for i in range(10)]
            )
            assert all(len(r.data[0].embedding) == 1536 for r in replies)

    asyncio.run(go())
