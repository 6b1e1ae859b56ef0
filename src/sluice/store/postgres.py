"""PostgreSQL schema for multi-instance deployments, as numbered migrations.

Applied in order under a transaction-scoped advisory lock, so instances starting together migrate once;
the version reached is recorded in ``sluice_schema``. Same tables and columns as the SQLite schema.
"""

from __future__ import annotations

import asyncpg

_LOCK_ID = 0x51CE_0001  # an advisory lock id shared by every Sluice instance
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE ledger (
        request_id TEXT PRIMARY KEY,
        ts_us BIGINT NOT NULL,
        key_id TEXT,
        user_id TEXT,
        team TEXT,
        feature TEXT,
        tags JSONB,
        endpoint TEXT NOT NULL,
        alias TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        stream BOOLEAN NOT NULL,
        status TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        error_code TEXT,
        input_tokens BIGINT NOT NULL,
        cache_read_tokens BIGINT NOT NULL,
        cache_write_tokens BIGINT NOT NULL,
        cache_write_1h_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        reasoning_tokens BIGINT NOT NULL,
        input_audio_tokens BIGINT NOT NULL,
        output_audio_tokens BIGINT NOT NULL,
        input_image_tokens BIGINT NOT NULL,
        web_searches BIGINT NOT NULL,
        cost_nanos BIGINT NOT NULL,
        price_source TEXT NOT NULL,
        at_ceiling BOOLEAN NOT NULL,
        usage_estimated BOOLEAN NOT NULL,
        client_disconnected BOOLEAN NOT NULL,
        latency_us BIGINT,
        ttft_us BIGINT,
        attempts JSONB
    );
    CREATE INDEX ledger_ts ON ledger (ts_us);
    CREATE INDEX ledger_pending ON ledger (status) WHERE status = 'pending';
    CREATE TABLE ledger_content (
        request_id TEXT PRIMARY KEY,
        request BYTEA,
        response BYTEA
    );
    """,
    """
    ALTER TABLE ledger ADD COLUMN reserved_nanos BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE ledger ADD COLUMN reserved_input_tokens BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE ledger ADD COLUMN reserved_output_tokens BIGINT NOT NULL DEFAULT 0;
    """,
)


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema up to date; returns the version reached."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute("CREATE TABLE IF NOT EXISTS sluice_schema (version INTEGER NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM sluice_schema") or 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO sluice_schema (version) VALUES ($1)", number)
        return len(MIGRATIONS)
