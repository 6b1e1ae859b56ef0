"""The alert log's contract on both stores (SQLite and a real PostgreSQL): a key is claimed once, each
delivery is recorded, stale deliveries are taken over by one caller, overrides are kept."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sluice.store.alerts import AlertRow
from sluice.store.keys import KeyStore
from sluice.store.postgres import PostgresStore
from sluice.store.sqlite import SQLiteStore
from tests.servers import fresh_database

T0 = 1_795_600_000_000_000


def _row(n: int, key: str | None = None) -> AlertRow:
    return AlertRow(
        f"alrt_{n}",
        key or f"threshold:key:k{n}:usd/day:d:50",
        "threshold",
        f"key:k{n}",
        "s",
        {"n": n},
        T0 + n,
    )


def _run(make: Callable[[], KeyStore], check: Callable[[KeyStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = make()
        await store.start()
        try:
            await check(store)
        finally:
            await store.close()

    asyncio.run(main())


async def _contract(store: KeyStore) -> None:
    assert await store.claim_alert(_row(1), ["hook", "mail"])
    assert not await store.claim_alert(_row(2, key=_row(1).dedup_key), ["hook"])  # the same key: refused
    assert await store.claim_alert(_row(3), [])
    await store.record_delivery("alrt_1", "hook", "sent", 1, None, T0 + 10)
    await store.record_delivery("alrt_1", "mail", "pending", 2, "refused (550)", T0 + 11)
    listed = await store.list_alerts(10)
    assert [r.id for r in listed] == ["alrt_3", "alrt_1"]  # newest first
    first = listed[1]
    assert first.facts == {"n": 1} and first.test is False
    assert [(d.channel, d.status, d.attempts, d.last_error) for d in first.deliveries] == [
        ("hook", "sent", 1, None),
        ("mail", "pending", 2, "refused (550)"),
    ]
    assert [r.id for r in await store.list_alerts(10, since_us=T0 + 2)] == ["alrt_3"]
    assert [r.id for r in await store.list_alerts(1)] == ["alrt_3"]

    [stale] = await store.stale_deliveries(T0 + 100, 10)
    assert stale.id == "alrt_1" and [d.channel for d in stale.deliveries] == ["mail"]
    assert await store.stale_deliveries(T0 + 5, 10) == []
    assert await store.take_delivery("alrt_1", "mail", T0 + 11, T0 + 200)
    assert not await store.take_delivery("alrt_1", "mail", T0 + 11, T0 + 201)  # taken: one winner
    assert await store.stale_deliveries(T0 + 100, 10) == []

    await store.put_alert_rule("key:k1", '{"thresholds":[25]}', T0)
    await store.put_alert_rule("key:k1", '{"thresholds":[30]}', T0 + 1)
    assert await store.list_alert_rules() == [("key:k1", '{"thresholds":[30]}', T0 + 1)]
    assert await store.delete_alert_rule("key:k1")
    assert not await store.delete_alert_rule("key:k1")


def test_the_alert_log_on_sqlite(tmp_path: Path) -> None:
    _run(lambda: SQLiteStore(tmp_path / "sluice.db"), _contract)


def test_the_alert_log_on_postgres(postgres_dsn: str) -> None:
    dsn = fresh_database(postgres_dsn, "alert_log")
    _run(lambda: PostgresStore(dsn), _contract)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_claims_of_one_key_have_one_winner(
    backend: str, tmp_path: Path, postgres_dsn: str
) -> None:
    dsn = fresh_database(postgres_dsn, "alert_claims") if backend == "postgres" else ""

    def make() -> KeyStore:
        return PostgresStore(dsn) if backend == "postgres" else SQLiteStore(tmp_path / "sluice.db")

    async def race(store: KeyStore) -> None:
        key = "threshold:all:usd/day:d:95"
        wins = await asyncio.gather(*(store.claim_alert(_row(n, key=key), ["hook"]) for n in range(20)))
        assert sum(wins) == 1
        [row] = await store.list_alerts(100)
        assert len(row.deliveries) == 1

    _run(make, race)
