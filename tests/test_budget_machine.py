"""Budgets as a state machine over the real parts: ``Limiter`` on ``MemoryCounters``, requests settled
through ``Accounting`` into a real ``SQLiteLedger``, process restarts, and a clock that crosses UTC days,
weeks and months. Plus edge cases of the counters and the calendar, and of a key's limits changing.

After every step the ledger is flushed and, for every counter of a limit in force:

1. ``spent + reserved <= limit``;
2. for a calendar limit (usd, tokens or requests; total, month, week or day), with the sum over the
   ledger rows whose ``ts_us`` lies in the counter's window and whose columns place them in its scope::

       spent + reserved == Σ counted(row)
       reserved         == Σ reservation(request) over this process's requests in flight in the window

   where ``counted`` is what ``TOTALS_SQL`` counts: a pending row at its reservation (reserved_nanos,
   reserved_input_tokens + reserved_output_tokens, 1 request), a refused row as nothing, any other row
   (ok, error, interrupted) at its actual cost_nanos, input + output tokens and 1 request. So a request
   in flight here is in ``reserved`` and its pending row; after a restart, one the dead process left in
   flight is a pending (or interrupted) row counted in ``spent``. A limit with no counter for the current
   window has a sum of 0;
3. a concurrency counter holds exactly this process's requests in flight in its scope;
4. each request made has exactly one row; the pending rows are the requests in flight here and those a
   restart left behind (unless the restart marked them interrupted).

Admission is checked against the counters read just before it: a request is refused exactly when some
limit lacks room for its worst case, the refusal names such a limit, and it reserves nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Coroutine, Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sluice.accounting import UNREACHABLE, Accounting
from sluice.errors import BudgetExceeded, LimitReached, SluiceError, UpstreamError
from sluice.ledger.entry import ERROR, OK, REFUSED, Entry
from sluice.limits.counters import CounterKey, MemoryCounters, Need
from sluice.limits.limiter import KeyLimits, Limiter, key_limits
from sluice.limits.spec import (
    CALENDAR,
    CONCURRENT,
    REQUESTS,
    TOKENS,
    USD,
    Calendar,
    Limit,
    Limits,
    Scope,
    compile_limits,
    period_starts,
    windows_at,
)
from sluice.metrics import Metrics
from sluice.pricing.cost import Pricer
from sluice.pricing.sheet import Rates
from sluice.pricing.usage import TokenUsage
from sluice.settings import BudgetSettings, LimitSettings
from sluice.store.keys import KeyRow
from sluice.store.ledger_sqlite import SQLiteLedger

T = TypeVar("T")
US = 1_000_000
DAY_US = 86_400 * US
PRICER = Pricer("openai", "m", rates=Rates(input=Decimal(50), output=Decimal(50)))  # 50,000 n$ a token


def _limits(spec: dict[str, Any]) -> LimitSettings:
    return LimitSettings.model_validate(spec)


# A request's worst case is at most 80 prompt + 80 output tokens ($0.008): one to three fill any of these.
BUDGETS = BudgetSettings.model_validate(
    {
        "all": {"usd": {"day": "0.025"}},
        "teams": {"t": {"usd": {"week": "0.015"}}},
        "users": {"requests": {"day": 3}},  # k1's end users (k2 sets its own)
    }
)
PROVIDERS = {"openai": _limits({"tokens": {"month": 1500}})}
K1_LIMITS = _limits({"usd": {"total": "0.02", "day": "0.008"}})
K2_LIMITS = _limits(
    {"tokens": {"day": 400}, "requests": {"month": 8}, "concurrent": 2, "requests_per_minute": 3}
)
K2_USERS = _limits({"usd": {"day": "0.005"}})
KEYS: dict[str, tuple[KeyLimits, str | None]] = {  # k1's end users get the gateway's default quota
    "k1": (key_limits("k1", "one", K1_LIMITS, None), "t"),
    "k2": (key_limits("k2", "two", K2_LIMITS, K2_USERS), None),
}


def _row(key_id: str, limits: LimitSettings | None, user_limits: LimitSettings | None = None) -> KeyRow:
    return KeyRow(key_id, "digest", key_id, "hint", None, 0, None, limits=limits, user_limits=user_limits)


async def _key_rows() -> list[KeyRow]:
    """The key store's rows, as a starting app reads them."""
    return [_row("k1", K1_LIMITS), _row("k2", K2_LIMITS, K2_USERS)]


def _limits_of(scope_id: str) -> Limits:
    """The limits in force on a scope, from the settings above (independently of the limiter)."""
    kind, _, rest = scope_id.partition(":")
    if kind == "key":
        scope = KEYS[rest][0].scope
        return scope.limits if scope is not None else ()
    if kind == "user":
        key_id = rest.split(":", 1)[0]
        return KEYS[key_id][0].user_limits or compile_limits(BUDGETS.users)
    if kind == "team":
        return compile_limits(BUDGETS.teams.get(rest))
    if kind == "provider":
        return compile_limits(PROVIDERS.get(rest))
    return compile_limits(BUDGETS.all)


def _day(ts_us: int) -> date:
    return datetime.fromtimestamp(ts_us // US, UTC).date()


def _us(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * US


def _month_after(d: date) -> date:
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


def _window_keys(ts_us: int) -> dict[str, str]:
    """Each period's window name at a time, computed here rather than by ``sluice.limits.spec``."""
    d = _day(ts_us)
    return {
        "total": "all",
        "month": f"m{d:%Y-%m}",
        "week": f"w{d - timedelta(days=d.weekday()):%Y-%m-%d}",
        "day": f"d{d:%Y-%m-%d}",
        "minute": f"t{ts_us // US // 60 * 60}",
        "now": "now",
    }


def _span(window: str) -> tuple[str, int, int]:
    """A calendar window's period and [start, end) in unix µs."""
    if window == "all":
        return "total", 0, 2**62
    if window.startswith("m"):
        start = date.fromisoformat(window[1:] + "-01")
        return "month", _us(start), _us(_month_after(start))
    start = date.fromisoformat(window[1:])
    if window.startswith("w"):
        return "week", _us(start), _us(start + timedelta(days=7))
    assert window.startswith("d"), window
    return "day", _us(start), _us(start + timedelta(days=1))


def _period(window: str) -> str:
    if window == "now":
        return "now"
    if window.startswith("t"):
        return "minute"
    return _span(window)[0]


def _scope_ids(key_id: str | None, user: str | None, team: str | None, provider: str) -> set[str]:
    out = {"all"}
    if key_id is not None:
        out.add(f"key:{key_id}")
        if user is not None:
            out.add(f"user:{key_id}:{user}")
    if team is not None:
        out.add(f"team:{team}")
    if provider:
        out.add(f"provider:{provider}")
    return out


def _amount(metric: str, nanos: int, tokens: int) -> int:
    return nanos if metric == USD else tokens if metric == TOKENS else 1


ROW_COLUMNS = (
    "request_id",
    "ts_us",
    "key_id",
    "user_id",
    "team",
    "provider",
    "status",
    "cost_nanos",
    "input_tokens",
    "output_tokens",
    "reserved_nanos",
    "reserved_input_tokens",
    "reserved_output_tokens",
)

# Where a run starts: month and week ends, a leap day, and a date in the past (then a restart marks
# what the dead process left pending as interrupted: its wall-clock deadline has long passed).
STARTS = [
    datetime(2027, 2, 28, 23, 59, 58, tzinfo=UTC),  # Sunday, last day of February
    datetime(2028, 2, 29, 23, 59, 59, 500_000, tzinfo=UTC),  # leap day
    datetime(2026, 11, 29, 23, 0, tzinfo=UTC),  # Sunday before a Monday
    datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),  # in the past
]


class BudgetMachine(RuleBasedStateMachine):
    """Requests reserved, settled, cancelled and dropped by restarts, while the clock moves on."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-machine-"))
        self.now = int(STARTS[0].timestamp()) * US
        self.ledger = self._open_ledger()
        self.limiter, self.accounting = self._process()
        self.in_flight: list[Entry] = []
        self.left: list[str] = []  # request ids a restart left in flight
        self.interrupted: set[str] = set()  # those a restart marked interrupted
        self.made = 0
        self.users: set[str] = set()
        self.restarts = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def _process(self) -> tuple[Limiter, Accounting]:
        """A serving process's budgets: counters on the machine's clock, settled through accounting."""
        limiter = Limiter(MemoryCounters(lambda: self.now), BUDGETS, PROVIDERS)
        return limiter, Accounting(self.ledger, Metrics(None), limiter)

    def _open_ledger(self) -> SQLiteLedger:
        # no timed commits: rows are written when a step flushes, so each check sees a known state
        ledger = SQLiteLedger(self.dir / "sluice.db", flush_interval=3600)
        self.run(ledger.start())
        return ledger

    def teardown(self) -> None:
        try:
            self.run(self.ledger.close())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _counters(self) -> dict[CounterKey, tuple[int, int]]:
        return {key: (spent, reserved) for key, spent, reserved in self.run(self.limiter.counters.read(""))}

    # --- rules ----------------------------------------------------------------------------------------

    @initialize(start=st.sampled_from(STARTS))
    def start(self, start: datetime) -> None:
        self.now = int(start.timestamp()) * US + start.microsecond

    @rule(
        key_id=st.sampled_from(sorted(KEYS)),
        user=st.sampled_from([None, "u1", "u2"]),
        body_bytes=st.integers(1, 160),
        output_cap=st.integers(0, 80),
    )
    def reserve(self, key_id: str, user: str | None, body_bytes: int, output_cap: int) -> None:
        limits, team = KEYS[key_id]
        self.made += 1
        entry = Entry(
            request_id=f"r{self.made}",
            ts_us=self.now,
            endpoint="chat",
            alias="m",
            key_id=key_id,
            user=user,
            team=team,
            provider="openai",
            model="m",
            pricer=PRICER,
            output_cap=output_cap,
            body_bytes=body_bytes,
            input_estimate=-(-body_bytes // 4),
            started_ns=time.perf_counter_ns(),
        )
        if user is not None:
            self.users.add(f"user:{key_id}:{user}")
        entry.scopes = self.limiter.scopes(key_id, limits, user, team, None)
        before = self._counters()
        try:
            self.run(self.limiter.admit(entry, entry.scopes, body_bytes))
        except (BudgetExceeded, LimitReached) as err:
            assert entry.reserved_nanos == entry.reserved_output_tokens == 0  # refused: nothing reserved
            self._check_refusal(entry, err, before, body_bytes)
            self.accounting.settle(entry, REFUSED, err.status, error=err)  # as the HTTP edge does
            return
        need = Need(entry.reserved_nanos, entry.reserved_input_tokens + entry.reserved_output_tokens)
        assert not self._lacking(entry, need, before), "admitted although a limit had no room"
        assert entry.hold is not None
        self.ledger.open(entry)
        self.in_flight.append(entry)

    def _all_scopes(self, entry: Entry) -> list[Scope]:
        provider = Scope("provider:openai", "provider", _limits_of("provider:openai"), "provider")
        return [*entry.scopes, provider]

    def _lacking(
        self, entry: Entry, need: Need, before: dict[CounterKey, tuple[int, int]]
    ) -> list[tuple[str, Limit]]:
        """The limits with no room for ``need``, per the counters read before admission."""
        windows = _window_keys(entry.ts_us)
        out = []
        for scope in self._all_scopes(entry):
            for limit in scope.limits:
                spent, reserved = before.get((scope.id, limit.metric, windows[limit.period]), (0, 0))
                if spent + reserved + need.of(limit.metric) > limit.amount:
                    out.append((scope.id, limit))
        return out

    def _check_refusal(
        self, entry: Entry, err: SluiceError, before: dict[CounterKey, tuple[int, int]], body_bytes: int
    ) -> None:
        need = self.limiter.need(dataclasses.replace(entry), body_bytes)  # what it asked for
        lacking = self._lacking(entry, need, before)
        named = (err.headers["x-sluice-limit-scope"], err.headers["x-sluice-limit"])
        assert named in {(s, lim.describe()) for s, lim in lacking}, (named, lacking)
        scope, limit = next((s, lim) for s, lim in lacking if (s, lim.describe()) == named)
        event(f"refused by {scope.split(':')[0]} {limit.describe()}")
        if limit.is_rate:
            assert isinstance(err, LimitReached)
        else:
            assert isinstance(err, BudgetExceeded)
            assert err.code == ("user_quota_exceeded" if scope.startswith("user:") else "budget_exceeded")
        after = self._counters()  # all or nothing: nothing reserved anywhere
        for key, value in after.items():
            assert value == before.get(key, (0, 0)), (key, value)
        for key in before.keys() - after.keys():  # swept: only a window that ended, holding nothing
            assert before[key][1] == 0
            assert key[2] != _window_keys(entry.ts_us)[_period(key[2])]

    @precondition(lambda self: self.in_flight)
    @rule(
        data=st.data(),
        free=st.booleans(),
    )
    def settle(self, data: st.DataObject, free: bool) -> None:
        entry = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1), label="which"))
        usage = TokenUsage(
            input_tokens=data.draw(st.integers(0, entry.reserved_input_tokens), label="input"),
            output_tokens=data.draw(st.integers(0, entry.reserved_output_tokens), label="output"),
            billed_usd=Decimal(0) if free else None,  # a provider that states it billed nothing
        )
        entry.upstream_status = 200
        self.accounting.settle(entry, OK, 200, tokens=usage)
        expected = 0 if free else PRICER.charge(usage, entry.ts_us).nanos
        assert entry.cost_nanos == expected <= entry.reserved_nanos

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), unreachable=st.booleans())
    def cancel(self, data: st.DataObject, unreachable: bool) -> None:
        """The request fails: the provider was unreachable, or answered an error status (not billed)."""
        entry = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1), label="which"))
        if unreachable:
            err = UpstreamError("connection refused", code=UNREACHABLE)
        else:
            entry.upstream_status = 503
            err = UpstreamError("overloaded")
        self.accounting.settle(entry, ERROR, err.status, error=err)
        assert entry.cost_nanos == 0

    @rule()
    def restart(self) -> None:
        """The process dies with requests in flight; a new one rebuilds its counters from the ledger."""
        windows = _window_keys(self.now)
        before = {
            key: spent + reserved
            for key, (spent, reserved) in self._counters().items()
            if _period(key[2]) in CALENDAR
            and key[2] == windows[_period(key[2])]
            and any(x.metric == key[1] and x.period == _period(key[2]) for x in _limits_of(key[0]))
        }
        self.run(self.ledger.flush())
        self.run(self.ledger.close())
        self.left += [e.request_id for e in self.in_flight]
        self.in_flight = []  # their rows stay pending: the process died before settling them
        self.ledger = self._open_ledger()
        # a new ledger marks rows pending since before every deadline (wall clock) as interrupted
        rows = self.run(self.ledger.rows(0, 2**62, ("request_id", "status")))
        self.interrupted = {rid for rid, status in rows if status == "interrupted"}
        self.limiter, self.accounting = self._process()
        self.run(self.limiter.start(self.ledger, _key_rows))  # as the app starts: spend from the ledger
        self.restarts += 1
        event(f"restart with {len(self.left)} left in flight, {len(self.interrupted)} interrupted")
        after = self._counters()
        for key, used in before.items():  # what was reserved is now spent, at the reservation
            assert after.get(key, (0, 0)) == (used, 0), (key, used, after.get(key))

    @rule(
        step=st.one_of(
            st.integers(1, 5 * US),
            st.integers(1, 3600).map(lambda s: s * US),
            st.integers(1, 48).map(lambda h: h * 3600 * US),
            st.integers(1, 40).map(lambda d: d * DAY_US),
        )
    )
    def advance_clock(self, step: int) -> None:
        self.now += step

    @rule(
        boundary=st.sampled_from(["day", "week", "month"]),
        offset=st.sampled_from([-US, -1, 0, 1, US]),
    )
    def to_boundary(self, boundary: str, offset: int) -> None:
        """Just before, at or just after the next UTC midnight, Monday or first of the month."""
        d = _day(self.now)
        nxt = {
            "day": d + timedelta(days=1),
            "week": d + timedelta(days=7 - d.weekday()),
            "month": _month_after(d),
        }[boundary]
        self.now = max(self.now, _us(nxt) + offset)

    # --- invariants -----------------------------------------------------------------------------------

    @invariant()
    def counters_hold_and_equal_the_ledger(self) -> None:
        self.run(self.ledger.flush())
        rows = self.run(self.ledger.rows(0, 2**62, ROW_COLUMNS))
        counters = self._counters()
        self._check_rows(rows)
        for (scope, metric, window), (spent, reserved) in counters.items():
            assert spent >= 0 and reserved >= 0
            period = _period(window)
            limit = next((x for x in _limits_of(scope) if x.metric == metric and x.period == period), None)
            if limit is None:
                # a start loads all three metrics of a scope with limits, though only the limited ones
                # are kept up to date afterwards
                assert self.restarts > 0 and period in CALENDAR and _limits_of(scope), (scope, metric, window)
                continue
            assert spent + reserved <= limit.amount, (scope, metric, window, spent, reserved)
            if metric == CONCURRENT:
                assert spent == 0
                assert reserved == sum(1 for e in self.in_flight if scope in self._scopes_of(e))
            elif period in CALENDAR:
                assert (spent + reserved, reserved) == self._sums(rows, scope, metric, window), (
                    scope,
                    metric,
                    window,
                )
        windows = _window_keys(self.now)
        scopes = {f"key:{k}" for k in KEYS} | self.users | {"team:t", "provider:openai", "all"}
        for scope in scopes:
            for limit in _limits_of(scope):
                key = (scope, limit.metric, windows[limit.period])
                if limit.period in CALENDAR and key not in counters:
                    assert self._sums(rows, scope, limit.metric, key[2]) == (0, 0), key

    @staticmethod
    def _scopes_of(e: Entry) -> set[str]:
        return _scope_ids(e.key_id, e.user, e.team, e.provider)

    def _sums(self, rows: Iterable[tuple[Any, ...]], scope: str, metric: str, window: str) -> tuple[int, int]:
        """(Σ counted(row) over the window's rows in the scope, Σ reservations in flight here)."""
        _, start, end = _span(window)
        total = 0
        for _rid, ts, key_id, user, team, provider, status, cost, t_in, t_out, r_nanos, r_in, r_out in rows:
            if not start <= ts < end or scope not in _scope_ids(key_id, user, team, provider):
                continue
            if status == "pending":
                total += _amount(metric, r_nanos, r_in + r_out)
            elif status != "refused":
                total += _amount(metric, cost, t_in + t_out)
        held = sum(
            _amount(metric, e.reserved_nanos, e.reserved_input_tokens + e.reserved_output_tokens)
            for e in self.in_flight
            if start <= e.ts_us < end and scope in self._scopes_of(e)
        )
        return total, held

    def _check_rows(self, rows: list[tuple[Any, ...]]) -> None:
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids)) == self.made
        pending = {r[0] for r in rows if r[6] == "pending"}
        expected = {e.request_id for e in self.in_flight} | (set(self.left) - self.interrupted)
        assert pending == expected
        assert self.interrupted <= set(self.left)


BudgetMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestBudgetMachine = BudgetMachine.TestCase


# --- edge cases of the counters and the calendar ------------------------------------------------------


def _at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, micro: int = 0) -> int:
    """Unix µs of a UTC time."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()) * US + micro


def test_refusal_on_a_later_scope_reserves_nothing_on_earlier_ones() -> None:
    counters = MemoryCounters()
    roomy = Scope("key:a", "key", (Limit(USD, "day", 100), Limit(REQUESTS, "total", 10)), "key 'a'")
    full = Scope("team:b", "team", (Limit(TOKENS, "day", 5),), "team 'b'")
    now = _at(2027, 3, 1, 12, 0, 0, 0)
    with pytest.raises(BudgetExceeded) as caught:
        counters.reserve_now((roomy, full), Need(nanos=40, tokens=6), now)
    assert caught.value.headers["x-sluice-limit-scope"] == "team:b"
    assert all(reserved == 0 and spent == 0 for _key, spent, reserved in asyncio.run(counters.read("")))
    hold = counters.reserve_now((roomy, full), Need(nanos=40, tokens=5), now)  # fits exactly
    assert {k: r for k, _s, r in asyncio.run(counters.read(""))} == {
        ("key:a", USD, "d2027-03-01"): 40,
        ("key:a", REQUESTS, "all"): 1,
        ("team:b", TOKENS, "d2027-03-01"): 5,
    }
    counters.settle(hold, nanos=30, tokens=4)
    counters.settle(hold, nanos=30, tokens=4)  # settled once only
    assert {k: (s, r) for k, s, r in asyncio.run(counters.read(""))} == {
        ("key:a", USD, "d2027-03-01"): (30, 0),
        ("key:a", REQUESTS, "all"): (1, 0),
        ("team:b", TOKENS, "d2027-03-01"): (4, 0),
    }


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        # the last microsecond of a day vs the first of the next (a Thursday to a Friday)
        (_at(2027, 3, 4, 23, 59, 59, 999_999), _at(2027, 3, 5, 0, 0, 0, 0), {"day"}),
        # end of February (a Sunday) → a Monday in March: day, ISO week and month all change
        (_at(2027, 2, 28, 23, 59, 59, 999_999), _at(2027, 3, 1, 0, 0, 0, 0), {"day", "week", "month"}),
        # the leap day (a Tuesday) and its month end
        (_at(2028, 2, 29, 23, 59, 59, 999_999), _at(2028, 3, 1, 0, 0, 0, 0), {"day", "month"}),
        # a year end in mid-week: 2025-12-29 is the Monday of the week holding 2026-01-01
        (_at(2025, 12, 31, 23, 59, 59, 999_999), _at(2026, 1, 1, 0, 0, 0, 0), {"day", "month"}),
    ],
)
def test_windows_change_exactly_at_utc_boundaries(before: int, after: int, changed: set[str]) -> None:
    calendar = Calendar()
    first = {p: w.key for p, w in calendar.windows(before).items()}
    second = {p: w.key for p, w in calendar.windows(after).items()}
    back = {p: w.key for p, w in calendar.windows(before).items()}  # an earlier request, settled later
    assert first == back == {p: w.key for p, w in windows_at(before).items()} == _window_keys(before)
    assert second == _window_keys(after)
    assert {p for p in CALENDAR if first[p] != second[p]} == changed
    for ts in (before, after):
        windows, starts = windows_at(ts), period_starts(ts)
        for period in ("day", "week", "month"):
            _, start, end = _span(windows[period].key)
            assert (starts[period], windows[period].end_us) == (start, end)
            assert start <= ts < end
        assert windows_at(ts)["week"].key.startswith("w")
        assert date.fromisoformat(windows["week"].key[1:]).weekday() == 0  # ISO weeks start on Monday
        assert windows["day"].end_us - starts["day"] == DAY_US


def test_a_day_cap_resets_at_midnight_and_late_settlements_land_in_their_own_day() -> None:
    counters = MemoryCounters()
    key = Scope("key:a", "key", (Limit(USD, "day", 100),), "key 'a'")
    last = _at(2027, 2, 28, 23, 59, 59, 999_999)
    midnight = _at(2027, 3, 1, 0, 0, 0, 0)
    late = counters.reserve_now((key,), Need(60, 0), last)
    with pytest.raises(BudgetExceeded) as caught:
        counters.reserve_now((key,), Need(60, 0), last)
    assert caught.value.headers["x-sluice-limit-reset"] == "2027-03-01T00:00:00Z"
    fresh = counters.reserve_now((key,), Need(60, 0), midnight)  # a new day: the old spend is not counted
    counters.settle(late, 50, 0)  # settled after midnight: on the day it was reserved in
    counters.settle(fresh, 10, 0)
    assert {k[2]: (s, r) for k, s, r in asyncio.run(counters.read("key:a"))} == {
        "d2027-02-28": (50, 0),
        "d2027-03-01": (10, 0),
    }
    counters.reserve_now((key,), Need(1, 0), midnight + 60 * US)  # the next minute sweeps ended windows
    assert [k[2] for k, _s, _r in asyncio.run(counters.read("key:a"))] == ["d2027-03-01"]


def test_a_limit_put_back_counts_the_spend_made_while_it_was_off(tmp_path: Path) -> None:
    """A key's limits removed, spend, the limits put back: the spend in between counts."""
    capped, uncapped = _row("k", _limits({"usd": {"total": "0.0035"}})), _row("k", None)
    now = _at(2027, 3, 1, 12)

    async def main() -> tuple[list[str], int, int]:
        ledger = SQLiteLedger(tmp_path / "sluice.db", flush_interval=3600)
        await ledger.start()
        limiter = Limiter(MemoryCounters(lambda: now), BudgetSettings(), {})
        accounting = Accounting(ledger, Metrics(None), limiter)
        outcomes = []

        async def spend(i: int, row: KeyRow) -> None:
            entry = Entry(f"r{i}", now, "chat", "m", key_id="k", provider="openai", pricer=PRICER)
            entry.output_cap = 10  # with 20 body bytes: 20 tokens, $0.001 at worst and at most
            limits = key_limits("k", "k", row.limits, row.user_limits)
            try:
                await limiter.admit(entry, limiter.scopes("k", limits, None, None, None), 20)
            except BudgetExceeded as err:
                accounting.settle(entry, REFUSED, 429, error=err)
                outcomes.append("refused")
                return
            accounting.settle(entry, OK, 200, tokens=TokenUsage(input_tokens=10, output_tokens=10))
            outcomes.append("ok")

        async def rows() -> list[KeyRow]:
            return [capped]

        await limiter.start(ledger, rows)
        await spend(0, capped)
        await limiter.key_changed(ledger, now, uncapped)
        for i in (1, 2, 3):
            await spend(i, uncapped)
        await limiter.key_changed(ledger, now, capped)
        await spend(4, capped)  # $0.004 spent: no room under $0.0035
        await ledger.flush()
        ((*_, ledger_nanos, _tokens, _requests),) = await ledger.totals(0)
        counter = {k: s for k, s, _r in await limiter.counters.read("key:k")}
        await ledger.close()
        return outcomes, ledger_nanos, counter[("key:k", USD, "all")]

    outcomes, ledger_nanos, counted = asyncio.run(main())
    assert outcomes == ["ok", "ok", "ok", "ok", "refused"]
    assert counted == ledger_nanos == 4_000_000


def test_a_request_admitted_while_a_key_reloads_is_counted(tmp_path: Path) -> None:
    """An admin changes a key's limits while the key serves requests: none escapes the new counters."""
    now = _at(2027, 3, 1, 12)
    old, new = _row("k", _limits({"usd": {"total": "1"}})), _row("k", _limits({"usd": {"total": "2"}}))

    async def main() -> tuple[int, dict[CounterKey, int]]:
        ledger = SQLiteLedger(tmp_path / "sluice.db", flush_interval=3600)
        await ledger.start()
        limiter = Limiter(MemoryCounters(lambda: now), BudgetSettings(), {})
        accounting = Accounting(ledger, Metrics(None), limiter)

        async def rows() -> list[KeyRow]:
            return [old]

        await limiter.start(ledger, rows)
        reload = asyncio.create_task(limiter.key_changed(ledger, now, new))
        await asyncio.sleep(0)  # the reload is reading the ledger on a thread
        entry = Entry("r", now, "chat", "m", key_id="k", provider="openai", pricer=PRICER, output_cap=10)
        limits = key_limits("k", "k", old.limits, None)  # the principal cached before the change
        await limiter.admit(entry, limiter.scopes("k", limits, None, None, None), 20)
        ledger.open(entry)
        await reload
        accounting.settle(entry, OK, 200, tokens=TokenUsage(input_tokens=10, output_tokens=10))
        await ledger.flush()
        ((*_, ledger_nanos, _tokens, _requests),) = await ledger.totals(0)
        counters = {k: s + r for k, s, r in await limiter.counters.read("key:k")}
        await ledger.close()
        return ledger_nanos, counters

    ledger_nanos, counters = asyncio.run(main())
    assert counters.get(("key:k", USD, "all")) == ledger_nanos == 1_000_000
