"""Smoke runs inside the server: ``POST /admin/smoke`` and the scheduled canaries.

A canary is a light run (a completion and a stream per deployment) every ``smoke.canary.every_s``
under its own cap; a deployment that fails it, or regresses since the previous canary, is reported to
the provider-health alert. With shared counters (Redis) one instance runs each canary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from sluice.settings import Config
from sluice.smoke import history
from sluice.smoke.report import Drift, RunReport, compare
from sluice.smoke.runner import SmokeRunner
from sluice.store.keys import KeyStore

log = logging.getLogger("sluice.smoke")
Claim = Callable[[str], Awaitable[bool]]
CanaryHook = Callable[[RunReport, list[Drift]], Awaitable[None]]


class SmokeService:
    """Runs, keeps and compares smoke runs; schedules the canaries."""

    def __init__(
        self,
        runner: SmokeRunner,
        store: KeyStore,
        config: Config,
        *,
        clock: Callable[[], int],
        claim: Claim | None = None,
        on_canary: CanaryHook | None = None,
    ) -> None:
        self.runner = runner
        self.store = store
        self.config = config  # the readiness checklist reads it all
        self.settings = config.smoke
        self._clock = clock
        self._claim = claim
        self._on_canary = on_canary
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one run at a time per instance: a provider sees no burst

    async def run(
        self, patterns: Sequence[str] = (), *, cap_nanos: int | None = None, light: bool = False
    ) -> tuple[RunReport, list[Drift]]:
        """Run, keep the report, and say what drifted since the previous run of the same kind."""
        async with self._lock:
            run = await self.runner.run(patterns, cap_nanos=cap_nanos, light=light)
        before = await history.previous(self.store, run)
        await history.keep(self.store, run, self.settings.keep_runs)
        drift = [] if before is None else compare(before, run, slower=self.settings.slower_factor)
        if patterns:
            drift = [d for d in drift if d.kind != "gone"]
        return run, drift

    async def start(self) -> None:
        if self.settings.canary.every_s is not None:
            self._task = asyncio.create_task(self._canaries(self.settings.canary.every_s))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _canaries(self, every_s: float) -> None:
        canary = self.settings.canary
        while True:
            await asyncio.sleep(every_s)
            slot = self._clock() // int(every_s * 1_000_000)
            try:
                if self._claim is not None and not await self._claim(f"canary:{slot}"):
                    continue  # another instance runs this one
                run, drift = await self.run(
                    canary.deployments, cap_nanos=int(canary.max_usd.scaleb(9)), light=True
                )
                if self._on_canary is not None:
                    await self._on_canary(run, drift)
            except Exception:  # a canary that cannot run is logged; the next one tries again
                log.exception("canary run failed")
