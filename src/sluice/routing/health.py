"""Which deployments are fit to serve, and how much retrying the gateway may do. Pure.

- ``verdict``: what an attempt's failure means — final (the client's own mistake: never retried, never
  held against the deployment), retry elsewhere, or try the account's next key first.
- ``Health``: per deployment, consecutive failures and a measured latency. After ``eject_after``
  failures in a row a deployment is ejected for ``eject_base_s``, doubled by every failed half-open
  probe up to ``eject_max_s``; when its time is up one request probes it (others keep away until that
  probe ends) and a success re-admits it. At most ``max_ejected_share`` of an alias's deployments are
  ejected at once (always at least one of two or more); an alias's only deployment is never ejected.
- ``RetryBudget``: retries stay within a share of the requests, both in flight (Envoy's retry budget)
  and over the last seconds (Finagle's), so a failing provider cannot multiply the load.

Times are monotonic seconds passed in by the caller.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from sluice.routing.table import Deployment
from sluice.settings import RoutingSettings

# What a failed attempt means for the request.
FINAL = "final"  # answer the client with it: its own mistake (400, 404, 413, 422, …)
RETRY = "retry"  # the provider failed: another deployment (or this one, later) may serve
ROTATE = "rotate"  # the provider refused or throttled the account's key: its next key first
HEALTHY, EJECTED, PROBING = "healthy", "ejected", "probing"
_EWMA = 0.2  # weight of the newest sample in the moving averages
PROBE_STALE_S = 60.0  # a probe not finished after this long is presumed lost; another may start


def verdict(upstream_status: int) -> str:
    """How to treat a failed attempt, from the provider's HTTP status (0: no answer at all — a timeout,
    a refused connection or a reset; 200: an answer that broke before any content)."""
    if upstream_status in (401, 402, 403, 429):
        return ROTATE
    if upstream_status in (0, 200, 408) or upstream_status >= 500:
        return RETRY
    return FINAL


def counts_against(upstream_status: int) -> bool:
    """True if the failure is the deployment's (ejection counts it): timeouts, connection failures, a
    broken answer, 5xx, 408 and 429 — not a key the provider refused, never a client mistake."""
    return upstream_status in (0, 200, 408, 429) or upstream_status >= 500


@dataclass(slots=True)
class DeploymentState:
    """One deployment's health, as this process has measured it (and other instances have told it)."""

    id: str  # "provider/upstream-model"
    provider: str
    model: str
    failures: int = 0  # consecutive
    ejections: int = 0  # consecutive ejections: the next lasts base * 2**ejections
    ejected_until: float = 0.0  # monotonic seconds; 0: not ejected
    probe_since: float = 0.0  # a half-open probe in flight since (0: none)
    latency_us: float | None = None  # moving average of successful attempts
    error_rate: float = 0.0  # moving average of failures (1) and successes (0)
    attempts: int = 0
    errors: int = 0
    out_until: float = 0.0  # monotonic seconds: its provider's quota is used up until then
    cool_until: float = 0.0  # its provider said to slow down: others first until then
    out_reason: str = ""  # ... and why ("daily allowance (Groq TPD/RPD)", "rate limit", …)

    def status(self, now: float) -> str:
        """healthy, ejected (until ``ejected_until``), or probing (ejection over, being tested)."""
        if self.ejected_until == 0.0:
            return HEALTHY
        return EJECTED if now < self.ejected_until else PROBING

    def admits(self, now: float) -> bool:
        """True if a request may try it now: not held out by its provider's quota, and healthy or due
        for a probe that nobody is running."""
        if self.out_until > now or self.cool_until > now:
            return False
        if self.ejected_until == 0.0:
            return True
        if now < self.ejected_until:
            return False
        return self.probe_since == 0.0 or now - self.probe_since > PROBE_STALE_S


class Health:
    """Every deployment's state, and the ejection rules."""

    def __init__(self, settings: RoutingSettings) -> None:
        self.settings = settings
        self.states: dict[str, DeploymentState] = {}

    def state_of(self, dep: Deployment) -> DeploymentState:
        """The state of a deployment (created healthy on first use)."""
        st = self.states.get(dep.id)
        if st is None:
            st = self.states[dep.id] = DeploymentState(dep.id, dep.target.provider, dep.target.upstream_model)
        return st

    @staticmethod
    def started(st: DeploymentState, now: float) -> bool:
        """An attempt starts: if the deployment is due for a probe, this attempt is the probe (True)."""
        if st.ejected_until != 0.0 and now >= st.ejected_until:
            st.probe_since = now
            return True
        return False

    @staticmethod
    def abandoned(st: DeploymentState) -> None:
        """The probe ended without a verdict (its client left): another request may probe."""
        st.probe_since = 0.0

    @staticmethod
    def succeeded(st: DeploymentState, latency_us: int) -> bool:
        """The attempt succeeded; returns True if that re-admitted an ejected deployment."""
        readmitted = st.ejected_until != 0.0
        st.failures = st.ejections = 0
        st.ejected_until = st.probe_since = 0.0
        st.attempts += 1
        st.error_rate *= 1 - _EWMA
        last = st.latency_us
        st.latency_us = latency_us if last is None else last + _EWMA * (latency_us - last)
        return readmitted

    def failed(
        self, st: DeploymentState, upstream_status: int, now: float, peers: Iterable[DeploymentState]
    ) -> float:
        """The attempt failed; returns how long the deployment is now ejected for (0: it is not)."""
        st.attempts += 1
        if not counts_against(upstream_status):
            st.probe_since = 0.0  # a probe that proved nothing: the next request may probe
            return 0.0
        st.errors += 1
        st.error_rate += _EWMA * (1 - st.error_rate)
        st.failures += 1
        if st.probe_since != 0.0:  # the half-open probe failed: out again, for longer
            st.probe_since = 0.0
            st.ejections += 1
            return self._eject(st, now)
        if st.ejected_until != 0.0 or st.failures < self.settings.eject_after:
            return 0.0
        if not self._room(st, list(peers), now):
            return 0.0
        return self._eject(st, now)

    def _room(self, st: DeploymentState, peers: list[DeploymentState], now: float) -> bool:
        """True if ejecting ``st`` keeps enough of its alias's deployments in service."""
        if len(peers) < 2:
            return False  # an alias's only deployment: ejecting it would refuse every request
        allowed = max(1, math.floor(self.settings.max_ejected_share * len(peers)))
        out = sum(1 for p in peers if p is not st and p.status(now) != HEALTHY)
        return out + 1 <= allowed

    def _eject(self, st: DeploymentState, now: float) -> float:
        s = self.settings
        seconds: float = min(s.eject_base_s * float(2 ** min(st.ejections, 30)), s.eject_max_s)
        st.ejected_until = now + seconds
        return seconds

    @staticmethod
    def held_out(
        states: Iterable[DeploymentState], seconds: float, reason: str, now: float, *, hard: bool
    ) -> None:
        """The provider said to stay away from these deployments for ``seconds``: its quota is used up
        (``hard``: nothing is sent there until then), or slow down (others are tried first)."""
        for st in states:
            if hard and now + seconds > st.out_until:
                st.out_until = now + seconds
                st.out_reason = reason
            elif not hard and now + seconds > st.cool_until:
                st.cool_until = now + seconds

    def told(self, dep_id: str, seconds_left: float, ejections: int, now: float) -> None:
        """Another instance ejected (``seconds_left`` > 0) or re-admitted (0) a deployment we know."""
        st = self.states.get(dep_id)
        if st is None:
            return
        if seconds_left > 0:
            st.ejected_until = max(st.ejected_until, now + seconds_left)
            st.ejections = max(st.ejections, ejections)
        elif st.ejected_until != 0.0:
            st.ejected_until = st.probe_since = 0.0
            st.failures = st.ejections = 0


class RetryBudget:
    """How much retrying the process may do (fallbacks and key rotations are retries too):

    - in flight (as Envoy does): retries running or waiting ≤ max(minimum, ratio × requests in flight);
    - over time (as Finagle does): retries in the last one or two windows ≤ minimum + ratio × requests
      in them — so the calls a failing provider sees stay within (1 + ratio) × requests + minimum, however
      fast it fails.
    """

    __slots__ = ("_ended", "_now", "_prev", "active", "minimum", "ratio", "retrying", "window_s")

    def __init__(self, ratio: float, minimum: int, window_s: float = 10.0) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self.window_s = window_s
        self.active = 0  # requests in their attempt loop
        self.retrying = 0  # retries running, or waiting for their backoff
        self._ended = 0.0  # when the current window ends (monotonic seconds)
        self._now = [0, 0]  # requests, retries in the current window
        self._prev = [0, 0]  # in the one before

    def _roll(self, now: float) -> None:
        if now < self._ended:
            return
        recent = now < self._ended + self.window_s  # the window that just ended becomes the previous one
        self._prev = self._now if recent else [0, 0]
        self._now = [0, 0]
        self._ended = now + self.window_s

    def arrived(self, now: float) -> None:
        """A request entered its attempt loop (it earns ``ratio`` of a retry)."""
        self._roll(now)
        self._now[0] += 1
        self.active += 1

    def left(self) -> None:
        """A request left its attempt loop."""
        self.active -= 1

    def acquire(self, now: float) -> bool:
        """Take a retry, if both budgets have room."""
        if self.retrying >= max(self.minimum, self.ratio * self.active):
            return False
        self._roll(now)
        requests, retries = self._now[0] + self._prev[0], self._now[1] + self._prev[1]
        if retries + 1 > self.minimum + self.ratio * requests:
            return False
        self._now[1] += 1
        self.retrying += 1
        return True

    def release(self) -> None:
        """A retry ended."""
        self.retrying -= 1


def backoff_s(retry: int, settings: RoutingSettings, rng: random.Random) -> float:
    """Seconds to wait before the ``retry``-th retry of a deployment already tried: exponential, full
    jitter (so a burst of failures does not come back as a burst of retries)."""
    cap = min(settings.backoff_max_ms, settings.backoff_base_ms * (2 ** min(retry, 30))) / 1000
    jitter: float = rng.uniform(0, cap)
    return jitter
