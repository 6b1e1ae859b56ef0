"""Whether a writer is keeping up: failing for a while makes it unhealthy (capped requests then fail
closed, since what they spend could not be recorded)."""

from __future__ import annotations

import time

FAILING_AFTER_S = 2.0


class WriteHealth:
    """Tracks since when writes have been failing."""

    __slots__ = ("_failing_since",)

    def __init__(self) -> None:
        self._failing_since: float | None = None

    def failed(self) -> None:
        """A write failed (the first failure starts the clock)."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def succeeded(self) -> None:
        """A write went through."""
        self._failing_since = None

    @property
    def healthy(self) -> bool:
        """False once writes have been failing for ``FAILING_AFTER_S``."""
        since = self._failing_since
        return since is None or time.monotonic() - since < FAILING_AFTER_S
