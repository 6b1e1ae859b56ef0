"""The SQLite ledger backend: one writer thread with its own connection, committing in groups.

The event loop only appends to a ``SimpleQueue`` (no lock, no disk). The writer waits for the first
item, lets ``flush_interval`` pass so more can gather, and commits them all in one transaction. The
schema is ``sluice.store.sqlite``'s migrations (the same file holds keys and the ledger).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sluice.ledger.entry import COLUMNS, INTERRUPTED, PENDING, Entry
from sluice.ledger.sink import CONTENT, OPEN, SETTLE, Content, Item, coalesce
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
_STOP = ("stop", None)
RECONCILE_EVERY_S = 60.0
MAX_CARRY = 200_000  # rows kept in memory while the database refuses writes


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
        max_batch: int = 2048,
        stale_after_s: float = 1000.0,
    ) -> None:
        SQLiteStore(path).close()  # make sure the schema is migrated before the writer opens it
        self.path = path
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._stale_after_us = int(stale_after_s * 1_000_000)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.written = 0  # rows committed (pending and settled writes), for metrics and tests

    # --- the hot path -------------------------------------------------------------------------------

    def open(self, entry: Entry) -> None:
        """Hand over a request about to reach a provider."""
        self._queue.put((OPEN, entry))

    def settle(self, entry: Entry, content: Content | None = None) -> None:
        """Hand over a settled request (and its content)."""
        self._queue.put((SETTLE, entry))
        if content is not None:
            self._queue.put((CONTENT, content))

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sluice-ledger", daemon=True)
            self._thread.start()

    async def flush(self) -> None:
        """Wait for every row queued so far to be committed."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(("flush", done))
        await asyncio.to_thread(done.wait)

    async def close(self) -> None:
        """Commit the rest and stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    # --- the writer thread --------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _run(self) -> None:
        db = self._connect()
        next_reconcile = 0.0
        carry: list[Item] = []  # a batch the database refused (locked, disk full): retried with the next
        try:
            while True:
                now = time.monotonic()
                if now >= next_reconcile:
                    self._reconcile(db)
                    next_reconcile = now + RECONCILE_EVERY_S
                try:
                    first = self._queue.get(timeout=RECONCILE_EVERY_S)
                except queue.Empty:
                    continue
                batch, waiters, stop = self._gather(first)
                batch = carry + batch
                carry = []
                if batch and not self._write(db, batch):
                    carry = batch[-MAX_CARRY:]
                    if len(batch) > MAX_CARRY:
                        log.error("ledger: %d unwritable rows dropped", len(batch) - MAX_CARRY)
                for waiter in waiters:
                    waiter.set()
                if stop:
                    return
        finally:
            db.close()

    def _gather(self, first: Any) -> tuple[list[Item], list[threading.Event], bool]:
        """Collect items for one commit: everything handed over within ``flush_interval`` of the first.

        The writer sleeps through the window instead of waiting on the queue, so the requests that hand
        items over meanwhile never wake it (a wake-up per request costs the event loop a thread switch).
        """
        batch: list[Item] = []
        waiters: list[threading.Event] = []
        stop = False
        pending = [first]
        slept = False
        while True:
            for kind, value in pending:
                if kind == "stop":
                    stop = True
                elif kind == "flush":
                    waiters.append(value)  # commit now: someone is waiting
                else:
                    batch.append((kind, value))
            if stop or waiters or slept or len(batch) >= self._max_batch:
                return batch, waiters, stop
            time.sleep(self._flush_interval)
            slept = True
            pending = []
            while len(pending) < self._max_batch:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break

    def _write(self, db: sqlite3.Connection, batch: list[Item]) -> bool:
        rows, contents = coalesce(batch)
        for attempt in range(3):
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    _insert(db, rows)
                    if contents:
                        db.executemany(_CONTENT, [(c.request_id, c.request, c.response) for c in contents])
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                self.written += len(rows)
                return True
            except sqlite3.OperationalError:  # locked past the busy timeout, disk full…: retry
                log.warning("ledger write failed (attempt %d)", attempt + 1, exc_info=True)
                time.sleep(0.2 * (attempt + 1))
        return False

    def _reconcile(self, db: sqlite3.Connection) -> None:
        """Mark rows pending since before any request could still be running as interrupted."""
        cutoff = int(time.time() * 1_000_000) - self._stale_after_us
        with contextlib.suppress(sqlite3.OperationalError):
            cur = db.execute(
                "UPDATE ledger SET status = ?, usage_estimated = 1 WHERE status = ? AND ts_us < ?",
                (INTERRUPTED, PENDING, cutoff),
            )
            if cur.rowcount:
                log.warning("ledger: %d request(s) interrupted by a stop were marked", cur.rowcount)

    # --- queries ------------------------------------------------------------------------------------

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
