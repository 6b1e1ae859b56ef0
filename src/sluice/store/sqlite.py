"""The embedded SQLite store: keys and server metadata. Synchronous; callers on the event loop use a thread.

Schema changes are numbered migrations applied in order and recorded in ``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

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
        models = orjson.dumps(list(row.models)).decode() if row.models is not None else None
        with self._lock:
            self._db.execute(
                "INSERT INTO virtual_keys (id, digest, name, hint, models, created_at, revoked_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.digest, row.name, row.hint, models, row.created_at, row.revoked_at),
            )

    def find_key(self, digest: str) -> KeyRow | None:
        """The key with this digest (an indexed lookup: no scans, no prefixes)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, digest, name, hint, models, created_at, revoked_at FROM virtual_keys"
                " WHERE digest = ?",
                (digest,),
            ).fetchone()
        return None if row is None else _key_row(row)

    def list_keys(self) -> list[KeyRow]:
        """Every key, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, digest, name, hint, models, created_at, revoked_at FROM virtual_keys"
                " ORDER BY created_at, id"
            ).fetchall()
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


def _key_row(row: tuple[object, ...]) -> KeyRow:
    models = orjson.loads(str(row[4])) if row[4] is not None else None
    return KeyRow(
        id=str(row[0]),
        digest=str(row[1]),
        name=str(row[2]),
        hint=str(row[3]),
        models=tuple(models) if models is not None else None,
        created_at=int(str(row[5])),
        revoked_at=int(str(row[6])) if row[6] is not None else None,
    )
