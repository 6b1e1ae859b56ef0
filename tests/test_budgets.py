"""Budgets that hold, through a running Sluice: keys made by the admin API, real SDK clients, the emulator.

The race tests fire 2,000 requests at once against small caps and check the promise itself: settled
spend never passes a cap, each request is served and in the ledger or refused with the right code, and
at quiescence nothing stays reserved and every counter equals the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from tests.conftest import ADMIN_KEY, ServerThread, admin_call, config_yaml, provider_env

# $50 per million tokens in and out: a short request costs about a tenth of a cent.
MODELS = """\
  - name: pricey
    deployments: [{provider: openai, model: gpt-4o-mini, price: {input: 50, output: 50}}]
  - name: pricey-embed
    mode: embedding
    deployments: [{provider: openai, model: text-embedding-3-small, price: {input: 50, output: 0}}]
"""
BUDGETS = """\
budgets:
  teams:
    growth: {usd: {total: "0.50"}}
  features:
    slow-lane: {requests_per_minute: 3}
"""


class Gateway:
    """A running Sluice with helpers for the admin API and the ledger file."""

    def __init__(self, server: ServerThread, data_dir: Path) -> None:
        self.server = server
        self.data_dir = data_dir

    @property
    def root(self) -> str:
        return self.server.base_url.removesuffix("/v1")

    def admin(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        status, answer, _text = admin_call(self.root, method, path, body)
        return status, answer

    def new_key(self, **settings: Any) -> tuple[str, str]:
        status, body = self.admin("POST", "/admin/keys", {"name": "k", **settings})
        assert status == 201, body
        return body["key"], body["id"]

    def counters(self, scope: str) -> list[dict[str, Any]]:
        status, body = self.admin("GET", f"/admin/limits?scope={scope}")
        assert status == 200
        return list(body["data"])

    def rows(self, where: str = "1", args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        self.admin("GET", "/admin/spend")  # flushes the ledger writer
        with sqlite3.connect(self.data_dir / "sluice.db") as db:
            db.row_factory = sqlite3.Row
            return db.execute(f"SELECT * FROM ledger WHERE {where}", args).fetchall()  # noqa: S608


# A provider account with a small allowance (say, a free tier's daily requests).
ALLOWANCE = """\
  - name: free-tier
    preset: openai
    base_url: {url}
    api_key: env:EMU_OPENAI_KEY
    limits: {{requests: {{day: 3}}}}
"""
ALLOWANCE_MODEL = """\
  - name: free-model
    deployments: [{provider: free-tier, model: gpt-4o-mini, price: 0}]
"""


def _config_text(emu: Emulator, data_dir: Path) -> str:
    text = config_yaml(emu, data_dir).replace("models:\n", "models:\n" + MODELS + ALLOWANCE_MODEL, 1)
    text = text.replace("providers:\n", "providers:\n" + ALLOWANCE.format(url=emu.base_url("openai")), 1)
    return text + BUDGETS


@pytest.fixture(scope="module")
def gw(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("budgets")
    config = parse_config(_config_text(emulator, data_dir), environ=provider_env()).config
    with ServerThread(create_app(config, provider_env())) as server:
        yield Gateway(server, data_dir)


def _client(gw: Gateway, key: str, connections: int = 400) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpx2Client(limits=httpx2.Limits(max_connections=connections), timeout=60)
    return openai.AsyncOpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0, http_client=http)


async def _one(client: openai.AsyncOpenAI, i: int, user: str | None = None) -> str:
    """One request, stream or not: 'ok', or the refusal's code."""
    kwargs: dict[str, Any] = {
        "model": "pricey",
        "messages": [{"role": "user", "content": f"question number {i}"}],
        "max_tokens": 12,
    }
    if user is not None:
        kwargs["user"] = user
    try:
        if i % 2:
            stream = await client.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True}
            )
            async with stream:
                async for _chunk in stream:
                    pass
        else:
            await client.chat.completions.create(**kwargs)
    except openai.RateLimitError as err:
        body = err.body if isinstance(err.body, dict) else {}
        retry = err.response.headers.get("x-should-retry")
        return str(body.get("code")) + ("" if retry == "false" else " (retry advised!)")
    return "ok"


def _race(gw: Gateway, key: str, n: int, users: list[str] | None = None) -> Counter[str]:
    async def main() -> list[str]:
        async with _client(gw, key) as client:
            return await asyncio.gather(
                *(_one(client, i, users[i % len(users)] if users else None) for i in range(n))
            )

    return Counter(asyncio.run(main()))


def _usd_counter(counters: list[dict[str, Any]], scope: str, window: str = "all") -> dict[str, Any]:
    return next(c for c in counters if c["scope"] == scope and c["metric"] == "usd" and c["window"] == window)


def test_race_on_one_key_never_passes_its_cap(gw: Gateway) -> None:
    key, key_id = gw.new_key(limits={"usd": {"total": "1.00"}})
    outcome = _race(gw, key, 2000)
    assert set(outcome) <= {"ok", "budget_exceeded"}, outcome
    assert outcome["ok"] > 100
    assert outcome["budget_exceeded"] > 100  # the cap was actually reached
    rows = gw.rows("key_id = ?", (key_id,))
    ok = [r for r in rows if r["status"] == "ok"]
    refused = [r for r in rows if r["status"] == "refused"]
    assert len(ok) == outcome["ok"]
    assert len(refused) == outcome["budget_exceeded"]
    assert all(r["error_code"] == "budget_exceeded" and r["cost_nanos"] == 0 for r in refused)
    assert all(r["reserved_nanos"] == 0 for r in refused)  # nothing was reserved for them
    spent = sum(r["cost_nanos"] for r in rows)
    assert 0 < spent <= 1_000_000_000
    assert all(r["cost_nanos"] <= r["reserved_nanos"] for r in ok)  # the reservation was a bound
    counter = _usd_counter(gw.counters(f"key:{key_id}"), f"key:{key_id}")
    assert counter["reserved"] == 0
    assert counter["spent"] == spent


def test_per_user_quotas_on_one_key(gw: Gateway) -> None:
    key, key_id = gw.new_key(user_limits={"usd": {"day": "0.02"}})
    users = [f"user-{i}" for i in range(40)]
    outcome = _race(gw, key, 2000, users)
    assert set(outcome) <= {"ok", "user_quota_exceeded"}, outcome
    assert outcome["user_quota_exceeded"] > 0
    rows = [r for r in gw.rows("key_id = ?", (key_id,)) if r["status"] != "refused"]
    per_user = Counter[str]()
    for r in rows:
        per_user[r["user_id"]] += r["cost_nanos"]
    assert set(per_user) == set(users)
    assert max(per_user.values()) <= 20_000_000
    counters = gw.counters(f"user:{key_id}:")
    for user in users:
        day = next(c for c in counters if c["scope"] == f"user:{key_id}:{user}" and c["metric"] == "usd")
        assert day["reserved"] == 0
        assert day["spent"] == per_user[user]


def test_team_cap_spans_its_keys(gw: Gateway) -> None:
    keys = [gw.new_key(team="growth") for _ in range(3)]

    async def main() -> list[str]:
        clients = [_client(gw, k, 150) for k, _ in keys]
        try:
            return await asyncio.gather(*(_one(clients[i % 3], i) for i in range(2000)))
        finally:
            for c in clients:
                await c.close()

    outcome = Counter(asyncio.run(main()))
    assert set(outcome) == {"ok", "budget_exceeded"}, outcome
    rows = gw.rows("team = 'growth'")
    spent = sum(r["cost_nanos"] for r in rows)
    assert spent <= 500_000_000
    assert {r["key_id"] for r in rows if r["status"] == "ok"} == {k for _, k in keys}
    counter = _usd_counter(gw.counters("team:growth"), "team:growth")
    assert (counter["spent"], counter["reserved"]) == (spent, 0)


def test_refusal_names_the_limit_and_reaches_no_provider(gw: Gateway) -> None:
    key, key_id = gw.new_key(limits={"usd": {"day": "0.000001"}})
    with (
        openai.OpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(model="pricey", messages=[{"role": "user", "content": "hi"}])
    err = caught.value
    body = err.body if isinstance(err.body, dict) else {}
    assert body["code"] == "budget_exceeded"
    assert body["type"] == "insufficient_quota"
    assert "$0.000001 per day" in body["message"]
    assert "resets at" in body["message"]
    headers = err.response.headers
    assert headers["x-should-retry"] == "false"
    assert headers["x-sluice-limit-scope"] == f"key:{key_id}"
    assert headers["x-sluice-limit"] == "usd/day"
    assert headers["x-sluice-limit-reset"].endswith("T00:00:00Z")
    assert "retry-after" not in headers
    (row,) = gw.rows("key_id = ?", (key_id,))
    assert (row["status"], row["http_status"], row["cost_nanos"], row["provider"]) == (
        "refused",
        429,
        0,
        "openai",
    )
    assert row["attempts"] is not None


def test_success_carries_rate_limit_and_budget_headers(gw: Gateway) -> None:
    key, _ = gw.new_key(
        limits={"usd": {"month": "5"}, "requests_per_minute": 100, "tokens_per_minute": 100_000}
    )
    with openai.OpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="pricey", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "100"
    assert h["x-ratelimit-remaining-requests"] == "99"
    assert h["x-ratelimit-reset-requests"].endswith("s")
    assert h["x-ratelimit-limit-tokens"] == "100000"
    assert int(h["x-ratelimit-remaining-tokens"]) < 100_000
    cost = float(h["x-sluice-cost-usd"])
    assert abs(float(h["x-sluice-budget-remaining-usd"]) - (5 - cost)) < 1e-9
    scope, limit, reset = h["x-sluice-budget-scope"].split(" ")
    assert (scope.startswith("key:"), limit) == (True, "usd/month")
    assert reset.endswith("-01T00:00:00Z")


def test_rate_limit_gives_retry_after(gw: Gateway) -> None:
    key, _ = gw.new_key(limits={"requests_per_minute": 2})
    with openai.OpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0) as client:
        for _ in range(2):
            client.chat.completions.create(model="pricey", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="pricey", messages=[{"role": "user", "content": "x"}])
    err = caught.value
    assert isinstance(err.body, dict) and err.body["code"] == "rate_limit_exceeded"
    assert 1 <= int(err.response.headers["retry-after"]) <= 60
    assert "x-should-retry" not in err.response.headers


def test_feature_rate_limit_applies_across_keys(gw: Gateway) -> None:
    codes = []
    for _ in range(4):
        key, _ = gw.new_key()
        with openai.OpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0) as client:
            try:
                client.chat.completions.create(
                    model="pricey",
                    messages=[{"role": "user", "content": "x"}],
                    extra_headers={"x-sluice-feature": "slow-lane"},
                )
                codes.append("ok")
            except openai.RateLimitError as err:
                codes.append(str(err.body["code"]) if isinstance(err.body, dict) else "?")
    assert codes.count("ok") <= 3
    assert "rate_limit_exceeded" in codes


def test_concurrency_limit(gw: Gateway, emulator: Emulator) -> None:
    key, _ = gw.new_key(limits={"concurrent": 2})

    async def slow(client: openai.AsyncOpenAI) -> str:
        try:
            await client.chat.completions.create(
                model="pricey", messages=[{"role": "user", "content": "hi @emulator(latency_ms=400)"}]
            )
        except openai.RateLimitError as err:
            code = str(err.body["code"]) if isinstance(err.body, dict) else "?"
            return f"{code} retry-after={err.response.headers.get('retry-after')}"
        return "ok"

    async def main() -> list[str]:
        async with _client(gw, key) as client:
            return await asyncio.gather(*(slow(client) for _ in range(6)))

    outcome = Counter(asyncio.run(main()))
    assert outcome == Counter({"ok": 2, "concurrency_limit_exceeded retry-after=1": 4})


def test_embeddings_reserve_input_only(gw: Gateway) -> None:
    key, key_id = gw.new_key(limits={"usd": {"total": "0.01"}})
    with openai.OpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0) as client:
        client.embeddings.create(model="pricey-embed", input="hello world")
    (row,) = gw.rows("key_id = ?", (key_id,))
    assert row["reserved_output_tokens"] == 0
    assert 0 < row["cost_nanos"] <= row["reserved_nanos"]


def test_default_output_cap_is_reserved(gw: Gateway) -> None:
    key, key_id = gw.new_key(limits={"usd": {"total": "100"}})
    with openai.OpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0) as client:
        client.chat.completions.create(model="pricey", messages=[{"role": "user", "content": "x"}], n=2)
    (row,) = gw.rows("key_id = ?", (key_id,))
    assert row["reserved_output_tokens"] == 2 * 4096  # the deployment's default cap, per choice


def test_random_mix_settles_every_reservation(gw: Gateway) -> None:
    """Cut streams, client disconnects and provider errors all give their reservation back."""
    key, key_id = gw.new_key(limits={"usd": {"total": "50"}, "concurrent": 500})
    rng = random.Random(7)
    faults = ["", "", "cut_after=2", "status=500", "status=429"]

    async def one(client: openai.AsyncOpenAI, i: int) -> None:
        fault = rng.choice(faults)
        content = f"hello {i}" + (f" @emulator({fault})" if fault else "")
        messages = [{"role": "user", "content": content}]
        with contextlib.suppress(openai.APIError):
            if i % 2:
                stream = await client.chat.completions.create(
                    model="pricey",
                    messages=[{"role": "user", "content": content}],
                    stream=True,
                    max_tokens=50,
                )
                async with stream:
                    async for _ in stream:
                        pass
            else:
                await client.chat.completions.create(model="pricey", messages=messages, max_tokens=50)

    async def impatient(client: openai.AsyncOpenAI, i: int) -> None:
        """A client that gives up on a slow answer (the server sees it leave)."""
        messages = [{"role": "user", "content": f"slow {i} @emulator(latency_ms=3000)"}]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):  # (streams that leave are covered by test_disconnect)
                await client.chat.completions.create(model="pricey", messages=messages)

    async def main() -> None:
        async with _client(gw, key) as client:
            await asyncio.gather(*(one(client, i) for i in range(260)))
        async with _client(gw, key) as client:  # a fresh pool: these reach the server before they give up
            await asyncio.gather(*(impatient(client, i) for i in range(10)))

    asyncio.run(main())
    deadline = 50
    while deadline:  # disconnected requests settle when the server notices
        counters = gw.counters(f"key:{key_id}")
        if all(c["reserved"] == 0 for c in counters):
            break
        deadline -= 1
        asyncio.run(asyncio.sleep(0.1))
    assert all(c["reserved"] == 0 for c in counters), counters
    rows = gw.rows("key_id = ?", (key_id,))
    assert _usd_counter(counters, f"key:{key_id}")["spent"] == sum(r["cost_nanos"] for r in rows)
    assert len(rows) == 270
    assert "pending" not in {r["status"] for r in rows}
    seen = Counter((r["status"], r["error_code"]) for r in rows)
    assert {"ok", "cut", "error", "disconnected"} <= {s for s, _ in seen}, seen


def test_refusals_are_counted_in_the_metrics(gw: Gateway) -> None:
    key, _ = gw.new_key(limits={"requests": {"total": 1}})
    with openai.OpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0) as client:
        client.chat.completions.create(model="pricey", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="pricey", messages=[{"role": "user", "content": "x"}])
    request = urllib.request.Request(  # noqa: S310 - our own server
        gw.root + "/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    line = next(x for x in text.splitlines() if x.startswith('sluice_refusals_total{code="budget_exceeded"}'))
    assert float(line.split()[-1]) >= 1


def test_a_provider_account_allowance_spans_every_key(gw: Gateway) -> None:
    outcomes = []
    for _ in range(5):
        key, _ = gw.new_key()
        with openai.OpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0) as client:
            try:
                client.chat.completions.create(
                    model="free-model", messages=[{"role": "user", "content": "x"}]
                )
                outcomes.append("ok")
            except openai.RateLimitError as err:
                code = str(err.body["code"]) if isinstance(err.body, dict) else "?"
                outcomes.append(f"{code} {err.response.headers['x-sluice-limit-scope']}")
    refused = "budget_exceeded provider:free-tier"
    assert outcomes == ["ok", "ok", "ok", refused, refused]
