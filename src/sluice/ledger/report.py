"""Spend reports from ledger rows: grouped totals, tokens per request, and a projected month. Pure.

Used by ``sluice spend`` and ``GET /admin/spend``; both read the rows of a time range from the ledger
backend and hand them here, so the numbers on the terminal and from the API are the same computation.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from sluice.errors import InvalidRequest
from sluice.ledger.entry import TOKEN_COLUMNS, from_us, usd_text

MONTH_US = 30 * 24 * 3600 * 1_000_000
# Group-by dimensions → ledger column (day/week/month and tag:NAME are derived).
DIMENSIONS = {
    "key": "key_id",
    "user": "user_id",
    "team": "team",
    "feature": "feature",
    "alias": "alias",
    "provider": "provider",
    "model": "model",
    "status": "status",
    "endpoint": "endpoint",
}
TIME_DIMENSIONS = ("day", "week", "month")
COLUMNS = (
    "ts_us",
    *DIMENSIONS.values(),
    "tags",
    *TOKEN_COLUMNS,
    "cost_nanos",
    "usage_estimated",
    "cache_hit",
    "saved_nanos",
)
_IDX = {name: i for i, name in enumerate(COLUMNS)}
_RELATIVE = re.compile(r"(\d+)([hdw])")


def parse_by(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"feature,day"`` → ``("feature", "day")``, each checked."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    dims = tuple(p.strip() for p in parts if p.strip())
    for dim in dims:
        if dim not in DIMENSIONS and dim not in TIME_DIMENSIONS and not (dim.startswith("tag:") and dim[4:]):
            choices = ", ".join([*DIMENSIONS, *TIME_DIMENSIONS, "tag:NAME"])
            raise InvalidRequest(f"Unknown grouping {dim!r}; use any of: {choices}.", param="by")
    return dims


def parse_time(text: str, now: datetime) -> datetime:
    """``7d``/``12h``/``2w`` (ago), an ISO date (UTC midnight) or an ISO date-time (naive = UTC)."""
    text = text.strip()
    rel = _RELATIVE.fullmatch(text)
    if rel:
        n, unit = int(rel.group(1)), rel.group(2)
        return now - {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(
            f"Invalid time {text[:40]!r}: use 7d, 12h, 2w, 2026-11-01 or 2026-11-01T12:00Z.", param="since"
        ) from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def to_us(when: datetime) -> int:
    """Unix microseconds."""
    return int(when.timestamp()) * 1_000_000 + when.microsecond


@dataclass(slots=True)
class Group:
    """Totals for one group."""

    key: tuple[str, ...]
    requests: int = 0
    estimated: int = 0  # rows whose usage was estimated (cut streams, disconnects)
    cost_nanos: int = 0
    cache_hits: int = 0  # answered from the response cache
    saved_nanos: int = 0  # what those answers cost when they were made
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_COLUMNS, 0))
    per_request: list[int] = field(default_factory=list)  # input + output tokens of each request

    def percentile(self, q: int) -> int:
        """Nearest-rank percentile of tokens per request."""
        if not self.per_request:
            return 0
        ranked = sorted(self.per_request)
        return ranked[max(-(-q * len(ranked) // 100) - 1, 0)]


@dataclass(slots=True)
class Report:
    """A grouped spend report over ``[since_us, until_us)``."""

    by: tuple[str, ...]
    since_us: int
    until_us: int
    groups: list[Group]
    total: Group

    def projected_month(self, group: Group) -> int:
        """Nano-dollars a 30-day month would cost at the rate seen in the range."""
        window = max(self.until_us - self.since_us, 1)
        return group.cost_nanos * MONTH_US // window

    def as_dicts(self) -> list[dict[str, Any]]:
        """One flat record per group (and none for the total)."""
        return [self._record(g) for g in self.groups]

    def _record(self, g: Group) -> dict[str, Any]:
        out: dict[str, Any] = dict(zip(self.by, g.key, strict=True)) if g.key else {}
        out["requests"] = g.requests
        out.update(g.tokens)
        out["cost_nanos"] = g.cost_nanos
        out["cost_usd"] = usd_text(g.cost_nanos)
        out["cost_per_request_usd"] = usd_text(g.cost_nanos // g.requests if g.requests else 0)
        out["tokens_p50"] = g.percentile(50)
        out["tokens_p95"] = g.percentile(95)
        out["projected_month_usd"] = usd_text(self.projected_month(g))
        out["usage_estimated"] = g.estimated
        out["cache_hits"] = g.cache_hits
        out["saved_usd"] = usd_text(g.saved_nanos)
        return out

    def as_total(self) -> dict[str, Any]:
        """The record for every row in the range (group keys ``None``)."""
        return self._record(self.total) | dict.fromkeys(self.by, None)

    def to_json(self) -> bytes:
        """The report as JSON (``object: spend_report``)."""
        return orjson.dumps(
            {
                "object": "spend_report",
                "by": list(self.by),
                "since": from_us(self.since_us).isoformat(),
                "until": from_us(self.until_us).isoformat(),
                "groups": self.as_dicts(),
                "total": self.as_total(),
            }
        )

    def to_csv(self) -> str:
        """The groups as CSV with a header row."""
        rows = self.as_dicts()
        out = io.StringIO()
        fields = [*self.by, *(k for k in self._record(self.total) if k not in self.by)]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()


def _dimension(row: Sequence[Any], dim: str) -> str:
    if dim in DIMENSIONS:
        value = row[_IDX[DIMENSIONS[dim]]]
        return "" if value is None else str(value)
    if dim.startswith("tag:"):
        raw = row[_IDX["tags"]]
        tags = orjson.loads(raw) if raw else {}
        return str(tags.get(dim[4:], ""))
    when = from_us(int(row[_IDX["ts_us"]]))
    if dim == "day":
        return when.date().isoformat()
    if dim == "week":
        year, week, _ = when.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{when.year}-{when.month:02d}"


def summarise(
    rows: Iterable[Sequence[Any]], by: tuple[str, ...], since_us: int, until_us: int, top: int | None = None
) -> Report:
    """Group ``rows`` (``COLUMNS``, in order) by ``by``; groups by cost, highest first."""
    groups: dict[tuple[str, ...], Group] = {}
    total = Group(())
    for row in rows:
        key = tuple(_dimension(row, d) for d in by)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(key)
        for g in (group, total):
            g.requests += 1
            g.cost_nanos += int(row[_IDX["cost_nanos"]])
            g.estimated += 1 if row[_IDX["usage_estimated"]] else 0
            if row[_IDX["cache_hit"]]:
                g.cache_hits += 1
                g.saved_nanos += int(row[_IDX["saved_nanos"]])
            for name in TOKEN_COLUMNS:
                g.tokens[name] += int(row[_IDX[name]])
            g.per_request.append(int(row[_IDX["input_tokens"]]) + int(row[_IDX["output_tokens"]]))
    ordered = sorted(groups.values(), key=lambda g: (-g.cost_nanos, g.key))
    return Report(by, since_us, until_us, ordered[:top] if top else ordered, total)
