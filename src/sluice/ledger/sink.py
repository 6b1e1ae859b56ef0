"""The interface every ledger backend keeps, and the group-commit batching they share. Pure.

``open``/``settle`` are called on the hot path and never block: they hand a row snapshot to the backend's
writer, which commits whatever has accumulated as one transaction (group commit). Within a batch a
settled row replaces its own pending row, so a request that finishes before the next commit is written
once; a longer one is written pending first (it reached the provider: a crash cannot lose it) and
replaced when it settles. Pending rows older than every deadline are marked ``interrupted``.
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


Item = tuple[str, tuple[Any, ...] | Content]  # ("row", values) or ("content", Content)


def coalesce(items: Iterable[Item]) -> tuple[list[tuple[Any, ...]], list[Content]]:
    """One row per request id (the last written wins), in first-seen order; contents as they came."""
    rows: dict[str, tuple[Any, ...]] = {}
    contents: list[Content] = []
    for kind, value in items:
        if kind == "row":
            assert isinstance(value, tuple)
            rows[value[0]] = value
        else:
            assert isinstance(value, Content)
            contents.append(value)
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
