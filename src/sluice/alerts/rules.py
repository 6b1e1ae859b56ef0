"""When an alert is due: budget thresholds, projected overspend, spend anomalies, credit runway. Pure.

Every rule looks at numbers the budgets already keep (a counter's spent amount, its cap, its window) or
at the ledger's hourly spend, and answers with ``Finding``s. A finding has a ``key`` that names what it
is about *in this period* (``threshold:key:k1:usd/day:d2026-11-25:80``): the delivery layer sends a key
once, so an alert fires once per threshold per period, however many requests cross it and however many
instances see them. Amounts are integers in the counter's unit (nano-dollars for ``usd``); rates and
projections use integer arithmetic or ``Decimal``, never float, so a finding is the same on every
instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal

from sluice.limits.spec import Limit

DEFAULT_THRESHOLDS = (50, 80, 95, 100)  # percent of a cap
THRESHOLD, PROJECTED, ANOMALY = "threshold", "projected_overspend", "spend_anomaly"
RUNWAY, HEALTH = "credit_runway", "provider_health"


@dataclass(frozen=True, slots=True)
class Finding:
    """An alert that is due: what rule, about what, and the numbers a person needs to act."""

    rule: str
    key: str  # unique per subject and period: the unit of deduplication
    scope: str  # key:ID, team:NAME, provider:NAME, …
    summary: str  # one line for a human
    facts: dict[str, int | str] = field(default_factory=dict)  # machine-readable details


def thresholds_reached(
    spent: int, cap: int, thresholds: Sequence[int], *, refused: bool = False
) -> list[int]:
    """The thresholds (percent of ``cap``) that ``spent`` has reached. Reservations make a cap refuse
    requests before spend touches it, so 100 % is also reached when the cap ``refused`` a request it would
    have taken had it been empty: from then on the cap stops requests, which is what 100 % warns of."""
    if cap <= 0:
        return []
    reached = [t for t in sorted(thresholds) if t * cap <= spent * 100]
    if refused and 100 in thresholds and 100 not in reached:
        reached.append(100)
    return reached


def threshold_findings(
    scope: str,
    label: str,
    limit: Limit,
    window: str,
    spent: int,
    thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
    *,
    refused: bool = False,
) -> list[Finding]:
    """A finding per threshold the scope's spend has reached in this window (the delivery layer sends each
    key once, so asking again as spend grows is harmless)."""
    return [
        Finding(
            THRESHOLD,
            f"{THRESHOLD}:{scope}:{limit.describe()}:{window}:{pct}",
            scope,
            f"{label} has used {pct} % of its {limit.describe()} cap"
            + (": requests are being refused" if pct == 100 else ""),
            {
                "metric": limit.metric,
                "period": limit.period,
                "window": window,
                "threshold_pct": pct,
                "spent": spent,
                "cap": limit.amount,
            },
        )
        for pct in thresholds_reached(spent, limit.amount, thresholds, refused=refused)
    ]


def projected_end(spent: int, start_us: int, now_us: int, end_us: int) -> int:
    """The spend at the end of a window if the rate so far goes on (rounded up)."""
    elapsed = now_us - start_us
    if elapsed <= 0 or end_us <= start_us:
        return spent
    total = Decimal(spent) * Decimal(end_us - start_us) / Decimal(elapsed)
    return int(total.to_integral_value(rounding=ROUND_CEILING))


def reaches_cap_at(spent: int, cap: int, start_us: int, now_us: int) -> int | None:
    """When (unix µs) the spend reaches ``cap`` at the rate so far; None if it never does (no spend)."""
    elapsed = now_us - start_us
    if spent <= 0 or elapsed <= 0:
        return None
    if spent >= cap:
        return now_us
    return start_us + -(-(cap * elapsed) // spent)


def projected_overspend(
    scope: str,
    label: str,
    limit: Limit,
    window: str,
    spent: int,
    start_us: int,
    now_us: int,
    end_us: int,
    *,
    min_elapsed_share: Decimal = Decimal("0.05"),
) -> Finding | None:
    """A finding if the scope, at its rate so far this window, hits its cap before the window ends.

    Too early in a window (less than ``min_elapsed_share`` of it gone) a rate means little: no finding.
    Once the cap is reached the threshold rule has said it; no projection either."""
    length = end_us - start_us
    too_early = Decimal(now_us - start_us) < length * min_elapsed_share
    if length <= 0 or spent >= limit.amount or too_early:
        return None
    at = reaches_cap_at(spent, limit.amount, start_us, now_us)
    if at is None or at >= end_us:
        return None
    return Finding(
        PROJECTED,
        f"{PROJECTED}:{scope}:{limit.describe()}:{window}",
        scope,
        f"{label} is on course to reach its {limit.describe()} cap before the period ends",
        {
            "metric": limit.metric,
            "period": limit.period,
            "window": window,
            "spent": spent,
            "cap": limit.amount,
            "projected": projected_end(spent, start_us, now_us, end_us),
            "cap_reached_at_us": at,
        },
    )


def spend_anomaly(
    scope: str,
    label: str,
    window_key: str,
    last_window: int,
    previous_windows: Iterable[int],
    *,
    factor: int = 5,
    floor: int = 1_000_000_000,
    window_s: int = 3600,
) -> Finding | None:
    """A finding if the last window's spend (an hour by default) is more than ``factor`` times the mean of
    the windows before, and at least ``floor`` (nano-dollars: $1 by default, so pennies never page)."""
    windows = list(previous_windows)
    if last_window < floor:
        return None
    baseline = -(-sum(windows) // len(windows)) if windows else 0
    if last_window <= factor * baseline:
        return None
    return Finding(
        ANOMALY,
        f"{ANOMALY}:{scope}:{window_key}",
        scope,
        f"{label} spent far more in the last {_span(window_s)} than usual",
        {
            "last_window": last_window,
            "baseline_per_window": baseline,
            "factor": factor,
            "window_s": window_s,
            "window": window_key,
        },
    )


def _span(seconds: int) -> str:
    if seconds % 3600 == 0:
        return "hour" if seconds == 3600 else f"{seconds // 3600} hours"
    return f"{seconds} s"


def runway_days(remaining: int, burn_per_day: int) -> int | None:
    """Whole days of credit left at ``burn_per_day`` (None: nothing is being spent)."""
    if burn_per_day <= 0:
        return None
    return max(remaining, 0) // burn_per_day


@dataclass(frozen=True, slots=True)
class Allowance:
    """A plan's daily request allowance and how much of it today has used."""

    per_day: int
    used_today: int
    warn_pct: int = 80


def credit_runway(
    provider: str,
    remaining: int | None,
    burn_per_day: int,
    days_to_expiry: int | None,
    day_key: str,
    *,
    warn_days: int = 7,
    allowance: Allowance | None = None,
) -> Finding | None:
    """A finding (once a day) if a free or trial account runs out of credit, or expires, within
    ``warn_days`` days, or has used most of today's request allowance."""
    left = runway_days(remaining, burn_per_day) if remaining is not None else None
    reasons = []
    if remaining is not None and remaining <= 0:
        reasons.append("the credit is used up")
    elif left is not None and left <= warn_days:
        reasons.append(f"credit runs out in {left} day(s) at the current burn")
    if days_to_expiry is not None and days_to_expiry <= warn_days:
        reasons.append(f"the plan expires in {max(days_to_expiry, 0)} day(s)")
    if allowance is not None and allowance.used_today * 100 >= allowance.warn_pct * allowance.per_day:
        reasons.append(f"{allowance.used_today} of {allowance.per_day} daily requests used")
    if not reasons:
        return None
    facts: dict[str, int | str] = {"burn_per_day": burn_per_day, "day": day_key}
    if allowance is not None:
        facts["daily_requests"] = allowance.per_day
        facts["requests_today"] = allowance.used_today
    if remaining is not None:
        facts["remaining"] = remaining
    if left is not None:
        facts["days_of_credit"] = left
    if days_to_expiry is not None:
        facts["days_to_expiry"] = days_to_expiry
    return Finding(
        RUNWAY,
        f"{RUNWAY}:provider:{provider}:{day_key}",
        f"provider:{provider}",
        f"provider {provider!r}: " + "; ".join(reasons),
        facts,
    )


def quota_spent(provider: str, dep_id: str, reason: str, until_unix: int, account: bool) -> Finding:
    """A provider said a quota is used up until its reset (once per provider and reset instant, however
    many instances hear it)."""
    until = datetime.fromtimestamp(until_unix, UTC)
    what = f"provider {provider!r}" if account else f"deployment {dep_id}"
    return Finding(
        RUNWAY,
        f"{RUNWAY}:quota:{dep_id if not account else provider}:{until.strftime('%Y%m%d%H')}",
        f"provider:{provider}",
        f"{what}: quota used up ({reason}); out of rotation until {until.strftime('%Y-%m-%d %H:%M')} UTC",
        {"event": "quota_spent", "deployment": dep_id, "reason": reason, "until": until.isoformat()},
    )


def canary_failed(dep_id: str, problems: Sequence[str], bucket: str) -> Finding:
    """A scheduled smoke run found a deployment failing or regressed (once per deployment and bucket)."""
    return Finding(
        HEALTH,
        f"{HEALTH}:canary:{dep_id}:{bucket}",
        f"deployment:{dep_id}",
        f"canary: deployment {dep_id}: " + "; ".join(problems),
        {"event": "canary", "deployment": dep_id, "problems": " | ".join(problems)},
    )


def ejected(dep_id: str, aliases: Sequence[str], seconds: float, bucket: str) -> Finding:
    """A deployment was ejected (once per deployment per health bucket, however many instances eject it)."""
    return Finding(
        HEALTH,
        f"{HEALTH}:ejected:{dep_id}:{bucket}",
        f"deployment:{dep_id}",
        f"deployment {dep_id} was ejected for {seconds:.0f} s after repeated failures",
        {"event": "ejected", "deployment": dep_id, "aliases": ",".join(aliases), "seconds": round(seconds)},
    )


def last_deployment(alias: str, serving: str, bucket: str) -> Finding:
    """An alias has one deployment left in service: the next failure there is an outage."""
    return Finding(
        HEALTH,
        f"{HEALTH}:last_deployment:{alias}:{bucket}",
        f"alias:{alias}",
        f"model {alias!r} is running on its last deployment ({serving}); the others are ejected",
        {"event": "last_deployment", "alias": alias, "deployment": serving},
    )


def fallback_share(
    alias: str,
    primary: str,
    served: dict[str, int],
    bucket: str,
    *,
    share_pct: int = 50,
    min_requests: int = 20,
) -> Finding | None:
    """A finding if deployments other than the alias's first choice served more than ``share_pct`` of its
    requests in the window (``served``: requests per deployment id)."""
    total = sum(served.values())
    fallback = total - served.get(primary, 0)
    if total < min_requests or fallback * 100 <= share_pct * total:
        return None
    return Finding(
        HEALTH,
        f"{HEALTH}:fallback_share:{alias}:{bucket}",
        f"alias:{alias}",
        f"fallbacks served {fallback} of {total} requests to {alias!r}: its first choice {primary} is "
        "failing",
        {
            "event": "fallback_share",
            "alias": alias,
            "primary": primary,
            "requests": total,
            "fallback": fallback,
        },
    )
