"""One request's attempt plan: the deployments it may try, in order, and what each may cost. Pure.

The plan walks the request's aliases (its ``model``, then any ``models`` it listed), each ordered by its
strategy, and keeps a deployment once. It leaves out a deployment with no price (it could not be
charged), one whose worst case for this request costs more than the alias's ``max_price_ratio`` times
the first choice's (unless it ``allow_pricier``), one its provider's quota holds out, and an ejected or
cooling one (unless nothing else is left: then the one back soonest). Admission reserves the dearest
worst case among what is left.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sluice.routing.health import DeploymentState, Health
from sluice.routing.table import Deployment, Route

UNPRICED, PRICE, QUOTA = "unpriced", "price", "quota"


@dataclass(slots=True)
class Candidate:
    """A deployment this request may try, the alias that brought it, and its worst case in nano-dollars."""

    dep: Deployment
    route: Route
    worst: int


def ordered(
    route: Route, health: Health, rng: random.Random, worst: Callable[[Deployment], int]
) -> list[Deployment]:
    """The alias's deployments in the order its strategy gives this request (``worst``: the request's
    worst case on a deployment, in nano-dollars; only asked of deployments that have a price)."""
    deps = list(route.deployments)
    if len(deps) < 2 or route.strategy == "priority":
        return deps
    if route.strategy == "weighted":
        # a weighted shuffle (Efraimidis-Spirakis): the first is drawn by weight, and so on; weight 0 last
        def draw(d: Deployment) -> float:
            return rng.random() ** (1 / d.weight) if d.weight > 0 else -1.0

        return sorted(deps, key=draw, reverse=True)
    if route.strategy == "lowest-latency":

        def measured(d: Deployment) -> float:
            st = health.states.get(d.id)
            if st is None or st.latency_us is None:  # unmeasured: try it (never-answered: last)
                return 0.0 if st is None or st.attempts == 0 else float("inf")
            return st.latency_us

        return sorted(deps, key=measured)
    # lowest-cost: stable, so ties keep the listed order; the unpriced (left out later) go last
    return sorted(deps, key=lambda d: (not d.pricer.chargeable, worst(d) if d.pricer.chargeable else 0))


def _back(st: DeploymentState) -> float:
    """When an ejected or cooling deployment is back in service."""
    return max(st.ejected_until, st.cool_until)


def plan(
    routes: Sequence[Route],
    health: Health,
    rng: random.Random,
    worst: Callable[[Deployment], int],
    now: float,
) -> tuple[list[Candidate], list[tuple[Deployment, str]]]:
    """The candidates in order, and the deployments left out with why (``unpriced``, ``price``, or
    ``quota`` when every priced one is held out by its provider's quota)."""
    known: dict[str, int] = {}

    def cost(dep: Deployment) -> int:  # asked once per deployment (lowest-cost orders by it, too)
        value = known.get(dep.id)
        if value is None:
            value = known[dep.id] = worst(dep)
        return value

    seen: set[str] = set()
    priced: list[Candidate] = []
    skipped: list[tuple[Deployment, str]] = []
    for route in routes:
        for dep in ordered(route, health, rng, cost):
            if dep.id in seen:
                continue
            seen.add(dep.id)
            if not dep.pricer.chargeable:
                skipped.append((dep, UNPRICED))
                continue
            nanos = cost(dep)
            if priced and not dep.allow_pricier and nanos > priced[0].worst * route.max_price_ratio:
                skipped.append((dep, PRICE))
                continue
            priced.append(Candidate(dep, route, nanos))
    usable = [c for c in priced if health.state_of(c.dep).admits(now)]
    if not usable and priced:  # everything is ejected: the one back soonest, rather than nothing
        allowed = [c for c in priced if health.states[c.dep.id].out_until <= now]
        if allowed:
            usable = [min(allowed, key=lambda c: _back(health.states[c.dep.id]))]
        else:  # every one held out by its provider's quota: calling would only be refused again
            skipped += [(c.dep, QUOTA) for c in priced]
    return usable, skipped
