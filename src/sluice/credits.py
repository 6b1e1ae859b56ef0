"""Each free or trial account's runway: from the ledger, and from the provider's balance endpoint where
it has one. Used by ``sluice credits``, ``GET /admin/credits`` and the credit-runway alert."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime

from sluice.errors import SluiceError
from sluice.ledger.sink import Ledger
from sluice.limits.spec import period_starts
from sluice.providers import balance
from sluice.providers.accounts import Account, Runway, Usage, runway
from sluice.providers.presets import PRESETS
from sluice.upstream import Upstream

log = logging.getLogger("sluice.credits")
_US = 1_000_000
_DAY_US = 86_400 * _US


def by_provider(rows: Sequence[Sequence[object]]) -> dict[str, tuple[int, int]]:
    """(spend in nano-dollars, requests) per provider from ledger totals."""
    out: dict[str, tuple[int, int]] = {}
    for *_, provider, usd, _tokens, requests in rows:
        if provider:
            spent, count = out.get(str(provider), (0, 0))
            out[str(provider)] = (spent + int(str(usd or 0)), count + int(str(requests or 0)))
    return out


def _day_us(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * _US


async def poll_balances(upstream: Upstream, accounts: Sequence[Account]) -> dict[str, balance.Balance]:
    """Ask every account whose provider has a balance endpoint (at once; one that fails is left out and
    logged, without its body: it may echo the key)."""

    async def one(a: Account) -> tuple[str, balance.Balance | None]:
        kind = PRESETS[a.preset].balance
        if kind is None:
            return a.provider, None
        try:
            got = await upstream.get(a.provider, balance.PATHS[kind])
        except SluiceError as exc:
            log.warning("balance of %s: %s", a.provider, exc.message)
            return a.provider, None
        if got.status != 200:
            log.warning("balance of %s: status %s", a.provider, got.status)
            return a.provider, None
        return a.provider, balance.parse(kind, got.body)

    found = await asyncio.gather(*(one(a) for a in accounts))
    return {name: b for name, b in found if b is not None}


async def runways(
    accounts: Sequence[Account],
    ledger: Ledger,
    now_us: int,
    balances: dict[str, balance.Balance] | None = None,
) -> list[Runway]:
    """The runway of each account at ``now_us`` (three ledger reads, whatever the number of accounts)."""
    if not accounts:
        return []
    now = datetime.fromtimestamp(now_us / _US, UTC)
    week = by_provider(await ledger.totals(now_us - 7 * _DAY_US))
    today = by_provider(await ledger.totals(period_starts(now_us)["day"]))
    grants = {a.credits_since or date(1970, 1, 1) for a in accounts if a.credits_nanos is not None}
    since = {g: by_provider(await ledger.totals(_day_us(g))) for g in grants}
    out = []
    for a in accounts:
        b = (balances or {}).get(a.provider)
        grant = since.get(a.credits_since or date(1970, 1, 1), {}) if a.credits_nanos is not None else {}
        usage = Usage(
            spent_since_grant=grant.get(a.provider, (0, 0))[0],
            spent_last_week=week.get(a.provider, (0, 0))[0],
            requests_today=today.get(a.provider, (0, 0))[1],
            balance_nanos=int(b.remaining_usd.scaleb(9)) if b and b.remaining_usd is not None else None,
            requests_used_by_provider=b.requests_used if b else None,
        )
        out.append(runway(a, usage, now))
    return out
