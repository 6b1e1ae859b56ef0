"""What an admin may say about a virtual key (the admin API's and the CLI's request bodies). Pure.

Validated with the same strictness as the config file: unknown fields are refused, names are bounded,
limits use the config's ``LimitSettings``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sluice.settings import LimitSettings

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:/@+ -]*$"


class KeyChange(BaseModel):
    """Fields of a key an admin may set; on update, fields left out keep their value (``null`` clears)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1, max_length=128, description="A label for people.")
    owner: str | None = Field(None, max_length=256, description="Who the key belongs to (free text).")
    team: str | None = Field(
        None, max_length=64, pattern=_NAME, description="Team or project: ledger column, team budget scope."
    )
    models: list[str] | None = Field(None, description="Aliases the key may use (null: all).")
    expires_at: datetime | None = Field(
        None, description="When the key stops working (ISO 8601; UTC if no zone)."
    )
    limits: LimitSettings | None = Field(None, description="Budgets and rate limits of the key itself.")
    user_limits: LimitSettings | None = Field(
        None, description="Quota of each end user of this key (null: the gateway's default, if any)."
    )
    features: list[str] | None = Field(None, description="Feature tags the key may use (null: any).")
    tags: list[str] | None = Field(None, description="Allowed tag keys or key=value pairs (null: any).")
    require_feature: bool | None = Field(None, description="Refuse requests without a feature tag.")
    log_content: bool | None = Field(None, description="Store request and response bodies in the ledger.")
    metadata: dict[str, str] | None = Field(None, description="Free-form string pairs, returned as given.")

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @field_validator("metadata")
    @classmethod
    def _small(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 32 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("at most 32 pairs, keys up to 64 and values up to 512 characters")
        return v

    def given(self) -> dict[str, Any]:
        """The fields the caller actually sent."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class KeyCreate(KeyChange):
    """A new key: ``name`` is required."""

    name: str = Field(..., min_length=1, max_length=128, description="A label for people.")
