"""The alert log's rows: one per alert (unique by its deduplication key, so an alert is claimed once,
whichever instance sees it first) and one per channel it is delivered to, with the delivery's status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

PENDING, SENT, FAILED = "pending", "sent", "failed"

ALERT_COLUMNS = "id, dedup_key, rule, scope, summary, facts, created_us, test"
DELIVERY_COLUMNS = "alert_id, channel, status, attempts, last_error, updated_us"


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One channel's delivery of one alert."""

    alert_id: str
    channel: str
    status: str  # pending, sent, failed
    attempts: int
    last_error: str | None
    updated_us: int


@dataclass(frozen=True, slots=True)
class AlertRow:
    """An alert as logged."""

    id: str
    dedup_key: str
    rule: str
    scope: str
    summary: str
    facts: dict[str, Any]
    created_us: int
    test: bool = False
    deliveries: tuple[DeliveryRow, ...] = field(default=())

    def values(self) -> tuple[Any, ...]:
        """The values for ``ALERT_COLUMNS``."""
        facts = orjson.dumps(self.facts).decode()
        return (
            self.id,
            self.dedup_key,
            self.rule,
            self.scope,
            self.summary,
            facts,
            self.created_us,
            self.test,
        )

    def public(self) -> dict[str, Any]:
        """The row for the admin API and the CLI."""
        return {
            "id": self.id,
            "key": self.dedup_key,
            "rule": self.rule,
            "scope": self.scope,
            "summary": self.summary,
            "facts": self.facts,
            "created_us": self.created_us,
            "test": self.test,
            "deliveries": [
                {
                    "channel": d.channel,
                    "status": d.status,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "updated_us": d.updated_us,
                }
                for d in self.deliveries
            ],
        }


def alert_rows(alerts: list[tuple[Any, ...]], deliveries: list[tuple[Any, ...]]) -> list[AlertRow]:
    """Rows of ``ALERT_COLUMNS`` joined with their rows of ``DELIVERY_COLUMNS``, in the order given."""
    by_alert: dict[str, list[DeliveryRow]] = {}
    for d in deliveries:
        by_alert.setdefault(str(d[0]), []).append(
            DeliveryRow(str(d[0]), str(d[1]), str(d[2]), int(d[3]), d[4], int(d[5]))
        )
    out = []
    for a in alerts:
        facts = a[5] if isinstance(a[5], dict) else orjson.loads(a[5])
        out.append(
            AlertRow(
                str(a[0]),
                str(a[1]),
                str(a[2]),
                str(a[3]),
                str(a[4]),
                facts,
                int(a[6]),
                bool(a[7]),
                tuple(sorted(by_alert.get(str(a[0]), []), key=lambda d: d.channel)),
            )
        )
    return out
