"""The alerts at work: watching settlements, refusals and ejections, evaluating the rules, and delivering.

The request path only *notes* things (``settled``, ``refused``, ``ejected``: a few dictionary writes,
never a wait). Two background tasks do the rest:
- the **counter pass**, shortly after settlements (``settle_delay_s``, batched): reads the settled
  spend of every counter those requests touched — the counters that enforce the budgets, so an alert
  and a refusal never disagree — and checks thresholds and projected overspend;
- the **periodic pass** (``evaluate_every_s``): the same over every counter active this period (a net
  for anything the first pass missed), then the ledger rules — spend anomaly, credit runway — and the
  fallback share of each alias.

A finding is **claimed** before it is sent: in Redis when counters are shared (``SET NX``), then in
the alert log, whose unique key makes exactly one instance the sender. Each channel's delivery is its
own task, retried with jittered exponential backoff and recorded (pending → sent | failed); channels
have their own connection pool, so a dead receiver never slows a request.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import aiohttp

from sluice.alerts import rules
from sluice.alerts.channels import Channel, wants
from sluice.alerts.rules import Finding
from sluice.credits import runways
from sluice.errors import DeliveryFailed, InvalidRequest, NotFound
from sluice.ledger.entry import OK, Entry
from sluice.ledger.sink import Ledger
from sluice.limits.counters import CounterKey, Counters, Room
from sluice.limits.limiter import ledger_scope_ids
from sluice.limits.spec import CALENDAR, period_starts
from sluice.metrics import Metrics
from sluice.providers.accounts import Runway, account_of
from sluice.providers.balance import Balance
from sluice.providers.quota import Throttle
from sluice.routing.table import Route
from sluice.settings import AlertRuleSettings, AlertSettings, ProviderSettings
from sluice.smoke.report import FAIL, FEATURE, REGRESSIONS, RUN_SCOPE, Drift, RunReport
from sluice.store.alerts import FAILED, PENDING, SENT, AlertRow
from sluice.store.keys import KeyStore

log = logging.getLogger("sluice.alerts")
_US = 1_000_000
_DAY_US = 86_400 * _US
_MAX_ACTIVE = 50_000  # counters the periodic pass re-reads; beyond this only settlements trigger checks
_REMEMBER_US = 2 * _DAY_US  # local memory of fired keys (the alert log remembers for good)
_PER_CHANNEL = 4  # deliveries in flight per channel: a storm of alerts queues instead of crowding the loop

Claim = Callable[[str], Awaitable[bool]]  # a shared first-come claim on a finding's key (Redis)


@dataclass(slots=True)
class _Watch:
    """A counter to look at: the scope, limit and window a reservation named, and whether it refused."""

    room: Room
    refused: bool = False


def _counter(room: Room) -> CounterKey:
    return (room.scope.id, room.limit.metric, room.window.key)


def _bucket(now_us: int, seconds: int) -> str:
    return f"{seconds}s{now_us // (seconds * _US)}"


def _day(now_us: int) -> date:
    return datetime.fromtimestamp(now_us // _US, UTC).date()


class AlertService:
    """Rules over counters, ledger and deployment health; claiming, logging and delivery of findings."""

    def __init__(
        self,
        settings: AlertSettings,
        channels: Mapping[str, Channel],
        store: KeyStore,
        ledger: Ledger,
        counters: Counters,
        metrics: Metrics,
        *,
        providers: Sequence[ProviderSettings] = (),
        routes: Mapping[str, Route] | None = None,
        in_service: Callable[[Route], list[str]] | None = None,
        claim: Claim | None = None,
        poll: Callable[[], Awaitable[dict[str, Balance]]] | None = None,
    ) -> None:
        self.settings = settings
        self.channels = dict(channels)
        self._store = store
        self._ledger = ledger
        self._counters = counters
        self._metrics = metrics
        self._clock = counters.clock
        self._accounts = [a for a in map(account_of, providers) if a.watched]
        self._routes = routes or {}
        self._in_service = in_service
        self._claim = claim
        self._poll = poll  # the providers' balance endpoints, asked every ``balance_poll_s``
        self._polled_at = -(1 << 62)
        self.balances: dict[str, Balance] = {}
        enabled = set(settings.rules)
        self._counting = bool(enabled & {rules.THRESHOLD, rules.PROJECTED})
        self._health = rules.HEALTH in enabled
        self._enabled = enabled
        # aliases whose first choice is a fallback's reference: priority routing with two or more
        self._primary = {
            r.alias: r.deployments[0].id
            for r in self._routes.values()
            if r.strategy == "priority" and len(r.deployments) > 1
        }
        self._pending: dict[CounterKey, _Watch] = {}
        self._active: dict[CounterKey, _Watch] = {}
        self._served: dict[str, dict[str, int]] = {}  # alias → deployment id → requests, this bucket
        self._served_bucket = ""
        self._events: list[Finding] = []  # health findings noted on the request path
        self._fired: dict[str, int] = {}  # finding key → when this instance claimed or saw it
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._deliveries: set[asyncio.Task[None]] = set()
        self._slots = {name: asyncio.Semaphore(_PER_CHANNEL) for name in self.channels}
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()  # backoff jitter, not secrets
        self._stored: dict[str, AlertRuleSettings] = {}  # overrides set through the admin API
        self._exact: dict[str, AlertRuleSettings] = {}
        self._patterns: list[tuple[str, AlertRuleSettings]] = []
        self._merge_rules()

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the overrides, start the two passes."""
        await self.reload_rules()
        self._tasks = [
            asyncio.create_task(self._counter_pass(), name="sluice-alerts"),
            asyncio.create_task(self._periodic_pass(), name="sluice-alerts-periodic"),
        ]

    async def close(self) -> None:
        """Stop evaluating; give deliveries under way a moment, then stop them (they stay pending)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._deliveries:
            _, late = await asyncio.wait(self._deliveries, timeout=2)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def session(self) -> aiohttp.ClientSession:
        """The channels' own HTTP client (small pool, separate from the providers')."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=16, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    # --- overrides per scope -------------------------------------------------------------------------

    async def reload_rules(self) -> None:
        """Read the admin API's overrides from the store (every instance, every periodic pass)."""
        stored: dict[str, AlertRuleSettings] = {}
        for scope, raw, _updated in await self._store.list_alert_rules():
            try:
                stored[scope] = AlertRuleSettings.model_validate_json(raw)
            except ValueError:
                log.warning("alerts: ignored an unreadable override for %s", scope)
        self._stored = stored
        self._merge_rules()

    def _merge_rules(self) -> None:
        merged = {**self.settings.scopes, **self._stored}
        wild = ("*", "?", "[")
        self._exact = {k: v for k, v in merged.items() if not any(c in k for c in wild)}
        self._patterns = [(k, v) for k, v in merged.items() if any(c in k for c in wild)]

    def rule_for(self, scope: str) -> AlertRuleSettings | None:
        """The override that applies to a scope: its own, else the first pattern that matches it."""
        hit = self._exact.get(scope)
        if hit is not None or not self._patterns:
            return hit
        return next((rule for pattern, rule in self._patterns if fnmatch.fnmatchcase(scope, pattern)), None)

    def applies(self, rule: str, scope: str) -> bool:
        """Whether a rule runs for a scope (globally enabled, and not narrowed away by its override)."""
        return self._allows(rule, self.rule_for(scope))

    def _allows(self, rule: str, override: AlertRuleSettings | None) -> bool:
        return rule in self._enabled and (
            override is None or override.rules is None or rule in override.rules
        )

    def overrides(self) -> list[dict[str, object]]:
        """Every override, for the admin API: where it comes from and what it sets."""
        out: list[dict[str, object]] = [
            {"scope": k, "source": "config", **v.model_dump()}
            for k, v in self.settings.scopes.items()
            if k not in self._stored
        ]
        out += [{"scope": k, "source": "api", **v.model_dump()} for k, v in self._stored.items()]
        return sorted(out, key=lambda r: str(r["scope"]))

    async def set_override(self, scope: str, rule: AlertRuleSettings) -> None:
        """Store a scope's override (checked: its channels exist) and apply it here at once."""
        unknown = sorted(set(rule.channels or ()) - set(self.channels))
        if unknown:
            raise InvalidRequest(f"Unknown alert channel(s): {', '.join(unknown)}.", param="channels")
        await self._store.put_alert_rule(scope, rule.model_dump_json(exclude_none=True), self._clock())
        await self.reload_rules()

    async def drop_override(self, scope: str) -> bool:
        """Remove a scope's stored override (the config's, if any, applies again)."""
        dropped = await self._store.delete_alert_rule(scope)
        await self.reload_rules()
        return dropped

    # --- the request path: notes only -----------------------------------------------------------------

    def settled(self, entry: Entry) -> None:
        """A request was settled: its budgets' counters are to be looked at; its deployment counted."""
        if self._counting:
            for hold in (entry.hold, entry.provider_hold):
                if hold is not None:
                    for room in hold.rooms:
                        if room.limit.period in CALENDAR and room.scope.kind != RUN_SCOPE:
                            key = _counter(room)
                            if key not in self._pending:
                                self._pending[key] = _Watch(room)
            if self._pending:
                self._wake.set()
        if self._health and entry.status == OK and entry.alias in self._primary and entry.feature != FEATURE:
            self._count_served(entry)  # a smoke run calls every deployment: not a fallback's share

    def refused(self, room: Room, need: int) -> None:
        """A spend or count cap refused a request it would have taken empty: its 100 % moment (a request
        larger than the whole cap says nothing about how full it is)."""
        if (
            self._counting
            and room.limit.period in CALENDAR
            and need <= room.limit.amount
            and room.scope.kind != RUN_SCOPE
        ):
            self._pending[_counter(room)] = _Watch(room, refused=True)
            self._wake.set()

    def ejected(self, dep_id: str, seconds: float, ejections: int) -> None:
        """The gateway ejected (``seconds`` > 0) or re-admitted a deployment."""
        del ejections  # each ejection is its own event; the health bucket deduplicates across instances
        if not self._health or seconds <= 0:
            return
        bucket = _bucket(self._clock(), self.settings.health_window_s)
        aliases = [r.alias for r in self._routes.values() if any(d.id == dep_id for d in r.deployments)]
        self._events.append(rules.ejected(dep_id, aliases, seconds, bucket))
        if self._in_service is not None:
            for alias in aliases:
                route = self._routes[alias]
                serving = self._in_service(route)
                if len(route.deployments) > 1 and len(serving) == 1:
                    self._events.append(rules.last_deployment(alias, serving[0], bucket))
        self._wake.set()

    async def runways(self) -> list[Runway]:
        """Every free or trial account's runway now (balances as last polled)."""
        return await runways(self._accounts, self._ledger, self._clock(), self.balances)

    async def canary(self, run: RunReport, drift: Sequence[Drift]) -> None:
        """A canary run ended: each deployment that failed a check, or regressed, raises the
        provider-health alert."""
        if not self._health:
            return
        bucket = _bucket(self._clock(), self.settings.health_window_s)
        problems: dict[str, list[str]] = {}
        for dep in run.deployments:
            for check in dep.checks:
                if check.status == FAIL:
                    problems.setdefault(dep.id, []).append(f"{check.name} failed: {check.detail}")
        for d in drift:
            if d.kind in REGRESSIONS and d.check:
                problems.setdefault(d.deployment, []).append(
                    f"{d.check} {d.kind.replace('_', ' ')}: {d.detail}"
                )
        for dep_id, found in problems.items():
            await self.fire(rules.canary_failed(dep_id, list(dict.fromkeys(found)), bucket))

    def quota_spent(self, provider: str, dep_id: str, throttle: Throttle) -> None:
        """The gateway heard a provider say a quota is used up until its reset (the runway alert)."""
        if rules.RUNWAY not in self._enabled:
            return
        until = self._clock() // _US + int(throttle.seconds)
        self._events.append(rules.quota_spent(provider, dep_id, throttle.reason, until, throttle.account))
        self._wake.set()

    def _count_served(self, entry: Entry) -> None:
        bucket = _bucket(entry.ts_us, self.settings.health_window_s)
        if bucket != self._served_bucket:
            self._served_bucket, self._served = bucket, {}
        counts = self._served.setdefault(entry.alias, {})
        dep = f"{entry.provider}/{entry.model}"
        counts[dep] = counts.get(dep, 0) + 1

    # --- the passes -----------------------------------------------------------------------------------

    async def _counter_pass(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.settings.settle_delay_s)  # let settlements land (and batch)
            batch, self._pending = self._pending, {}
            events, self._events = self._events, []
            try:
                for finding in events:
                    await self.fire(finding)
                await self._check_counters(self._remember(batch))
                await self._check_fallbacks()
            except Exception:  # store or Redis away: counters are re-read by the periodic pass, and
                self._events[:0] = events  # the health events kept (those already sent are remembered)
                log.exception("alerts: evaluating settlements failed")

    async def _periodic_pass(self) -> None:
        await asyncio.sleep(min(1.0, self.settings.evaluate_every_s))  # soon after start, then regularly
        while True:
            try:
                await self.evaluate()
            except Exception:  # e.g. the ledger briefly unreadable: the next pass tries again
                log.exception("alerts: periodic evaluation failed")
            await asyncio.sleep(self.settings.evaluate_every_s)

    async def evaluate(self) -> None:
        """One periodic pass: every active counter, the ledger rules, the fallback shares."""
        await self.reload_rules()
        now = self._clock()
        self._forget(now)
        await self._check_counters(self._active)
        if rules.ANOMALY in self._enabled:
            await self._check_anomalies(now)
        if rules.RUNWAY in self._enabled and self._accounts:
            await self._check_runway(now)
        await self._check_fallbacks()
        await self._resume(now)

    def _forget(self, now: int) -> None:
        """Drop counters whose window ended, and local memory of old findings."""
        self._active = {k: w for k, w in self._active.items() if not 0 < w.room.window.end_us <= now}
        self._fired = {k: t for k, t in self._fired.items() if now - t < _REMEMBER_US}

    def _remember(self, batch: Mapping[CounterKey, _Watch]) -> dict[CounterKey, _Watch]:
        """Keep the batch's counters for the periodic pass (a refusal stays noted for the window); the
        batch as remembered."""
        out: dict[CounterKey, _Watch] = {}
        for key, seen in batch.items():
            known = self._active.get(key)
            if known is not None:
                known.refused = known.refused or seen.refused
            elif len(self._active) < _MAX_ACTIVE:
                self._active[key] = seen
            out[key] = known or seen
        return out

    async def _check_counters(self, watches: Mapping[CounterKey, _Watch]) -> None:
        if not watches:
            return
        keys = list(watches)
        spent = await self._counters.spent(keys)
        now = self._clock()
        starts = period_starts(now)  # once per pass: a pass may look at thousands of scopes
        for key, amount in zip(keys, spent, strict=True):
            for finding in self._counter_findings(watches[key], amount, now, starts):
                await self.fire(finding)

    def _counter_findings(
        self, watch: _Watch, spent: int, now: int, starts: Mapping[str, int]
    ) -> list[Finding]:
        scope, limit, window = watch.room.scope, watch.room.limit, watch.room.window
        found: list[Finding] = []
        override = self.rule_for(scope.id)
        if self._allows(rules.THRESHOLD, override):
            thresholds = (override.thresholds if override is not None else None) or self.settings.thresholds
            found += rules.threshold_findings(
                scope.id, scope.label, limit, window.key, spent, thresholds, refused=watch.refused
            )
        if self._allows(rules.PROJECTED, override) and window.end_us:
            share = Decimal(self.settings.projected_min_elapsed_pct) / 100
            projected = rules.projected_overspend(
                scope.id,
                scope.label,
                limit,
                window.key,
                spent,
                starts[limit.period],
                now,
                window.end_us,
                min_elapsed_share=share,
            )
            if projected is not None:
                found.append(projected)
        return found

    async def _check_anomalies(self, now: int) -> None:
        s = self.settings
        window = s.anomaly_window_s * _US
        await self._ledger.flush()
        last = _by_scope(await self._ledger.totals(now - window))
        longer = _by_scope(await self._ledger.totals(now - window * (s.anomaly_baseline_windows + 1)))
        floor = int(s.anomaly_min_usd.scaleb(9))
        bucket = _bucket(now, s.anomaly_window_s)
        for scope, spent in last.items():
            if not self.applies(rules.ANOMALY, scope):
                continue
            before = longer.get(scope, spent) - spent
            per_window = [before // s.anomaly_baseline_windows] * s.anomaly_baseline_windows
            found = rules.spend_anomaly(
                scope,
                scope,
                bucket,
                spent,
                per_window,
                factor=s.anomaly_factor,
                floor=max(floor, 1),
                window_s=s.anomaly_window_s,
            )
            if found is not None:
                await self.fire(found)

    async def _check_runway(self, now: int) -> None:
        if self._poll is not None and now >= self._polled_at + int(self.settings.balance_poll_s * _US):
            self._polled_at = now
            self.balances = await self._poll()
        day = f"d{_day(now).isoformat()}"
        for r in await runways(self._accounts, self._ledger, now, self.balances):
            a = r.account
            if not self.applies(rules.RUNWAY, f"provider:{a.provider}"):
                continue
            allowance = None
            if a.daily_requests:
                allowance = rules.Allowance(
                    a.daily_requests, r.requests_today, self.settings.runway_requests_pct
                )
            found = rules.credit_runway(
                a.provider,
                r.remaining,
                r.burn_per_day,
                r.days_to_expiry,
                day,
                warn_days=self.settings.runway_warn_days,
                allowance=allowance,
            )
            if found is not None:
                await self.fire(found)

    async def _check_fallbacks(self) -> None:
        s = self.settings
        for alias, served in list(self._served.items()):
            found = rules.fallback_share(
                alias,
                self._primary[alias],
                served,
                self._served_bucket,
                share_pct=s.fallback_share_pct,
                min_requests=s.fallback_min_requests,
            )
            if found is not None:
                await self.fire(found)

    # --- claiming and delivery ------------------------------------------------------------------------

    async def fire(self, finding: Finding) -> AlertRow | None:
        """Claim, log and send a finding, unless it was already (here, or by another instance)."""
        if finding.key in self._fired:
            return None
        override = self.rule_for(finding.scope)
        if not self._allows(finding.rule, override):
            return None
        now = self._clock()
        self._fired[finding.key] = now
        try:
            if self._claim is not None and not await self._claim(finding.key):
                return None  # another instance has it
            if override is not None and override.channels is not None:
                channels = [self.channels[name] for name in override.channels if name in self.channels]
            else:
                channels = [c for c in self.channels.values() if wants(c.settings, finding)]
            row = AlertRow(
                _new_id(), finding.key, finding.rule, finding.scope, finding.summary, finding.facts, now
            )
            if not await self._store.claim_alert(row, [c.name for c in channels]):
                return None
        except Exception:  # the claim could not be made: forget it here so the next pass tries again
            del self._fired[finding.key]
            raise
        log.warning("alert %s: %s", row.id, finding.summary)
        self._metrics.count("alert", finding.rule)
        for channel in channels:
            self._send(channel, row, finding)
        return row

    def _send(self, channel: Channel, row: AlertRow, finding: Finding, tried: int = 0) -> None:
        task = asyncio.create_task(self._deliver(channel, row, finding, tried))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _resume(self, now: int) -> None:
        """Finish deliveries left pending by an instance that stopped mid-retry (each taken by one
        instance: a compare-and-set on the delivery's last update)."""
        before = now - int(self.settings.resume_after_s * _US)
        for row in await self._store.stale_deliveries(before, 100):
            finding = Finding(row.rule, row.dedup_key, row.scope, row.summary, row.facts)
            for d in row.deliveries:
                if not await self._store.take_delivery(row.id, d.channel, d.updated_us, now):
                    continue  # another instance took it
                channel = self.channels.get(d.channel)
                if channel is None:
                    await self._record(
                        row.id, d.channel, FAILED, d.attempts, "the channel is no longer configured"
                    )
                    continue
                log.warning(
                    "alert %s: resuming its delivery to %s after %d attempt(s)", row.id, d.channel, d.attempts
                )
                self._send(channel, row, finding, d.attempts)

    async def _deliver(self, channel: Channel, row: AlertRow, finding: Finding, tried: int = 0) -> None:
        """Try up to ``attempts`` times in all (``tried`` already made, by a stopped instance; at least
        one more), recording each failure, then sent or failed."""
        s = self.settings
        last = max(s.attempts, tried + 1)
        delay = s.backoff_base_s
        error = ""
        for attempt in range(tried + 1, last + 1):
            try:
                async with self._slots[channel.name]:
                    await channel.send(self.session(), row.id, finding, row.created_us, test=row.test)
            except DeliveryFailed as exc:
                error = exc.message
            else:
                self._metrics.count("alert_delivery", channel.name, "sent")
                await self._record(row.id, channel.name, SENT, attempt, None)
                return
            if attempt == last:
                break
            self._metrics.count("alert_delivery", channel.name, "retry")
            await self._record(row.id, channel.name, PENDING, attempt, error)
            await asyncio.sleep(delay * (0.5 + self._rng.random() / 2))
            delay = min(delay * 2, s.backoff_max_s)
        self._metrics.count("alert_delivery", channel.name, "failed")
        log.warning("alert %s: channel %s failed after %d attempts: %s", row.id, channel.name, last, error)
        await self._record(row.id, channel.name, FAILED, last, error)

    async def _record(
        self, alert_id: str, channel: str, status: str, attempts: int, error: str | None
    ) -> None:
        try:
            await self._store.record_delivery(alert_id, channel, status, attempts, error, self._clock())
        except Exception:  # the log is best effort once the alert is out; the delivery itself stands
            log.exception("alerts: could not record a delivery of %s to %s", alert_id, channel)

    async def history(self, limit: int = 100, since_us: int = 0) -> list[AlertRow]:
        """The alert log, newest first."""
        return await self._store.list_alerts(limit, since_us)

    async def send_test(self, channel_name: str) -> AlertRow:
        """Send a test alert to one channel, once, and log it (the row says whether it arrived)."""
        channel = self.channels.get(channel_name)
        if channel is None:
            known = ", ".join(sorted(self.channels)) or "none configured"
            raise NotFound(f"No alert channel named {channel_name!r} (channels: {known}).", param="channel")
        now = self._clock()
        alert_id = _new_id()
        finding = Finding(
            "test",
            f"test:{alert_id}",
            "test",
            f"Test alert from Sluice: channel {channel_name!r} works",
            {"channel": channel_name},
        )
        row = AlertRow(alert_id, finding.key, "test", "test", finding.summary, finding.facts, now, test=True)
        await self._store.claim_alert(row, [channel_name])
        try:
            await channel.send(self.session(), alert_id, finding, now, test=True)
        except DeliveryFailed as exc:
            await self._record(alert_id, channel_name, FAILED, 1, exc.message)
        else:
            await self._record(alert_id, channel_name, SENT, 1, None)
        return next(r for r in await self._store.list_alerts(1000, now) if r.id == alert_id)


def _new_id() -> str:
    return "alrt_" + secrets.token_hex(12)


def _by_scope(rows: Sequence[Sequence[object]]) -> dict[str, int]:
    """Spend (nano-dollars) per scope from ledger totals: keys, teams, features, providers, everything
    (not end users: there can be millions)."""
    out: dict[str, int] = {}
    for row in rows:
        amount = int(str(row[5] or 0))
        for scope in ledger_scope_ids(row[:5]):
            if not scope.startswith("user:"):
                out[scope] = out.get(scope, 0) + amount
    return out
