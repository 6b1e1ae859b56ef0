"""The interface every ledger backend keeps, and the group-commit batching they share. Pure.

``open``/``settle`` are called on the hot path and never block: they append the entry to the backend's
list; its writer task (on the same event loop) commits whatever has accumulated as one transaction
(group commit) and builds the rows then, off the request's path. A request that settled before the
commit is written once, settled; one still running is written pending (it reached the provider: a crash
cannot lose it) and replaced when it settles. Pending rows older than every deadline are marked
``interrupted``. An entry is never changed after ``settle``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sluice.ledger.entry import Entry


@dataclass(slots=True)
class Content:
    """A request's prompt and answer, kept only when the key asks for it."""

    request_id: str
    request: bytes
    response: bytes


OPEN, SETTLE, CONTENT = "open", "settle", "content"
# How a row counts against budgets, grouped by every scope column: a pending row (still running, or left
# by a process that died) at the worst case it reserved, a refused row not at all. ``{}`` is the
# backend's placeholder for the start of the period.
TOTALS_SQL = (
    "SELECT key_id, user_id, team, feature, provider,"
    " SUM(CASE WHEN status = 'pending' THEN reserved_nanos ELSE cost_nanos END),"
    " SUM(CASE WHEN status = 'pending' THEN reserved_input_tokens + reserved_output_tokens"
    " ELSE input_tokens + output_tokens END),"
    " SUM(CASE WHEN status = 'refused' THEN 0 ELSE 1 END)"
    " FROM ledger WHERE ts_us >= {0}{1} GROUP BY key_id, user_id, team, feature, provider"
)
KEY_FILTER = " AND key_id = {}"  # TOTALS_SQL for one key
# A row pending since before any request could still be running: its process died. It is settled at
# what it reserved (never dropped, never $0), flagged as an estimate.
INTERRUPT_SQL = (
    "UPDATE ledger SET status = 'interrupted', usage_estimated = TRUE, cost_nanos = reserved_nanos,"
    " input_tokens = reserved_input_tokens, output_tokens = reserved_output_tokens"
    " WHERE status = 'pending' AND ts_us < {}"
)
Totals = list[tuple[Any, ...]]  # (key_id, user_id, team, feature, provider, nanos, tokens, requests)

Item = tuple[str, Entry | Content]  # (OPEN, entry), (SETTLE, entry) or (CONTENT, content)


def coalesce(items: Iterable[Item]) -> tuple[list[tuple[Any, ...]], list[Content]]:
    """The rows to write for a batch: a settled entry's final row, a running entry's pending row (one per
    request id, in first-seen order), and the contents as they came."""
    rows: dict[str, tuple[Any, ...]] = {}
    contents: list[Content] = []
    for kind, value in items:
        if isinstance(value, Content):
            contents.append(value)
        elif kind == SETTLE:
            rows[value.request_id] = value.row()
        elif not value.settled:  # settled already: its final row is handed over after this item
            rows.setdefault(value.request_id, value.row())
    return list(rows.values()), contents


class Ledger(Protocol):
    """A ledger backend: non-blocking writes on the hot path, queries for reports."""

    def open(self, entry: Entry) -> None:
        """Record that a request is about to reach a provider (written if still running at commit)."""
        ...

    def settle(self, entry: Entry, content: Content | None = None) -> None:
        """Record the request's final row (and its content, when the key logs content)."""
        ...

    async def start(self) -> None:
        """Start the writer (inside the serving event loop)."""
        ...

    @property
    def healthy(self) -> bool:
        """False while the writer has been failing to commit for a while (capped requests fail closed)."""
        ...

    async def flush(self) -> None:
        """Wait until everything handed over so far is committed."""
        ...

    async def close(self) -> None:
        """Commit what is left and stop."""
        ...

    async def rows(self, since_us: int, until_us: int, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """Settled and pending rows with ``since_us <= ts_us < until_us``: the given columns."""
        ...

    async def totals(self, since_us: int, key_id: str | None = None) -> Totals:
        """What rows since ``since_us`` (of one key, if given) count against budgets, per combination of
        scope columns."""
        ...
