"""``spend_report``: read a time range from a ledger backend and summarise it (CLI and admin API)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sluice.errors import InvalidRequest
from sluice.ledger.report import COLUMNS, Report, parse_by, parse_time, summarise, to_us
from sluice.ledger.sink import Ledger

DEFAULT_WINDOW = timedelta(days=30)


async def spend_report(
    ledger: Ledger,
    *,
    by: str = "feature",
    since: str | None = None,
    until: str | None = None,
    top: int | None = None,
    now: datetime | None = None,
) -> Report:
    """A grouped report over ``[since, until)`` (default: the last 30 days)."""
    now = now or datetime.now(UTC)
    dims = parse_by(by)
    end = parse_time(until, now) if until else now
    start = parse_time(since, now) if since else end - DEFAULT_WINDOW
    if start >= end:
        raise InvalidRequest("'since' must be before 'until'.", param="since")
    since_us, until_us = to_us(start), to_us(end)
    await ledger.flush()  # everything this process settled so far is in the report
    rows = await ledger.rows(since_us, until_us, COLUMNS)
    return summarise(rows, dims, since_us, until_us, top)
