"""One request's life after the HTTP edge: plan → admit → attempt (and fall back) → relay.

The HTTP surface (``sluice.api``) authenticates and validates; this module turns a validated request
and its aliases into upstream calls and an answer in OpenAI's shape:
- plan (``sluice.routing.plan``): the deployments it may try, in its aliases' strategy order;
- admit: the worst case of the dearest of them reserved on every budget, and the ledger row opened (a
  request that may reach a provider is never missing from the ledger); ``sluice.accounting`` settles it;
- attempt: a failure the client did not cause moves to the account's next key, or the next deployment,
  within the request's retries, the process's retry budget and the request's deadline; a stream may
  fall back only until it is committed (its first content, or the end of the pre-commit window).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import sys
import time
from array import array
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from sluice.errors import (
    BudgetExceeded,
    InvalidRequest,
    LimitReached,
    ModelNotFound,
    ModelUnpriced,
    QuotaExhausted,
    SluiceError,
    UpstreamError,
)
from sluice.ledger.entry import Attempt, Entry, usd_text
from sluice.ledger.sink import Ledger
from sluice.limits.counters import Hold
from sluice.limits.limiter import Limiter
from sluice.metrics import Metrics
from sluice.pricing.cost import Charge
from sluice.pricing.usage import TokenUsage, estimated, from_embeddings
from sluice.providers.base import StreamTranslator, UpstreamCall
from sluice.providers.errors import parse_error_body
from sluice.providers.quota import EXHAUSTED, Throttle, classify
from sluice.routing.health import (
    EJECTED,
    FINAL,
    ROTATE,
    DeploymentState,
    Health,
    RetryBudget,
    backoff_s,
    verdict,
)
from sluice.routing.plan import QUOTA, Candidate, plan
from sluice.routing.table import Deployment, Route
from sluice.settings import RoutingSettings
from sluice.upstream import Upstream, UpstreamResponse
from sluice.wire.requests import ChatRequest, EmbeddingRequest
from sluice.wire.sse import Event

log = logging.getLogger("sluice.gateway")
T = TypeVar("T")


@dataclass(slots=True)
class Reply:
    """A complete (non-stream) answer."""

    body: bytes
    headers: list[tuple[bytes, bytes]]
    tokens: TokenUsage | None = None  # the provider's usage, normalised for pricing


@dataclass(slots=True)
class StreamReply:
    """An open stream: headers to send first, then ``frames()``; ``close()`` must always run.

    ``open()`` reads until the provider has produced something of substance (content, a tool call,
    reasoning or a finish), so a provider that fails, times out or sends nothing before that still gets
    a proper HTTP error status (which the SDK can retry), not a 200 with an SSE error.
    """

    headers: list[tuple[bytes, bytes]]
    _resp: UpstreamResponse
    _deployment: Deployment
    _translator: StreamTranslator
    _entry: Entry
    _events: AsyncGenerator[list[Event], None] | None = None
    charge: Charge | None = None  # priced when the stream finished with usage
    final_tokens: TokenUsage | None = None  # the usage of a stream that finished, normalised once
    _pending: list[bytes] = field(default_factory=list)
    _error: SluiceError | None = None
    # told once how the stream ended: True (finished), False (the provider failed), None (neither: the
    # client left, or the stream was dropped before it was read)
    on_end: Callable[[bool | None], None] | None = None

    @property
    def client_idle(self) -> float:
        """Seconds a client may take to accept one chunk before it is dropped."""
        return self._resp.idle

    @property
    def tokens(self) -> TokenUsage | None:
        """The usage the provider reported so far, normalised for pricing (None if it never said)."""
        return self._translator.tokens()

    def delivered(self) -> int:
        """Estimated output tokens sent to the client so far."""
        return self._translator.delivered()

    def _translate(self, events: list[Event]) -> list[bytes]:
        """Frames for a batch of events; an error keeps the frames before it (raised after them)."""
        out: list[bytes] = []
        try:
            try:
                for event in events:
                    out += self._translator.feed(event)
            except _MALFORMED as exc:  # provider data is untrusted: garbage is its failure, not ours
                raise _unusable(self._deployment) from exc
        except SluiceError as err:
            if not out:
                raise
            self._error = err
        return out

    def _stopped(self) -> bool:
        return self._translator.done or self._error is not None

    async def open(self, commit_at: float | None = None) -> None:
        """Read until the stream has substance, or until ``commit_at`` (loop time: the pre-commit window
        is over, and the stream is committed to as it is); raise if it fails before either."""
        self._events = self._resp.events(commit_at)
        translator = self._translator
        while not (translator.started or translator.done or self._error is not None):
            try:
                events = await anext(self._events)
            except StopAsyncIteration:
                break
            if not events:
                return  # the window is over: this stream is the answer, whatever comes next
            self._pending += self._translate(events)
        if not (translator.started or translator.done):
            raise self._error or UpstreamError(
                f"Provider {self._deployment.target.provider!r} ended the stream before sending anything."
            )

    async def frames(self) -> AsyncIterator[bytes]:
        """Client-ready SSE bytes; raises ``SluiceError`` if the upstream fails mid-stream."""
        try:
            assert self._events is not None, "open() first"
            translator = self._translator
            if self._pending:
                yield b"".join(self._pending)
                self._pending = []
            if not self._stopped():
                async for events in self._events:
                    out = self._translate(events)
                    if out:
                        yield b"".join(out)
                    if self._stopped():
                        break
            if self._error is not None:
                raise self._error
            if not translator.done:
                raise UpstreamError(
                    f"Provider {self._deployment.target.provider!r} ended the stream before it was complete."
                )
            tokens = self.final_tokens = translator.tokens()
            if tokens is not None:  # priced now, so the final usage chunk can carry the cost
                self.charge = self._deployment.pricer.charge(tokens, self._entry.ts_us)
            yield b"".join(translator.finish(usd_text(self.charge.nanos) if self.charge else None))
        except SluiceError:
            self._ended(False)
            raise
        self._ended(True)

    def _ended(self, ok: bool | None) -> None:
        tell, self.on_end = self.on_end, None
        if tell is not None:
            tell(ok)

    async def close(self, *, error: bool = False) -> None:
        """Release (or, after an error or disconnect, drop) the upstream connection."""
        self._ended(None)
        try:
            if self._events is not None:
                await self._events.aclose()
            if not error and self._translator.done:
                await self._resp.drain()
        finally:
            self._resp.release(error=error)


# What translating a provider's malformed answer can raise (a shape we did not expect).
_MALFORMED = (TypeError, KeyError, AttributeError, ValueError, IndexError)


def _unusable(dep: Deployment) -> UpstreamError:
    return UpstreamError(f"Provider {dep.target.provider!r} sent an answer Sluice cannot read.")


def _served_by(dep: Deployment, attempts: int) -> list[tuple[bytes, bytes]]:
    """Response headers naming what served the request, and after how many upstream calls."""
    if attempts == 1:
        return list(dep.served_by)
    return [*dep.served_by[:2], (b"x-sluice-attempts", b"%d" % attempts)]


def _since(t0: int) -> int:
    return (time.perf_counter_ns() - t0) // 1000


@dataclass(slots=True)
class Walk:
    """One request's way through its candidates: what it tried, and what the last failure said."""

    candidates: Sequence[Candidate]
    started: float  # loop time: when the request was planned
    deadline: float  # loop time: no attempt starts, nor lasts, beyond it
    commit_at: float  # loop time: the end of a stream's pre-commit window
    index: int = 0  # the candidate being tried
    held: str = ""  # the provider account reserved at admission
    retry: bool = False  # this attempt is a retry: it holds a slot of the retry budget
    spare_key: bool = False  # the last failure was the account's key, and another key can serve
    retry_after: float = 0.0  # the last failure's retry-after, in seconds (0: none)
    # deployments tried (or passed over) → the wait before trying again (inf: not for this request);
    # made on the first failure, so a request answered at once allocates nothing for it
    tried: dict[str, float] | None = None

    @property
    def current(self) -> Candidate:
        return self.candidates[self.index]

    def mark(self, dep_id: str, wait: float = 0.0) -> None:
        """Note ``dep`` as tried, and how long to wait before trying it again (the longest asked)."""
        if self.tried is None:
            self.tried = {}
        self.tried[dep_id] = max(self.tried.get(dep_id, 0.0), wait)

    def wait(self, dep_id: str) -> float | None:
        """How long to wait before trying ``dep`` again; None if this request has not tried it."""
        return None if self.tried is None else self.tried.get(dep_id)


CallOne = Callable[[Deployment, Walk], Awaitable[T]]


class Gateway:
    """The request life for chat completions and embeddings: plan, admit, attempt, fall back."""

    def __init__(
        self,
        routes: dict[str, Route],
        upstream: Upstream,
        ledger: Ledger,
        limiter: Limiter,
        routing: RoutingSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.routes = routes
        self._upstream = upstream
        self._ledger = ledger
        self._limiter = limiter
        self.settings = routing or RoutingSettings()
        self.metrics = metrics or Metrics()
        self.health = Health(self.settings)
        self._accounts: dict[str, list[DeploymentState]] = {}  # provider → its deployments' states
        for route in routes.values():  # every deployment known from the start (another instance may
            for dep in route.deployments:  # report on one this process has not used yet)
                st = self.health.state_of(dep)
                account = self._accounts.setdefault(dep.target.provider, [])
                if st not in account:
                    account.append(st)
        # an alias with one priced deployment always has the same plan (its worst case is on the entry)
        self._solo = {
            alias: (Candidate(only, route, 0),)
            for alias, route in routes.items()
            if (only := route.solo) is not None
        }
        self.budget = RetryBudget(self.settings.retry_budget_ratio, self.settings.retry_budget_min)
        self.rng = random.Random()  # load spreading and jitter, not secrets
        # told when this process ejects or re-admits a deployment (dep id, seconds ejected, ejections)
        self.on_health: Callable[[str, float, int], None] | None = None
        # told when a provider says an account's (or a model's) quota is used up until its reset
        self.on_quota: Callable[[str, str, Throttle], None] | None = None

    def route(self, model: str, mode: str) -> Route:
        """The route for a public model name, checked against the endpoint's mode."""
        route = self.routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"The model '{model}' does not exist or you do not have access to it.", param="model"
            )
        if route.mode != mode:
            what = "an embedding model" if route.mode == "embedding" else "a chat model"
            raise InvalidRequest(
                f"'{model}' is {what}; it cannot serve this endpoint.", param="model", code="invalid_model"
            )
        return route

    # --- planning and admission ------------------------------------------------------------------------

    def _plan(self, routes: Sequence[Route], entry: Entry, cap: int | None, choices: int) -> Walk:
        """The candidates in order, and the worst case reserved: the dearest of them."""
        prompt = self._limiter.prompt_tokens(entry.body_bytes)
        now = asyncio.get_running_loop().time()
        solo = self._solo.get(routes[0].alias) if len(routes) == 1 else None
        if solo is not None:  # the common case: nothing to order or leave out
            dep = solo[0].dep
            if self.health.states[dep.id].out_until > now:
                raise self._held_out(routes[0].alias, [dep], now)
            candidates: Sequence[Candidate] = solo
            entry.output_cap = (dep.target.max_output_tokens if cap is None else cap) * choices
            entry.reserved_nanos = dep.pricer.worst_nanos(prompt, entry.output_cap, entry.ts_us)
        else:

            def output(dep: Deployment) -> int:  # the most output tokens the request may get from ``dep``
                return (dep.target.max_output_tokens if cap is None else cap) * choices

            candidates, skipped = plan(
                routes,
                self.health,
                self.rng,
                lambda d: d.pricer.worst_nanos(prompt, output(d), entry.ts_us),
                now,
            )
            for skip, reason in skipped:
                self.metrics.count("skipped", routes[0].alias, skip.target.provider, reason)
            if not candidates and any(reason == QUOTA for _, reason in skipped):
                raise self._held_out(routes[0].alias, [d for d, r in skipped if r == QUOTA], now)
            if not candidates:
                raise ModelUnpriced(
                    f"The model '{routes[0].alias}' has no known price; the operator must configure one (or "
                    "a ceiling) before it can be used.",
                    param="model",
                )
            dep = candidates[0].dep
            entry.output_cap = max(output(c.dep) for c in candidates)
            entry.reserved_nanos = max(c.worst for c in candidates)
        entry.reserved_input_tokens = prompt
        entry.reserved_output_tokens = entry.output_cap
        total = self._upstream.total_s(dep.target.provider)
        return Walk(candidates, now, now + total, now + self.settings.stream_commit_s)

    def _held_out(self, alias: str, deps: Sequence[Deployment], now: float) -> QuotaExhausted:
        """The refusal when every deployment that could serve is held out by its provider's quota."""
        states = [self.health.states[d.id] for d in deps]
        soonest = min(states, key=lambda st: st.out_until)
        seconds = max(1, int(soonest.out_until - now + 0.999))
        return QuotaExhausted(
            f"The model '{alias}' has no deployment in service: {soonest.provider} reported its quota used "
            f"up ({soonest.out_reason}); nothing was sent. Retry after {seconds} s.",
            headers={"retry-after": str(seconds)},
        )

    async def _admit(self, routes: Sequence[Route], entry: Entry, cap: int | None, choices: int = 1) -> Walk:
        """Plan, refuse what cannot be priced, reserve the worst case on every budget (and the first
        candidate's provider account: one whose own limits are full is passed over for the next), and
        open the ledger row before any provider is called. A refusal reaches no provider, reserves
        nothing."""
        walk = self._plan(routes, entry, cap, choices)
        worst = (entry.reserved_nanos, entry.reserved_input_tokens, entry.reserved_output_tokens)
        while True:
            self._enter(entry, walk.current.dep)
            if self._limiter.free(entry):
                break
            try:
                await self._limiter.admit(entry, entry.scopes)
                break
            except (BudgetExceeded, LimitReached) as err:
                account = f"provider:{entry.provider}"
                if err.headers.get("x-sluice-limit-scope") != account or not self._skip(entry, walk):
                    raise  # refused: nothing reserved, no provider called, nothing to charge
                self.metrics.count("skipped", entry.alias, account[9:], "provider_limit")
                # a refusal clears what the entry reserved: the next candidate asks for the same
                entry.reserved_nanos, entry.reserved_input_tokens, entry.reserved_output_tokens = worst
        walk.held = entry.provider
        self._ledger.open(entry)
        return walk

    @staticmethod
    def _enter(entry: Entry, dep: Deployment) -> None:
        """The entry now describes an attempt on ``dep``; it has no price (nothing to charge) until the
        call is made."""
        entry.provider = dep.target.provider
        entry.model = dep.target.upstream_model
        entry.pricer = None
        entry.upstream_status = 0
        entry.upstream_us = 0

    async def _account(self, entry: Entry, walk: Walk, dep: Deployment) -> Hold | None:
        """Reserve on a fallback's provider account, if it has limits of its own (the first account's is
        reserved at admission); raises the refusal of a full one."""
        provider = dep.target.provider
        if provider == walk.held or not self._limiter.limits_provider(provider):
            return None
        try:
            return await self._limiter.admit_provider(entry, provider)
        except (BudgetExceeded, LimitReached):
            self.metrics.count("skipped", entry.alias, provider, "provider_limit")
            raise

    # --- the attempt loop -------------------------------------------------------------------------------

    async def _serve(
        self, routes: Sequence[Route], entry: Entry, cap: int | None, choices: int, one: CallOne[T]
    ) -> T:
        """Admit, then call candidates until one answers or no retry is left: the last error is raised."""
        walk = await self._admit(routes, entry, cap, choices)
        budget = self.budget
        budget.arrived(walk.started)
        try:
            while True:  # one upstream call per turn, awaited here (each coroutine layer costs per await)
                dep, st, probe = self._attempting(entry, walk)
                t0 = time.perf_counter_ns()
                try:
                    result = await one(dep, walk)
                except SluiceError as failure:
                    self._retried(walk)
                    if not await self._again(entry, walk, failure):
                        raise
                    continue
                except BaseException:  # the client left (or a bug): the attempt proved nothing
                    if probe:
                        Health.abandoned(st)
                    raise
                return self._answered(walk, st, probe, _since(t0), result)
        finally:
            budget.left()
            self._retried(walk)

    def _retried(self, walk: Walk) -> None:
        """A retry's attempt ended: its slot in the retry budget is free."""
        if walk.retry:
            walk.retry = False
            self.budget.release()

    def _attempting(self, entry: Entry, walk: Walk) -> tuple[Deployment, DeploymentState, bool]:
        """An attempt on the current candidate starts: the deployment, its state, and whether this
        attempt is its half-open probe."""
        dep = walk.current.dep
        st = self.health.state_of(dep)
        # the clock is read only for a deployment that was ejected (due for a probe, perhaps)
        probe = st.ejected_until != 0.0 and self.health.started(st, asyncio.get_running_loop().time())
        walk.spare_key = False
        walk.retry_after = 0.0
        entry.pricer = dep.pricer  # from here the provider may be reached (and may bill)
        return dep, st, probe

    def _answered(self, walk: Walk, st: DeploymentState, probe: bool, latency: int, result: T) -> T:
        """The attempt answered: a complete answer counts for its deployment now, a stream when it ends."""
        dep = walk.current.dep
        self.metrics.count("attempt", dep.target.provider, dep.target.upstream_model, "ok")
        if not isinstance(result, StreamReply):
            self._succeeded(st, latency)
            return result
        route = walk.current.route

        def ended(ok: bool | None) -> None:
            if ok:
                self._succeeded(st, latency)
            elif ok is False:  # broke after the commit: not retried, but the provider's failure
                self._judge(dep, route, 200, asyncio.get_running_loop().time())
            elif probe:
                Health.abandoned(st)

        result.on_end = ended
        return result

    def _succeeded(self, st: DeploymentState, latency_us: int) -> None:
        if self.health.succeeded(st, latency_us):
            self._told(st.id, 0.0, 0)

    def _skip(self, entry: Entry, walk: Walk) -> bool:
        """At admission, move to the next candidate (the first one's account is full); False if none is
        left."""
        if walk.index + 1 >= len(walk.candidates):
            return False
        walk.index += 1
        walk.mark(walk.candidates[walk.index - 1].dep.id, float("inf"))  # not for this request
        self._enter(entry, walk.current.dep)
        return True

    async def _again(self, entry: Entry, walk: Walk, err: SluiceError) -> bool:
        """After a failed attempt: record it, judge it, and set up the next one (False: answer ``err``)."""
        dep = walk.current.dep
        status = entry.upstream_status
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._judge(dep, walk.current.route, status, now)
        how = verdict(status)
        final = how == FINAL
        self.metrics.count(
            "attempt", dep.target.provider, dep.target.upstream_model, "client_error" if final else "failed"
        )
        refused = how == ROTATE and not walk.spare_key and status != 429  # every key of the account
        walk.mark(dep.id, float("inf") if refused else walk.retry_after)
        if final or entry.attempt_count > self.settings.retries or now >= walk.deadline:
            return False
        if not self.budget.acquire(now):
            self.metrics.count("budget_exhausted", entry.alias)
            log.warning("retry budget exhausted: request %s not retried", entry.request_id)
            return False
        walk.retry = True  # released by _serve, whatever happens next
        same = how == ROTATE and walk.spare_key
        while True:  # the next deployment, passing over any whose provider account has nothing left
            nxt = walk.index if same else self._next(walk, now)
            if nxt is None:
                return False
            dep = walk.candidates[nxt].dep
            pause = 0.0 if same else self._pause(walk, dep, entry.attempt_count)
            if now + pause >= walk.deadline:
                return False  # the answer would come too late: the client gets this failure now
            if pause:  # the failed attempt stays the entry's own meanwhile: a client leaving settles it
                await asyncio.sleep(pause)
                now = loop.time()
            try:  # reserved after the wait: a client that leaves during it leaves nothing reserved
                hold = await self._account(entry, walk, dep) if nxt != walk.index else entry.provider_hold
                break
            except (BudgetExceeded, LimitReached):
                walk.mark(dep.id, float("inf"))  # not for this request
        if nxt != walk.index:
            self._retire(entry, err)  # settles the failed attempt's own account reservation
            self.metrics.count("fallback", entry.alias, dep.target.provider)
        else:
            self._retire(entry, err, keep_hold=True)
        walk.index = nxt
        self._enter(entry, dep)
        entry.provider_hold = hold
        return True

    def _judge(self, dep: Deployment, route: Route, status: int, now: float) -> None:
        """Count a failed attempt against its deployment, which may be ejected."""
        st = self.health.state_of(dep)
        ejected = self.health.failed(st, status, now, [self.health.state_of(d) for d in route.deployments])
        if ejected:
            self.metrics.count("ejected", dep.target.provider, dep.target.upstream_model)
            self._told(dep.id, ejected, st.ejections)

    def _next(self, walk: Walk, now: float) -> int | None:
        """The next candidate to try: the next untried one that is in service, else (to retry) the first
        already tried whose retry-after this request can wait out; None if there is none."""
        n = len(walk.candidates)
        cap = self.settings.retry_after_max_s
        after = [(walk.index + step) % n for step in range(1, n + 1)]
        for i in after:
            cand = walk.candidates[i].dep
            if walk.wait(cand.id) is None and self.health.state_of(cand).admits(now):
                return i
        for i in after:
            cand = walk.candidates[i].dep
            wait = walk.wait(cand.id)  # a cooling deployment is back once this request has waited
            if wait is not None and wait <= cap and self.health.state_of(cand).admits(now + wait):
                return i
        return None

    def _pause(self, walk: Walk, dep: Deployment, made: int) -> float:
        """Seconds to wait before trying ``dep``: none if this request has not tried it yet; else a
        jittered backoff, or the provider's retry-after if longer."""
        wait = walk.wait(dep.id)
        if wait is None:
            return 0.0
        return max(backoff_s(made - 1, self.settings, self.rng), wait)

    def _retire(self, entry: Entry, err: SluiceError, *, keep_hold: bool = False) -> None:
        """Record the failed attempt on the entry, priced if the provider may have billed it, and settle
        its provider account's reservation (unless the same deployment is tried again: ``keep_hold``)."""
        billed = entry.upstream_status == 200 or (
            entry.upstream_status == 0 and err.code != "upstream_unreachable"
        )
        cost = 0
        if billed and entry.pricer is not None:
            cost = entry.pricer.charge(estimated(None, entry.input_estimate, 0), entry.ts_us).nanos
        attempt = Attempt(
            entry.provider, entry.model, entry.upstream_status, err.code, entry.upstream_us, cost
        )
        if entry.attempts is None:
            entry.attempts = []
        entry.attempts.append(attempt)
        entry.prior_nanos += cost
        if entry.provider_hold is not None and not keep_hold:
            self._limiter.settle_hold(entry.provider_hold, cost, entry.input_estimate if billed else 0)
            entry.provider_hold = None

    def _told(self, dep_id: str, seconds: float, ejections: int) -> None:
        state = f"ejected for {seconds:.1f} s" if seconds else "back in service"
        log.warning("deployment %s %s", dep_id, state)
        if self.on_health is not None:
            self.on_health(dep_id, seconds, ejections)

    def _failed(
        self, walk: Walk, dep: Deployment, status: int, headers: Mapping[str, str], body: bytes, key_id: str
    ) -> SluiceError:
        """The error for a provider's non-200 answer, logged with the provider's request id. A key the
        provider refused or throttled steps aside for the account's next one."""
        walk.spare_key = self._upstream.key_failed(
            dep.target.provider, key_id, status, headers.get("retry-after")
        )
        walk.retry_after = _retry_after_s(headers.get("retry-after"))
        raw = self._upstream.redact(dep.target.provider, body)
        err = dep.adapter.error(dep.target.provider, status, headers, raw)
        throttle = classify(dep.target.preset, status, headers, raw, datetime.now(UTC))
        if throttle is not None:
            err = self._throttled(walk, dep, throttle, err)
        upstream_id = (
            parse_error_body(raw).request_id or headers.get("x-request-id") or headers.get("request-id")
        )
        log.warning(
            "upstream error provider=%s status=%s mapped=%s upstream_request_id=%s",
            dep.target.provider,
            status,
            err.code,
            upstream_id,
        )
        return err

    def _throttled(self, walk: Walk, dep: Deployment, throttle: Throttle, err: SluiceError) -> SluiceError:
        """The provider throttled: hold the deployment (or every deployment of its account) out of
        rotation — briefly for a "slow down", until the reset for a spent quota (then this request
        does not come back to it, no other key of the account is tried, and the alerts are told)."""
        provider = dep.target.provider
        hard = throttle.kind == EXHAUSTED
        if not hard and walk.spare_key:
            return err  # the account's next key is tried first
        states = self._accounts.get(provider, []) if throttle.account else [self.health.state_of(dep)]
        Health.held_out(
            states, throttle.seconds, throttle.reason, asyncio.get_running_loop().time(), hard=hard
        )
        if not hard:
            walk.retry_after = max(walk.retry_after, throttle.seconds)
            return err
        walk.retry_after = float("inf")
        walk.spare_key = False  # an account's keys share its quota
        log.warning(
            "provider %s: quota used up (%s); out for %.0f s", dep.id, throttle.reason, throttle.seconds
        )
        if self.on_quota is not None:
            self.on_quota(provider, dep.id, throttle)
        seconds = max(1, int(throttle.seconds + 0.999))
        return QuotaExhausted(
            f"Provider {provider!r} reports its quota used up ({throttle.reason}); it is out of rotation "
            f"for {seconds} s.",
            headers={"retry-after": str(seconds)},
        )

    # --- the endpoints ----------------------------------------------------------------------------------

    async def _fetch(self, entry: Entry, walk: Walk, dep: Deployment, call: UpstreamCall) -> bytes:
        """A complete answer's body from ``dep``; a non-200 answer raises its mapped error."""
        t0 = time.perf_counter_ns()
        try:
            got = await self._upstream.fetch(dep.target.provider, call, walk.deadline)
        finally:
            entry.upstream_us = _since(t0)  # how long the request waited for the provider
        entry.upstream_status = got.status
        if got.status != 200:
            raise self._failed(walk, dep, got.status, got.headers, got.body, got.key_id)
        return got.body

    def chat(self, req: ChatRequest, routes: Sequence[Route], entry: Entry) -> Awaitable[Reply]:
        """A non-stream chat completion."""

        async def one(dep: Deployment, walk: Walk) -> Reply:
            body = await self._fetch(entry, walk, dep, dep.adapter.chat_call(req, dep.target))
            try:
                out = dep.adapter.chat_response(body, req, dep.target)
            except _MALFORMED as exc:
                raise _unusable(dep) from exc
            return Reply(out.body, _served_by(dep, entry.attempt_count), out.tokens)

        return self._serve(routes, entry, _output_cap(req), req.n, one)

    def chat_stream(self, req: ChatRequest, routes: Sequence[Route], entry: Entry) -> Awaitable[StreamReply]:
        """Open a stream: returns once a provider's 200 event stream has content (or the pre-commit
        window is over); a failure before that falls back like any other."""

        async def one(dep: Deployment, walk: Walk) -> StreamReply:
            call = dep.adapter.chat_call(req, dep.target)
            t0 = time.perf_counter_ns()  # the wait for the provider lasts until the stream has substance
            try:
                resp = await self._upstream.open_stream(dep.target.provider, call, walk.deadline)
                entry.upstream_status = resp.status
                translator = dep.adapter.chat_stream(req, dep.target)
                headers = _served_by(dep, entry.attempt_count)
                reply = StreamReply(headers, resp, dep, translator, entry)
                try:
                    if resp.status != 200:
                        body = await resp.error_body()
                        raise self._failed(walk, dep, resp.status, resp.headers, body, resp.key_id)
                    if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                        raise UpstreamError(
                            f"Provider {dep.target.provider!r} answered a stream request without a stream."
                        )
                    await reply.open(walk.commit_at)
                except BaseException:
                    await reply.close(error=True)
                    raise
            finally:
                entry.upstream_us = _since(t0)
            return reply

        return self._serve(routes, entry, _output_cap(req), req.n, one)

    def embeddings(self, req: EmbeddingRequest, routes: Sequence[Route], entry: Entry) -> Awaitable[Reply]:
        """Embeddings, fetched as floats and encoded as base64 here when the client asked for it."""

        async def one(dep: Deployment, walk: Walk) -> Reply:
            raw = await self._fetch(entry, walk, dep, dep.adapter.embeddings_call(req, dep.target))
            body, tokens = _embeddings_body(dep, raw, req.encoding_format)
            return Reply(orjson.dumps(body), _served_by(dep, entry.attempt_count), tokens)

        return self._serve(routes, entry, 0, 1, one)

    # --- what the admin API shows -----------------------------------------------------------------------

    def deployments(self) -> list[dict[str, Any]]:
        """Every alias's deployments with their health: state, ejected until, error rate, latency."""
        loop_now = asyncio.get_running_loop().time()
        wall = time.time()
        out = []
        for route in self.routes.values():
            for dep in route.deployments:
                st = self.health.state_of(dep)
                status = st.status(loop_now)
                until = wall + (st.ejected_until - loop_now) if status == EJECTED else None
                out.append(
                    {
                        "alias": route.alias,
                        "strategy": route.strategy,
                        "id": dep.id,
                        "provider": dep.target.provider,
                        "model": dep.target.upstream_model,
                        "weight": dep.weight,
                        "state": status,
                        "ejected_until": _iso(until) if until is not None else None,
                        "consecutive_failures": st.failures,
                        "ejections": st.ejections,
                        "attempts": st.attempts,
                        "errors": st.errors,
                        "error_rate": round(st.error_rate, 4),
                        "latency_ms": round(st.latency_us / 1000, 3) if st.latency_us is not None else None,
                    }
                )
        return out


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat().replace("+00:00", "Z")


def _retry_after_s(value: str | None) -> float:
    """A retry-after header in seconds (0: none, or not a number of seconds)."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return seconds if 0 < seconds < 86_400 else 0.0


def _embeddings_body(dep: Deployment, raw: bytes, encoding: str) -> tuple[dict[str, Any], TokenUsage | None]:
    try:
        body = orjson.loads(raw)
        data = body["data"]
        if not isinstance(data, list) or not data:
            raise TypeError("no data")
        if encoding == "base64":
            for item in data:
                item["embedding"] = _b64_float32(item["embedding"])
    except _MALFORMED as exc:  # orjson.JSONDecodeError is a ValueError
        raise _unusable(dep) from exc
    if not isinstance(body, dict):
        raise _unusable(dep)
    body.setdefault("object", "list")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    return body, (from_embeddings(usage) if usage is not None else None)


def _output_cap(req: ChatRequest) -> int | None:
    """The most completion tokens per choice a request allows, or None for the deployment's cap (which the
    adapters then send upstream, so the bound is real)."""
    body = req.body
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    return None if cap is None else int(cap)


def _b64_float32(vector: list[float]) -> str:
    """Little-endian float32, base64: what the OpenAI SDK decodes by default."""
    arr = array("f", vector)
    if sys.byteorder == "big":  # pragma: no cover - the wire format is little-endian
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode()
