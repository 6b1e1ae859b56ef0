"""The throwaway PostgreSQL and Redis servers answer real clients."""

from __future__ import annotations

import asyncio

import asyncpg
import redis.asyncio


def test_postgres_answers_queries(postgres_dsn: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            assert await conn.fetchval("SELECT current_database()") == "sluice"
            await conn.execute("CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL)")
            await conn.executemany("INSERT INTO counters VALUES ($1, $2)", [("a", 1), ("b", 2)])
            rows = await conn.fetch("SELECT name, value FROM counters ORDER BY name")
            assert [(r["name"], r["value"]) for r in rows] == [("a", 1), ("b", 2)]
            await conn.execute("DROP TABLE counters")
        finally:
            await conn.close()

    asyncio.run(go())


def test_redis_sets_and_gets(redis_url: str) -> None:
    async def go() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            assert await client.ping()
            await client.set("sluice:test", "value")
            assert await client.get("sluice:test") == b"value"
            assert await client.incrby("sluice:counter", 5) == 5
        finally:
            await client.aclose()

    asyncio.run(go())
