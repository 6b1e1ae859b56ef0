"""Admission and settlement on budgets: which scopes a request counts in, what it reserves, what it pays.

- ``scopes`` (at the HTTP edge, once the key and the request's user and feature are known): the key, its
  end user, its team, its feature, and everything (``all``); the provider account is added when the
  deployment is chosen.
- ``admit`` (before the upstream call): the worst case — the body's size as prompt tokens (a bound),
  plus the output cap, at the dearest rates of the deployment — is reserved on every scope at once, or
  the request is refused and reaches no provider.
- ``settle`` (with the ledger row): the reservation becomes the actual cost and tokens.
- ``start``: the counters load the current periods' spend of every limited scope from the ledger
  (``totals``), so a restart forgets nothing; a row a crash left pending counts at its reservation.
  Counters are kept only for what some limit bounds; ``key_changed`` reloads a key's when its limits
  change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from sluice.errors import BudgetExceeded, CountersUnavailable, SluiceError
from sluice.ledger.entry import Entry
from sluice.ledger.sink import Ledger
from sluice.limits.counters import CounterKey, Counters, Hold, Loaded, Need, Room
from sluice.limits.spec import (
    ALL,
    FEATURE,
    KEY,
    NO_LIMITS,
    PROVIDER,
    REQUESTS,
    TEAM,
    TOKENS,
    USD,
    USER,
    Limits,
    Scope,
    compile_limits,
    period_starts,
    windows_at,
)
from sluice.settings import BudgetSettings, LimitSettings
from sluice.store.keys import KeyRow

log = logging.getLogger("sluice.limits")
Kinds = set[tuple[str, str]]  # the (metric, period) pairs some limit bounds


def _kinds(limits: Limits) -> Kinds:
    return {(limit.metric, limit.period) for limit in limits}


def _fingerprint(row: KeyRow) -> str:
    """Which limits a key's counters were loaded for."""
    if row.revoked_at is not None:
        return "revoked"
    parts = [x.model_dump_json(exclude_none=True) if x else "-" for x in (row.limits, row.user_limits)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What a virtual key's own settings say about budgets: its scope, and its end users' quota."""

    scope: Scope | None
    user_limits: Limits  # empty: the gateway's default end-user quota applies


NO_KEY_LIMITS = KeyLimits(None, NO_LIMITS)


def key_limits(
    key_id: str, name: str, limits: LimitSettings | None, users: LimitSettings | None
) -> KeyLimits:
    """Compile a key's limits once (when the key is loaded), not per request."""
    compiled = compile_limits(limits)
    scope = Scope(f"key:{key_id}", KEY, compiled, f"key {name!r}") if compiled else None
    return KeyLimits(scope, compile_limits(users))


def _scope(kind: str, name: str, settings: LimitSettings | None) -> Scope | None:
    limits = compile_limits(settings)
    return Scope(f"{kind}:{name}", kind, limits, f"{kind} {name!r}") if limits else None


def ledger_scope_ids(columns: Iterable[object]) -> Iterable[str]:
    """The scopes a ledger totals row counts in, from its (key_id, user_id, team, feature, provider)."""
    key_id, user, team, feature, provider = columns
    if key_id is not None:
        yield f"key:{key_id}"
        if user is not None:
            yield f"user:{key_id}:{user}"
    if team is not None:
        yield f"team:{team}"
    if feature is not None:
        yield f"feature:{feature}"
    if provider:
        yield f"provider:{provider}"
    yield ALL


class Limiter:
    """Scopes, reservations and settlement over a ``Counters`` backend."""

    def __init__(
        self,
        counters: Counters,
        budgets: BudgetSettings,
        providers: Mapping[str, LimitSettings | None],
        bytes_per_token: int = 2,
        *,
        shared: bool = True,
    ) -> None:
        self.counters = counters
        self.shared = shared  # every process serving requests sees these counters (else: no limits)
        everything = compile_limits(budgets.all)
        self._all = Scope(ALL, ALL, everything, "the gateway") if everything else None
        self._teams = {n: s for n, v in budgets.teams.items() if (s := _scope(TEAM, n, v)) is not None}
        self._features = {n: s for n, v in budgets.features.items() if (s := _scope(FEATURE, n, v))}
        self._providers = {n: s for n, v in providers.items() if (s := _scope(PROVIDER, n, v)) is not None}
        self._users = compile_limits(budgets.users)
        self._keys_only = not (self._all or self._teams or self._features or self._users)
        self._bytes_per_token = bytes_per_token
        self._ledger: Ledger | None = None
        self._reloading: dict[str, asyncio.Event] = {}  # key id → set when its counters are reloaded
        # told when a spend or count cap refuses a request (its counter, and what the request needed)
        self.on_refusal: Callable[[Room, int], None] | None = None

    @property
    def active(self) -> bool:
        """True if any limit outside the keys is configured."""
        return bool(self._all or self._teams or self._features or self._providers or self._users)

    def scopes(
        self, key_id: str, key: KeyLimits, user: str | None, team: str | None, feature: str | None
    ) -> tuple[Scope, ...]:
        """The scopes with limits that a request counts in (the provider's comes at ``admit``)."""
        if key.scope is None and not key.user_limits and self._keys_only:
            return ()  # nothing configured outside keys, and this key has no limits
        out: list[Scope] = []
        if key.scope is not None:
            out.append(key.scope)
        if user is not None:
            user_limits = key.user_limits or self._users
            if user_limits:
                out.append(Scope(f"user:{key_id}:{user}", USER, user_limits, f"user {user!r}"))
        if team is not None and (t := self._teams.get(team)) is not None:
            out.append(t)
        if feature is not None and (f := self._features.get(feature)) is not None:
            out.append(f)
        if self._all is not None:
            out.append(self._all)
        return tuple(out)

    def prompt_tokens(self, body_bytes: int) -> int:
        """The prompt tokens reserved for a body of this size (a bound)."""
        return -(-body_bytes // self._bytes_per_token)

    def record(self, entry: Entry, body_bytes: int) -> None:
        """Record the request's worst case on its entry (a row a crash leaves pending is settled at it)."""
        assert entry.pricer is not None, "a deployment is chosen first"
        prompt = self.prompt_tokens(body_bytes)
        entry.reserved_nanos = entry.pricer.worst_nanos(prompt, entry.output_cap, entry.ts_us)
        entry.reserved_input_tokens = prompt
        entry.reserved_output_tokens = entry.output_cap

    def free(self, entry: Entry) -> bool:
        """True when nothing limits this request (no scope, no provider allowance, no reload under way):
        it only needs its worst case recorded, without the counters (the common case, kept cheap)."""
        return not (
            entry.scopes
            or (self._providers and entry.provider in self._providers)
            or (self._reloading and entry.key_id in self._reloading)
        )

    def limits_provider(self, provider: str) -> bool:
        """True if the provider account has limits of its own (reserved per attempt)."""
        return bool(self._providers) and provider in self._providers

    def need(self, entry: Entry, body_bytes: int) -> Need:
        """The request's worst case (also recorded on the entry, so a crash settles at it)."""
        self.record(entry, body_bytes)
        return Need(entry.reserved_nanos, entry.reserved_input_tokens + entry.reserved_output_tokens)

    async def admit(self, entry: Entry, scopes: tuple[Scope, ...], body_bytes: int | None = None) -> None:
        """Reserve the worst case recorded on the entry (first recorded from ``body_bytes`` when given) on
        every scope, and the first provider account's (``entry.provider``), at once (raises the refusal
        of a full one; nothing reserved). A fallback to another account reserves there
        (``admit_provider``)."""
        if body_bytes is not None:
            self.record(entry, body_bytes)
        if self._reloading and entry.key_id in self._reloading:
            await self._reloading[entry.key_id].wait()  # its limits changed: wait for its counters
        provider = self._providers.get(entry.provider)
        if provider is not None:
            scopes = (*scopes, provider)
        if scopes:
            try:
                entry.hold = await self._reserve(scopes, entry)
            except SluiceError:
                entry.reserved_nanos = entry.reserved_input_tokens = entry.reserved_output_tokens = 0
                raise  # refused: nothing was reserved

    async def admit_provider(self, entry: Entry, provider: str) -> Hold:
        """Reserve the request's worst case on another provider account's limits, before falling back to
        it (the first account's reservation, made at admission, stays: that account was called)."""
        return await self._reserve((self._providers[provider],), entry)

    async def _reserve(self, scopes: tuple[Scope, ...], entry: Entry) -> Hold:
        if self._ledger is not None and not self._ledger.healthy:
            raise CountersUnavailable(
                "This request has a budget, and the ledger that records spend cannot be written; "
                "it was not sent. Retry shortly.",
                headers={"retry-after": "2"},
            )
        need = Need(entry.reserved_nanos, entry.reserved_input_tokens + entry.reserved_output_tokens)
        try:
            if self.counters.remote:
                return await self._reserve_remotely(scopes, need, entry.ts_us)
            return await self.counters.reserve(scopes, need, entry.ts_us)  # never yields: nothing to orphan
        except BudgetExceeded as exc:
            if self.on_refusal is not None and isinstance(exc.detail, tuple):
                room, amount = exc.detail
                self.on_refusal(room, amount)  # a cap stopped a request: the alerts' 100 % moment
            raise

    async def _reserve_remotely(self, scopes: tuple[Scope, ...], need: Need, ts_us: int) -> Hold:
        """Reserve over the network; if this request is cancelled meanwhile (its client left), the
        reservation that may still land is released at once instead of waiting for the reaper."""
        call = asyncio.ensure_future(self.counters.reserve(scopes, need, ts_us))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, call: asyncio.Future[Hold]) -> None:
        if not call.cancelled() and call.exception() is None:
            self.counters.settle(call.result(), 0, 0)

    def settle_hold(self, hold: Hold, nanos: int, tokens: int) -> None:
        """Replace one reservation (a provider account's, for an attempt that failed) with its cost."""
        self.counters.settle(hold, nanos, tokens)

    def settle(self, entry: Entry) -> None:
        """Replace the request's reservations with its actual cost and tokens."""
        tokens = entry.usage.input_tokens + entry.usage.output_tokens
        if entry.provider_hold is not None:  # the serving account: the last attempt's own cost
            self.counters.settle(entry.provider_hold, entry.cost_nanos - entry.prior_nanos, tokens)
            entry.provider_hold = None
        hold: Hold | None = entry.hold
        if hold is None:
            return
        self.counters.settle(hold, entry.cost_nanos, tokens)
        if entry.cost_nanos > hold.need.nanos:
            log.warning(
                "request %s cost %d n$, more than the %d n$ reserved (overshoot is recorded in the ledger)",
                entry.request_id,
                entry.cost_nanos,
                hold.need.nanos,
            )

    async def start(self, ledger: Ledger, keys: Callable[[], Awaitable[list[KeyRow]]]) -> None:
        """Start the counters; they load (or, shared, may later re-load) every limited scope's spend."""

        async def source() -> Loaded:
            return await self.totals(ledger, self.counters.clock(), await keys())

        self._ledger = ledger
        await self.counters.start(source)

    async def totals(self, ledger: Ledger, now_us: int, keys: Iterable[KeyRow]) -> Loaded:
        """The current periods' spend of every limited scope, from the ledger (``keys``: every key in
        the store): one counter per limit, none for what no limit bounds."""
        wanted: dict[str, Kinds] = {s.id: _kinds(s.limits) for s in self._scopes()}
        users: dict[str, Kinds] = {}
        for row in keys:
            if row.revoked_at is None:
                if row.limits:
                    wanted[f"key:{row.id}"] = _kinds(compile_limits(row.limits))
                user_limits = compile_limits(row.user_limits) or self._users
                if user_limits:
                    users[f"user:{row.id}:"] = _kinds(user_limits)
        return await self._load(ledger, now_us, wanted, users, None)

    async def key_changed(self, ledger: Ledger, now_us: int, row: KeyRow, *, fresh: bool = False) -> None:
        """A key's limits changed: its counters are reloaded from the ledger for the limits it has now.

        While that runs, this instance holds the key's new requests back (they wait, then count against
        the new counters). Requests already in flight count at their reservation — a little high until
        the next start, never low. (With Redis, requests another instance admits during the reload,
        a few milliseconds, are held against the new limits only once they settle.)"""
        if row.id in self._reloading:
            await self._reloading[row.id].wait()
        # shared counters: the first instance to see these limits reloads; a new key has nothing to load
        if not await self.counters.claim_reload(row.id, _fingerprint(row)) or fresh:
            return
        done = self._reloading[row.id] = asyncio.Event()
        try:
            key_scope, user_prefix = f"key:{row.id}", f"user:{row.id}:"
            wanted = {key_scope: _kinds(compile_limits(row.limits))} if row.limits else {}
            user_limits = compile_limits(row.user_limits) or self._users
            users = {user_prefix: _kinds(user_limits)} if user_limits else {}
            loaded: Loaded = []
            if (wanted or users) and row.revoked_at is None:
                loaded = await self._load(ledger, now_us, wanted, users, row.id)
            await self.counters.replace({key_scope}, user_prefix, loaded, now_us)
        finally:
            del self._reloading[row.id]
            done.set()

    def _scopes(self) -> list[Scope]:
        """The scopes the config limits."""
        fixed = [*self._teams.values(), *self._features.values(), *self._providers.values()]
        return [*fixed, self._all] if self._all is not None else fixed

    async def _load(
        self,
        ledger: Ledger,
        now_us: int,
        wanted: dict[str, Kinds],
        users: dict[str, Kinds],
        key_id: str | None,
    ) -> Loaded:
        windows = windows_at(now_us)
        loaded: dict[CounterKey, list[int]] = {}
        # Only the periods some limit bounds: each one is a scan of the ledger since its start (the
        # total's, of the whole ledger), which is what a start of a server with a large ledger waits on.
        periods = {period for kinds in (*wanted.values(), *users.values()) for _, period in kinds}
        if not periods:
            return []
        await ledger.flush()
        for period, since in period_starts(now_us).items():
            if period not in periods:
                continue
            window = windows[period]
            for row in await ledger.totals(since, key_id):
                for scope_id in ledger_scope_ids(row[:5]):
                    kinds = wanted.get(scope_id)
                    if kinds is None and scope_id.startswith("user:"):
                        kinds = users.get(scope_id[: scope_id.index(":", 5) + 1])
                    if kinds is None:
                        continue
                    for metric, value in ((USD, row[5]), (TOKENS, row[6]), (REQUESTS, row[7])):
                        if (metric, period) in kinds:
                            cell = loaded.setdefault((scope_id, metric, window.key), [0, window.end_us])
                            cell[0] += int(value or 0)
        return [(key, c[0], c[1]) for key, c in loaded.items()]
