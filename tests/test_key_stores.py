"""One contract for both key stores (SQLite in the data directory, PostgreSQL shared by instances),
through the real ``KeyService``: create, find by digest, change, rotate, block, revoke, metadata."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluice.errors import AuthenticationFailed, NotFound, PermissionDenied, ServiceUnavailable
from sluice.keys.service import KeyService
from sluice.keys.spec import KeyChange, KeyCreate
from sluice.settings import LimitSettings
from sluice.store.keys import KeyStore
from sluice.store.postgres import PostgresStore
from sluice.store.sqlite import SQLiteStore
from tests.servers import fresh_database


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        yield SQLiteStore(tmp_path / "keys.db")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        yield PostgresStore(fresh_database(dsn, "key_store_contract"))


def run(store: KeyStore, body: object) -> None:
    async def main() -> None:
        await store.start()
        try:
            await body  # type: ignore[misc]
        finally:
            await store.close()

    asyncio.run(main())


def test_key_life(store: KeyStore) -> None:
    keys = KeyService(store, b"server-secret", ttl=0)

    async def body() -> None:
        limits = LimitSettings.model_validate({"usd": {"day": "2.5"}, "requests_per_minute": 10})
        secret, row = await keys.create_from(
            KeyCreate.model_validate(
                {
                    "name": "app",
                    "owner": "ana",
                    "team": "growth",
                    "limits": limits,
                    "metadata": {"env": "prod"},
                }
            )
        )
        principal = await keys.authenticate(secret)
        assert principal.key_id == row.id and principal.policy.team == "growth"
        assert principal.limits.scope is not None and principal.limits.scope.id == f"key:{row.id}"
        stored = await keys.get(row.id)
        assert (stored.owner, stored.metadata, stored.limits) == ("ana", {"env": "prod"}, limits)

        changed = await keys.update(
            row.id, KeyChange.model_validate({"name": "app2", "limits": None, "models": ["a", "b"]})
        )
        assert (changed.name, changed.limits, changed.models, changed.owner) == (
            "app2",
            None,
            ("a", "b"),
            "ana",
        )
        assert (await keys.authenticate(secret)).models == frozenset({"a", "b"})

        new_secret, rotated = await keys.rotate(row.id)
        assert rotated.id == row.id and rotated.digest != row.digest
        with pytest.raises(AuthenticationFailed):
            await keys.authenticate(secret)
        assert (await keys.authenticate(new_secret)).key_id == row.id

        await keys.set_blocked(row.id, True)
        with pytest.raises(PermissionDenied) as blocked:
            await keys.authenticate(new_secret)
        assert blocked.value.code == "key_blocked"
        await keys.set_blocked(row.id, False)
        assert (await keys.authenticate(new_secret)).key_id == row.id

        past = datetime(2020, 1, 1, tzinfo=UTC)
        await keys.update(row.id, KeyChange.model_validate({"expires_at": past}))
        with pytest.raises(AuthenticationFailed, match="expired at 2020-01-01T00:00:00Z"):
            await keys.authenticate(new_secret)
        await keys.update(row.id, KeyChange.model_validate({"expires_at": None}))

        revoked = await keys.revoke(row.id)
        assert revoked.revoked_at is not None
        with pytest.raises(AuthenticationFailed):
            await keys.authenticate(new_secret)
        with pytest.raises(NotFound):
            await keys.update(row.id, KeyChange.model_validate({"name": "zombie"}))
        with pytest.raises(NotFound):
            await keys.get("key_missing")
        assert [r.id for r in await keys.all()] == [row.id]

        assert await keys.ensure_admin_key() is not None
        assert await keys.ensure_admin_key() is None
        assert await store.ping()

    run(store, body())


def test_limits_change_is_noticed_when_the_key_is_next_loaded(store: KeyStore) -> None:
    """Another instance (or the CLI) changes a key's limits: this instance's budgets hear of it."""
    here = KeyService(store, b"s", ttl=0)
    there = KeyService(store, b"s", ttl=0)
    heard: list[str] = []

    async def changed(row: object, fresh: bool) -> None:
        heard.append(getattr(row, "id", "?"))

    here.limits_changed = changed

    async def body() -> None:
        secret, row = await there.create_from(KeyCreate.model_validate({"name": "k"}))
        here.remember(await here.all())
        await here.authenticate(secret)
        assert heard == []
        await there.update(row.id, KeyChange.model_validate({"limits": {"concurrent": 3}}))
        await here.authenticate(secret)
        assert heard == [row.id]
        await here.authenticate(secret)
        assert heard == [row.id]  # once per change

    run(store, body())


def test_unreachable_store_fails_closed(tmp_path: Path, postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn.rsplit(":", 1)[0] + ":1/nothing")  # nothing listens on port 1
    keys = KeyService(store, b"s", ttl=0)

    async def body() -> None:
        with pytest.raises(OSError, match=r"Connect call failed|connection refused|Errno"):
            await store.start()
        with pytest.raises(ServiceUnavailable) as caught:
            await keys.authenticate("sk-sluice-" + "a" * 43)
        assert caught.value.headers["retry-after"] == "2"

    asyncio.run(body())
