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

from sluice.ledger.entry import usd_short
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
        return (
            self.plan != "paid"
            or self.credits_nanos is not None
            or self.daily_requests is not None
            or self.expires is not None
        )

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


@dataclass(frozen=True, slots=True)
class Runway:
    """How long a free or trial account lasts: credit left and days of it at the recent burn, today's
    request allowance, and the plan's expiry. Amounts in nano-dollars; None where nothing says."""

    account: Account
    spent: int  # since the credit was granted (or ever)
    remaining: int | None  # credit left: the provider's balance if it was polled, else credit minus spent
    from_provider: bool  # ``remaining`` is the provider's own figure
    burn_per_day: int  # mean of the last 7 days (or since the grant, if sooner)
    days_left: int | None  # whole days of credit at that burn (None: no credit, or no burn)
    requests_today: int
    requests_left_today: int | None
    days_to_expiry: int | None
    next_reset: datetime

    def as_json(self) -> dict[str, object]:
        """For ``sluice credits --json`` and ``GET /admin/credits``: money as decimal USD strings."""
        a = self.account
        return {
            "provider": a.provider,
            "preset": a.preset,
            "plan": a.plan,
            "credits_usd": _usd(a.credits_nanos),
            "spent_usd": _usd(self.spent),
            "remaining_usd": _usd(self.remaining),
            "remaining_from": "provider" if self.from_provider else "ledger",
            "burn_per_day_usd": _usd(self.burn_per_day),
            "days_left": self.days_left,
            "daily_requests": a.daily_requests,
            "requests_today": self.requests_today,
            "requests_left_today": self.requests_left_today,
            "next_reset": self.next_reset.isoformat().replace("+00:00", "Z"),
            "expires": a.expires.isoformat() if a.expires else None,
            "days_to_expiry": self.days_to_expiry,
            "allowances": a.tier.note if a.tier is not None else "",
        }


def _usd(nanos: int | None) -> str | None:
    return None if nanos is None else usd_short(nanos)


@dataclass(frozen=True, slots=True)
class Usage:
    """What the ledger (and the provider) say an account has used."""

    spent_since_grant: int
    spent_last_week: int  # the last 7 days
    requests_today: int
    balance_nanos: int | None = None  # the provider's balance, when polled
    requests_used_by_provider: int | None = None  # today's requests as the provider counts them


def runway(account: Account, usage: Usage, now: datetime) -> Runway:
    """The runway of one account at ``now`` (timezone-aware)."""
    today = now.astimezone(UTC).date()
    burn_days = 7
    if account.credits_since is not None:
        burn_days = max(1, min(7, (today - account.credits_since).days + 1))
    burn = usage.spent_last_week // burn_days
    remaining: int | None = None
    if usage.balance_nanos is not None:
        remaining = usage.balance_nanos
    elif account.credits_nanos is not None:
        remaining = account.credits_nanos - usage.spent_since_grant
    days_left = max(remaining, 0) // burn if remaining is not None and burn > 0 else None
    used = max(usage.requests_today, usage.requests_used_by_provider or 0)
    left = max(account.daily_requests - used, 0) if account.daily_requests is not None else None
    return Runway(
        account=account,
        spent=usage.spent_since_grant,
        remaining=remaining,
        from_provider=usage.balance_nanos is not None,
        burn_per_day=burn,
        days_left=days_left,
        requests_today=used,
        requests_left_today=left,
        days_to_expiry=(account.expires - today).days if account.expires is not None else None,
        next_reset=account.next_reset(now),
    )
