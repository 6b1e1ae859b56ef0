"""Budgets across three Sluice instances sharing PostgreSQL (keys, ledger) and Redis (counters); the
first instance of the shared cluster runs two workers.

Every instance is a real ``sluice serve`` process; PostgreSQL and Redis are throwaway servers started
from the installed binaries; the providers are the emulator. The same promises as on one node: no cap
is passed, every request is served and in the ledger or refused with the right code, nothing stays
reserved, counters equal the ledger — and when Redis or PostgreSQL dies, capped requests fail closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import openai
import pytest
import redis

from sluice.emulator import Emulator
from tests.conftest import admin_call, config_yaml, free_port, provider_env
from tests.servers import PostgresServer, RedisServer, fresh_database
from tests.serving import start_sluice, stop, wait_ready

pytestmark = pytest.mark.slow

MODELS = """\
  - name: pricey
    deployments: [{provider: openai, model: gpt-4o-mini, price: {input: 50, output: 50}}]
"""
BUDGETS = """\
budgets:
  teams:
    growth: {usd: {total: "0.50"}}
"""


class Cluster:
    """Several ``sluice serve`` processes on one shared PostgreSQL and Redis."""

    def __init__(
        self, emu: Emulator, base: Path, dsn: str, redis_url: str, n: int = 3, first_workers: int = 1
    ) -> None:
        self.base = base
        self.first_workers = first_workers
        text = config_yaml(emu, base / "unused").replace(
            "server:\n",
            "server:\n  store: postgres\n  database_url: env:TEST_PG\n  counters: redis\n"
            "  redis_url: env:TEST_REDIS\n",
            1,
        )
        text = text.replace("key_cache_ttl_s: 0.2", "key_cache_ttl_s: 5")
        text = text.replace("models:\n", "models:\n" + MODELS, 1) + BUDGETS
        (base / "sluice.yaml").write_text(text)
        self.env = {
            **provider_env(),
            "TEST_PG": dsn,
            "TEST_REDIS": redis_url,
            "SLUICE_SECRET": "cluster-secret",
            "SLUICE_LOG_LEVEL": "warning",
        }
        self.dsn = dsn
        self.ports = [free_port() for _ in range(n)]
        self.procs = [self._start(i) for i in range(n)]
        for port, proc in zip(self.ports, self.procs, strict=True):
            wait_ready(port, proc, timeout=60)

    def _start(self, i: int) -> Any:
        args = ["serve", "--config", str(self.base / "sluice.yaml"), "--port", str(self.ports[i])]
        args += ["--data-dir", str(self.base / f"node{i}")]
        if i == 0 and self.first_workers > 1:
            args += ["--workers", str(self.first_workers)]
        return start_sluice(args, self.base, self.env, self.base / f"node{i}.log")

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i % len(self.ports)]}"

    def admin(self, method: str, path: str, body: object = None, node: int = 0) -> tuple[int, Any]:
        status, answer, _text = admin_call(self.url(node), method, path, body)
        return status, answer

    def new_key(self, node: int = 0, **settings: Any) -> tuple[str, str]:
        status, body = self.admin("POST", "/admin/keys", {"name": "k", **settings}, node)
        assert status == 201, body
        return body["key"], body["id"]

    def counters(self, scope: str, node: int = 0) -> list[dict[str, Any]]:
        status, body = self.admin("GET", f"/admin/limits?scope={scope}", node=node)
        assert status == 200, body
        return list(body["data"])

    def rows(self, where: str, *args: Any) -> list[dict[str, Any]]:
        for node in range(len(self.ports)):
            self.admin("GET", "/admin/spend", node=node)  # each instance flushes its ledger writer
        if self.first_workers > 1:
            time.sleep(0.3)  # the flush reached one worker; the others commit within their 50 ms window

        async def fetch() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return [dict(r) for r in await conn.fetch(f"SELECT * FROM ledger WHERE {where}", *args)]  # noqa: S608
            finally:
                await conn.close()

        return asyncio.run(fetch())


def _client(url: str, key: str) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpx2Client(limits=httpx2.Limits(max_connections=200), timeout=60)
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, http_client=http)


async def _one(client: openai.AsyncOpenAI, i: int, user: str | None = None, content: str = "") -> str:
    kwargs: dict[str, Any] = {
        "model": "pricey",
        "messages": [{"role": "user", "content": content or f"question number {i}"}],
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
    except openai.APIStatusError as err:
        body = err.body if isinstance(err.body, dict) else {}
        return str(body.get("code"))
    except openai.APIConnectionError:
        return "connection"
    return "ok"


def _race(cluster: Cluster, keys: list[str], n: int, users: list[str] | None = None) -> Counter[str]:
    async def main() -> list[str]:
        clients = [_client(cluster.url(i), keys[i % len(keys)]) for i in range(max(3, len(keys)))]
        try:
            return await asyncio.gather(
                *(
                    _one(clients[i % len(clients)], i, users[i % len(users)] if users else None)
                    for i in range(n)
                )
            )
        finally:
            for c in clients:
                await c.close()

    return Counter(asyncio.run(main()))


@pytest.fixture(scope="module")
def cluster(
    emulator: Emulator, postgres_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    redis.Redis.from_url(redis_url).flushall()
    dsn = fresh_database(postgres_dsn, "cluster")
    # the first instance runs two workers: shared counters make several workers of one instance safe too
    c = Cluster(emulator, tmp_path_factory.mktemp("cluster"), dsn, redis_url, first_workers=2)
    try:
        yield c
    finally:
        c.close()


def _usd(counters: list[dict[str, Any]], scope: str) -> dict[str, Any]:
    return next(c for c in counters if c["scope"] == scope and c["metric"] == "usd" and c["window"] == "all")


def test_three_instances_hold_one_key_cap(cluster: Cluster) -> None:
    key, key_id = cluster.new_key(limits={"usd": {"total": "1.00"}})
    outcome = _race(cluster, [key], 2000)
    assert set(outcome) == {"ok", "budget_exceeded"}, outcome
    rows = cluster.rows("key_id = $1", key_id)
    assert Counter(r["status"] for r in rows) == Counter(
        {"ok": outcome["ok"], "refused": outcome["budget_exceeded"]}
    )
    spent = sum(r["cost_nanos"] for r in rows)
    assert 0 < spent <= 1_000_000_000
    for node in range(3):  # every instance reads the same shared counter
        counter = _usd(cluster.counters(f"key:{key_id}", node), f"key:{key_id}")
        assert (counter["spent"], counter["reserved"]) == (spent, 0)


def test_three_instances_hold_per_user_quotas(cluster: Cluster) -> None:
    key, key_id = cluster.new_key(user_limits={"usd": {"day": "0.02"}})
    users = [f"u{i}" for i in range(40)]
    outcome = _race(cluster, [key], 2000, users)
    assert set(outcome) == {"ok", "user_quota_exceeded"}, outcome
    per_user = Counter[str]()
    for r in cluster.rows("key_id = $1 AND status <> 'refused'", key_id):
        per_user[r["user_id"]] += r["cost_nanos"]
    assert max(per_user.values()) <= 20_000_000
    for c in cluster.counters(f"user:{key_id}:"):
        if c["metric"] == "usd":
            assert c["reserved"] == 0
            assert c["spent"] == per_user[c["scope"].rsplit(":", 1)[1]]


def test_three_instances_hold_a_team_cap_across_keys(cluster: Cluster) -> None:
    keys = [cluster.new_key(node=i, team="growth")[0] for i in range(3)]
    outcome = _race(cluster, keys, 2000)
    assert set(outcome) == {"ok", "budget_exceeded"}, outcome
    spent = sum(r["cost_nanos"] for r in cluster.rows("team = 'growth'"))
    assert spent <= 500_000_000
    counter = _usd(cluster.counters("team:growth"), "team:growth")
    assert (counter["spent"], counter["reserved"]) == (spent, 0)


def test_revocation_reaches_every_instance_at_once(cluster: Cluster) -> None:
    key, key_id = cluster.new_key()
    for node in range(3):  # every instance caches the key
        with openai.OpenAI(base_url=cluster.url(node) + "/v1", api_key=key, max_retries=0) as c:
            assert c.models.list().data
    assert cluster.admin("POST", f"/admin/keys/{key_id}/revoke", node=0)[0] == 200
    started = time.monotonic()
    for node in (1, 2):
        with openai.OpenAI(base_url=cluster.url(node) + "/v1", api_key=key, max_retries=0) as c:
            while True:
                try:
                    c.models.list()
                except openai.AuthenticationError:
                    break
                assert time.monotonic() - started < 1.0, "revocation not seen within 1 s (cache TTL is 5 s)"
                time.sleep(0.02)


def test_limits_changed_on_one_instance_apply_on_all(cluster: Cluster) -> None:
    key, key_id = cluster.new_key()
    assert _race(cluster, [key], 30) == Counter({"ok": 30})
    spent = sum(r["cost_nanos"] for r in cluster.rows("key_id = $1", key_id))
    status, _ = cluster.admin(
        "PATCH", f"/admin/keys/{key_id}", {"limits": {"usd": {"total": "0.05"}}}, node=1
    )
    assert status == 200
    counter = _usd(cluster.counters(f"key:{key_id}", 2), f"key:{key_id}")
    assert (counter["spent"], counter["reserved"]) == (spent, 0)  # the history came with the new limit
    outcome = _race(cluster, [key], 300)
    assert outcome["budget_exceeded"] > 0
    assert sum(r["cost_nanos"] for r in cluster.rows("key_id = $1", key_id)) <= 50_000_000


# --- outages -----------------------------------------------------------------------------------------


def _status(url: str, key: str, i: int) -> str:
    return asyncio.run(_one_shot(url, key, i))


async def _one_shot(url: str, key: str, i: int) -> str:
    async with _client(url, key) as client:
        return await _one(client, i)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_redis_down_fails_closed_then_rebuilds(
    emulator: Emulator, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("redis-outage")
    server = RedisServer(base / "redis")
    server.start()
    cluster = Cluster(emulator, base, fresh_database(postgres_dsn, "redis_outage"), server.url, n=2)
    try:
        capped, capped_id = cluster.new_key(limits={"usd": {"total": "0.30"}})
        free, _ = cluster.new_key()
        assert _race(cluster, [capped], 100)["ok"] > 0
        server.stop(signal.SIGKILL)
        # capped requests are refused (503, retry-after), never admitted unchecked
        assert _status(cluster.url(0), capped, 0) == "counters_unavailable"
        assert _status(cluster.url(1), capped, 1) == "counters_unavailable"
        assert _status(cluster.url(0), free, 2) == "ok"  # no limit: nothing to check, served
        server.start()  # back, and empty: the counters are rebuilt from the ledger
        _wait_for(lambda: _status(cluster.url(0), capped, 4) != "counters_unavailable", 30, "no rebuild")
        after = _race(cluster, [capped], 600)
        assert set(after) <= {"ok", "budget_exceeded"}, after
        assert after["budget_exceeded"] > 0
        rows = cluster.rows("key_id = $1", capped_id)
        assert sum(r["cost_nanos"] for r in rows) <= 300_000_000
        assert "pending" not in {r["status"] for r in rows}
    finally:
        cluster.close()
        server.stop()


def test_postgres_down_fails_closed_then_catches_up(
    emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("pg-outage")
    pg = PostgresServer(base / "pg", survives_kill=True)
    pg.init()
    server = RedisServer(base / "redis")
    server.start()
    cluster = Cluster(emulator, base, pg.dsn, server.url, n=2)
    try:
        capped, capped_id = cluster.new_key(limits={"usd": {"total": "5"}})
        free, free_id = cluster.new_key()
        for i in range(4):  # both keys cached on both instances
            assert _status(cluster.url(i), capped, i) == "ok"
            assert _status(cluster.url(i), free, i) == "ok"
        pg.stop(signal.SIGKILL)
        served_free = 0
        deadline = time.monotonic() + 20
        while _status(cluster.url(0), capped, 0) != "counters_unavailable":
            assert time.monotonic() < deadline, "capped requests still admitted with the ledger down"
            time.sleep(0.2)
        assert _status(cluster.url(1), capped, 1) in ("counters_unavailable", "ok")
        for i in range(6):  # uncapped requests keep being served; their rows wait in memory
            served_free += _status(cluster.url(i), free, i) == "ok"
        assert served_free == 6
        pg.start()
        _wait_for(lambda: _status(cluster.url(0), capped, 0) == "ok", 30, "capped requests not resumed")
        rows = cluster.rows("key_id = $1", free_id)
        assert sum(r["status"] == "ok" for r in rows) == 4 + served_free  # nothing lost
        assert all(r["status"] != "pending" for r in cluster.rows("key_id = $1", capped_id))
    finally:
        cluster.close()
        pg.remove()
        server.stop()


def test_secret_is_shared(cluster: Cluster) -> None:
    """A key made on one instance works on the others (one server secret, one key store)."""
    key, _ = cluster.new_key(node=2)
    for node in range(3):
        assert _status(cluster.url(node), key, secrets.randbelow(2) * 2) == "ok"


def test_a_request_cancelled_while_reserving_leaves_nothing_reserved(redis_url: str) -> None:
    """The client leaves while the reservation is on its way to Redis: it is released at once, not
    charged at its worst case by the reaper a quarter of an hour later."""
    from decimal import Decimal  # noqa: PLC0415

    from sluice.ledger.entry import Entry  # noqa: PLC0415
    from sluice.limits.limiter import Limiter, key_limits  # noqa: PLC0415
    from sluice.pricing.cost import Pricer  # noqa: PLC0415
    from sluice.pricing.sheet import Rates  # noqa: PLC0415
    from sluice.settings import BudgetSettings, LimitSettings  # noqa: PLC0415
    from sluice.store.counters_redis import RedisCounters  # noqa: PLC0415

    redis.Redis.from_url(redis_url).flushall()
    pricer = Pricer("openai", "m", rates=Rates(input=Decimal(50), output=Decimal(50)))
    limits = key_limits("k", "k", LimitSettings.model_validate({"usd": {"total": 10}}), None)

    async def main() -> list[tuple[Any, int, int]]:
        counters = RedisCounters(redis_url)

        async def nothing() -> list[Any]:
            return []

        await counters.start(nothing)
        limiter = Limiter(counters, BudgetSettings(), {})
        cancelled = 0
        for i in range(240):
            entry = Entry(f"r{i}", counters.clock(), "chat", "m", key_id="k", provider="p", pricer=pricer)
            entry.output_cap = 100
            task = asyncio.create_task(
                limiter.admit(entry, limiter.scopes("k", limits, None, None, None), 50)
            )
            await asyncio.sleep((i % 12) / 20_000)  # 0 to 0.55 ms: before, during and after the round trip
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                cancelled += 1
            else:
                assert entry.hold is not None
                limiter.counters.settle(entry.hold, 0, 0)
        assert cancelled > 0
        await asyncio.sleep(0.5)  # releases land
        rows = await counters.read("key:k")
        await counters.close()
        return rows

    rows = asyncio.run(main())
    assert rows and all(reserved == 0 for _key, _spent, reserved in rows), rows
    assert redis.Redis.from_url(redis_url).zcard("sluice:holds") == 0


def test_clients_leaving_at_any_moment_keep_counters_equal_to_the_ledger(cluster: Cluster) -> None:
    """Clients that give up after 0–20 ms leave while the counters are asked, while the provider answers
    or after: whenever it is, the counter and the ledger agree, and nothing stays reserved."""
    key, key_id = cluster.new_key(limits={"usd": {"total": "100"}})

    async def impatient(client: openai.AsyncOpenAI, i: int) -> None:
        with contextlib.suppress(TimeoutError, openai.APIError):
            async with asyncio.timeout((i % 41) / 2000):
                await _one(client, i)

    async def main() -> None:
        clients = [_client(cluster.url(i), key) for i in range(3)]
        try:
            for c in clients:  # connected and warm: the deadlines below measure the request itself
                await _one(c, 0)
            for batch in range(20):
                await asyncio.gather(
                    *(impatient(clients[i % 3], i) for i in range(batch * 30, batch * 30 + 30))
                )
        finally:
            for c in clients:
                await c.close()

    asyncio.run(main())
    deadline = time.monotonic() + 15
    while True:  # the last disconnects settle when the instances notice them
        found = [c for c in cluster.counters(f"key:{key_id}") if c["metric"] == "usd"]
        counter = found[0] if found else {"spent": 0, "reserved": 0}
        rows = cluster.rows("key_id = $1", key_id)
        settled = counter["reserved"] == 0 and "pending" not in {r["status"] for r in rows}
        if settled and counter["spent"] == sum(r["cost_nanos"] for r in rows):
            break
        assert time.monotonic() < deadline, counter
        time.sleep(0.2)
    assert counter["spent"] == sum(r["cost_nanos"] for r in rows)
    assert {r["status"] for r in rows} >= {"disconnected"}
