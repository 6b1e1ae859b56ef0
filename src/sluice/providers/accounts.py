"""A provider account as Sluice treats it: its plan, credit, allowances and when its days reset. Pure.

The preset gives the defaults (a free tier's published allowances); the account's config overrides
them. A free or trial account's allowances that are shared by every model of the account become limits
on its ``provider:NAME`` scope, so Sluice stops sending before the provider starts refusing, and traffic
falls over to the next deployment; per-model allowances are only enforced when the config sets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sluice.providers.presets import PRESETS, Plan, Tier
from sluice.settings import LimitSettings, PeriodAmounts, ProviderSettings


@dataclass(frozen=True, slots=True)
class Account:
    """One configured provider account, its preset's defaults applied."""

    provider: str
    preset: str
    plan: Plan
    tier: Tier | None
    credits_nanos: int | None  # credit granted (trial credit, or what the config says)
    credits_since: date | None
    daily_requests: int | None  # enforced
    expires: date | None
    reset_zone: str  # whose midnight starts the account's day

    @property
    def watched(self) -> bool:
        """True if the credit-runway alert and ``sluice credits`` have something to count."""
        return self.plan != "paid" or self.credits_nanos is not None or self.daily_requests is not None

    def next_reset(self, now: datetime) -> datetime:
        """When the account's daily allowances are next renewed (UTC)."""
        return next_midnight(now, self.reset_zone)


def next_midnight(now: datetime, zone: str) -> datetime:
    """The next midnight in ``zone`` after ``now``, in UTC."""
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    tomorrow = (local + timedelta(days=1)).date()
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=tz).astimezone(UTC)


def plan_of(p: ProviderSettings) -> Plan:
    """The account's plan: its config's, else its preset's."""
    return p.plan or PRESETS[p.preset].plan


def account_of(p: ProviderSettings) -> Account:
    """The account with its preset's published allowances applied where the config is silent (a paid
    account has no allowances but what its config sets)."""
    plan = plan_of(p)
    tier = PRESETS[p.preset].tier if plan != "paid" else None
    credit = p.credits_usd
    if credit is None and tier is not None and tier.credits_usd is not None:
        credit = Decimal(tier.credits_usd)
    daily = p.daily_requests
    if daily is None and tier is not None and tier.account:
        daily = tier.requests_per_day
    return Account(
        provider=p.name,
        preset=p.preset,
        plan=plan,
        tier=tier,
        credits_nanos=int(credit.scaleb(9)) if credit is not None else None,
        credits_since=p.credits_since,
        daily_requests=daily,
        expires=p.expires,
        reset_zone=tier.reset if tier is not None else "UTC",
    )


def account_limits(p: ProviderSettings) -> LimitSettings | None:
    """The limits Sluice enforces on the account: its config's ``limits``, with the plan's daily request
    allowance and (for an account-wide tier) the published per-minute and monthly allowances added where
    the config sets none."""
    acct = account_of(p)
    limits = p.limits or LimitSettings()
    changes: dict[str, object] = {}
    requests = limits.requests or PeriodAmounts()
    req_changes: dict[str, Decimal] = {}
    if acct.daily_requests is not None and requests.day is None:
        req_changes["day"] = Decimal(acct.daily_requests)
    tier = acct.tier
    if tier is not None and tier.account:
        if tier.requests_per_month is not None and requests.month is None:
            req_changes["month"] = Decimal(tier.requests_per_month)
        if tier.requests_per_minute is not None and limits.requests_per_minute is None:
            changes["requests_per_minute"] = tier.requests_per_minute
        if tier.tokens_per_minute is not None and limits.tokens_per_minute is None:
            changes["tokens_per_minute"] = tier.tokens_per_minute
        if tier.tokens_per_day is not None and (limits.tokens is None or limits.tokens.day is None):
            tokens = limits.tokens or PeriodAmounts()
            changes["tokens"] = tokens.model_copy(update={"day": Decimal(tier.tokens_per_day)})
    if req_changes:
        changes["requests"] = requests.model_copy(update=req_changes)
    if not changes:
        return p.limits
    return limits.model_copy(update=changes)
