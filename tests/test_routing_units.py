"""Routing, unit by unit: verdicts, health and ejection, the retry budget, backoff, attempt plans, the
routing settings, and a request's own ``models`` fallback list. Pure code: no servers, no I/O.

Every object is real: routes come from a parsed config through ``build_routes``; times are monotonic
seconds chosen by the test (well away from 0, which the health state uses as "none").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import orjson
import pytest

from sluice.config_file import parse_config
from sluice.errors import ConfigError, InvalidRequest
from sluice.routing.health import (
    EJECTED,
    FINAL,
    HEALTHY,
    PROBE_STALE_S,
    PROBING,
    RETRY,
    ROTATE,
    DeploymentState,
    Health,
    RetryBudget,
    backoff_s,
    counts_against,
    verdict,
)
from sluice.routing.plan import PRICE, UNPRICED, Candidate, ordered, plan
from sluice.routing.table import Deployment, Route, build_routes
from sluice.settings import DeploymentSettings, ModelSettings, RoutingSettings
from sluice.wire.requests import MAX_MODELS, validate_chat, validate_embeddings

T0 = 1000.0  # a monotonic "now" for the tests (never 0.0: the state's sentinel for "not set")
PROVIDERS = "".join(
    f"  - name: p{i}\n    preset: openai_compatible\n    base_url: http://127.0.0.1:9/v{i}\n"
    for i in range(1, 6)
)
PRICE_1 = "price: {input: 1, output: 1}"


def parse(models: str, routing: str = "") -> Any:
    """Parse a config with providers p1..p5 (openai_compatible) and the given ``models:`` entries."""
    text = "providers:\n" + PROVIDERS + "models:\n" + models + (f"routing: {routing}\n" if routing else "")
    return parse_config(text, "c.yaml", environ={}).config


def routes_of(models: str, routing: str = "") -> dict[str, Route]:
    """The routing table of such a config, as the server builds it (no bundled price sheets)."""
    return build_routes(parse(models, routing))


def alias(name: str, deps: Sequence[str], extra: str = "") -> str:
    """One ``models:`` entry: ``deps`` are inline deployment mappings (without braces)."""
    body = ", ".join("{" + d + "}" for d in deps)
    return f"  - name: {name}\n{extra}    deployments: [{body}]\n"


def priced(provider: str, model: str, more: str = "") -> str:
    """A priced deployment (1 USD per million in and out), with ``more`` fields."""
    return f"provider: {provider}, model: {model}, {PRICE_1}" + (f", {more}" if more else "")


def one_route(n: int, strategy: str = "priority", extra: str = "", routing: str = "") -> Route:
    """An alias ``m`` of ``n`` priced deployments p1/d1 … pn/dn."""
    deps = [priced(f"p{i}", f"d{i}") for i in range(1, n + 1)]
    return routes_of(alias("m", deps, f"    strategy: {strategy}\n{extra}"), routing)["m"]


def ids(deps: Sequence[Deployment]) -> list[str]:
    return [d.id for d in deps]


def cand_ids(cands: Sequence[Candidate]) -> list[str]:
    return [c.dep.id for c in cands]


def table_worst(costs: dict[str, int]) -> Callable[[Deployment], int]:
    """A ``worst`` callback from a table of nano-dollars per deployment id (KeyError if asked of another)."""

    def worst(dep: Deployment) -> int:
        return costs[dep.id]

    return worst


def never_called(dep: Deployment) -> int:
    raise AssertionError(f"worst asked of {dep.id}")


def fast_settings(**kw: Any) -> RoutingSettings:
    """Routing settings for health tests: eject after 3, 5 s first ejection, 30 s at most."""
    base: dict[str, Any] = {"eject_after": 3, "eject_base_s": 5.0, "eject_max_s": 30.0}
    return RoutingSettings.model_validate(base | kw)


def states(health: Health, route: Route) -> list[DeploymentState]:
    return [health.state_of(d) for d in route.deployments]


def eject(health: Health, st: DeploymentState, peers: list[DeploymentState], now: float = T0) -> float:
    """Fail ``st`` with 500s until the threshold; the last failure's answer (seconds ejected, or 0)."""
    got = 0.0
    for _ in range(health.settings.eject_after):
        got = health.failed(st, 500, now, peers)
    return got


# --- 1. verdict and counts_against -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 402, 403, 429])
def test_verdict_rotates_on_key_refusals_and_throttling(status: int) -> None:
    """A refused or throttled key: the account's next key first."""
    assert verdict(status) == ROTATE


@pytest.mark.parametrize("status", [0, 200, 408, 500, 502, 503, 504, 529])
def test_verdict_retries_provider_failures(status: int) -> None:
    """No answer, a broken answer, 408 and every 5xx: another deployment may serve."""
    assert verdict(status) == RETRY


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_verdict_is_final_for_client_mistakes(status: int) -> None:
    """The client's own mistake is answered, never retried."""
    assert verdict(status) == FINAL


@pytest.mark.parametrize("status", [0, 200, 408, 429, 500, 502, 503, 504, 529])
def test_counts_against_the_deployments_own_failures(status: int) -> None:
    assert counts_against(status)


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 422])
def test_counts_against_never_a_client_mistake_or_a_refused_key(status: int) -> None:
    assert not counts_against(status)


# --- 2. Health: ejection ------------------------------------------------------------------------------------


def test_ejected_after_exactly_eject_after_consecutive_failures() -> None:
    """Below the threshold nothing happens; the eject_after-th counted failure ejects for eject_base_s."""
    route = one_route(2)
    health = Health(fast_settings())
    a, b = peers = states(health, route)
    for status in (500, 0):  # counted failures of both kinds
        assert health.failed(a, status, T0, peers) == 0.0
        assert a.status(T0) == HEALTHY and a.admits(T0)
    assert health.failed(a, 429, T0, peers) == 5.0
    assert a.status(T0) == EJECTED and a.ejected_until == T0 + 5.0
    assert not a.admits(T0)
    assert b.status(T0) == HEALTHY
    assert (a.failures, a.errors, a.attempts) == (3, 3, 3)


def test_ejection_threshold_follows_settings_default() -> None:
    """With the defaults (eject_after 5, eject_base_s 5) the fifth failure ejects, for 5 s."""
    health = Health(RoutingSettings())
    peers = states(health, one_route(2))
    assert [health.failed(peers[0], 503, T0, peers) for _ in range(5)] == [0.0, 0.0, 0.0, 0.0, 5.0]


@pytest.mark.parametrize("status", [400, 404])
def test_client_errors_never_count_never_eject(status: int) -> None:
    """1,000 client errors: not one counted, no ejection, error rate untouched (attempts still counted)."""
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    for _ in range(1000):
        assert health.failed(a, status, T0, peers) == 0.0
    assert a.status(T0) == HEALTHY and a.admits(T0)
    assert (a.failures, a.errors, a.attempts, a.error_rate) == (0, 0, 1000, 0.0)


def test_client_errors_do_not_break_a_run_of_failures() -> None:
    """Only a success resets the consecutive count: a 404 in the middle neither counts nor resets."""
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    assert health.failed(a, 500, T0, peers) == 0.0
    assert health.failed(a, 404, T0, peers) == 0.0
    assert health.failed(a, 500, T0, peers) == 0.0
    assert health.failed(a, 500, T0, peers) == 5.0


def test_success_resets_the_consecutive_count() -> None:
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    for _ in range(2):
        health.failed(a, 500, T0, peers)
    assert health.succeeded(a, 1000) is False  # a healthy deployment: nothing re-admitted
    assert a.failures == 0
    for _ in range(2):
        assert health.failed(a, 500, T0, peers) == 0.0
    assert a.status(T0) == HEALTHY
    assert health.failed(a, 500, T0, peers) == 5.0


def test_an_aliases_only_deployment_is_never_ejected() -> None:
    """Ejecting an alias's only deployment would refuse every request: never, whatever the failures."""
    health = Health(fast_settings(max_ejected_share=1.0))
    (only,) = peers = states(health, one_route(1))
    for status in [500, 0, 429, 503] * 250:
        assert health.failed(only, status, T0, peers) == 0.0
    assert only.status(T0) == HEALTHY and only.admits(T0)
    assert only.failures == 1000


def test_max_ejected_share_half_of_four() -> None:
    """Share 0.5 of 4 deployments: at most 2 ejected at once; the others keep serving."""
    health = Health(fast_settings(max_ejected_share=0.5))
    peers = states(health, one_route(4))
    got = [eject(health, st, peers) for st in peers]
    assert got == [5.0, 5.0, 0.0, 0.0]
    assert [st.status(T0) for st in peers] == [EJECTED, EJECTED, HEALTHY, HEALTHY]
    # the third keeps failing: still no room while two are out
    assert health.failed(peers[2], 500, T0 + 1, peers) == 0.0
    # one of the two comes back (a successful probe): the next counted failure of the third ejects it
    assert health.succeeded(peers[0], 1000) is True
    assert health.failed(peers[2], 500, T0 + 1, peers) == 5.0
    assert sum(st.status(T0 + 1) != HEALTHY for st in peers) == 2


def test_max_ejected_share_zero_still_ejects_one_of_two() -> None:
    """max(1, floor(share × n)): with share 0, one of two deployments may still be ejected, not both."""
    health = Health(fast_settings(max_ejected_share=0.0))
    a, b = peers = states(health, one_route(2))
    assert eject(health, a, peers) == 5.0
    assert eject(health, b, peers) == 0.0
    assert (a.status(T0), b.status(T0)) == (EJECTED, HEALTHY)


def test_max_ejected_share_counts_probing_peers_as_out() -> None:
    """A peer whose ejection is over but not yet proven (probing) still occupies its slot."""
    health = Health(fast_settings(max_ejected_share=0.0))
    a, b = peers = states(health, one_route(2))
    eject(health, a, peers)
    later = T0 + 6
    assert a.status(later) == PROBING
    assert eject(health, b, peers, later) == 0.0


def test_status_healthy_then_ejected_then_probing() -> None:
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    assert a.status(T0) == HEALTHY
    eject(health, a, peers)
    assert a.status(T0) == EJECTED
    assert a.status(T0 + 4.999) == EJECTED
    assert a.status(T0 + 5.0) == PROBING  # the ejection is over at ejected_until
    assert a.status(T0 + 100.0) == PROBING  # until a probe decides


def test_admits_one_probe_at_a_time() -> None:
    """Ejected: no. Due for a probe, none running: yes. A probe in flight: no one else, until it is stale."""
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    eject(health, a, peers)
    due = T0 + 5.0
    assert not a.admits(T0 + 4.9)
    health.started(a, T0 + 4.9)  # an attempt that starts while ejected is no probe
    assert a.probe_since == 0.0
    assert a.admits(due)
    health.started(a, due)  # this attempt is the probe
    assert a.probe_since == due
    assert not a.admits(due)
    assert not a.admits(due + 1.0)
    assert not a.admits(due + PROBE_STALE_S)  # stale only once *older* than PROBE_STALE_S
    assert a.admits(due + PROBE_STALE_S + 0.001)
    assert a.status(due + 1.0) == PROBING


def test_started_on_a_healthy_deployment_is_no_probe() -> None:
    health = Health(fast_settings())
    a = health.state_of(one_route(2).deployments[0])
    health.started(a, T0)
    assert a.probe_since == 0.0 and a.admits(T0)


def test_failed_probes_double_the_ejection_up_to_the_cap() -> None:
    """Each failed half-open probe: out again for twice as long (5, 10, 20, then capped at 30)."""
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    assert eject(health, a, peers) == 5.0
    now = T0
    seen = []
    for _ in range(5):
        now = a.ejected_until
        health.started(a, now)
        seen.append(health.failed(a, 502, now, peers))
        assert a.status(now) == EJECTED and a.ejected_until == now + seen[-1]
        assert a.probe_since == 0.0
    assert seen == [10.0, 20.0, 30.0, 30.0, 30.0]
    assert a.ejections == 5


def test_failed_probe_reejects_even_without_room() -> None:
    """A failed probe is out again at once: the share rule guards new ejections, not a failed probe."""
    health = Health(fast_settings(max_ejected_share=0.0))
    a, _b = peers = states(health, one_route(2))
    eject(health, a, peers)
    health.started(a, T0 + 5)
    assert health.failed(a, 0, T0 + 5, peers) == 10.0


def test_successful_probe_readmits_and_resets_the_backoff() -> None:
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    eject(health, a, peers)
    health.started(a, T0 + 5)
    assert health.failed(a, 500, T0 + 5, peers) == 10.0  # one failed probe: ejections 1
    health.started(a, T0 + 15)
    assert health.succeeded(a, 2000) is True
    assert a.status(T0 + 15) == HEALTHY and a.admits(T0 + 15)
    assert (a.failures, a.ejections, a.ejected_until, a.probe_since) == (0, 0, 0.0, 0.0)
    assert eject(health, a, peers, T0 + 20) == 5.0  # the next ejection starts from the base again


def test_probe_ending_with_a_client_error_frees_the_probe_slot() -> None:
    """admits(): "due for a probe that nobody is running" — once the probe has ended (here with the
    client's own 404, which says nothing of the deployment), another request may probe."""
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    eject(health, a, peers)
    due = T0 + 5.0
    health.started(a, due)
    assert health.failed(a, 404, due + 0.5, peers) == 0.0
    assert a.admits(due + 1.0)


def test_told_applies_another_instances_ejection_and_readmission() -> None:
    health = Health(fast_settings())
    a, b = states(health, one_route(2))
    health.told(a.id, 7.0, 2, T0)
    assert a.status(T0) == EJECTED and a.ejected_until == T0 + 7.0 and a.ejections == 2
    assert b.status(T0) == HEALTHY
    health.told(a.id, 3.0, 1, T0)  # a shorter word never shortens an ejection nor its backoff
    assert a.ejected_until == T0 + 7.0 and a.ejections == 2
    health.told(a.id, 0.0, 0, T0 + 1)  # re-admitted elsewhere
    assert a.status(T0 + 1) == HEALTHY and a.admits(T0 + 1)
    assert (a.failures, a.ejections, a.probe_since) == (0, 0, 0.0)


def test_told_readmission_clears_the_failure_run() -> None:
    """Re-admitted by another instance: the local run of failures starts over (eject_after more needed)."""
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    eject(health, a, peers)
    health.told(a.id, 0.0, 0, T0 + 1)
    assert health.failed(a, 500, T0 + 1, peers) == 0.0
    assert a.status(T0 + 1) == HEALTHY


def test_told_about_an_unknown_deployment_is_ignored() -> None:
    health = Health(fast_settings())
    a = health.state_of(one_route(2).deployments[0])
    health.told("nobody/nothing", 30.0, 3, T0)
    health.told("nobody/nothing", 0.0, 0, T0)
    assert set(health.states) == {a.id}
    assert a.status(T0) == HEALTHY


def test_latency_and_error_rate_moving_averages() -> None:
    """EWMA weight 0.2: the first latency is taken as is, then moves a fifth of the way; the error rate
    moves a fifth towards 1 on a counted failure and towards 0 on a success; client errors leave it."""
    health = Health(fast_settings())
    a, _b = peers = states(health, one_route(2))
    assert (a.latency_us, a.error_rate) == (None, 0.0)
    health.succeeded(a, 1000)
    assert a.latency_us == 1000
    health.succeeded(a, 2000)
    assert a.latency_us == pytest.approx(1200.0)
    health.failed(a, 500, T0, peers)
    assert a.error_rate == pytest.approx(0.2)
    health.failed(a, 0, T0, peers)
    assert a.error_rate == pytest.approx(0.36)
    health.failed(a, 404, T0, peers)
    assert a.error_rate == pytest.approx(0.36)
    assert a.latency_us == pytest.approx(1200.0)  # failures leave the latency alone
    health.succeeded(a, 1200)
    assert a.error_rate == pytest.approx(0.288)
    assert (a.attempts, a.errors) == (6, 2)


def test_state_of_creates_healthy_states_keyed_by_deployment_id() -> None:
    health = Health(fast_settings())
    dep = one_route(1).deployments[0]
    st = health.state_of(dep)
    assert st is health.state_of(dep)
    assert (st.id, st.provider, st.model) == ("p1/d1", "p1", "d1")
    assert st.status(T0) == HEALTHY


# --- 3. RetryBudget -----------------------------------------------------------------------------------------


def acquired(budget: RetryBudget, now: float = T0) -> int:
    """How many retry slots can be taken now (then given back)."""
    n = 0
    while budget.acquire(now):
        n += 1
        assert n <= 1000
    for _ in range(n):
        budget.release()
    return n


def in_flight(budget: RetryBudget, requests: int, now: float = T0) -> RetryBudget:
    """``requests`` requests arrive and stay in their attempt loop."""
    for _ in range(requests):
        budget.arrived(now)
    return budget


@pytest.mark.parametrize("active", range(11))
def test_retry_budget_minimum_when_few_requests(active: int) -> None:
    """ratio 0.2 × up to 10 requests ≤ 2 < minimum 3: the minimum applies."""
    budget = in_flight(RetryBudget(0.2, 3), active)
    assert acquired(budget) == 3


def test_retry_budget_ratio_when_many_requests() -> None:
    budget = in_flight(RetryBudget(0.2, 3), 100)
    assert acquired(budget) == 20  # in flight: 20 % of 100 (the window would allow 3 + 20)


def test_retry_budget_release_frees_a_slot() -> None:
    budget = in_flight(RetryBudget(0.2, 3), 5)
    for _ in range(3):
        assert budget.acquire(T0)
    assert not budget.acquire(T0)
    assert budget.retrying == 3
    budget.release()
    assert budget.acquire(T0)
    assert not budget.acquire(T0)


def test_retry_budget_bounds_retries_over_time_however_fast_they_end() -> None:
    """Requests that fail at once and retry at once never hold a slot long; the window still bounds the
    retries they make to minimum + ratio x requests."""
    budget = RetryBudget(0.2, 3, window_s=10)
    retries = 0
    for i in range(2000):
        now = T0 + i * 0.004  # 2,000 requests in 8 s
        budget.arrived(now)
        for _ in range(2):  # each wants two retries, each over before the next begins
            if budget.acquire(now):
                retries += 1
                budget.release()
        budget.left()
    assert retries <= 3 + 0.2 * 2000
    assert retries >= 0.2 * 2000 - 1  # and the budget is there to be used


def test_retry_budget_windows_forget_old_traffic() -> None:
    budget = RetryBudget(0.2, 3, window_s=10)
    for _ in range(100):
        budget.arrived(T0)
        budget.left()
    for _ in range(21):  # spend the window's retries (3 + 20 allowed), one at a time
        assert budget.acquire(T0 + 1)
        budget.release()
    assert acquired(budget, T0 + 1) == 2  # 21 used of 23, and (none active) at most 3 at once
    assert acquired(budget, T0 + 15) == 0  # the window rolled: its retries still count
    assert acquired(budget, T0 + 35) == 3  # two windows later: only the minimum, nothing remembered


# --- 4. backoff_s -------------------------------------------------------------------------------------------


def test_backoff_within_full_jitter_bounds() -> None:
    settings = RoutingSettings()  # base 50 ms, max 2000 ms
    for retry in range(12):
        cap = min(settings.backoff_max_ms, settings.backoff_base_ms * 2**retry) / 1000
        for seed in range(200):
            assert 0.0 <= backoff_s(retry, settings, random.Random(seed)) <= cap


def test_backoff_grows_with_retry_then_is_capped() -> None:
    settings = RoutingSettings(backoff_base_ms=50, backoff_max_ms=2000)
    for seed in range(50):
        waits = [backoff_s(r, settings, random.Random(seed)) for r in range(10)]
        # the same draw scaled by the cap: doubles while under 2 s, then stays
        for r in range(5):
            assert waits[r + 1] == pytest.approx(2 * waits[r])
        assert waits[6] == pytest.approx(waits[5] * 2000 / 1600)
        assert waits[6] == waits[7] == waits[8] == waits[9]
    # the spread reaches the cap for late retries, and a huge retry count neither overflows nor exceeds it
    late = [backoff_s(10_000, settings, random.Random(seed)) for seed in range(200)]
    assert max(late) <= 2.0 and max(late) > 1.9
    assert min(late) < 0.1  # full jitter: from 0


def test_backoff_zero_base_means_no_wait() -> None:
    settings = RoutingSettings(backoff_base_ms=0)
    assert backoff_s(3, settings, random.Random(1)) == 0.0


# --- 5. ordered() and plan() --------------------------------------------------------------------------------


def test_priority_keeps_config_order() -> None:
    """priority: the listed order, whatever has been measured."""
    route = one_route(3, "priority")
    health = Health(RoutingSettings())
    health.succeeded(health.state_of(route.deployments[0]), 900_000)  # slowest first, still first
    health.succeeded(health.state_of(route.deployments[2]), 1)
    rng = random.Random(0)
    for _ in range(20):
        assert ids(ordered(route, health, rng, never_called)) == ["p1/d1", "p2/d2", "p3/d3"]
    cands, skipped = plan([route], health, rng, table_worst(dict.fromkeys(ids(route.deployments), 10)), T0)
    assert cand_ids(cands) == ["p1/d1", "p2/d2", "p3/d3"] and skipped == []
    assert all(c.route is route and c.worst == 10 for c in cands)


def test_weighted_draws_first_by_weight() -> None:
    """weights 3:1 — the first is drawn first about 75 % of the time (4,000 seeded draws)."""
    deps = [priced("p1", "a", "weight: 3"), priced("p2", "b", "weight: 1")]
    route = routes_of(alias("m", deps, "    strategy: weighted\n"))["m"]
    health = Health(RoutingSettings())
    rng = random.Random(1234)
    draws = 4000
    firsts = sum(ordered(route, health, rng, never_called)[0].id == "p1/a" for _ in range(draws))
    assert 0.70 <= firsts / draws <= 0.80


def test_weighted_weight_zero_is_always_last() -> None:
    deps = [priced("p1", "zero", "weight: 0"), priced("p2", "b", "weight: 1"), priced("p3", "c", "weight: 5")]
    route = routes_of(alias("m", deps, "    strategy: weighted\n"))["m"]
    health = Health(RoutingSettings())
    rng = random.Random(7)
    firsts = set()
    for _ in range(500):
        order = ids(ordered(route, health, rng, never_called))
        assert order[-1] == "p1/zero"
        assert sorted(order) == sorted(ids(route.deployments))
        firsts.add(order[0])
    assert firsts == {"p2/b", "p3/c"}  # both weighted ones get first place sometimes


def test_weighted_same_seed_same_order() -> None:
    route = one_route(4, "weighted")
    health = Health(RoutingSettings())
    one = [ids(ordered(route, health, random.Random(s), never_called)) for s in range(30)]
    two = [ids(ordered(route, health, random.Random(s), never_called)) for s in range(30)]
    assert one == two
    assert len({tuple(o) for o in one}) > 1  # and the order does vary


def test_lowest_latency_unmeasured_first_then_by_latency_never_answered_last() -> None:
    route = one_route(5, "lowest-latency")
    health = Health(RoutingSettings())
    d1, _d2, d3, d4, d5 = route.deployments
    health.succeeded(health.state_of(d1), 5000)
    # d2: never seen at all (no state) — unmeasured
    health.failed(health.state_of(d3), 500, T0, [])  # attempted, never answered
    health.succeeded(health.state_of(d4), 1000)
    health.state_of(d5)  # a state with no attempt yet — still unmeasured
    order = ids(ordered(route, health, random.Random(0), never_called))
    assert order == ["p2/d2", "p5/d5", "p4/d4", "p1/d1", "p3/d3"]


def test_lowest_latency_follows_the_moving_average() -> None:
    route = one_route(2, "lowest-latency")
    health = Health(RoutingSettings())
    a, b = states(health, route)
    health.succeeded(a, 1000)
    health.succeeded(b, 2000)
    assert ids(ordered(route, health, random.Random(0), never_called)) == ["p1/d1", "p2/d2"]
    for _ in range(10):
        health.succeeded(a, 10_000)  # a slows down
    assert ids(ordered(route, health, random.Random(0), never_called)) == ["p2/d2", "p1/d1"]


def test_lowest_cost_sorts_by_worst_with_stable_ties() -> None:
    route = one_route(4, "lowest-cost")
    worst = table_worst({"p1/d1": 300, "p2/d2": 100, "p3/d3": 200, "p4/d4": 100})
    health = Health(RoutingSettings())
    assert ids(ordered(route, health, random.Random(0), worst)) == ["p2/d2", "p4/d4", "p3/d3", "p1/d1"]


def test_lowest_cost_never_asks_the_worst_of_an_unpriced_deployment() -> None:
    """``worst`` is only asked of deployments with a price; the unpriced go last (and are skipped)."""
    deps = ["provider: p1, model: mystery", priced("p2", "b"), priced("p3", "c")]
    route = routes_of(alias("m", deps, "    strategy: lowest-cost\n"))["m"]
    worst = table_worst({"p2/b": 50, "p3/c": 40})
    health = Health(RoutingSettings())
    assert ids(ordered(route, health, random.Random(0), worst)) == ["p3/c", "p2/b", "p1/mystery"]
    cands, skipped = plan([route], health, random.Random(0), worst, T0)
    assert cand_ids(cands) == ["p3/c", "p2/b"]
    assert [(d.id, why) for d, why in skipped] == [("p1/mystery", UNPRICED)]


def test_plan_keeps_a_deployment_listed_by_several_aliases_once() -> None:
    """The request's ``model`` then its ``models``: a deployment shared by two aliases is tried once,
    under the alias that brought it first."""
    text = (
        alias("first", [priced("p1", "a"), priced("p2", "b")])
        + alias("second", [priced("p2", "b"), priced("p3", "c")])
        + alias("third", [priced("p3", "c")])
    )
    routes = routes_of(text)
    r1, r2, r3 = routes["first"], routes["second"], routes["third"]
    worst = table_worst({"p1/a": 10, "p2/b": 10, "p3/c": 10})
    cands, skipped = plan([r1, r2, r3, r1], Health(RoutingSettings()), random.Random(0), worst, T0)
    assert cand_ids(cands) == ["p1/a", "p2/b", "p3/c"]
    assert [c.route.alias for c in cands] == ["first", "first", "second"]
    assert skipped == []


def test_plan_skips_an_unpriced_deployment() -> None:
    """No price and no ceiling (openai_compatible, unknown model): it could not be charged."""
    deps = ["provider: p1, model: mystery", priced("p2", "b")]
    route = routes_of(alias("m", deps))["m"]
    assert not route.deployments[0].pricer.chargeable
    cands, skipped = plan([route], Health(RoutingSettings()), random.Random(0), table_worst({"p2/b": 7}), T0)
    assert cand_ids(cands) == ["p2/b"]
    assert [(d.id, why) for d, why in skipped] == [("p1/mystery", UNPRICED)]
    assert cands[0].worst == 7


def test_plan_with_only_unpriced_deployments_is_empty() -> None:
    route = routes_of(alias("m", ["provider: p1, model: x", "provider: p2, model: y"]))["m"]
    cands, skipped = plan([route], Health(RoutingSettings()), random.Random(0), never_called, T0)
    assert cands == []
    assert [why for _d, why in skipped] == [UNPRICED, UNPRICED]


def test_plan_a_ceiling_makes_a_deployment_chargeable() -> None:
    deps = ["provider: p1, model: mystery, ceiling: {input: 5, output: 5}", priced("p2", "b")]
    route = routes_of(alias("m", deps))["m"]
    worst = table_worst({"p1/mystery": 10, "p2/b": 10})
    cands, skipped = plan([route], Health(RoutingSettings()), random.Random(0), worst, T0)
    assert cand_ids(cands) == ["p1/mystery", "p2/b"] and skipped == []


def test_plan_price_ratio_skips_pricier_fallbacks_exactly_at_ratio_kept() -> None:
    """A fallback above max_price_ratio (default 2) × the first choice's worst is skipped; exactly at
    the ratio is kept; ``allow_pricier`` lets one through whatever it costs."""
    deps = [priced("p1", "a"), priced("p2", "b"), priced("p3", "c"), priced("p4", "d", "allow_pricier: true")]
    route = routes_of(alias("m", deps))["m"]
    assert route.max_price_ratio == Decimal(2)
    worst = table_worst({"p1/a": 100, "p2/b": 200, "p3/c": 201, "p4/d": 10_000})
    cands, skipped = plan([route], Health(RoutingSettings()), random.Random(0), worst, T0)
    assert cand_ids(cands) == ["p1/a", "p2/b", "p4/d"]
    assert [(d.id, why) for d, why in skipped] == [("p3/c", PRICE)]
    assert [c.worst for c in cands] == [100, 200, 10_000]


def test_plan_price_ratio_per_alias_decimal() -> None:
    """An alias's own max_price_ratio (a decimal) wins over routing's; compared exactly (no float)."""
    deps = [priced("p1", "a"), priced("p2", "b"), priced("p3", "c")]
    route = routes_of(alias("m", deps, "    max_price_ratio: 1.1\n"), "{max_price_ratio: 5}")["m"]
    assert route.max_price_ratio == Decimal("1.1")
    worst = table_worst({"p1/a": 1000, "p2/b": 1100, "p3/c": 1101})
    cands, skipped = plan([route], Health(RoutingSettings()), random.Random(0), worst, T0)
    assert cand_ids(cands) == ["p1/a", "p2/b"]
    assert [(d.id, why) for d, why in skipped] == [("p3/c", PRICE)]


def test_plan_price_ratio_with_real_pricers() -> None:
    """The same rule with the deployments' own configured prices as the worst case."""
    deps = [
        "provider: p1, model: a, price: {input: 1, output: 1}",
        "provider: p2, model: b, price: {input: 2, output: 2}",
        "provider: p3, model: c, price: {input: 2.5, output: 2}",
    ]
    route = routes_of(alias("m", deps))["m"]

    def worst(dep: Deployment) -> int:
        return dep.pricer.worst_nanos(1000, 1000, 0)

    assert [worst(d) for d in route.deployments] == [2_000_000, 4_000_000, 4_500_000]
    cands, skipped = plan([route], Health(RoutingSettings()), random.Random(0), worst, T0)
    assert cand_ids(cands) == ["p1/a", "p2/b"]
    assert [(d.id, why) for d, why in skipped] == [("p3/c", PRICE)]


def test_plan_price_reference_is_the_first_priced_not_an_unpriced_one() -> None:
    deps = ["provider: p1, model: mystery", priced("p2", "b"), priced("p3", "c")]
    route = routes_of(alias("m", deps))["m"]
    worst = table_worst({"p2/b": 10, "p3/c": 21})
    cands, skipped = plan([route], Health(RoutingSettings()), random.Random(0), worst, T0)
    assert cand_ids(cands) == ["p2/b"]
    assert [(d.id, why) for d, why in skipped] == [("p1/mystery", UNPRICED), ("p3/c", PRICE)]


def test_plan_leaves_out_ejected_deployments() -> None:
    route = one_route(3)
    health = Health(fast_settings())
    peers = states(health, route)
    eject(health, peers[1], peers)
    worst = table_worst(dict.fromkeys(ids(route.deployments), 10))
    cands, skipped = plan([route], health, random.Random(0), worst, T0 + 1)
    assert cand_ids(cands) == ["p1/d1", "p3/d3"]
    assert skipped == []  # left out for its health, not skipped for a price
    # its ejection over and no probe running: it is back in the plan (as the probe)
    cands, _ = plan([route], health, random.Random(0), worst, T0 + 5)
    assert cand_ids(cands) == ["p1/d1", "p2/d2", "p3/d3"]
    # a probe in flight: left out again
    health.started(peers[1], T0 + 5)
    cands, _ = plan([route], health, random.Random(0), worst, T0 + 6)
    assert cand_ids(cands) == ["p1/d1", "p3/d3"]


def test_plan_when_all_are_ejected_the_one_back_soonest_alone() -> None:
    route = one_route(3)
    health = Health(fast_settings())
    states(health, route)
    health.told("p1/d1", 30.0, 0, T0)
    health.told("p2/d2", 10.0, 0, T0)
    health.told("p3/d3", 20.0, 0, T0)
    worst = table_worst(dict.fromkeys(ids(route.deployments), 10))
    cands, skipped = plan([route], health, random.Random(0), worst, T0 + 1)
    assert cand_ids(cands) == ["p2/d2"] and skipped == []


def test_plan_with_nothing_known_creates_states() -> None:
    """Planning alone (no attempt yet) leaves the states healthy and unmeasured."""
    route = one_route(2, "lowest-latency")
    health = Health(RoutingSettings())
    worst = table_worst(dict.fromkeys(ids(route.deployments), 10))
    cands, _ = plan([route], health, random.Random(0), worst, T0)
    assert cand_ids(cands) == ["p1/d1", "p2/d2"]
    assert all(st.status(T0) == HEALTHY and st.attempts == 0 for st in health.states.values())


# --- 6. settings ----------------------------------------------------------------------------------------


def problems(models: str, routing: str = "") -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse(models, routing)
    return exc.value.problems


def test_strategy_must_be_one_of_four() -> None:
    found = problems(alias("m", [priced("p1", "a")], "    strategy: fastest\n"))
    assert len(found) == 1
    assert "models[0].strategy" in found[0]
    for name in ("priority", "weighted", "lowest-latency", "lowest-cost"):
        assert name in found[0]


@pytest.mark.parametrize("strategy", ["priority", "weighted", "lowest-latency", "lowest-cost"])
def test_each_strategy_reaches_the_route(strategy: str) -> None:
    assert one_route(2, strategy).strategy == strategy


def test_max_price_ratio_below_one_refused() -> None:
    found = problems(alias("m", [priced("p1", "a")], "    max_price_ratio: 0.5\n"))
    assert len(found) == 1 and "models[0].max_price_ratio" in found[0]
    found = problems(alias("m", [priced("p1", "a")]), "{max_price_ratio: 0.99}")
    assert len(found) == 1 and "routing.max_price_ratio" in found[0]
    assert one_route(1, extra="    max_price_ratio: 1\n").max_price_ratio == Decimal(1)


def test_negative_weight_refused() -> None:
    found = problems(alias("m", [priced("p1", "a", "weight: -1")]))
    assert len(found) == 1 and "models[0].deployments[0].weight" in found[0]


def test_routing_defaults() -> None:
    for routing in (RoutingSettings(), parse(alias("m", [priced("p1", "a")])).routing):
        assert routing.retries == 2
        assert routing.retry_budget_ratio == 0.2
        assert routing.retry_budget_min == 3
        assert routing.eject_after == 5
        assert routing.max_ejected_share == 0.5
        assert routing.max_price_ratio == Decimal(2)
        assert routing.stream_commit_s == 10


def test_model_and_deployment_defaults_reach_the_route() -> None:
    model = ModelSettings.model_validate({"name": "m", "deployments": [{"provider": "p", "model": "x"}]})
    assert model.strategy == "priority" and model.max_price_ratio is None
    dep = DeploymentSettings(provider="p", model="x")
    assert dep.weight == 1 and dep.allow_pricier is False
    route = routes_of(alias("m", [priced("p1", "a"), priced("p2", "b", "weight: 4, allow_pricier: true")]))[
        "m"
    ]
    assert route.strategy == "priority"
    assert route.max_price_ratio == Decimal(2)  # routing's default when the alias sets none
    assert [(d.weight, d.allow_pricier, d.id) for d in route.deployments] == [
        (1, False, "p1/a"),
        (4, True, "p2/b"),
    ]


def test_routing_max_price_ratio_is_every_aliases_default() -> None:
    text = alias("m", [priced("p1", "a")]) + alias("n", [priced("p2", "b")], "    max_price_ratio: 1.5\n")
    routes = routes_of(text, "{max_price_ratio: 3}")
    assert routes["m"].max_price_ratio == Decimal(3)
    assert routes["n"].max_price_ratio == Decimal("1.5")


# --- 7. the request's own ``models`` list -------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "a", "messages": MESSAGES, **fields}


def embeddings(**fields: Any) -> dict[str, Any]:
    return {"model": "a", "input": "hi", **fields}


Validator = Callable[[dict[str, Any]], Any]
VALIDATORS: list[tuple[Validator, Callable[..., dict[str, Any]]]] = [
    (validate_chat, chat),
    (validate_embeddings, embeddings),
]
BOTH = pytest.mark.parametrize(("validate", "body"), VALIDATORS, ids=["chat", "embeddings"])


@BOTH
def test_models_list_accepted_deduplicated_and_removed_from_the_body(
    validate: Validator, body: Callable[..., dict[str, Any]]
) -> None:
    """Kept in order, once each, without the request's own model; the body sent upstream has no
    ``models`` (the provider would route on its own)."""
    raw = body(models=["b", "a", "c", "b", "c", "d"])
    req = validate(raw)
    assert req.models == ("b", "c", "d")
    assert req.model == "a"
    assert "models" not in req.body
    assert b'"models"' not in orjson.dumps(req.body)
    assert req.body["model"] == "a"


@BOTH
def test_no_models_list_means_no_fallbacks(validate: Validator, body: Callable[..., dict[str, Any]]) -> None:
    assert validate(body()).models == ()
    assert validate(body(models=[])).models == ()
    assert validate(body(models=["a", "a"])).models == ()
    null = validate(body(models=None))
    assert null.models == () and "models" not in null.body


@BOTH
@pytest.mark.parametrize("bad", ["b", {"b": 1}, 3, ["b", 1], ["b", ""], ["b", None], [["b"]], True])
def test_models_must_be_an_array_of_non_empty_strings(
    validate: Validator, body: Callable[..., dict[str, Any]], bad: object
) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate(body(models=bad))
    assert exc.value.code == "invalid_type"
    assert exc.value.param == "models"
    assert exc.value.status == 400


@BOTH
def test_models_at_most_max_models(validate: Validator, body: Callable[..., dict[str, Any]]) -> None:
    names = [f"m{i}" for i in range(MAX_MODELS + 1)]
    assert validate(body(models=names[:MAX_MODELS])).models == tuple(names[:MAX_MODELS])
    with pytest.raises(InvalidRequest) as exc:
        validate(body(models=names))
    assert exc.value.code == "invalid_value"
    assert exc.value.param == "models"
    assert str(MAX_MODELS) in exc.value.message


@BOTH
def test_route_still_forbidden(validate: Validator, body: Callable[..., dict[str, Any]]) -> None:
    """OpenRouter's ``route`` would let the provider pick what serves: refused, with or without models."""
    for extra in ({"route": "fallback"}, {"route": "fallback", "models": ["b"]}):
        with pytest.raises(InvalidRequest) as exc:
            validate(body(**extra))
        assert exc.value.code == "forbidden_parameter"
        assert exc.value.param == "route"
