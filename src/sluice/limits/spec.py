"""Limits, scopes and the calendar that decides periods. Pure: no I/O and no clock of its own.

A limit is ``(metric, period, amount)``:
- metric ``usd`` (nano-dollars), ``tokens`` (prompt + completion), ``requests``, ``concurrent``;
- period ``total``, ``month``, ``week`` (ISO, from Monday), ``day`` — calendar periods in UTC — or
  ``minute`` (rate limits, a window aligned to the minute) or ``now`` (requests in flight).
A scope — ``key:ID``, ``user:KEY_ID:USER``, ``team:NAME``, ``feature:NAME``, ``provider:NAME``, ``all`` —
carries a tuple of limits. A counter is one (scope, metric, window), where a window names one instance
of a period (``d2026-11-24``), so a new day simply starts new counters.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sluice.settings import LimitSettings

USD, TOKENS, REQUESTS, CONCURRENT = "usd", "tokens", "requests", "concurrent"
CALENDAR = ("total", "month", "week", "day")
MINUTE, NOW = "minute", "now"

# Which refusal a scope kind gives when one of its spend or count caps is full.
KEY, USER, TEAM, FEATURE, PROVIDER, ALL = "key", "user", "team", "feature", "provider", "all"


@dataclass(frozen=True, slots=True)
class Limit:
    """One cap on one metric over one period."""

    metric: str
    period: str
    amount: int  # nano-dollars for usd

    def describe(self) -> str:
        """``usd/day``, ``requests/minute``, ``concurrent``."""
        return self.metric if self.period == NOW else f"{self.metric}/{self.period}"

    @property
    def is_rate(self) -> bool:
        """A rate or concurrency limit (retry soon), not a spend or count cap (retrying will not help)."""
        return self.period in (MINUTE, NOW)


Limits = tuple[Limit, ...]
NO_LIMITS: Limits = ()


def compile_limits(settings: LimitSettings | None) -> Limits:
    """The limits a settings block declares (dollars become nano-dollars, rounded down: a cap holds)."""
    if settings is None:
        return NO_LIMITS
    out: list[Limit] = []
    for metric, amounts in ((USD, settings.usd), (TOKENS, settings.tokens), (REQUESTS, settings.requests)):
        if amounts is None:
            continue
        for period in CALENDAR:
            value: Decimal | None = getattr(amounts, period)
            if value is not None:
                out.append(Limit(metric, period, int(value.scaleb(9)) if metric == USD else int(value)))
    if settings.requests_per_minute is not None:
        out.append(Limit(REQUESTS, MINUTE, settings.requests_per_minute))
    if settings.tokens_per_minute is not None:
        out.append(Limit(TOKENS, MINUTE, settings.tokens_per_minute))
    if settings.concurrent is not None:
        out.append(Limit(CONCURRENT, NOW, settings.concurrent))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Scope:
    """A scope a request is counted in, with its limits."""

    id: str
    kind: str
    limits: Limits
    label: str  # for people: "key 'search-prod'", "user 'u42' of key 'search-prod'", "team 'search'"


@dataclass(frozen=True, slots=True)
class Window:
    """One instance of a period: its counter suffix and when it ends (unix µs; 0 = never)."""

    key: str
    end_us: int


_US = 1_000_000
_FOREVER = Window("all", 0)
_INSTANT = Window("now", 0)


def _us(dt: datetime) -> int:
    return int(dt.timestamp()) * _US


def windows_at(ts_us: int) -> dict[str, Window]:
    """The window of every period at a time (unix µs, UTC calendar)."""
    now = datetime.fromtimestamp(ts_us // _US, UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = day - timedelta(days=day.weekday())
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    minute_start = ts_us - ts_us % (60 * _US)
    return {
        "total": _FOREVER,
        "month": Window(f"m{month:%Y-%m}", _us(next_month)),
        "week": Window(f"w{week:%Y-%m-%d}", _us(week + timedelta(days=7))),
        "day": Window(f"d{day:%Y-%m-%d}", _us(day + timedelta(days=1))),
        MINUTE: Window(f"t{minute_start // _US}", minute_start + 60 * _US),
        NOW: _INSTANT,
    }


def period_starts(ts_us: int) -> dict[str, int]:
    """When each calendar period that contains ``ts_us`` began (unix µs): what a rebuild sums from."""
    now = datetime.fromtimestamp(ts_us // _US, UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "total": 0,
        "month": _us(day.replace(day=1)),
        "week": _us(day - timedelta(days=day.weekday())),
        "day": _us(day),
    }


class Calendar:
    """``windows_at`` for the request's time, computed once per minute (the hot path asks every time)."""

    __slots__ = ("_current", "_end", "_start")

    def __init__(self) -> None:
        self._start = 0
        self._end = 0
        self._current: dict[str, Window] = {}

    def windows(self, ts_us: int) -> dict[str, Window]:
        """The windows for ``ts_us``."""
        if not self._start <= ts_us < self._end:
            self._current = windows_at(ts_us)
            self._end = self._current[MINUTE].end_us
            self._start = self._end - 60 * _US
        return self._current


@functools.lru_cache(maxsize=64)
def reset_text(window: Window) -> str:
    """When a window ends, for people and headers: ISO 8601 UTC, or ``never`` (made once per window)."""
    if window.end_us == 0:
        return "never"
    return datetime.fromtimestamp(window.end_us // _US, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
