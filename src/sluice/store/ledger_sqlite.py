"""The SQLite ledger backend: one writer task on the event loop, committing in groups.

Requests only append to a list. Every ``flush_interval`` the writer task commits what gathered as one
transaction of multi-row inserts. That write never waits: its connection has no busy timeout (a
database locked by another worker is retried at the next tick, rows kept), and it never syncs to disk
(WAL with ``synchronous=NORMAL`` syncs only at checkpoints, which are switched off on this connection
and run by a background thread). So a tick costs the loop what appending ~150 rows to the page cache
costs (about a millisecond at 3,000 requests/s), once per window. A writer *thread* measured worse: its
hand-overs of the GIL with the loop cost ~10 µs per request more than the writes themselves.
The schema is ``sluice.store.sqlite``'s migrations (the same file holds keys and the ledger).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from sluice.store.sqlite import SQLiteStore

log = logging.getLogger("sluice.ledger")

_ONE_ROW = "(" + ", ".join("?" * len(COLUMNS)) + ")"
# Rows are inserted by chunks of these sizes, each one statement: SQLite then releases the GIL once per
# chunk, not once per row (a per-row hand-over of the GIL to the event loop is what costs most).
_CHUNKS = (128, 32, 8, 1)
_MULTI = {
    n: f"INSERT OR REPLACE INTO ledger ({', '.join(COLUMNS)}) VALUES {', '.join([_ONE_ROW] * n)}"  # noqa: S608
    for n in _CHUNKS
}
_CONTENT = "INSERT OR REPLACE INTO ledger_content (request_id, request, response) VALUES (?, ?, ?)"
RECONCILE_EVERY_S = 60.0
CHECKPOINT_EVERY_S = 1.0
CLOSE_TRIES = 50
MAX_CARRY = 200_000  # rows kept in memory while the database refuses writes
LEDGER_CACHE_KIB = 256


# A function of one argument that returns None, written in C (``{}.get``): NULL binds at the cost of a
# dictionary lookup, not of a Python call.
_NO_VALUES: dict[None, None] = {}
_NULL: Callable[[None], None] = _NO_VALUES.get


def bind_directly() -> None:
    """Let ``sqlite3`` bind ``None`` and ``bool`` without its adaptation protocol (idempotent).

    sqlite3 passes every parameter that is not exactly an int, float, str or bytearray to that protocol,
    which looks for ``__adapt__`` and ``__conform__`` and builds (then drops) an AttributeError message for
    each miss: a ledger row's NULLs and flags cost more to bind than all its other columns. A registered
    adapter is found first. What is stored is unchanged (NULL; 0 or 1, as sqlite3 binds a bool anyway).
    """
    sqlite3.register_adapter(type(None), _NULL)
    sqlite3.register_adapter(bool, int)


def _insert(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert (or replace) ``rows`` with as few statements as the chunk sizes allow."""
    i = 0
    for size in _CHUNKS:
        while len(rows) - i >= size:
            db.execute(_MULTI[size], list(itertools.chain.from_iterable(rows[i : i + size])))
            i += size


class SQLiteLedger:
    """Group-committing writer over the store's database file."""

    def __init__(
        self,
        path: Path,
        *,
        flush_interval: float = 0.05,
        max_batch: int = 4096,
        stale_after_s: float = 1000.0,
    ) -> None:
        SQLiteStore(path).shut()  # make sure the schema is migrated before the writer opens it
        bind_directly()
        self.path = path
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._stale_after_us = int(stale_after_s * 1_000_000)
        self._items: list[Item] = []
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_reconcile = 0.0
        self._health = WriteHealth()

    @property
    def healthy(self) -> bool:
        """False once commits have failed (not merely waited for a lock) for a while."""
        return self._health.healthy

    # --- the hot path -------------------------------------------------------------------------------

    def open(self, entry: Entry) -> None:
        """Hand over a request about to reach a provider."""
        self._items.append((OPEN, entry))

    def settle(self, entry: Entry, content: Content | None = None) -> None:
        """Hand over a settled request (and its content)."""
        self._items.append((SETTLE, entry))
        if content is not None:
            self._items.append((CONTENT, content))

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the writer's connection, mark what a crash left pending, start the writer and checkpoints."""
        if self._task is not None:
            return
        self._db = self._connect(timeout=0)
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (and their fsync) run in a thread
        self._reconcile()
        self._task = asyncio.create_task(self._run(), name="sluice-ledger")
        self._stopping.clear()
        self._checkpointer = threading.Thread(target=self._checkpoints, name="sluice-checkpoint", daemon=True)
        self._checkpointer.start()

    async def flush(self) -> None:
        """Commit everything handed over so far (at once, not at the next tick)."""
        await self._drain()

    async def _drain(self) -> None:
        for _ in range(CLOSE_TRIES):
            if self._db is None or not self._tick():
                return
            await asyncio.sleep(0.1)  # locked by another worker: try again shortly

    async def close(self) -> None:
        """Commit the rest and stop."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._db is not None:
            await self._drain()
            if self._items:
                log.error("ledger: %d row(s) could not be written before shutdown", len(self._items))
            self._db.close()
            self._db = None
        if self._checkpointer is not None:
            self._stopping.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None

    # --- the writer ---------------------------------------------------------------------------------

    def _connect(self, timeout: float = 30) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=timeout, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Appends touch only the right edge of the ledger's three b-trees: a small page cache holds it
        # (SQLite's default, 2 MiB per connection, is resident memory the writer never reuses).
        db.execute(f"PRAGMA cache_size=-{LEDGER_CACHE_KIB}")
        return db

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            self._tick()
            if time.monotonic() - self._last_reconcile >= RECONCILE_EVERY_S:
                self._reconcile()

    def _tick(self) -> bool:
        """Commit what gathered; True if some of it had to wait (database locked, disk full)."""
        if not self._items:
            return False
        batch, self._items = self._items[: self._max_batch], self._items[self._max_batch :]
        if self._write(batch):
            return bool(self._items)
        self._items = batch + self._items  # kept for the next tick, in order
        if len(self._items) > MAX_CARRY:
            log.error("ledger: %d unwritable rows dropped", len(self._items) - MAX_CARRY)
            self._items = self._items[-MAX_CARRY:]
        return True

    def _write(self, batch: list[Item]) -> bool:
        db = self._db
        assert db is not None
        rows, contents = coalesce(batch)
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # another worker is writing: never wait on the loop
            return False
        try:
            _insert(db, rows)
            if contents:
                db.executemany(_CONTENT, [(c.request_id, c.request, c.response) for c in contents])
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            self._health.failed()
            log.warning("ledger write failed; retrying at the next tick", exc_info=True)
            return False
        self._health.succeeded()
        return True

    def _checkpoints(self) -> None:
        """Move the WAL into the database file every few seconds (this is where SQLite syncs)."""
        db = self._connect()
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.warning("ledger checkpoint failed", exc_info=True)
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def _reconcile(self) -> None:
        """Mark rows pending since before any request could still be running as interrupted."""
        self._last_reconcile = time.monotonic()
        assert self._db is not None
        cutoff = int(time.time() * 1_000_000) - self._stale_after_us
        try:
            cur = self._db.execute(INTERRUPT_SQL.format("?"), (cutoff,))
        except sqlite3.OperationalError:  # locked by another worker: the next pass will do it
            return
        if cur.rowcount:
            log.warning("ledger: %d request(s) interrupted by a stop were marked", cur.rowcount)

    # --- queries ------------------------------------------------------------------------------------

    async def totals(self, since_us: int, key_id: str | None = None) -> Totals:
        """What rows since ``since_us`` count against budgets (see ``TOTALS_SQL``), read on a thread."""
        args: tuple[object, ...]
        if key_id is None:
            sql, args = TOTALS_SQL.format("?", ""), (since_us,)
        else:
            sql, args = TOTALS_SQL.format("?", KEY_FILTER.format("?")), (since_us, key_id)

        def read() -> Totals:
            db = self._connect()
            try:
                return list(db.execute(sql, args).fetchall())
            finally:
                db.close()

        return await asyncio.to_thread(read)

    async def rows(self, since_us: int, until_us: int, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """Rows in a time range (read on a thread with its own connection)."""
        unknown = set(columns) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown ledger columns: {sorted(unknown)}")
        sql = f"SELECT {', '.join(columns)} FROM ledger WHERE ts_us >= ? AND ts_us < ? ORDER BY ts_us"  # noqa: S608 - columns checked above

        def read() -> list[tuple[Any, ...]]:
            db = self._connect()
            try:
                return list(db.execute(sql, (since_us, until_us)).fetchall())
            finally:
                db.close()

        return await asyncio.to_thread(read)
