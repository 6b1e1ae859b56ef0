"""``create_app``: the only place that wires concrete backends together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import orjson

from sluice.accounting import Accounting
from sluice.alerts.channels import open_channels
from sluice.alerts.service import AlertService
from sluice.api.asgi import SluiceAPI
from sluice.cache.backends import CacheBackend, MemoryCache, RedisCache, SQLiteCache
from sluice.cache.service import ResponseCache
from sluice.config_file import resolve_secret
from sluice.credits import poll_balances
from sluice.errors import ConfigError
from sluice.gateway import Gateway
from sluice.keys.digest import load_server_secret
from sluice.keys.provider_keys import ProviderKeys
from sluice.keys.service import ADMIN_ENV, KeyService
from sluice.keys.vault import load_keks
from sluice.ledger.sink import Ledger
from sluice.limits.counters import Claims, Counters, MemoryCounters
from sluice.limits.limiter import Limiter
from sluice.metrics import SHARED_ENV, Metrics
from sluice.pricebook import load_sheets
from sluice.providers.accounts import account_limits, account_of
from sluice.providers.balance import Balance
from sluice.providers.presets import PRESETS
from sluice.routing.health import EJECTED
from sluice.routing.table import Route, build_routes
from sluice.settings import Config, ProviderSettings
from sluice.smoke.runner import SmokeRunner
from sluice.smoke.service import SmokeService
from sluice.store.keys import KeyRow, KeyStore
from sluice.store.ledger_sqlite import SQLiteLedger
from sluice.store.notices import HEALTH_PREFIX, PROVIDER_KEYS_CHANGED
from sluice.store.sqlite import SQLiteStore
from sluice.upstream import ProviderEndpoint, Upstream

if TYPE_CHECKING:
    from sluice.store.broadcast import KeyBroadcast

# _BACKENDS_NOTE: the PostgreSQL and Redis backends are imported only when the config selects them, so
# the embedded default (SQLite, in-process counters) never loads asyncpg or redis: ~10 MB less resident
# memory per worker.
log = logging.getLogger("sluice")
T = TypeVar("T")
DB_FILE = "sluice.db"
CACHE_FILE = "cache.db"
ALERT_CLAIM_TTL_S = 40 * 86_400  # longer than any period but the total; the alert log keeps keys for good


@dataclass(slots=True)
class Services:
    """The state-holding parts, opened from the config (shared by the server and the CLI)."""

    store: KeyStore
    keys: KeyService
    provider_keys: ProviderKeys

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run async store work from synchronous code (the CLI), connecting around it."""

        async def main() -> T:
            await self.store.start()
            try:
                return await work()
            finally:
                await self.store.close()

        return asyncio.run(main())


def _server_url(config: Config, name: str, environ: Mapping[str, str]) -> str:
    """``server.database_url`` or ``server.redis_url``, its ``env:`` reference resolved."""
    try:
        url = resolve_secret(getattr(config.server, name), environ)
    except ConfigError as exc:
        raise ConfigError(f"server.{name}: {exc.message}") from exc
    if not url:
        raise ConfigError(f"server.{name}: the referenced variable is empty")
    return url


def open_services(config: Config, environ: Mapping[str, str]) -> Services:
    """Open the key store (not connected yet: ``start()`` in the loop that uses it) and the key service."""
    data_dir = Path(config.server.data_dir)
    store: KeyStore
    if config.server.store == "postgres":
        from sluice.store.postgres import PostgresStore  # noqa: PLC0415 - see _BACKENDS_NOTE

        store = PostgresStore(_server_url(config, "database_url", environ))
    else:
        store = SQLiteStore(data_dir / DB_FILE)
    secret = load_server_secret(data_dir, environ)
    keys = KeyService(
        store, secret, ttl=config.server.key_cache_ttl_s, admin_key=environ.get(ADMIN_ENV) or None
    )
    provider_keys = ProviderKeys(store, load_keks(environ), {p.name for p in config.providers})
    return Services(store, keys, provider_keys)


def open_upstream(config: Config, environ: Mapping[str, str]) -> Upstream:
    """Connection pools for every configured provider (their keys resolved from the environment)."""
    return Upstream({p.name: _endpoint(p, environ) for p in config.providers})


def _endpoint(p: ProviderSettings, environ: Mapping[str, str]) -> ProviderEndpoint:
    preset = PRESETS[p.preset]
    try:
        key = resolve_secret(p.api_key, environ)
        headers = {name: resolve_secret(value, environ) or "" for name, value in p.headers.items()}
    except ConfigError as exc:
        raise ConfigError(f"provider {p.name!r}: {exc.message}") from exc
    return ProviderEndpoint(
        name=p.name,
        base_url=p.base_url or preset.base_url,
        api_key=key or None,
        auth_style="x-api-key" if preset.auth == "x-api-key" else "bearer",
        headers=headers,
        timeouts=p.timeouts,
        max_connections=p.max_connections,
    )


def open_ledger(config: Config, environ: Mapping[str, str]) -> Ledger:
    """The configured ledger backend (not started)."""
    server = config.server
    stale = _stale_after_s(config)  # a pending row is stale once every deadline has passed
    flush = server.ledger_flush_ms / 1000
    if server.store == "postgres":
        from sluice.store.ledger_postgres import PostgresLedger  # noqa: PLC0415 - see _BACKENDS_NOTE

        return PostgresLedger(
            _server_url(config, "database_url", environ), flush_interval=flush, stale_after_s=stale
        )
    return SQLiteLedger(Path(server.data_dir) / DB_FILE, flush_interval=flush, stale_after_s=stale)


def unpriced(routes: Mapping[str, Route]) -> list[str]:
    """A sentence for each deployment whose requests would be refused for want of a price."""
    return [
        f"model {route.alias!r} ({dep.target.upstream_model} on {dep.target.provider}) has no price: "
        "requests are refused until the config sets `price` (or `ceiling`) for it"
        for route in routes.values()
        for dep in route.deployments
        if not dep.pricer.chargeable
    ]


def priced_routes(config: Config, *, cache: bool = True) -> dict[str, Route]:
    """The routing table with every deployment's prices resolved (genai-prices read once, cached in
    the data directory unless ``cache`` is false)."""
    presets = {p.name: p.preset for p in config.providers}
    pairs = [(presets[dep.provider], dep.model) for model in config.models for dep in model.deployments]
    return build_routes(config, load_sheets(pairs, Path(config.server.data_dir) if cache else None))


def _stale_after_s(config: Config) -> float:
    """When a request still unsettled must have died: every deadline of every provider, and a margin."""
    return max((p.timeouts.total for p in config.providers), default=900.0) + 120.0


def _broadcast(config: Config, environ: Mapping[str, str]) -> KeyBroadcast | None:
    """Key changes told to every instance, when they share Redis."""
    if config.server.counters != "redis":
        return None
    from sluice.store.broadcast import KeyBroadcast  # noqa: PLC0415 - see _BACKENDS_NOTE

    return KeyBroadcast(_server_url(config, "redis_url", environ))


def open_limiter(
    config: Config, environ: Mapping[str, str], clock: Callable[[], int] | None = None
) -> Limiter:
    """The budgets of the config over the configured counters backend."""
    counters: Counters
    if config.server.counters == "redis":
        from sluice.store.counters_redis import RedisCounters  # noqa: PLC0415 - see _BACKENDS_NOTE

        counters = RedisCounters(
            _server_url(config, "redis_url", environ), hold_deadline_s=_stale_after_s(config)
        )
    else:
        counters = MemoryCounters(clock)
    return Limiter(
        counters,
        config.budgets,
        {p.name: account_limits(p) for p in config.providers},
        config.server.bytes_per_token,
        shared=config.server.workers == 1 or config.server.counters == "redis",
    )


async def unshared_budgets(config: Config, limiter: Limiter, keys: KeyService) -> str | None:
    """Why several workers cannot start with these budgets (each would keep its own counters), or None."""
    if config.server.workers == 1 or config.server.counters != "memory":
        return None
    rows = await keys.all()
    if limiter.active or any(row.limits or row.user_limits for row in rows if row.revoked_at is None):
        return (
            f"{config.server.workers} workers with budgets need counters they share: set "
            "`server.counters: redis` (and `redis_url`), or run one worker. With in-process counters each "
            "worker would allow the whole budget."
        )
    return None


async def _quietly(call: Awaitable[object]) -> None:
    """Best effort: a notice that cannot be sent (Redis away) is logged, not raised."""
    try:
        await call
    except Exception:  # the notice is advice; every instance still judges deployments itself
        log.warning("could not tell the other instances about a deployment's health", exc_info=True)


def open_alerts(
    config: Config,
    environ: Mapping[str, str],
    store: KeyStore,
    ledger: Ledger,
    limiter: Limiter,
    metrics: Metrics,
    gateway: Gateway | None = None,
    upstream: Upstream | None = None,
) -> AlertService:
    """The alert rules and channels of the config (not started; the CLI uses one to send a test)."""
    counters = limiter.counters
    claim = None
    if isinstance(counters, Claims):
        shared = counters

        async def claim(key: str) -> bool:
            return await shared.claim_once(key, ALERT_CLAIM_TTL_S)

    in_service = None
    if gateway is not None:
        health = gateway.health

        def in_service(route: Route) -> list[str]:
            now = asyncio.get_running_loop().time()
            return [d.id for d in route.deployments if health.state_of(d).status(now) != EJECTED]

    accounts = [a for a in map(account_of, config.providers) if PRESETS[a.preset].balance and a.watched]
    poll = None
    if upstream is not None and accounts:
        polled = upstream

        async def poll() -> dict[str, Balance]:
            return await poll_balances(polled, accounts)

    return AlertService(
        config.alerts,
        open_channels(config.alerts.channels, environ),
        store,
        ledger,
        counters,
        metrics,
        providers=config.providers,
        routes=gateway.routes if gateway is not None else None,
        in_service=in_service,
        claim=claim,
        poll=poll,
    )


def open_cache(config: Config, environ: Mapping[str, str], metrics: Metrics) -> ResponseCache:
    """The response cache on its configured backend (not started)."""
    s = config.cache
    backend: CacheBackend
    if s.backend == "redis":
        if not config.server.redis_url:
            raise ConfigError("cache.backend: redis needs server.redis_url")
        backend = RedisCache(_server_url(config, "redis_url", environ))
    elif s.backend == "sqlite":
        backend = SQLiteCache(Path(config.server.data_dir) / CACHE_FILE)
    else:
        backend = MemoryCache(s.max_bytes)
    return ResponseCache(s, backend, metrics)


def open_smoke(
    config: Config,
    store: KeyStore,
    routes: Mapping[str, Route],
    upstream: Upstream,
    accounting: Accounting,
    alerts: AlertService | None = None,
) -> SmokeService:
    """Smoke runs and canaries over the serving routing table (canaries claimed once when shared)."""
    counters = accounting.limiter.counters
    claim = None
    if isinstance(counters, Claims):
        shared = counters

        async def claim(key: str) -> bool:
            return await shared.claim_once(key, 86_400)

    return SmokeService(
        SmokeRunner(routes, upstream, accounting, config.smoke),
        store,
        config,
        clock=counters.clock,
        claim=claim,
        on_canary=alerts.canary if alerts is not None else None,
    )


def create_app(
    config: Config,
    environ: Mapping[str, str],
    services: Services | None = None,
    *,
    clock: Callable[[], int] | None = None,
) -> SluiceAPI:
    """Build the ASGI app for a validated config (``clock``: unix µs, injectable for tests)."""
    svc = services or open_services(config, environ)
    endpoints = {p.name: _endpoint(p, environ) for p in config.providers}
    upstream = Upstream(endpoints)
    ledger = open_ledger(config, environ)
    routes = priced_routes(config)
    for warning in unpriced(routes):
        log.warning("%s", warning)
    limiter = open_limiter(config, environ, clock)
    metrics = Metrics(environ.get(SHARED_ENV))
    gateway = Gateway(routes, upstream, ledger, limiter, config.routing, metrics)

    async def limits_changed(row: KeyRow, fresh: bool) -> None:
        await limiter.key_changed(ledger, limiter.counters.clock(), row, fresh=fresh)

    svc.keys.limits_changed = limits_changed
    broadcast = _broadcast(config, environ)
    if broadcast is not None:
        svc.keys.announce = broadcast.publish

    async def load_provider_keys() -> None:
        opened = await svc.provider_keys.opened()
        for name in endpoints:
            upstream.set_stored_keys(
                name, [(o.row.id, o.secret) for o in opened if o.row.provider == name and o.secret]
            )

    async def provider_keys_changed() -> None:
        await load_provider_keys()
        if broadcast is not None:
            await broadcast.publish(PROVIDER_KEYS_CHANGED)

    background: set[asyncio.Task[None]] = set()  # notices sent and reloads run off the request path

    def spawn(work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        background.add(task)
        task.add_done_callback(background.discard)

    accounting = Accounting(ledger, metrics, limiter)
    alerts = open_alerts(config, environ, svc.store, ledger, limiter, metrics, gateway, upstream)
    accounting.on_settled = alerts.settled
    limiter.on_refusal = alerts.refused
    gateway.on_quota = alerts.quota_spent
    smoke = open_smoke(config, svc.store, routes, upstream, accounting, alerts)
    cache = open_cache(config, environ, metrics)

    def health_changed(dep_id: str, seconds: float, ejections: int) -> None:
        alerts.ejected(dep_id, seconds, ejections)
        if broadcast is not None:  # ejections and re-admissions told to every instance
            note = orjson.dumps({"id": dep_id, "s": seconds, "n": ejections}).decode()
            spawn(_quietly(broadcast.publish(HEALTH_PREFIX + note)))

    gateway.on_health = health_changed

    def heard(message: str) -> None:
        if message.startswith(HEALTH_PREFIX):
            try:
                note = orjson.loads(message[len(HEALTH_PREFIX) :])
                dep_id, seconds, ejections = str(note["id"]), float(note["s"]), int(note["n"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed deployment-health notice")
                return
            gateway.health.told(dep_id, seconds, ejections, asyncio.get_running_loop().time())
        elif message == PROVIDER_KEYS_CHANGED:
            spawn(load_provider_keys())
        else:
            svc.keys.forget(message)

    async def ready() -> dict[str, bool]:
        try:
            store_ok = await svc.store.ping()
        except Exception:  # any store failure means "not ready", never a crash of the probe
            log.exception("readiness: store check failed")
            store_ok = False
        return {"store": store_ok, "models": bool(gateway.routes)}

    async def startup() -> None:
        await svc.store.start()
        problem = await unshared_budgets(config, limiter, svc.keys)
        if problem is not None:
            raise ConfigError(problem)
        await ledger.start()
        svc.keys.remember(await svc.keys.all())
        await limiter.start(ledger, svc.keys.all)
        await load_provider_keys()
        if broadcast is not None:
            await broadcast.start(heard)
        await metrics.start()
        await alerts.start()
        await smoke.start()
        await cache.start()

    async def shutdown() -> None:
        await cache.close()
        await smoke.close()
        await alerts.close()
        if broadcast is not None:
            await broadcast.close()
        await limiter.counters.close()
        await upstream.close()
        await ledger.close()
        await metrics.close()
        await svc.store.close()

    api = SluiceAPI(
        gateway,
        svc.keys,
        config.server.max_body_bytes,
        ready,
        shutdown,
        accounting,
        on_startup=startup,
        public_metrics=config.server.public_metrics,
    )
    api.provider_keys = svc.provider_keys
    api.alerts = alerts
    api.smoke = smoke
    api.cache = cache
    api.provider_keys_changed = provider_keys_changed
    return api
