"""Authentication of API keys: admin key and virtual keys, cached in memory with a TTL.

The cache bounds store reads on the hot path; its TTL bounds how long a revoked key keeps working
(``server.key_cache_ttl_s``). Unknown keys are cached too (briefly), so a flood of bad keys cannot
turn into a flood of database reads.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sluice.errors import AuthenticationFailed, NotFound, PermissionDenied, ServiceUnavailable
from sluice.keys.digest import KEY_SHAPE, Digester, digest, hint, new_key
from sluice.keys.policy import OPEN, KeyPolicy
from sluice.keys.spec import KeyChange
from sluice.limits.limiter import NO_KEY_LIMITS, KeyLimits, key_limits
from sluice.settings import LimitSettings
from sluice.store.keys import KeyRow, KeyStore

log = logging.getLogger("sluice.keys")
ADMIN_DIGEST = "admin_key_digest"
ADMIN_ENV = "SLUICE_ADMIN_KEY"
_NEGATIVE_TTL = 1.0
_MAX_CACHE = 100_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the admin, or a virtual key with its allowed models (None = all)."""

    key_id: str
    name: str
    is_admin: bool
    models: frozenset[str] | None
    policy: KeyPolicy = OPEN
    limits: KeyLimits = NO_KEY_LIMITS
    expires_at: int | None = None  # unix seconds
    blocked: bool = False


ADMIN = Principal("admin", "admin", is_admin=True, models=None)
_POLICY_FIELDS = ("team", "features", "tags", "require_feature", "log_content")


def principal_of(row: KeyRow) -> Principal:
    """What a stored key allows, compiled once per cache load."""
    models = frozenset(row.models) if row.models is not None else None
    return Principal(
        row.id,
        row.name,
        is_admin=False,
        models=models,
        policy=row.policy,
        limits=key_limits(row.id, row.name, row.limits, row.user_limits),
        expires_at=row.expires_at,
        blocked=row.blocked,
    )


def _changed(row: KeyRow, given: dict[str, Any]) -> KeyRow:
    """``row`` with the fields an admin sent."""
    policy: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for name, value in given.items():
        if name in _POLICY_FIELDS:
            policy[name] = frozenset(value) if name in ("features", "tags") and value is not None else value
        elif name == "models":
            fields[name] = tuple(value) if value is not None else None
        elif name == "expires_at":
            fields[name] = int(value.timestamp()) if value is not None else None
        elif name == "metadata":
            fields[name] = dict(value or {})
        else:
            fields[name] = value
    for flag in ("require_feature", "log_content"):
        if flag in policy and policy[flag] is None:
            policy[flag] = False
    if fields.get("name", "") is None:
        del fields["name"]  # a key always has a name
    return dataclasses.replace(
        row, policy=dataclasses.replace(row.policy, **policy), updated_at=int(time.time()), **fields
    )


class KeyService:
    """Creates, changes and authenticates keys over a ``KeyStore``; every store call is awaited.

    ``announce`` (set when instances share a store) tells the other instances that a key changed, so
    they drop it from their caches at once instead of when its TTL runs out.
    """

    def __init__(
        self,
        store: KeyStore,
        secret: bytes,
        ttl: float = 5.0,
        admin_key: str | None = None,
        max_cache: int = _MAX_CACHE,
    ) -> None:
        self._max_cache = max_cache
        self.store = store
        self._secret = secret
        self._digest = Digester(secret)  # the hot path's digest (``authenticate``)
        self._ttl = ttl
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._env_admin = digest(secret, admin_key) if admin_key else None
        self._stored_admin: tuple[str | None, float] = (None, 0.0)
        self.announce: Callable[[str], Awaitable[None]] | None = None
        # Each key's limits as this instance last saw them: a change (made here, by another instance or
        # by the CLI) is noticed when the key is next loaded, and ``limits_changed`` runs before the
        # key serves another request here (the budgets load the key's spend for its new limits).
        self.limits_changed: Callable[[KeyRow, bool], Awaitable[None]] | None = None  # (row, new key?)
        self._seen: dict[str, tuple[LimitSettings | None, LimitSettings | None]] = {}

    def remember(self, rows: list[KeyRow]) -> None:
        """The keys' limits as they are when the budgets were loaded (at start)."""
        self._seen = {row.id: (row.limits, row.user_limits) for row in rows}

    async def _check_limits(self, row: KeyRow) -> None:
        now = (row.limits, row.user_limits) if row.revoked_at is None else (None, None)
        before = self._seen.get(row.id, (None, None))
        self._seen[row.id] = now
        if now != before and self.limits_changed is not None:
            await self.limits_changed(row, False)

    async def _created(self, row: KeyRow) -> None:
        self._seen[row.id] = (row.limits, row.user_limits)
        if (row.limits or row.user_limits) and self.limits_changed is not None:
            await self.limits_changed(row, True)  # nothing spent yet; shared counters note its limits

    async def ensure_admin_key(self) -> str | None:
        """Create the admin key on first start; return it (to print once) or None if it exists."""
        if self._env_admin is not None:
            return None
        key = new_key("admin-")
        if await self.store.set_meta_if_absent(ADMIN_DIGEST, digest(self._secret, key)):
            return key
        return None

    async def reset_admin_key(self) -> str:
        """Replace the stored admin key and return the new one."""
        key = new_key("admin-")
        await self.store.set_meta(ADMIN_DIGEST, digest(self._secret, key))
        return key

    def _new_row(self, name: str) -> tuple[str, KeyRow]:
        """A fresh secret and the row that stores only its digest."""
        key = new_key()
        row = KeyRow(
            id=f"key_{secrets.token_hex(8)}",
            digest=digest(self._secret, key),
            name=name,
            hint=hint(key),
            models=None,
            created_at=int(time.time()),
            revoked_at=None,
        )
        return key, row

    async def _insert(self, row: KeyRow) -> None:
        await self.store.insert_key(row)
        await self._created(row)

    async def create(
        self,
        name: str,
        models: tuple[str, ...] | None = None,
        policy: KeyPolicy = OPEN,
        *,
        limits: LimitSettings | None = None,
        user_limits: LimitSettings | None = None,
    ) -> tuple[str, KeyRow]:
        """Create a virtual key; the key itself is returned here and never again."""
        key, blank = self._new_row(name)
        row = dataclasses.replace(blank, models=models, policy=policy, limits=limits, user_limits=user_limits)
        await self._insert(row)
        return key, row

    async def create_from(self, change: KeyChange) -> tuple[str, KeyRow]:
        """Create a key from an admin's request (``name`` set)."""
        assert change.name is not None
        key, blank = self._new_row(change.name)
        row = dataclasses.replace(_changed(blank, change.given()), updated_at=None)
        await self._insert(row)
        return key, row

    async def all(self) -> list[KeyRow]:
        """Every key, oldest first."""
        return await self.store.list_keys()

    async def get(self, key_id: str) -> KeyRow:
        """A key by id, or ``NotFound``."""
        row = await self.store.get_key(key_id)
        if row is None:
            raise NotFound(f"No key with id {key_id!r}.")
        return row

    async def update(self, key_id: str, change: KeyChange) -> KeyRow:
        """Apply an admin's change to a live key."""
        row = await self._live(key_id)
        new = _changed(row, change.given())
        await self._replace(row, new)
        return new

    async def rotate(self, key_id: str) -> tuple[str, KeyRow]:
        """A new secret for the same key (id, settings and spend kept); the old secret stops working."""
        row = await self._live(key_id)
        key = new_key()
        new = dataclasses.replace(
            row, digest=digest(self._secret, key), hint=hint(key), updated_at=int(time.time())
        )
        await self._replace(row, new)
        return key, new

    async def set_blocked(self, key_id: str, blocked: bool) -> KeyRow:
        """Block (refuse its requests, reversibly) or unblock a key."""
        row = await self._live(key_id)
        new = dataclasses.replace(row, blocked=blocked, updated_at=int(time.time()))
        await self._replace(row, new)
        return new

    async def revoke(self, key_id: str) -> KeyRow:
        """Revoke a key for good."""
        row = await self._live(key_id)
        if not await self.store.revoke_key(key_id, int(time.time())):  # pragma: no cover - a race
            raise NotFound(f"No active key with id {key_id!r}.")
        await self._changed_digest(row.digest)
        revoked = await self.get(key_id)
        await self._check_limits(revoked)
        return revoked

    async def _replace(self, old: KeyRow, new: KeyRow) -> None:
        await self.store.replace_key(new)
        await self._check_limits(new)
        await self._changed_digest(old.digest)

    async def _live(self, key_id: str) -> KeyRow:
        row = await self.get(key_id)
        if row.revoked_at is not None:
            raise NotFound(f"The key {key_id!r} is revoked.")
        return row

    async def _changed_digest(self, d: str) -> None:
        self.forget(d)
        if self.announce is not None:
            try:
                await self.announce(d)
            except Exception:  # the TTL still bounds how long other instances trust their copy
                log.warning("could not announce a key change to other instances", exc_info=True)

    def forget(self, d: str) -> None:
        """Drop a key from this instance's cache (its next request reads the store)."""
        self._cache.pop(d, None)

    async def _lookup(self, d: str) -> Principal | None:
        now = time.monotonic()
        if self._stored_admin[1] <= now:  # re-read at most once per TTL (`sluice keys reset-admin`)
            self._stored_admin = (await self.store.get_meta(ADMIN_DIGEST), now + self._ttl)
        stored_admin = self._stored_admin[0]
        if stored_admin is not None and hmac.compare_digest(stored_admin, d):
            return ADMIN
        row = await self.store.find_key(d)
        if row is None or row.revoked_at is not None:
            return None
        await self._check_limits(row)
        return principal_of(row)

    async def authenticate(self, key: str | None) -> Principal:
        """The principal for a presented key, or ``AuthenticationFailed`` (same message for every failure)."""
        if not key:
            raise _auth_failed()
        d = self._digest(key)
        if self._env_admin is not None and hmac.compare_digest(self._env_admin, d):
            return ADMIN
        if not KEY_SHAPE.fullmatch(key):  # not a key we could have issued: no store read, no cache entry
            raise _auth_failed()
        now = time.monotonic()
        hit = self._cache.get(d)
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:
            try:
                principal = await self._lookup(d)
            except Exception as exc:  # the store is down: refuse (503), never guess
                log.warning("key store unreachable", exc_info=True)
                raise ServiceUnavailable(
                    "The key store is unreachable; try again shortly.", headers={"retry-after": "2"}
                ) from exc
            if len(self._cache) >= self._max_cache:
                self._evict()
            self._cache[d] = (principal, now + (self._ttl if principal is not None else _NEGATIVE_TTL))
        if principal is None:
            raise _auth_failed()
        if principal.expires_at is not None and time.time() >= principal.expires_at:
            raise AuthenticationFailed(f"This API key expired at {_iso(principal.expires_at)}.")
        if principal.blocked:
            raise PermissionDenied("This API key is blocked; ask the gateway's admin.", code="key_blocked")
        return principal

    def _evict(self) -> None:
        """Make room: drop unknown keys first, so a flood of bad keys cannot evict the good ones."""
        self._cache = {d: hit for d, hit in self._cache.items() if hit[0] is not None}
        if len(self._cache) >= self._max_cache:
            self._cache.clear()


def _auth_failed() -> AuthenticationFailed:
    return AuthenticationFailed(
        "Invalid or missing API key. Send 'Authorization: Bearer <key>' with a key issued by this gateway."
    )


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
