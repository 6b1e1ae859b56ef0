"""The production-readiness checklist behind ``sluice doctor`` and ``GET /admin/readiness``.

``gather`` reads what the checklist needs from the store and the ledger (keys, stored provider keys,
the alert log, the last smoke run, which keys serve end users); ``checklist`` is pure: each item is
``pass``, ``warn`` or ``fail`` with what was found and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sluice.ledger.sink import Ledger
from sluice.providers.accounts import plan_of
from sluice.providers.presets import PRESETS
from sluice.routing.table import Route
from sluice.settings import Config
from sluice.smoke import history
from sluice.smoke.report import RunReport
from sluice.store.alerts import SENT
from sluice.store.keys import KeyRow, KeyStore, ProviderKeyRow

PASS, WARN, FAIL = "pass", "warn", "fail"
_DAY_S = 86_400
_USERS_LOOKBACK_DAYS = 30


@dataclass(frozen=True, slots=True)
class Item:
    """One line of the checklist."""

    name: str
    status: str
    found: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "found": self.found, "fix": self.fix}


@dataclass(slots=True)
class Facts:
    """What the checklist reads besides the config."""

    now: datetime
    keys: list[KeyRow] = field(default_factory=list)
    stored_keys: list[ProviderKeyRow] = field(default_factory=list)
    test_alert_sent: bool = False
    last_smoke: RunReport | None = None
    keys_with_users: set[str] = field(default_factory=set)


async def gather(store: KeyStore, ledger: Ledger, now: datetime) -> Facts:
    """Read the facts (the store and ledger are started)."""
    facts = Facts(now=now)
    facts.keys = [k for k in await store.list_keys() if k.revoked_at is None]
    facts.stored_keys = await store.list_provider_keys()
    facts.test_alert_sent = any(
        row.test and any(d.status == SENT for d in row.deliveries) for row in await store.list_alerts(200)
    )
    facts.last_smoke = next(iter(await history.recent(store, 10, light=False)), None)
    since = int(now.timestamp() - _USERS_LOOKBACK_DAYS * _DAY_S) * 1_000_000
    facts.keys_with_users = {
        str(r[0]) for r in await ledger.totals(since) if r[0] is not None and r[1] is not None
    }
    return facts


def checklist(config: Config, routes: Mapping[str, Route], facts: Facts) -> list[Item]:
    """Every item, in the order a team fixes them."""
    return [
        _keys_server_side(config, facts),
        _fallbacks(routes),
        _paid_primaries(config, routes),
        _global_cap(config),
        _key_caps(config, facts),
        _user_quotas(config, facts),
        _alerts(config, facts),
        _priced(routes),
        _key_age(config, facts),
        _smoke(config, facts),
    ]


def _names(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _keys_server_side(config: Config, facts: Facts) -> Item:
    stored = {k.provider for k in facts.stored_keys}
    literal = [p.name for p in config.providers if p.api_key and not p.api_key.startswith("env:")]
    missing = [
        p.name
        for p in config.providers
        if not p.api_key and p.name not in stored and PRESETS[p.preset].key_required
    ]
    if literal:
        return Item(
            "provider_keys_server_side",
            FAIL,
            f"a literal key in the config for {_names(literal)}",
            "Move it to the environment (`api_key: env:NAME`) or the encrypted store (`sluice secrets add`).",
        )
    if missing:
        return Item(
            "provider_keys_server_side",
            FAIL,
            f"no key at all for {_names(missing)}",
            "Set `api_key: env:NAME`, or store one with `sluice secrets add PROVIDER`.",
        )
    return Item(
        "provider_keys_server_side", PASS, "every provider key is an env reference or stored encrypted"
    )


def _fallbacks(routes: Mapping[str, Route]) -> Item:
    alone = [r.alias for r in routes.values() if len({d.target.provider for d in r.deployments}) < 2]
    if alone:
        return Item(
            "fallbacks",
            FAIL,
            f"no fallback on another provider for {_names(alone)}",
            "Add a second deployment on another provider to each (models[].deployments).",
        )
    return Item("fallbacks", PASS, "every model has a fallback on another provider")


def _paid_primaries(config: Config, routes: Mapping[str, Route]) -> Item:
    plans = {p.name: plan_of(p) for p in config.providers}
    only_free = [
        r.alias for r in routes.values() if all(plans[d.target.provider] != "paid" for d in r.deployments)
    ]
    free_first = [
        r.alias
        for r in routes.values()
        if r.alias not in only_free and plans[r.deployments[0].target.provider] != "paid"
    ]
    if only_free:
        return Item(
            "paid_primary",
            FAIL,
            f"{_names(only_free)} run only on free or trial credits",
            "Give each a deployment on a paid account: free tiers end, throttle and may train on prompts.",
        )
    if free_first:
        return Item(
            "paid_primary",
            WARN,
            f"{_names(free_first)} try a free or trial account first",
            "Put the paid deployment first; keep the free one as a fallback if you like.",
        )
    return Item("paid_primary", PASS, "every model's primary is on a paid account")


def _global_cap(config: Config) -> Item:
    everything = config.budgets.all
    if everything is None or everything.usd is None:
        return Item(
            "global_cap",
            FAIL,
            "no spend cap on the whole gateway",
            "Set `budgets.all.usd` (e.g. `{month: 500, day: 40}`): the last line against a runaway bill.",
        )
    return Item("global_cap", PASS, "the gateway has a spend cap")


def _key_caps(config: Config, facts: Facts) -> Item:
    team_caps = {t for t, lim in config.budgets.teams.items() if lim.usd is not None}
    uncapped = [
        k.name
        for k in facts.keys
        if (k.limits is None or k.limits.usd is None) and (k.policy.team not in team_caps)
    ]
    if uncapped:
        return Item(
            "key_caps",
            FAIL,
            f"no spend cap on key(s) {_names(uncapped)}",
            "`sluice keys update KEY --limit usd.month=N` (or a cap on the key's team in budgets.teams).",
        )
    if not facts.keys:
        return Item("key_caps", PASS, "no virtual keys issued yet: give each one a cap when you create it")
    return Item("key_caps", PASS, f"all {len(facts.keys)} keys have a spend cap")


def _user_quotas(config: Config, facts: Facts) -> Item:
    default = config.budgets.users is not None
    open_ = [
        k.name for k in facts.keys if k.id in facts.keys_with_users and k.user_limits is None and not default
    ]
    if open_:
        return Item(
            "user_quotas",
            WARN,
            f"key(s) {_names(open_)} serve end users without a per-user quota",
            "Set `budgets.users` (a default for every end user) or the key's `user_limits`.",
        )
    return Item("user_quotas", PASS, "every key that serves end users has a per-user quota")


def _alerts(config: Config, facts: Facts) -> Item:
    if not config.alerts.channels:
        return Item(
            "alerts",
            FAIL,
            "no alert channel",
            "Add a webhook, Slack or email channel under `alerts.channels`, then `sluice alerts test NAME`.",
        )
    if not facts.test_alert_sent:
        return Item(
            "alerts",
            WARN,
            "alerts configured, but no test alert was delivered",
            "Run `sluice alerts test CHANNEL` and check it arrives.",
        )
    return Item("alerts", PASS, "alerts configured and a test alert was delivered")


def _priced(routes: Mapping[str, Route]) -> Item:
    unpriced = [d.id for r in routes.values() for d in r.deployments if not d.pricer.chargeable]
    if unpriced:
        return Item(
            "cost_logging",
            FAIL,
            f"no price for {_names(unpriced)}: requests to them are refused",
            "Set `price` (or `price: 0` for a free model, or a `ceiling`) on each deployment.",
        )
    return Item("cost_logging", PASS, "the ledger prices every model (every request is logged)")


def _key_age(config: Config, facts: Facts) -> Item:
    limit = config.readiness.max_key_age_days
    today = facts.now.astimezone(UTC).date()
    old: list[str] = []
    unknown: list[str] = []
    stored = {k.provider: k for k in facts.stored_keys}
    for p in config.providers:
        if not PRESETS[p.preset].key_required and not p.api_key:
            continue
        issued: date | None = p.key_created
        if p.name in stored:
            issued = datetime.fromtimestamp(stored[p.name].created_at, UTC).date()
        if issued is None:
            unknown.append(p.name)
        elif (today - issued).days > limit:
            old.append(f"{p.name} ({(today - issued).days} d)")
    if old:
        return Item(
            "key_age",
            FAIL,
            f"provider key(s) older than {limit} days: {_names(old)}",
            "Rotate them (new key at the provider, `sluice secrets add`, then revoke the prototype key).",
        )
    if unknown:
        return Item(
            "key_age",
            WARN,
            f"the age of {_names(unknown)}'s key is unknown",
            "Set `key_created: YYYY-MM-DD` on the provider, or store the key with `sluice secrets add`.",
        )
    return Item("key_age", PASS, f"every provider key is younger than {limit} days")


def _smoke(config: Config, facts: Facts) -> Item:
    run = facts.last_smoke
    if run is None:
        return Item("smoke", FAIL, "no smoke run yet", "Run `sluice smoke` and fix what fails.")
    age = (facts.now.timestamp() - run.started_us / 1_000_000) / _DAY_S
    if not run.ok:
        failed = [d.id for d in run.deployments if d.status == FAIL]
        return Item(
            "smoke",
            FAIL,
            f"the last smoke run failed on {_names(failed)}",
            "Fix them and run `sluice smoke`.",
        )
    if age > config.readiness.max_smoke_age_days:
        return Item(
            "smoke",
            WARN,
            f"the last green smoke run is {age:.0f} days old",
            "Run `sluice smoke` again (or schedule canaries: smoke.canary.every_s).",
        )
    return Item("smoke", PASS, f"the last smoke run ({run.id}) is green")
