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

    async def flush(self) -> None:
        """Wait until everything handed over so far is committed."""
        ...

    async def close(self) -> None:
        """Commit what is left and stop."""
        ...

    async def rows(self, since_us: int, until_us: int, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """Settled and pending rows with ``since_us <= ts_us < until_us``: the given columns."""
        ...
