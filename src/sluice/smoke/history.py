"""Smoke runs kept in the store, and the previous one to compare with."""

from __future__ import annotations

import orjson

from sluice.smoke.report import RunReport
from sluice.store.keys import KeyStore


async def keep(store: KeyStore, run: RunReport, keep_runs: int) -> None:
    """Store a run's report (and forget the oldest beyond ``keep_runs``)."""
    report = {**run.as_json(), "cap_nanos": run.cap_nanos}
    await store.put_smoke_run(run.id, run.started_us, run.ok, orjson.dumps(report).decode())
    await store.trim_smoke_runs(keep_runs)


async def recent(store: KeyStore, limit: int = 20, *, light: bool | None = None) -> list[RunReport]:
    """The latest runs, newest first (``light``: only canaries, or only full runs)."""
    runs = [RunReport.from_json(orjson.loads(raw)) for raw in await store.smoke_runs(limit)]
    return [r for r in runs if light is None or r.light == light]


async def previous(store: KeyStore, run: RunReport) -> RunReport | None:
    """The last stored run of the same kind before ``run`` (None: it is the first)."""
    for other in await recent(store, 50, light=run.light):
        if other.id != run.id and other.started_us <= run.started_us:
            return other
    return None
