"""One contract for every ledger backend (SQLite, PostgreSQL): the same test runs against each.

Rows handed over are committed in groups, a settled row replaces its pending row, a pending row left
behind by a crash becomes ``interrupted``, content is kept only when given, and reports read back
exactly what was written. PostgreSQL is a real throwaway server (tests/servers.py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import openai
import orjson
import pytest

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.ledger.entry import COLUMNS, CUT, INTERRUPTED, OK, PENDING, Entry
from sluice.ledger.report import COLUMNS as REPORT_COLUMNS
from sluice.ledger.report import summarise
from sluice.ledger.sink import Content, Ledger
from sluice.pricing.usage import TokenUsage
from sluice.store.ledger_postgres import PostgresLedger
from sluice.store.ledger_sqlite import SQLiteLedger
from tests.conftest import ADMIN_KEY, ServerThread, config_yaml, provider_env

Factory = Callable[..., Any]


def fresh_database(dsn: str) -> str:
    """A new, empty database on the server at ``dsn``; its DSN."""
    name = f"t_{secrets.token_hex(6)}"

    async def create() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    asyncio.run(create())
    return dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A factory of fresh, started ledgers of one backend (each test gets its own database)."""
    if request.param == "sqlite":

        @asynccontextmanager
        async def sqlite(**kw: Any) -> AsyncIterator[Ledger]:
            ledger = SQLiteLedger(tmp_path / "sluice.db", flush_interval=0.005, **kw)
            await ledger.start()
            try:
                yield ledger
            finally:
                await ledger.close()

        yield sqlite
        return
    test_dsn = fresh_database(request.getfixturevalue("postgres_dsn"))

    @asynccontextmanager
    async def postgres(**kw: Any) -> AsyncIterator[Ledger]:
        ledger = PostgresLedger(test_dsn, flush_interval=0.005, **kw)
        await ledger.start()
        try:
            yield ledger
        finally:
            await ledger.close()

    yield postgres


def _entry(n: int, ts_us: int, **kw: Any) -> Entry:
    return Entry(
        request_id=f"req_{n:04d}",
        ts_us=ts_us,
        endpoint="chat",
        alias="a",
        provider="p",
        model="m",
        feature=f"f{n % 3}",
        tags={"env": "prod"} if n % 2 else None,
        **kw,
    )


NOW = int(time.time() * 1_000_000)
SPAN = (NOW - 10**9, NOW + 10**9)


def test_group_commit_and_read_back(make_ledger: Factory) -> None:
    async def run() -> None:
        async with make_ledger() as ledger:
            for n in range(300):
                e = _entry(n, NOW + n)
                ledger.open(e)
                e.status = OK
                e.usage = TokenUsage(input_tokens=n, output_tokens=2 * n)
                e.cost_nanos = 1_000 + n
                ledger.settle(e)
            await ledger.flush()
            rows = await ledger.rows(*SPAN, COLUMNS)
            assert len(rows) == 300  # each pending row replaced by its settled row
            by_id = {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in rows}
            row = by_id["req_0007"]
            assert (row["status"], row["input_tokens"], row["output_tokens"], row["cost_nanos"]) == (
                OK,
                7,
                14,
                1007,
            )
            assert row["feature"] == "f1"
            report = summarise(await ledger.rows(*SPAN, REPORT_COLUMNS), ("feature",), *SPAN)
            assert report.total.cost_nanos == sum(1_000 + n for n in range(300))
            assert {g.key[0]: g.requests for g in report.groups} == {"f0": 100, "f1": 100, "f2": 100}
            tagged = summarise(await ledger.rows(*SPAN, REPORT_COLUMNS), ("tag:env",), *SPAN)
            assert {g.key[0]: g.requests for g in tagged.groups} == {"prod": 150, "": 150}

    asyncio.run(run())


def test_nulls_and_flags_read_back_as_written(make_ledger: Factory) -> None:
    """NULLs stay NULL and flags stay 0/1 (SQLite binds them through adapters registered for speed)."""

    async def run() -> None:
        async with make_ledger() as ledger:
            flagged = _entry(1, NOW, stream=True, key_id=None, user=None)
            flagged.status, flagged.usage_estimated, flagged.client_disconnected = CUT, True, True
            plain = _entry(2, NOW + 1, stream=False)
            plain.status, plain.ttft_us, plain.error_code = OK, None, None
            for e in (flagged, plain):
                ledger.open(e)
                ledger.settle(e)
            await ledger.flush()
            names = ("request_id", "stream", "usage_estimated", "client_disconnected", "cache_hit", "key_id")
            rows = {
                r[0]: r[1:] for r in await ledger.rows(*SPAN, (*names, "user_id", "ttft_us", "error_code"))
            }
            assert rows["req_0001"][:5] == (1, 1, 1, 0, None)  # PostgreSQL's booleans compare equal to 1 / 0
            assert rows["req_0002"][:5] == (0, 0, 0, 0, None)
            assert rows["req_0001"][5:] == (None, None, None)
            assert all(type(v) in (int, bool) for r in rows.values() for v in r[:4])

    asyncio.run(run())


def test_a_long_request_is_written_pending_then_settled(make_ledger: Factory) -> None:
    async def run() -> None:
        async with make_ledger() as ledger:
            e = _entry(1, NOW)
            ledger.open(e)
            await ledger.flush()  # the request reached a provider: durable before it finishes
            assert [(r[0], r[1]) for r in await ledger.rows(*SPAN, ("request_id", "status"))] == [
                ("req_0001", PENDING)
            ]
            e.status = CUT
            e.usage_estimated = True
            e.cost_nanos = 5
            ledger.settle(e, Content(e.request_id, b'{"messages":[]}', b"data: {}\n\n"))
            await ledger.flush()
            got = await ledger.rows(*SPAN, ("status", "usage_estimated", "cost_nanos"))
            assert [(s, bool(u), c) for s, u, c in got] == [(CUT, True, 5)]

    asyncio.run(run())


def test_pending_rows_older_than_every_deadline_become_interrupted(make_ledger: Factory) -> None:
    now = time.time_ns() // 1000  # now, not at import: the test may run long after the module loaded

    async def run() -> None:
        async with make_ledger() as ledger:
            ledger.open(_entry(1, now - 5_000_000))  # crashed five seconds ago
            ledger.open(_entry(2, now))  # still running
            await ledger.flush()
        async with make_ledger(stale_after_s=2.0) as ledger:  # a restart: the reconciler runs first
            await asyncio.sleep(0.2)
            got = dict(await ledger.rows(*SPAN, ("request_id", "status")))
            assert got == {"req_0001": INTERRUPTED, "req_0002": PENDING}

    asyncio.run(run())


def test_unknown_columns_are_refused(make_ledger: Factory) -> None:
    async def run() -> None:
        async with make_ledger() as ledger:
            with pytest.raises(ValueError, match="unknown ledger columns"):
                await ledger.rows(*SPAN, ("request_id", "1; DROP TABLE ledger"))

    asyncio.run(run())


def test_gateway_writes_its_ledger_to_postgres(emulator: Emulator, postgres_dsn: str, tmp_path: Path) -> None:
    dsn = fresh_database(postgres_dsn)
    env = {**provider_env(), "PG_URL": dsn}
    text = config_yaml(emulator, tmp_path).replace(
        "server:\n", "server:\n  store: postgres\n  database_url: env:PG_URL\n  ledger_flush_ms: 5\n", 1
    )
    config = parse_config(text, environ=env).config
    with ServerThread(create_app(config, env)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0)
        ids = [
            client.chat.completions.with_raw_response.create(
                model=alias,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-sluice-feature": "pg"},
            ).headers["x-sluice-request-id"]
            for alias in ("oa-chat", "claude-chat", "ds-chat")
        ]
        url = server.base_url.removesuffix("/v1") + "/admin/spend?by=feature"
        req = urllib.request.Request(url, headers={"authorization": f"Bearer {ADMIN_KEY}"})  # noqa: S310
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own test server
            report = orjson.loads(resp.read())

    async def read() -> list[tuple[str, str, int]]:
        conn = await asyncpg.connect(dsn)
        try:
            got = await conn.fetch("SELECT request_id, status, cost_nanos FROM ledger ORDER BY ts_us")
        finally:
            await conn.close()
        return [(r[0], r[1], r[2]) for r in got]

    rows = asyncio.run(read())
    assert [r[0] for r in rows] == ids
    assert all(status == OK and cost > 0 for _id, status, cost in rows)
    assert report["groups"][0]["feature"] == "pg"
    assert report["total"]["cost_nanos"] == sum(r[2] for r in rows)
