"""Where entries live: ``memory`` (this process, LRU bounded by bytes), ``sqlite`` (a file in the data
directory, shared by a host's workers) and ``redis`` (shared by every instance). One contract: ``get``
returns a value stored under the key and not yet expired, or None; ``set`` replaces it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from sluice.ledger.entry import wall_clock_us

_PREFIX = "sluice:cache:"


class CacheBackend(Protocol):
    async def start(self) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """An LRU dictionary bounded by the bytes of its values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def start(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._drop(key)  # replaced, or (too large to keep) gone: never the old value
        if len(value) > self.max_bytes:
            return
        self._items[key] = (time.monotonic() + ttl_s, value)
        self.bytes += len(value)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= len(item[1])

    async def close(self) -> None:
        self._items.clear()
        self.bytes = 0


class SQLiteCache:
    """A table in its own file (WAL), read and written on a thread; expired rows are swept on write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._writes = 0

    async def start(self) -> None:
        def open_() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                "expires_us INTEGER NOT NULL)"
            )
            return db

        self._db = await asyncio.to_thread(open_)

    def _run(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        assert self._db is not None, "start() first"
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    async def get(self, key: str) -> bytes | None:
        rows = await asyncio.to_thread(
            self._run, "SELECT value FROM cache WHERE key = ? AND expires_us > ?", (key, wall_clock_us())
        )
        value = rows[0][0] if rows else None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        now = wall_clock_us()
        await asyncio.to_thread(
            self._run,
            "INSERT OR REPLACE INTO cache (key, value, expires_us) VALUES (?, ?, ?)",
            (key, value, now + ttl_s * 1_000_000),
        )
        self._writes += 1
        if self._writes % 1000 == 0:  # now and then, forget what expired
            await asyncio.to_thread(self._run, "DELETE FROM cache WHERE expires_us <= ?", (now,))

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)


class RedisCache:
    """``SET key value PX ttl``: Redis expires and evicts (its own ``maxmemory`` policy)."""

    def __init__(self, url: str, max_connections: int = 256, timeout_s: float = 0.5) -> None:
        # waits for a free connection rather than failing past the pool's size, and gives up soon: a
        # Redis that does not answer makes a miss, never a hung request (SET and GET are idempotent)
        from sluice.store.redis_pool import bounded_client  # noqa: PLC0415 - redis only when configured

        self._redis = bounded_client(url, max_connections, timeout_s)

    async def start(self) -> None:
        await self._redis.ping()

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(_PREFIX + key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._redis.set(_PREFIX + key, value, px=ttl_s * 1000)

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)  # a pool passed in is not closed otherwise
