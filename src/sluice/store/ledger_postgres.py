"""The PostgreSQL ledger backend: a writer task on the event loop, committing in groups (asyncpg).

``open``/``settle`` append to a list and wake the writer; it lets ``flush_interval`` pass, then writes
everything gathered with one ``executemany`` in one transaction (``ON CONFLICT`` replaces a pending row
with its settled one). A failed write is kept and retried with backoff; nothing waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from sluice.aio import cancel_and_wait
from sluice.ledger.entry import COLUMNS, Entry
from sluice.ledger.sink import (
    CONTENT,
    INTERRUPT_SQL,
    KEY_FILTER,
    OPEN,
    SETTLE,
    TOTALS_SQL,
    Content,
    Item,
    Totals,
    coalesce,
)
from sluice.store.health import WriteHealth
from sluice.store.postgres import migrated_pool

log = logging.getLogger("sluice.ledger")

_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])
_PLACEHOLDERS = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
_INSERT = (  # built from the constant COLUMNS, never from input
    f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({_PLACEHOLDERS})"  # noqa: S608
    f" ON CONFLICT (request_id) DO UPDATE SET {_UPDATES}"
)
_CONTENT = (
    "INSERT INTO ledger_content (request_id, request, response) VALUES ($1, $2, $3)"
    " ON CONFLICT (request_id) DO UPDATE SET request = EXCLUDED.request, response = EXCLUDED.response"
)
RECONCILE_EVERY_S = 60.0
ACQUIRE_TIMEOUT_S = 5.0
MAX_CARRY = 200_000
CLOSE_WAIT_S = 15.0


class PostgresLedger:
    """Group-committing writer over an asyncpg pool."""

    def __init__(self, dsn: str, *, flush_interval: float = 0.05, stale_after_s: float = 1000.0) -> None:
        self._dsn = dsn
        self._flush_interval = flush_interval
        self._stale_after_us = int(stale_after_s * 1_000_000)
        self._items: list[Item] = []
        self._wake = asyncio.Event()
        self._queued = 0  # hand-overs so far
        self._committed = 0  # hand-overs committed
        self._progress = asyncio.Condition()
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._health = WriteHealth()

    @property
    def healthy(self) -> bool:
        """False once writes have failed for a while (PostgreSQL unreachable)."""
        return self._health.healthy

    def open(self, entry: Entry) -> None:
        """Hand over a request about to reach a provider."""
        self._items.append((OPEN, entry))
        self._queued += 1
        self._wake.set()

    def settle(self, entry: Entry, content: Content | None = None) -> None:
        """Hand over a settled request (and its content)."""
        self._items.append((SETTLE, entry))
        if content is not None:
            self._items.append((CONTENT, content))
        self._queued += 1
        self._wake.set()

    async def start(self) -> None:
        """Connect, migrate and start the writer."""
        if self._task is not None:
            return
        self._pool = await migrated_pool(self._dsn)
        self._task = asyncio.create_task(self._run(), name="sluice-ledger")

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(
                lambda: self._committed >= target or self._task is None or self._task.done()
            )

    async def close(self) -> None:
        """Commit what is left, stop the writer and close the pool."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self.flush(), CLOSE_WAIT_S)
            except TimeoutError:
                log.exception("ledger: %d row(s) could not be written before shutdown", len(self._items))
            await cancel_and_wait(self._task)
            self._task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(self) -> None:
        next_reconcile = 0.0
        backoff = 0.1
        while True:
            if time.monotonic() >= next_reconcile:
                await self._reconcile()
                next_reconcile = time.monotonic() + RECONCILE_EVERY_S
            if not self._items:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), RECONCILE_EVERY_S)
                continue
            await asyncio.sleep(self._flush_interval)  # let a group gather
            batch, self._items, upto = self._items, [], self._queued
            try:
                await self._write(batch)
                self._health.succeeded()
                backoff = 0.1
                async with self._progress:
                    self._committed = upto
                    self._progress.notify_all()
            except Exception:  # whatever the driver raised, the writer must live on and retry
                self._health.failed()
                log.warning("ledger write failed; retrying in %.1fs", backoff, exc_info=True)
                self._items = (batch + self._items)[-MAX_CARRY:]
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _write(self, batch: list[Item]) -> None:
        rows, contents = coalesce(batch)
        assert self._pool is not None
        # bounded: after a server restart, asyncpg's pool can leave an acquire waiting for good
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            await conn.executemany(_INSERT, rows)
            if contents:
                await conn.executemany(_CONTENT, [(c.request_id, c.request, c.response) for c in contents])

    async def _reconcile(self) -> None:
        cutoff = int(time.time() * 1_000_000) - self._stale_after_us
        assert self._pool is not None
        try:
            done = await self._pool.execute(INTERRUPT_SQL.format("$1"), cutoff)
        except Exception:  # retried at the next round; the writer must not die of it
            log.warning("ledger: could not mark interrupted requests", exc_info=True)
            return
        if done != "UPDATE 0":
            log.warning("ledger: requests interrupted by a stop were marked (%s)", done)

    async def totals(self, since_us: int, key_id: str | None = None) -> Totals:
        """What rows since ``since_us`` count against budgets (see ``TOTALS_SQL``)."""
        assert self._pool is not None, "start() first"
        if key_id is None:
            records = await self._pool.fetch(TOTALS_SQL.format("$1", ""), since_us)
        else:
            records = await self._pool.fetch(
                TOTALS_SQL.format("$1", KEY_FILTER.format("$2")), since_us, key_id
            )
        return [tuple(r) for r in records]

    async def rows(self, since_us: int, until_us: int, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """Rows in a time range."""
        unknown = set(columns) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown ledger columns: {sorted(unknown)}")
        assert self._pool is not None, "start() first"
        records = await self._pool.fetch(
            f"SELECT {', '.join(columns)} FROM ledger WHERE ts_us >= $1 AND ts_us < $2 ORDER BY ts_us",  # noqa: S608 - columns checked above
            since_us,
            until_us,
        )
        return [tuple(r) for r in records]
