"""Authentication of API keys: admin key and virtual keys, cached in memory with a TTL.

The cache bounds store reads on the hot path; its TTL bounds how long a revoked key keeps working
(``server.key_cache_ttl_s``). Unknown keys are cached too (briefly), so a flood of bad keys cannot
turn into a flood of database reads.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from dataclasses import dataclass

from sluice.errors import AuthenticationFailed
from sluice.keys.digest import KEY_SHAPE, digest, hint, new_key
from sluice.keys.policy import OPEN, KeyPolicy
from sluice.store.sqlite import KeyRow, SQLiteStore

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


ADMIN = Principal("admin", "admin", is_admin=True, models=None)


class KeyService:
    """Creates, lists, revokes and authenticates keys."""

    def __init__(
        self,
        store: SQLiteStore,
        secret: bytes,
        ttl: float = 5.0,
        admin_key: str | None = None,
        max_cache: int = _MAX_CACHE,
    ) -> None:
        self._max_cache = max_cache
        self._store = store
        self._secret = secret
        self._ttl = ttl
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._env_admin = digest(secret, admin_key) if admin_key else None
        self._stored_admin: tuple[str | None, float] = (None, 0.0)

    def ensure_admin_key(self) -> str | None:
        """Create the admin key on first start; return it (to print once) or None if it exists."""
        if self._env_admin is not None:
            return None
        key = new_key("admin-")
        if self._store.set_meta_if_absent(ADMIN_DIGEST, digest(self._secret, key)):
            return key
        return None

    def reset_admin_key(self) -> str:
        """Replace the stored admin key and return the new one."""
        key = new_key("admin-")
        self._store.set_meta(ADMIN_DIGEST, digest(self._secret, key))
        return key

    def create(
        self, name: str, models: tuple[str, ...] | None = None, policy: KeyPolicy = OPEN
    ) -> tuple[str, KeyRow]:
        """Create a virtual key; the key itself is returned here and never again."""
        key = new_key()
        row = KeyRow(
            id=f"key_{secrets.token_hex(8)}",
            digest=digest(self._secret, key),
            name=name,
            hint=hint(key),
            models=models,
            created_at=int(time.time()),
            revoked_at=None,
            policy=policy,
        )
        self._store.insert_key(row)
        return key, row

    def _lookup(self, d: str) -> Principal | None:
        now = time.monotonic()
        if self._stored_admin[1] <= now:  # re-read at most once per TTL (`sluice keys reset-admin`)
            self._stored_admin = (self._store.get_meta(ADMIN_DIGEST), now + self._ttl)
        stored_admin = self._stored_admin[0]
        if stored_admin is not None and hmac.compare_digest(stored_admin, d):
            return ADMIN
        row = self._store.find_key(d)
        if row is None or row.revoked_at is not None:
            return None
        models = frozenset(row.models) if row.models is not None else None
        return Principal(row.id, row.name, is_admin=False, models=models, policy=row.policy)

    async def authenticate(self, key: str | None) -> Principal:
        """The principal for a presented key, or ``AuthenticationFailed`` (same message for every failure)."""
        if not key:
            raise _auth_failed()
        d = digest(self._secret, key)
        if self._env_admin is not None and hmac.compare_digest(self._env_admin, d):
            return ADMIN
        if not KEY_SHAPE.fullmatch(key):  # not a key we could have issued: no store read, no cache entry
            raise _auth_failed()
        now = time.monotonic()
        hit = self._cache.get(d)
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:
            principal = await asyncio.to_thread(self._lookup, d)
            if len(self._cache) >= self._max_cache:
                self._evict()
            self._cache[d] = (principal, now + (self._ttl if principal is not None else _NEGATIVE_TTL))
        if principal is None:
            raise _auth_failed()
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
