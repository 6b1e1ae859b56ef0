"""Virtual keys as stored, the codec both SQL backends share, and the store interface (async).

A row never holds the key itself: only its HMAC digest (looked up by equality, indexed) and a hint.
Flags are stored as integers and lists, limits and metadata as JSON text, so one codec serves SQLite
and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from sluice.keys.policy import OPEN, KeyPolicy
from sluice.settings import LimitSettings
from sluice.store.alerts import AlertRow


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A virtual key as stored: never the key itself, only its digest and a short hint."""

    id: str
    digest: str
    name: str
    hint: str
    models: tuple[str, ...] | None
    created_at: int
    revoked_at: int | None
    policy: KeyPolicy = OPEN
    owner: str | None = None
    expires_at: int | None = None  # unix seconds
    blocked: bool = False
    limits: LimitSettings | None = None
    user_limits: LimitSettings | None = None  # each end user's quota (None: the gateway's default)
    metadata: dict[str, str] = field(default_factory=dict)
    updated_at: int | None = None


KEY_COLUMNS = (
    "id",
    "digest",
    "name",
    "hint",
    "models",
    "created_at",
    "revoked_at",
    "team",
    "features",
    "tags",
    "require_feature",
    "log_content",
    "owner",
    "expires_at",
    "blocked",
    "limits",
    "user_limits",
    "metadata",
    "updated_at",
)
KEY_FIELDS = ", ".join(KEY_COLUMNS)
KEY_SELECT = f"SELECT {KEY_FIELDS}"


def _limits_json(limits: LimitSettings | None) -> str | None:
    return limits.model_dump_json(exclude_none=True) if limits is not None else None


def key_values(row: KeyRow) -> tuple[object, ...]:
    p = row.policy
    return (
        row.id,
        row.digest,
        row.name,
        row.hint,
        _json_list(row.models),
        row.created_at,
        row.revoked_at,
        p.team,
        _json_list(p.features),
        _json_list(p.tags),
        int(p.require_feature),
        int(p.log_content),
        row.owner,
        row.expires_at,
        int(row.blocked),
        _limits_json(row.limits),
        _limits_json(row.user_limits),
        orjson.dumps(row.metadata).decode() if row.metadata else None,
        row.updated_at,
    )


def _json_list(values: Iterable[str] | None) -> str | None:
    return orjson.dumps(sorted(values)).decode() if values is not None else None


def _set(raw: object) -> frozenset[str] | None:
    return frozenset(orjson.loads(str(raw))) if raw is not None else None


def _limits(raw: object) -> LimitSettings | None:
    return LimitSettings.model_validate_json(str(raw)) if raw is not None else None


def _int(raw: object) -> int | None:
    return int(str(raw)) if raw is not None else None


def key_row(row: tuple[object, ...]) -> KeyRow:
    models = orjson.loads(str(row[4])) if row[4] is not None else None
    policy = KeyPolicy(
        team=str(row[7]) if row[7] is not None else None,
        features=_set(row[8]),
        tags=_set(row[9]),
        require_feature=bool(row[10]),
        log_content=bool(row[11]),
    )
    return KeyRow(
        id=str(row[0]),
        digest=str(row[1]),
        name=str(row[2]),
        hint=str(row[3]),
        models=tuple(models) if models is not None else None,
        created_at=int(str(row[5])),
        revoked_at=_int(row[6]),
        policy=policy,
        owner=str(row[12]) if row[12] is not None else None,
        expires_at=_int(row[13]),
        blocked=bool(row[14]),
        limits=_limits(row[15]),
        user_limits=_limits(row[16]),
        metadata=orjson.loads(str(row[17])) if row[17] is not None else {},
        updated_at=_int(row[18]),
    )


@dataclass(frozen=True, slots=True)
class ProviderKeyRow:
    """A provider API key stored encrypted: only ciphertext bound to this row, and a fingerprint."""

    id: str
    provider: str  # the provider account's name in the config
    label: str
    sealed: str  # ``sluice.keys.vault.Sealed.to_text()``
    fingerprint: str
    created_at: int

    @property
    def binding(self) -> str:
        """What the ciphertext is bound to: copied to another row, it does not decrypt."""
        return f"provider_key:{self.id}:{self.provider}"


PROVIDER_KEY_COLUMNS = "id, provider, label, sealed, fingerprint, created_at"


def provider_key_row(row: tuple[object, ...]) -> ProviderKeyRow:
    """A row of ``PROVIDER_KEY_COLUMNS``."""
    return ProviderKeyRow(str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), int(str(row[5])))


class KeyStore(Protocol):
    """Where keys and server metadata live (SQLite in the data directory, or PostgreSQL)."""

    async def start(self) -> None:
        """Connect (inside the event loop that will use the store)."""
        ...

    async def close(self) -> None:
        """Disconnect."""
        ...

    async def ping(self) -> bool:
        """True when the database answers."""
        ...

    async def get_meta(self, name: str) -> str | None:
        """A server metadata value."""
        ...

    async def set_meta(self, name: str, value: str) -> None:
        """Store or replace a value."""
        ...

    async def set_meta_if_absent(self, name: str, value: str) -> bool:
        """Store a value unless one exists; True if this call stored it."""
        ...

    async def insert_key(self, row: KeyRow) -> None:
        """Add a key."""
        ...

    async def replace_key(self, row: KeyRow) -> bool:
        """Store a changed key (same id); False if there is none."""
        ...

    async def get_key(self, key_id: str) -> KeyRow | None:
        """The key with this id."""
        ...

    async def find_key(self, digest: str) -> KeyRow | None:
        """The key with this digest (an indexed equality lookup: no scans, no prefixes)."""
        ...

    async def list_keys(self) -> list[KeyRow]:
        """Every key, oldest first."""
        ...

    async def revoke_key(self, key_id: str, at: int) -> bool:
        """Revoke an active key; False if there is no such active key."""
        ...

    async def insert_provider_key(self, row: ProviderKeyRow) -> None:
        """Add an encrypted provider key."""
        ...

    async def list_provider_keys(self) -> list[ProviderKeyRow]:
        """Every stored provider key, oldest first."""
        ...

    async def delete_provider_key(self, key_id: str) -> bool:
        """Remove a provider key; False if there is none."""
        ...

    async def reseal_provider_key(self, key_id: str, old: str, new: str) -> bool:
        """Replace a key's ciphertext if it is still ``old`` (a re-wrap under a new KEK)."""
        ...

    async def claim_alert(self, row: AlertRow, channels: list[str]) -> bool:
        """Log an alert with a pending delivery per channel, unless its key is logged already (False)."""
        ...

    async def record_delivery(
        self, alert_id: str, channel: str, status: str, attempts: int, error: str | None, at_us: int
    ) -> None:
        """Record a delivery attempt's outcome."""
        ...

    async def list_alerts(self, limit: int, since_us: int = 0) -> list[AlertRow]:
        """The latest alerts (newest first) with their deliveries."""
        ...

    async def stale_deliveries(self, before_us: int, limit: int) -> list[AlertRow]:
        """Alerts with a delivery still pending since before ``before_us`` (each with those deliveries)."""
        ...

    async def take_delivery(self, alert_id: str, channel: str, seen_us: int, now_us: int) -> bool:
        """Take over a stale pending delivery, if it is still as it was seen (one instance wins)."""
        ...

    async def list_alert_rules(self) -> list[tuple[str, str, int]]:
        """Alert overrides set through the admin API: (scope, settings JSON, updated µs)."""
        ...

    async def put_alert_rule(self, scope: str, settings: str, at_us: int) -> None:
        """Set a scope's alert override."""
        ...

    async def delete_alert_rule(self, scope: str) -> bool:
        """Remove a scope's alert override; False if it had none."""
        ...

    async def put_smoke_run(self, run_id: str, started_us: int, ok: bool, report: str) -> None:
        """Keep a smoke run's report (JSON)."""
        ...

    async def trim_smoke_runs(self, keep: int) -> None:
        """Delete all but the latest ``keep`` smoke runs."""
        ...

    async def smoke_runs(self, limit: int) -> list[str]:
        """The latest smoke reports (JSON), newest first."""
        ...
