"""The embedded SQLite store: keys, server metadata and the ledger's schema. Synchronous; callers on the
event loop use a thread (the ledger has its own writer thread and connection, see ``sluice.ledger.sqlite``).

Schema changes are numbered migrations applied in order and recorded in ``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from sluice.keys.policy import OPEN, KeyPolicy
from sluice.settings import LimitSettings

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
)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A virtual key as stored: never the key itself, only its digest and a short hint."""

    id: str
    digest: str
    name: str
    hint: str
    models: tuple[str, ...] | None
    created_at: int
    revoked_at: int | None
    policy: KeyPolicy = OPEN
    owner: str | None = None
    expires_at: int | None = None  # unix seconds
    blocked: bool = False
    limits: LimitSettings | None = None
    user_limits: LimitSettings | None = None  # each end user's quota (None: the gateway's default)
    metadata: dict[str, str] = field(default_factory=dict)
    updated_at: int | None = None


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

    def ping(self) -> bool:
        """True when the database answers."""
        with self._lock:
            return bool(self._db.execute("SELECT 1").fetchone()[0] == 1)

    def get_meta(self, name: str) -> str | None:
        """A server metadata value."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta_if_absent(self, name: str, value: str) -> bool:
        """Store a value unless one exists; True if this call stored it."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (name, value))
        return cur.rowcount == 1

    def set_meta(self, name: str, value: str) -> None:
        """Store or replace a value."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def insert_key(self, row: KeyRow) -> None:
        """Add a virtual key."""
        with self._lock:
            self._db.execute(
                f"INSERT INTO virtual_keys ({_KEY_FIELDS}) VALUES ({', '.join('?' * len(_KEY_COLUMNS))})",  # noqa: S608 - constant
                _key_values(row),
            )

    def replace_key(self, row: KeyRow) -> bool:
        """Store a changed key (same id); False if there is no such key."""
        with self._lock:
            cur = self._db.execute(
                f"UPDATE virtual_keys SET {', '.join(f'{c} = ?' for c in _KEY_COLUMNS[1:])} WHERE id = ?",  # noqa: S608 - constant
                (*_key_values(row)[1:], row.id),
            )
        return cur.rowcount == 1

    def get_key(self, key_id: str) -> KeyRow | None:
        """The key with this id."""
        with self._lock:
            row = self._db.execute(_KEY_SELECT + " FROM virtual_keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else _key_row(row)

    def find_key(self, digest: str) -> KeyRow | None:
        """The key with this digest (an indexed lookup: no scans, no prefixes)."""
        with self._lock:
            row = self._db.execute(
                _KEY_SELECT + " FROM virtual_keys WHERE digest = ?",
                (digest,),
            ).fetchone()
        return None if row is None else _key_row(row)

    def list_keys(self) -> list[KeyRow]:
        """Every key, oldest first."""
        with self._lock:
            rows = self._db.execute(_KEY_SELECT + " FROM virtual_keys ORDER BY created_at, id").fetchall()
        return [_key_row(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key by id; False if there is no such active key."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE virtual_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
        return cur.rowcount == 1

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


_KEY_COLUMNS = (
    "id",
    "digest",
    "name",
    "hint",
    "models",
    "created_at",
    "revoked_at",
    "team",
    "features",
    "tags",
    "require_feature",
    "log_content",
    "owner",
    "expires_at",
    "blocked",
    "limits",
    "user_limits",
    "metadata",
    "updated_at",
)
_KEY_FIELDS = ", ".join(_KEY_COLUMNS)
_KEY_SELECT = f"SELECT {_KEY_FIELDS}"


def _limits_json(limits: LimitSettings | None) -> str | None:
    return limits.model_dump_json(exclude_none=True) if limits is not None else None


def _key_values(row: KeyRow) -> tuple[object, ...]:
    p = row.policy
    return (
        row.id,
        row.digest,
        row.name,
        row.hint,
        _json_list(row.models),
        row.created_at,
        row.revoked_at,
        p.team,
        _json_list(p.features),
        _json_list(p.tags),
        int(p.require_feature),
        int(p.log_content),
        row.owner,
        row.expires_at,
        int(row.blocked),
        _limits_json(row.limits),
        _limits_json(row.user_limits),
        orjson.dumps(row.metadata).decode() if row.metadata else None,
        row.updated_at,
    )


def _json_list(values: Iterable[str] | None) -> str | None:
    return orjson.dumps(sorted(values)).decode() if values is not None else None


def _set(raw: object) -> frozenset[str] | None:
    return frozenset(orjson.loads(str(raw))) if raw is not None else None


def _limits(raw: object) -> LimitSettings | None:
    return LimitSettings.model_validate_json(str(raw)) if raw is not None else None


def _int(raw: object) -> int | None:
    return int(str(raw)) if raw is not None else None


def _key_row(row: tuple[object, ...]) -> KeyRow:
    models = orjson.loads(str(row[4])) if row[4] is not None else None
    policy = KeyPolicy(
        team=str(row[7]) if row[7] is not None else None,
        features=_set(row[8]),
        tags=_set(row[9]),
        require_feature=bool(row[10]),
        log_content=bool(row[11]),
    )
    return KeyRow(
        id=str(row[0]),
        digest=str(row[1]),
        name=str(row[2]),
        hint=str(row[3]),
        models=tuple(models) if models is not None else None,
        created_at=int(str(row[5])),
        revoked_at=_int(row[6]),
        policy=policy,
        owner=str(row[12]) if row[12] is not None else None,
        expires_at=_int(row[13]),
        blocked=bool(row[14]),
        limits=_limits(row[15]),
        user_limits=_limits(row[16]),
        metadata=orjson.loads(str(row[17])) if row[17] is not None else {},
        updated_at=_int(row[18]),
    )
