"""``sluice smoke``: call each configured deployment the way production will, and say what works.

Each call is a real request to the provider through the one place that opens upstream sockets, with
the money rules of any request: the worst case is reserved before the call on the run's own cap (a
``smoke:RUN`` scope) and on the provider account's limits, the ledger row is opened, and settlement
records what the provider reported (feature ``sluice-smoke``, tag ``smoke_run``). A call the cap has no
room for is not made: its check is skipped, and the run can never spend past the cap.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from sluice.accounting import Accounting
from sluice.errors import BudgetExceeded, LimitReached, ModelUnpriced, SluiceError, UpstreamError
from sluice.ledger.entry import ERROR, INTERRUPTED, OK, Entry
from sluice.limits.spec import USD, Limit, Scope
from sluice.providers.base import UpstreamCall
from sluice.routing.table import Deployment, Route, each_deployment
from sluice.settings import SmokeSettings
from sluice.smoke import checks
from sluice.smoke.checks import Outcome
from sluice.smoke.report import (
    CHAT_CHECKS,
    EMBED_CHECKS,
    FEATURE,
    LIGHT_CHECKS,
    RUN_SCOPE,
    SKIP,
    Check,
    DeploymentReport,
    RunReport,
    usd,
)
from sluice.upstream import Upstream
from sluice.wire.requests import ChatRequest, validate_chat, validate_embeddings

log = logging.getLogger("sluice.smoke")
Progress = Callable[[str, str], None]
# what reading an answer of the wrong shape raises (the gateway answers these with a 502 too)
_MALFORMED = (
    TypeError,
    KeyError,
    AttributeError,
    ValueError,
    IndexError,
)  # (deployment id, check just finished)


class Capped(Exception):
    """The run's cap (or the provider account's allowance) has no room for the next call."""


def select(routes: Mapping[str, Route], patterns: Sequence[str]) -> list[tuple[Route, Deployment]]:
    """Each deployment once (with the first alias that serves it), those matching any pattern — an
    alias, a provider, or ``provider/model``, globs allowed — or all of them."""
    return [
        (route, dep)
        for route, dep in each_deployment(routes)
        if not patterns
        or any(
            fnmatch.fnmatchcase(n, p) for n in (route.alias, dep.target.provider, dep.id) for p in patterns
        )
    ]


class SmokeRunner:
    """Runs smoke checks over the deployments of a routing table."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        upstream: Upstream,
        accounting: Accounting,
        settings: SmokeSettings,
    ) -> None:
        self.routes = routes
        self._upstream = upstream
        self._accounting = accounting
        self._limiter = accounting.limiter
        self.settings = settings
        self._calls = 0

    async def run(
        self,
        patterns: Sequence[str] = (),
        *,
        cap_nanos: int | None = None,
        light: bool = False,
        progress: Progress | None = None,
    ) -> RunReport:
        """Run every check (``light``: the canary's few) on the selected deployments, in turn."""
        clock = self._accounting.clock
        cap = cap_nanos if cap_nanos is not None else int(self.settings.max_usd.scaleb(9))
        run = RunReport(f"smoke_{secrets.token_hex(6)}", clock(), cap_nanos=cap, light=light)
        scope = Scope(f"smoke:{run.id}", RUN_SCOPE, (Limit(USD, "total", cap),), f"smoke run {run.id}")
        for route, dep in select(self.routes, patterns):
            report = DeploymentReport(
                dep.id,
                route.alias,
                dep.target.provider,
                dep.target.preset,
                dep.target.upstream_model,
                route.mode,
            )
            run.deployments.append(report)
            await _Deployment(self, run, scope, route, dep, report, light).run(progress)
        run.finished_us = clock()
        return run

    async def list_models(self, dep: Deployment) -> tuple[int, list[str]]:
        """The provider's ``GET /models``: its status (0: no answer) and the model ids listed."""
        try:
            got = await self._upstream.get(dep.target.provider, "/models")
        except SluiceError:
            return 0, []
        return got.status, checks.model_ids(got.body) if got.status == 200 else []

    # --- one call, with the money rules of any request -----------------------------------------------

    def _entry(
        self,
        run: RunReport,
        scope: Scope,
        route: Route,
        dep: Deployment,
        endpoint: str,
        stream: bool,
        body: bytes,
    ) -> Entry:
        self._calls += 1
        entry = Entry(
            request_id=f"{run.id}_{self._calls}",
            ts_us=self._accounting.clock(),
            endpoint=endpoint,
            alias=route.alias,
            stream=stream,
            feature=FEATURE,
            tags={"smoke_run": run.id},
            started_ns=time.perf_counter_ns(),
            input_estimate=-(-len(body) // 4),
            body_bytes=len(body),
            scopes=(scope,),
        )
        entry.provider = dep.target.provider
        entry.model = dep.target.upstream_model
        return entry

    async def _admit(self, entry: Entry, dep: Deployment, output_cap: int) -> None:
        """Reserve the call's worst case on the run's cap and the provider account; open its row."""
        entry.pricer = dep.pricer
        entry.output_cap = output_cap
        try:
            await self._limiter.admit(entry, entry.scopes, entry.body_bytes)
        except (BudgetExceeded, LimitReached) as exc:
            own = exc.headers.get("x-sluice-limit-scope", "").startswith(f"{RUN_SCOPE}:")
            cap = entry.scopes[0].limits[0].amount if own else 0
            reason = f"the run's ${usd(cap)} cap has no room for this call" if own else exc.message
            raise Capped(reason) from exc
        except ModelUnpriced as exc:
            raise Capped(exc.message) from exc
        self._accounting.ledger.open(entry)

    async def call(
        self,
        run: RunReport,
        scope: Scope,
        route: Route,
        dep: Deployment,
        body: dict[str, Any],
        *,
        raw_body: bytes | None = None,
    ) -> Outcome:
        """One chat (or embeddings) call; ``raw_body`` replaces the upstream body (a deliberately bad
        request). Raises ``Capped`` when the run has no room for it."""
        embeddings = route.mode == "embedding"
        stream = body.get("stream") is True
        target = dep.target
        req = None if embeddings else validate_chat(body)
        if req is None:
            call = dep.adapter.embeddings_call(validate_embeddings(body), target)
        else:
            call = dep.adapter.chat_call(req, target)
        if raw_body is not None:
            call = UpstreamCall(call.path, raw_body, call.headers)
        wire = orjson.dumps(body)
        entry = self._entry(run, scope, route, dep, "embeddings" if embeddings else "chat", stream, wire)
        await self._admit(entry, dep, int(body.get("max_tokens") or 0))
        out = Outcome()
        deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
        t0 = time.perf_counter()
        try:
            if req is not None and stream:
                await self._stream(dep, req, call, deadline, entry, out, t0)
            else:
                got = await self._upstream.fetch(target.provider, call, deadline)
                out.status, out.headers = got.status, {k.lower(): v for k, v in got.headers.items()}
                entry.upstream_status = got.status
                out.latency_ms = (time.perf_counter() - t0) * 1000
                if got.status != 200:
                    out.raw = got.body
                    out.error = dep.adapter.error(target.provider, got.status, got.headers, got.body)
                elif req is None:
                    out.body = orjson.loads(got.body)
                    out.tokens, out.usage_reported = checks.embedding_usage(out.body)
                else:
                    translated = dep.adapter.chat_response(got.body, req, target)
                    out.body = orjson.loads(translated.body)
                    out.tokens, out.usage_reported = translated.tokens, translated.usage is not None
        except SluiceError as exc:
            out.error = exc
        except _MALFORMED as exc:  # an answer of the wrong shape: the provider's failure, reported
            out.error = UpstreamError(
                f"Provider {target.provider!r} sent an answer that could not be read ({type(exc).__name__})."
            )
        except BaseException:  # cancelled (the server stops): the call may have reached the provider
            self._accounting.settle(entry, INTERRUPTED, 503)
            raise
        if out.error is not None and not out.latency_ms:
            out.latency_ms = (time.perf_counter() - t0) * 1000
        entry.upstream_us = int(out.latency_ms * 1000)
        if out.error is None:
            self._accounting.settle(entry, OK, 200, tokens=out.tokens)
        else:
            self._accounting.settle(entry, ERROR, out.error.status, error=out.error)
        out.cost_nanos = entry.cost_nanos
        if out.tokens is None and entry.usage.input_tokens:
            out.tokens = entry.usage  # estimated at settlement
        return out

    async def _stream(
        self,
        dep: Deployment,
        req: ChatRequest,
        call: UpstreamCall,
        deadline: float,
        entry: Entry,
        out: Outcome,
        t0: float,
    ) -> None:
        resp = await self._upstream.open_stream(dep.target.provider, call, deadline)
        out.status, out.headers = resp.status, {k.lower(): v for k, v in resp.headers.items()}
        entry.upstream_status = resp.status
        if resp.status != 200:
            out.raw = await resp.error_body()
            resp.release(error=True)
            out.error = dep.adapter.error(dep.target.provider, resp.status, resp.headers, out.raw)
            return
        translator = dep.adapter.chat_stream(req, dep.target)
        first = last = None
        broken = True
        try:
            async for events in resp.events():
                for event in events:
                    for frame in translator.feed(event):
                        piece, calls = checks.chunk_content(frame)
                        if piece or calls:
                            last = time.perf_counter()
                            first = first or last
                            out.text += piece
                            out.tool_calls += calls
            broken = False
        finally:
            resp.release(error=broken)
        out.latency_ms = (time.perf_counter() - t0) * 1000
        out.tokens = translator.tokens()
        out.usage_reported = out.tokens is not None
        if first is not None:
            out.ttft_ms = (first - t0) * 1000
            if out.tokens is not None and last is not None and last > first:
                out.tokens_per_s = out.tokens.output_tokens / (last - first)


class _Deployment:
    """The checks on one deployment, in order (a check that cannot run is skipped, with why)."""

    def __init__(
        self,
        runner: SmokeRunner,
        run: RunReport,
        scope: Scope,
        route: Route,
        dep: Deployment,
        report: DeploymentReport,
        light: bool,
    ) -> None:
        self.runner = runner
        self.run_ = run
        self.scope = scope
        self.route = route
        self.dep = dep
        self.report = report
        self.light = light
        self.headers: dict[str, str] = {}
        self.priced: list[Outcome] = []
        self.called = False  # a call reached the provider (its headers were seen)

    async def run(self, progress: Progress | None) -> None:
        names: tuple[str, ...] = EMBED_CHECKS if self.route.mode == "embedding" else CHAT_CHECKS
        if self.light:
            names = tuple(n for n in names if n in LIGHT_CHECKS)
        for name in names:
            try:
                check = await getattr(self, f"_{name}")()
            except Capped as exc:
                check = Check(name, SKIP, f"not run: {exc}")
            self.report.checks.append(check)
            if progress is not None:
                progress(self.dep.id, name)

    async def _call(self, body: dict[str, Any], raw_body: bytes | None = None) -> Outcome:
        if not self.dep.pricer.chargeable:
            raise Capped("the model has no price; requests to it are refused")
        out = await self.runner.call(self.run_, self.scope, self.route, self.dep, body, raw_body=raw_body)
        self.called = True
        self.headers.update(out.headers)
        rep = self.report
        if out.tokens is not None:
            rep.input_tokens += out.tokens.input_tokens
            rep.output_tokens += out.tokens.output_tokens
            if out.error is None:
                self.priced.append(out)
        rep.cost_nanos += out.cost_nanos
        return out

    def _body(self, **extra: Any) -> dict[str, Any]:
        return checks.body(self.route.alias, self.dep.target.upstream_model, **extra)

    async def _models(self) -> Check:
        return checks.models(self.dep.target.upstream_model, await self.runner.list_models(self.dep))

    async def _complete(self) -> Check:
        return checks.complete(await self._call(self._body()), self.runner.settings)

    async def _stream(self) -> Check:
        self.streamed = await self._call(self._body(stream=True, stream_options={"include_usage": True}))
        return checks.stream(self.streamed, self.runner.settings)

    async def _stream_usage(self) -> Check:
        streamed = getattr(self, "streamed", None)
        if streamed is None:
            return Check("stream_usage", SKIP, "no stream was made")
        return checks.stream_usage(streamed)

    async def _json_mode(self) -> Check:
        return checks.json_mode(await self._call(self._body(**checks.JSON_MODE)))

    async def _tool_call(self) -> Check:
        first = await self._call(self._body(**checks.TOOLS))
        calls = checks.tool_calls_of(first)
        if first.error is not None or not calls:
            return checks.tool_call(first, None)
        second = await self._call(self._body(**checks.tool_result(calls)))
        return checks.tool_call(first, second)

    async def _error_shape(self) -> Check:
        body = self._body() if self.route.mode != "embedding" else checks.embed_body(self.route.alias)
        target = self.dep.target
        if self.route.mode == "embedding":
            call = self.dep.adapter.embeddings_call(validate_embeddings(body), target)
        else:
            call = self.dep.adapter.chat_call(validate_chat(body), target)
        return checks.error_shape(await self._call(body, raw_body=checks.broken(call.body)))

    async def _rate_limit_headers(self) -> Check:
        if not self.called:
            return Check("rate_limit_headers", SKIP, "no call was made")
        return checks.rate_limit_headers(self.headers)

    async def _pricing(self) -> Check:
        return checks.pricing(self.dep.pricer, self.priced, self.run_.started_us)

    async def _embed(self) -> Check:
        return checks.embed(await self._call(checks.embed_body(self.route.alias)), self.runner.settings)
