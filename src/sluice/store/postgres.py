"""PostgreSQL schema for multi-instance deployments, as numbered migrations, and the key store on it.

Applied in order under a transaction-scoped advisory lock, so instances starting together migrate once;
the version reached is recorded in ``sluice_schema``. Same tables and columns as the SQLite schema.
"""

from __future__ import annotations

import asyncpg

from sluice.store.alerts import ALERT_COLUMNS, DELIVERY_COLUMNS, PENDING, AlertRow, alert_rows
from sluice.store.keys import (
    KEY_COLUMNS,
    KEY_FIELDS,
    KEY_SELECT,
    PROVIDER_KEY_COLUMNS,
    KeyRow,
    ProviderKeyRow,
    key_row,
    key_values,
    provider_key_row,
)

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
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE virtual_keys (
        id TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        hint TEXT NOT NULL,
        models TEXT,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT,
        team TEXT,
        features TEXT,
        tags TEXT,
        require_feature INTEGER NOT NULL DEFAULT 0,
        log_content INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        expires_at BIGINT,
        blocked INTEGER NOT NULL DEFAULT 0,
        limits TEXT,
        user_limits TEXT,
        metadata TEXT,
        updated_at BIGINT
    );
    """,
    """
    CREATE TABLE provider_keys (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        label TEXT NOT NULL,
        sealed TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    """,
    """
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        rule TEXT NOT NULL,
        scope TEXT NOT NULL,
        summary TEXT NOT NULL,
        facts TEXT NOT NULL,
        created_us BIGINT NOT NULL,
        test BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX alerts_created ON alerts (created_us);
    CREATE TABLE alert_deliveries (
        alert_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        updated_us BIGINT NOT NULL,
        PRIMARY KEY (alert_id, channel)
    );
    CREATE TABLE alert_rules (
        scope TEXT PRIMARY KEY,
        settings TEXT NOT NULL,
        updated_us BIGINT NOT NULL
    );
    """,
    """
    CREATE TABLE smoke_runs (
        id TEXT PRIMARY KEY,
        started_us BIGINT NOT NULL,
        ok BOOLEAN NOT NULL,
        report TEXT NOT NULL
    );
    CREATE INDEX smoke_runs_started ON smoke_runs (started_us);
    """,
    """
    ALTER TABLE ledger ADD COLUMN cache_hit BOOLEAN NOT NULL DEFAULT FALSE;
    ALTER TABLE ledger ADD COLUMN saved_nanos BIGINT NOT NULL DEFAULT 0;
    """,
)

_TRIM_SMOKE = (
    "DELETE FROM smoke_runs WHERE id NOT IN (SELECT id FROM smoke_runs ORDER BY started_us DESC LIMIT {})"
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


_PLACES = ", ".join(f"${i + 1}" for i in range(len(KEY_COLUMNS)))
_INSERT_KEY = f"INSERT INTO virtual_keys ({KEY_FIELDS}) VALUES ({_PLACES})"  # noqa: S608 - constant
_UPDATE_KEY = (
    "UPDATE virtual_keys SET "  # noqa: S608 - constant
    + ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(KEY_COLUMNS[1:]))
    + f" WHERE id = ${len(KEY_COLUMNS)}"
)


CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 120.0


async def migrated_pool(dsn: str, max_size: int = 4) -> asyncpg.Pool:
    """Bring the schema up to date (once, whoever starts first), then open a pool."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    # bounded waits: a server that accepts a connection but is still starting (or a dead peer) must fail
    # the attempt, which is retried, instead of holding the ledger's writer for asyncpg's default minute
    return await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S
    )


class PostgresStore:
    """Keys and server metadata in PostgreSQL (shared by every instance), over an asyncpg pool."""

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        """Migrate and connect."""
        if self._pool is None:
            self._pool = await migrated_pool(self._dsn, self._max_size)

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool (``start()`` first)."""
        assert self._pool is not None, "start() first"
        return self._pool

    async def ping(self) -> bool:
        """True when the database answers."""
        return bool(await self.pool.fetchval("SELECT 1") == 1)

    async def get_meta(self, name: str) -> str | None:
        """A server metadata value."""
        value = await self.pool.fetchval("SELECT value FROM meta WHERE name = $1", name)
        return None if value is None else str(value)

    async def set_meta(self, name: str, value: str) -> None:
        """Store or replace a value."""
        await self.pool.execute(
            "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2",
            name,
            value,
        )

    async def set_meta_if_absent(self, name: str, value: str) -> bool:
        """Store a value unless one exists; True if this call stored it."""
        done = await self.pool.execute(
            "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, value
        )
        return bool(done == "INSERT 0 1")

    async def insert_key(self, row: KeyRow) -> None:
        """Add a key."""
        await self.pool.execute(_INSERT_KEY, *key_values(row))

    async def replace_key(self, row: KeyRow) -> bool:
        """Store a changed key (same id)."""
        done = await self.pool.execute(_UPDATE_KEY, *key_values(row)[1:], row.id)
        return bool(done == "UPDATE 1")

    async def get_key(self, key_id: str) -> KeyRow | None:
        """The key with this id."""
        record = await self.pool.fetchrow(KEY_SELECT + " FROM virtual_keys WHERE id = $1", key_id)
        return None if record is None else key_row(tuple(record))

    async def find_key(self, digest: str) -> KeyRow | None:
        """The key with this digest (the unique index on it: no scans)."""
        record = await self.pool.fetchrow(KEY_SELECT + " FROM virtual_keys WHERE digest = $1", digest)
        return None if record is None else key_row(tuple(record))

    async def list_keys(self) -> list[KeyRow]:
        """Every key, oldest first."""
        records = await self.pool.fetch(KEY_SELECT + " FROM virtual_keys ORDER BY created_at, id")
        return [key_row(tuple(r)) for r in records]

    async def revoke_key(self, key_id: str, at: int) -> bool:
        """Revoke an active key."""
        done = await self.pool.execute(
            "UPDATE virtual_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", at, key_id
        )
        return bool(done == "UPDATE 1")

    async def insert_provider_key(self, row: ProviderKeyRow) -> None:
        """Add an encrypted provider key."""
        await self.pool.execute(
            f"INSERT INTO provider_keys ({PROVIDER_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",  # noqa: S608 - constant
            row.id,
            row.provider,
            row.label,
            row.sealed,
            row.fingerprint,
            row.created_at,
        )

    async def list_provider_keys(self) -> list[ProviderKeyRow]:
        """Every stored provider key, oldest first."""
        records = await self.pool.fetch(
            f"SELECT {PROVIDER_KEY_COLUMNS} FROM provider_keys ORDER BY created_at, id"  # noqa: S608 - constant
        )
        return [provider_key_row(tuple(r)) for r in records]

    async def delete_provider_key(self, key_id: str) -> bool:
        """Remove a provider key."""
        return bool(await self.pool.execute("DELETE FROM provider_keys WHERE id = $1", key_id) == "DELETE 1")

    async def reseal_provider_key(self, key_id: str, old: str, new: str) -> bool:
        """Compare-and-set a key's ciphertext."""
        done = await self.pool.execute(
            "UPDATE provider_keys SET sealed = $1 WHERE id = $2 AND sealed = $3", new, key_id, old
        )
        return bool(done == "UPDATE 1")

    async def claim_alert(self, row: AlertRow, channels: list[str]) -> bool:
        """Log an alert and its pending deliveries, unless one with its key is logged (False): the
        unique key makes one instance the sender, however many see the alert at once."""
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.execute(_CLAIM_ALERT, *row.values())
            if done != "INSERT 0 1":
                return False
            await conn.executemany(
                _INSERT_DELIVERY, [(row.id, c, PENDING, 0, None, row.created_us) for c in channels]
            )
            return True

    async def record_delivery(
        self, alert_id: str, channel: str, status: str, attempts: int, error: str | None, at_us: int
    ) -> None:
        """Record a delivery attempt's outcome."""
        await self.pool.execute(_UPDATE_DELIVERY, status, attempts, error, at_us, alert_id, channel)

    async def list_alerts(self, limit: int, since_us: int = 0) -> list[AlertRow]:
        """The latest alerts (newest first) with their deliveries."""
        alerts = [tuple(r) for r in await self.pool.fetch(_LIST_ALERTS, since_us, limit)]
        ids = [a[0] for a in alerts]
        deliveries = [tuple(r) for r in await self.pool.fetch(_LIST_DELIVERIES, ids)] if ids else []
        return alert_rows(alerts, deliveries)

    async def stale_deliveries(self, before_us: int, limit: int) -> list[AlertRow]:
        """Alerts with a delivery still pending since before ``before_us`` (each with those deliveries)."""
        pending = [tuple(r) for r in await self.pool.fetch(_STALE_DELIVERIES, PENDING, before_us, limit)]
        ids = sorted({str(d[0]) for d in pending})
        alerts = [tuple(r) for r in await self.pool.fetch(_ALERTS_BY_ID, ids)] if ids else []
        return alert_rows(alerts, pending)

    async def take_delivery(self, alert_id: str, channel: str, seen_us: int, now_us: int) -> bool:
        """Take over a stale pending delivery, if it is still as it was seen (one instance wins)."""
        done = await self.pool.execute(_TAKE_DELIVERY, now_us, alert_id, channel, PENDING, seen_us)
        return bool(done == "UPDATE 1")

    async def list_alert_rules(self) -> list[tuple[str, str, int]]:
        """Alert overrides set through the admin API: (scope, settings JSON, updated µs)."""
        records = await self.pool.fetch("SELECT scope, settings, updated_us FROM alert_rules ORDER BY scope")
        return [(str(r[0]), str(r[1]), int(r[2])) for r in records]

    async def put_alert_rule(self, scope: str, settings: str, at_us: int) -> None:
        """Set a scope's alert override."""
        await self.pool.execute(
            "INSERT INTO alert_rules (scope, settings, updated_us) VALUES ($1, $2, $3) "
            "ON CONFLICT (scope) DO UPDATE SET settings = $2, updated_us = $3",
            scope,
            settings,
            at_us,
        )

    async def delete_alert_rule(self, scope: str) -> bool:
        """Remove a scope's alert override; False if it had none."""
        return bool(await self.pool.execute("DELETE FROM alert_rules WHERE scope = $1", scope) == "DELETE 1")

    async def put_smoke_run(self, run_id: str, started_us: int, ok: bool, report: str) -> None:
        """Keep a smoke run's report (JSON)."""
        await self.pool.execute(
            "INSERT INTO smoke_runs (id, started_us, ok, report) VALUES ($1, $2, $3, $4)",
            run_id,
            started_us,
            ok,
            report,
        )

    async def trim_smoke_runs(self, keep: int) -> None:
        """Delete all but the latest ``keep`` smoke runs."""
        await self.pool.execute(
            _TRIM_SMOKE.format("$1"),
            keep,
        )

    async def smoke_runs(self, limit: int) -> list[str]:
        """The latest smoke reports (JSON), newest first."""
        records = await self.pool.fetch(
            "SELECT report FROM smoke_runs ORDER BY started_us DESC, id DESC LIMIT $1", limit
        )
        return [str(r[0]) for r in records]


_CLAIM_ALERT = (
    f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "  # noqa: S608 - constant
    "ON CONFLICT (dedup_key) DO NOTHING"
)
_INSERT_DELIVERY = f"INSERT INTO alert_deliveries ({DELIVERY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"  # noqa: S608 - constant
_UPDATE_DELIVERY = (
    "UPDATE alert_deliveries SET status = $1, attempts = $2, last_error = $3, updated_us = $4 "
    "WHERE alert_id = $5 AND channel = $6"
)
_LIST_ALERTS = (
    f"SELECT {ALERT_COLUMNS} FROM alerts WHERE created_us >= $1 ORDER BY created_us DESC, id LIMIT $2"  # noqa: S608 - constant
)
_LIST_DELIVERIES = f"SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE alert_id = ANY($1::text[])"  # noqa: S608 - constant
_STALE_DELIVERIES = (
    f"SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE status = $1 AND updated_us < $2 "  # noqa: S608 - constant
    "ORDER BY updated_us LIMIT $3"
)
_ALERTS_BY_ID = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ANY($1::text[])"  # noqa: S608 - constant
_TAKE_DELIVERY = (
    "UPDATE alert_deliveries SET updated_us = $1 WHERE alert_id = $2 AND channel = $3 AND status = $4 "
    "AND updated_us = $5"
)
