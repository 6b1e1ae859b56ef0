"""Admission and settlement on budgets: which scopes a request counts in, what it reserves, what it pays.

- ``scopes`` (at the HTTP edge, once the key and the request's user and feature are known): the key, its
  end user, its team, its feature, and everything (``all``); the provider account is added when the
  deployment is chosen.
- ``admit`` (before the upstream call): the worst case — the body's size as prompt tokens (a bound),
  plus the output cap, at the dearest rates of the deployment — is reserved on every scope at once, or
  the request is refused and reaches no provider.
- ``settle`` (with the ledger row): the reservation becomes the actual cost and tokens.
- ``rebuild`` (at start): spent amounts for the current periods come back from the ledger, so a
  restart forgets nothing; a row a crash left pending counts at its reservation. Counters are kept only
  for scopes with limits; ``key_changed`` loads a key's history when it gains limits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sluice.ledger.entry import Entry
from sluice.ledger.sink import Ledger
from sluice.limits.counters import CounterKey, Counters, Hold, Need
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
        self._bytes_per_token = bytes_per_token
        self.any_users = bool(self._users)

    @property
    def active(self) -> bool:
        """True if any limit outside the keys is configured."""
        return bool(self._all or self._teams or self._features or self._providers or self._users)

    def scopes(
        self, key_id: str, key: KeyLimits, user: str | None, team: str | None, feature: str | None
    ) -> tuple[Scope, ...]:
        """The scopes with limits that a request counts in (the provider's comes at ``admit``)."""
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

    def need(self, entry: Entry, body_bytes: int) -> Need:
        """The request's worst case (also recorded on the entry, so a crash settles at it)."""
        assert entry.pricer is not None, "a deployment is chosen first"
        prompt = -(-body_bytes // self._bytes_per_token)
        nanos = entry.pricer.worst_nanos(prompt, entry.output_cap, entry.ts_us)
        entry.reserved_input_tokens = prompt
        entry.reserved_output_tokens = entry.output_cap
        entry.reserved_nanos = nanos
        return Need(nanos, prompt + entry.output_cap)

    async def admit(self, entry: Entry, scopes: tuple[Scope, ...], body_bytes: int) -> None:
        """Reserve the worst case on every scope (raises the refusal of a full one; nothing reserved)."""
        need = self.need(entry, body_bytes)
        provider = self._providers.get(entry.provider)
        if provider is not None:
            scopes = (*scopes, provider)
        if scopes:
            entry.hold = await self.counters.reserve(scopes, need, entry.ts_us)

    def settle(self, entry: Entry) -> None:
        """Replace the request's reservation with its actual cost and tokens."""
        hold: Hold | None = entry.hold
        if hold is None:
            return
        self.counters.settle(hold, entry.cost_nanos, entry.usage.input_tokens + entry.usage.output_tokens)
        if entry.cost_nanos > hold.need.nanos:
            log.warning(
                "request %s cost %d n$, more than the %d n$ reserved (overshoot is recorded in the ledger)",
                entry.request_id,
                entry.cost_nanos,
                hold.need.nanos,
            )

    async def rebuild(self, ledger: Ledger, now_us: int, keys: Iterable[KeyRow]) -> int:
        """At start: load the current periods' spend of every scope that has limits from the ledger
        (``keys``: every key in the store). Returns the number of counters loaded."""
        limited = {row.id for row in keys if row.revoked_at is None and row.limits}
        user_keys = {row.id for row in keys if row.revoked_at is None and row.user_limits}
        exact = {
            ALL,
            *(s.id for s in self._teams.values()),
            *(s.id for s in self._features.values()),
            *(s.id for s in self._providers.values()),
            *(f"key:{k}" for k in limited),
        }
        users = ("user:",) if self._users else tuple(f"user:{k}:" for k in user_keys)
        return await self._load(ledger, now_us, exact, users, None)

    async def key_changed(self, ledger: Ledger, now_us: int, row: KeyRow) -> None:
        """A key's limits changed: drop its counters and, for the limits it has now, load its spend so
        far from the ledger. (Requests of the key in flight at that moment are not counted against
        limits it did not have when they were admitted.)"""
        key_scope, user_prefix = f"key:{row.id}", f"user:{row.id}:"
        self.counters.drop((key_scope + "\x00", user_prefix), exact=(key_scope,))
        exact = {key_scope} if row.limits else set()
        users = (user_prefix,) if row.user_limits or self._users else ()
        if (exact or users) and row.revoked_at is None:
            await self._load(ledger, now_us, exact, users, row.id)

    async def _load(
        self, ledger: Ledger, now_us: int, exact: set[str], users: tuple[str, ...], key_id: str | None
    ) -> int:
        windows = windows_at(now_us)
        loaded: dict[CounterKey, list[int]] = {}
        await ledger.flush()
        for period, since in period_starts(now_us).items():
            window = windows[period]
            for row in await ledger.totals(since):
                if key_id is not None and row[0] != key_id:
                    continue
                for scope_id in self._scope_ids(row[:5]):
                    if scope_id not in exact and not (users and scope_id.startswith(users)):
                        continue
                    for metric, value in ((USD, row[5]), (TOKENS, row[6]), (REQUESTS, row[7])):
                        cell = loaded.setdefault((scope_id, metric, window.key), [0, window.end_us])
                        cell[0] += int(value or 0)
        self.counters.load((key, c[0], c[1]) for key, c in loaded.items())
        return len(loaded)

    def _scope_ids(self, columns: Iterable[object]) -> Iterable[str]:
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
