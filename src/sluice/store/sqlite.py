"""The embedded SQLite store: keys, server metadata and the ledger's schema. Its key methods are async and
run on a thread (the ledger has its own writer and connection, see ``sluice.store.ledger_sqlite``).

Schema changes are numbered migrations applied in order and recorded in ``PRAGMA user_version``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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

T = TypeVar("T")
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE virtual_keys (
        id TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        hint TEXT NOT NULL,
        models TEXT,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    """,
    """
    ALTER TABLE virtual_keys ADD COLUMN team TEXT;
    ALTER TABLE virtual_keys ADD COLUMN features TEXT;
    ALTER TABLE virtual_keys ADD COLUMN tags TEXT;
    ALTER TABLE virtual_keys ADD COLUMN require_feature INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE virtual_keys ADD COLUMN log_content INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE ledger (
        request_id TEXT PRIMARY KEY,
        ts_us INTEGER NOT NULL,
        key_id TEXT,
        user_id TEXT,
        team TEXT,
        feature TEXT,
        tags TEXT,
        endpoint TEXT NOT NULL,
        alias TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        stream INTEGER NOT NULL,
        status TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        error_code TEXT,
        input_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        cache_write_1h_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        input_audio_tokens INTEGER NOT NULL,
        output_audio_tokens INTEGER NOT NULL,
        input_image_tokens INTEGER NOT NULL,
        web_searches INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        price_source TEXT NOT NULL,
        at_ceiling INTEGER NOT NULL,
        usage_estimated INTEGER NOT NULL,
        client_disconnected INTEGER NOT NULL,
        latency_us INTEGER,
        ttft_us INTEGER,
        attempts TEXT
    );
    CREATE INDEX ledger_ts ON ledger (ts_us);
    CREATE INDEX ledger_pending ON ledger (status) WHERE status = 'pending';
    CREATE TABLE ledger_content (
        request_id TEXT PRIMARY KEY,
        request BLOB,
        response BLOB
    )
    """,
    """
    ALTER TABLE ledger ADD COLUMN reserved_nanos INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ledger ADD COLUMN reserved_input_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ledger ADD COLUMN reserved_output_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE virtual_keys ADD COLUMN owner TEXT;
    ALTER TABLE virtual_keys ADD COLUMN expires_at INTEGER;
    ALTER TABLE virtual_keys ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE virtual_keys ADD COLUMN limits TEXT;
    ALTER TABLE virtual_keys ADD COLUMN user_limits TEXT;
    ALTER TABLE virtual_keys ADD COLUMN metadata TEXT;
    ALTER TABLE virtual_keys ADD COLUMN updated_at INTEGER
    """,
    """
    CREATE TABLE provider_keys (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        label TEXT NOT NULL,
        sealed TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        rule TEXT NOT NULL,
        scope TEXT NOT NULL,
        summary TEXT NOT NULL,
        facts TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        test INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX alerts_created ON alerts (created_us);
    CREATE TABLE alert_deliveries (
        alert_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        updated_us INTEGER NOT NULL,
        PRIMARY KEY (alert_id, channel)
    );
    CREATE TABLE alert_rules (
        scope TEXT PRIMARY KEY,
        settings TEXT NOT NULL,
        updated_us INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE smoke_runs (
        id TEXT PRIMARY KEY,
        started_us INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        report TEXT NOT NULL
    );
    CREATE INDEX smoke_runs_started ON smoke_runs (started_us)
    """,
    """
    ALTER TABLE ledger ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ledger ADD COLUMN saved_nanos INTEGER NOT NULL DEFAULT 0
    """,
)

_TRIM_SMOKE = (
    "DELETE FROM smoke_runs WHERE id NOT IN (SELECT id FROM smoke_runs ORDER BY started_us DESC LIMIT {})"
)


class SQLiteStore:
    """A small wrapper over one SQLite file in WAL mode; thread-safe through one lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # re-check under the write lock: another process may have migrated meanwhile
                    if self._db.execute("PRAGMA user_version").fetchone()[0] >= number:
                        self._db.execute("ROLLBACK")
                        continue
                    for statement in filter(str.strip, script.split(";")):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._db)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the connection on a thread: the event loop never waits on the file."""
        return await asyncio.to_thread(self._call, fn)

    async def start(self) -> None:
        """Nothing to do: the file is opened (and migrated) on construction."""

    async def ping(self) -> bool:
        """True when the database answers."""
        return await self._run(lambda db: bool(db.execute("SELECT 1").fetchone()[0] == 1))

    async def get_meta(self, name: str) -> str | None:
        """A server metadata value."""
        row = await self._run(
            lambda db: db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def set_meta_if_absent(self, name: str, value: str) -> bool:
        """Store a value unless one exists; True if this call stored it."""
        sql = "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)"
        return await self._run(lambda db: db.execute(sql, (name, value)).rowcount == 1)

    async def set_meta(self, name: str, value: str) -> None:
        """Store or replace a value."""
        sql = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"
        await self._run(lambda db: db.execute(sql, (name, value)))

    async def insert_key(self, row: KeyRow) -> None:
        """Add a virtual key."""
        await self._run(lambda db: db.execute(_INSERT_KEY, key_values(row)))

    async def replace_key(self, row: KeyRow) -> bool:
        """Store a changed key (same id); False if there is no such key."""
        values = (*key_values(row)[1:], row.id)
        return await self._run(lambda db: db.execute(_UPDATE_KEY, values).rowcount == 1)

    async def get_key(self, key_id: str) -> KeyRow | None:
        """The key with this id."""
        sql = KEY_SELECT + " FROM virtual_keys WHERE id = ?"
        row = await self._run(lambda db: db.execute(sql, (key_id,)).fetchone())
        return None if row is None else key_row(row)

    async def find_key(self, digest: str) -> KeyRow | None:
        """The key with this digest (an indexed lookup: no scans, no prefixes)."""
        sql = KEY_SELECT + " FROM virtual_keys WHERE digest = ?"
        row = await self._run(lambda db: db.execute(sql, (digest,)).fetchone())
        return None if row is None else key_row(row)

    async def list_keys(self) -> list[KeyRow]:
        """Every key, oldest first."""
        sql = KEY_SELECT + " FROM virtual_keys ORDER BY created_at, id"
        return [key_row(r) for r in await self._run(lambda db: db.execute(sql).fetchall())]

    async def revoke_key(self, key_id: str, at: int) -> bool:
        """Revoke a key by id; False if there is no such active key."""
        sql = "UPDATE virtual_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        return await self._run(lambda db: db.execute(sql, (at, key_id)).rowcount == 1)

    async def insert_provider_key(self, row: ProviderKeyRow) -> None:
        """Add an encrypted provider key."""
        sql = f"INSERT INTO provider_keys ({PROVIDER_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608 - constant
        values = (row.id, row.provider, row.label, row.sealed, row.fingerprint, row.created_at)
        await self._run(lambda db: db.execute(sql, values))

    async def list_provider_keys(self) -> list[ProviderKeyRow]:
        """Every stored provider key, oldest first."""
        sql = f"SELECT {PROVIDER_KEY_COLUMNS} FROM provider_keys ORDER BY created_at, id"  # noqa: S608 - constant
        return [provider_key_row(r) for r in await self._run(lambda db: db.execute(sql).fetchall())]

    async def delete_provider_key(self, key_id: str) -> bool:
        """Remove a provider key."""
        sql = "DELETE FROM provider_keys WHERE id = ?"
        return await self._run(lambda db: db.execute(sql, (key_id,)).rowcount == 1)

    async def reseal_provider_key(self, key_id: str, old: str, new: str) -> bool:
        """Compare-and-set a key's ciphertext."""
        sql = "UPDATE provider_keys SET sealed = ? WHERE id = ? AND sealed = ?"
        return await self._run(lambda db: db.execute(sql, (new, key_id, old)).rowcount == 1)

    async def claim_alert(self, row: AlertRow, channels: list[str]) -> bool:
        """Log an alert and its pending deliveries, unless one with its key is logged (False)."""

        def claim(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                inserted = db.execute(_CLAIM_ALERT, row.values()).rowcount == 1
                if inserted:
                    db.executemany(
                        _INSERT_DELIVERY, [(row.id, c, PENDING, 0, None, row.created_us) for c in channels]
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return inserted

        return await self._run(claim)

    async def record_delivery(
        self, alert_id: str, channel: str, status: str, attempts: int, error: str | None, at_us: int
    ) -> None:
        """Record a delivery attempt's outcome."""
        values = (status, attempts, error, at_us, alert_id, channel)
        await self._run(lambda db: db.execute(_UPDATE_DELIVERY, values))

    async def list_alerts(self, limit: int, since_us: int = 0) -> list[AlertRow]:
        """The latest alerts (newest first) with their deliveries."""

        def read(db: sqlite3.Connection) -> list[AlertRow]:
            alerts = db.execute(_LIST_ALERTS, (since_us, limit)).fetchall()
            ids = [a[0] for a in alerts]
            marks = ", ".join("?" * len(ids))
            sql = f"SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE alert_id IN ({marks})"  # noqa: S608 - placeholders only
            return alert_rows(alerts, db.execute(sql, ids).fetchall() if ids else [])

        return await self._run(read)

    async def stale_deliveries(self, before_us: int, limit: int) -> list[AlertRow]:
        """Alerts with a delivery still pending since before ``before_us`` (each with those deliveries)."""

        def read(db: sqlite3.Connection) -> list[AlertRow]:
            pending = db.execute(_STALE_DELIVERIES, (PENDING, before_us, limit)).fetchall()
            ids = sorted({d[0] for d in pending})
            marks = ", ".join("?" * len(ids))
            sql = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id IN ({marks})"  # noqa: S608 - placeholders only
            return alert_rows(db.execute(sql, ids).fetchall() if ids else [], pending)

        return await self._run(read)

    async def take_delivery(self, alert_id: str, channel: str, seen_us: int, now_us: int) -> bool:
        """Take over a stale pending delivery, if it is still as it was seen (one instance wins)."""
        values = (now_us, alert_id, channel, PENDING, seen_us)
        return await self._run(lambda db: db.execute(_TAKE_DELIVERY, values).rowcount == 1)

    async def list_alert_rules(self) -> list[tuple[str, str, int]]:
        """Alert overrides set through the admin API: (scope, settings JSON, updated µs)."""
        sql = "SELECT scope, settings, updated_us FROM alert_rules ORDER BY scope"
        rows = await self._run(lambda db: db.execute(sql).fetchall())
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def put_alert_rule(self, scope: str, settings: str, at_us: int) -> None:
        """Set a scope's alert override."""
        sql = "INSERT OR REPLACE INTO alert_rules (scope, settings, updated_us) VALUES (?, ?, ?)"
        await self._run(lambda db: db.execute(sql, (scope, settings, at_us)))

    async def delete_alert_rule(self, scope: str) -> bool:
        """Remove a scope's alert override; False if it had none."""
        sql = "DELETE FROM alert_rules WHERE scope = ?"
        return await self._run(lambda db: db.execute(sql, (scope,)).rowcount == 1)

    async def put_smoke_run(self, run_id: str, started_us: int, ok: bool, report: str) -> None:
        """Keep a smoke run's report (JSON)."""
        sql = "INSERT INTO smoke_runs (id, started_us, ok, report) VALUES (?, ?, ?, ?)"
        await self._run(lambda db: db.execute(sql, (run_id, started_us, int(ok), report)))

    async def trim_smoke_runs(self, keep: int) -> None:
        """Delete all but the latest ``keep`` smoke runs."""
        sql = _TRIM_SMOKE.format("?")
        await self._run(lambda db: db.execute(sql, (keep,)))

    async def smoke_runs(self, limit: int) -> list[str]:
        """The latest smoke reports (JSON), newest first."""
        sql = "SELECT report FROM smoke_runs ORDER BY started_us DESC, id DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(sql, (limit,)).fetchall())
        return [str(r[0]) for r in rows]

    async def close(self) -> None:
        """Nothing to do: the connection lives as long as the process (``shut`` closes it)."""

    def shut(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


_INSERT_KEY = f"INSERT INTO virtual_keys ({KEY_FIELDS}) VALUES ({', '.join('?' * len(KEY_COLUMNS))})"  # noqa: S608 - constant
_UPDATE_KEY = f"UPDATE virtual_keys SET {', '.join(f'{c} = ?' for c in KEY_COLUMNS[1:])} WHERE id = ?"  # noqa: S608 - constant
_CLAIM_ALERT = f"INSERT OR IGNORE INTO alerts ({ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - constant
_INSERT_DELIVERY = f"INSERT INTO alert_deliveries ({DELIVERY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608 - constant
_UPDATE_DELIVERY = (
    "UPDATE alert_deliveries SET status = ?, attempts = ?, last_error = ?, updated_us = ? "
    "WHERE alert_id = ? AND channel = ?"
)
_LIST_ALERTS = (
    f"SELECT {ALERT_COLUMNS} FROM alerts WHERE created_us >= ? ORDER BY created_us DESC, id LIMIT ?"  # noqa: S608 - constant
)
_STALE_DELIVERIES = (
    f"SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE status = ? AND updated_us < ? "  # noqa: S608 - constant
    "ORDER BY updated_us LIMIT ?"
)
_TAKE_DELIVERY = (
    "UPDATE alert_deliveries SET updated_us = ? WHERE alert_id = ? AND channel = ? AND status = ? "
    "AND updated_us = ?"
)
