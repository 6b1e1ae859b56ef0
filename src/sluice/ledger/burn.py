"""What-if costing: the real token mix of the top workflows, priced under every configured deployment.

Each request of a workflow (a feature) is priced again, as it was — its own token classes, at its own
time (DeepSeek's peak hours) — by each deployment's pricer: the sum is what the workflow would have
cost there. Pricing each request rather than the summed tokens keeps long-context tiers right (a
thousand 10k-token prompts are not one 10M-token prompt). Per request, per 1,000 requests, and per
month at the volume the window saw. Pure: rows in, numbers out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.ledger.entry import TOKEN_COLUMNS
from sluice.pricing.usage import TokenUsage
from sluice.routing.table import Route, each_deployment
from sluice.smoke.report import FEATURE as SMOKE_FEATURE

UNTAGGED = "(untagged)"
COLUMNS = ("feature", "endpoint", "ts_us", "cost_nanos", *TOKEN_COLUMNS)
_MONTH_US = 30 * 86_400 * 1_000_000
_MIN_WINDOW_US = 3_600 * 1_000_000  # a projection from less than an hour of traffic is not one


@dataclass(frozen=True, slots=True)
class Request:
    """One ledger row's token mix."""

    ts_us: int
    usage: TokenUsage


@dataclass(slots=True)
class Workflow:
    """One feature's requests in the window."""

    feature: str
    mode: str  # chat or embedding
    requests: list[Request] = field(default_factory=list)
    actual_nanos: int = 0  # what they cost where they were served

    @property
    def tokens(self) -> tuple[int, int]:
        """(input, output) tokens over the window."""
        return sum(r.usage.input_tokens for r in self.requests), sum(
            r.usage.output_tokens for r in self.requests
        )


@dataclass(frozen=True, slots=True)
class Priced:
    """A workflow's requests priced on one deployment (``None``: it has no price)."""

    deployment: str
    alias: str
    total_nanos: int | None
    requests: int
    window_us: int  # the span whose volume is projected

    def per_request(self) -> int | None:
        return None if self.total_nanos is None else -(-self.total_nanos // self.requests)

    def per_thousand(self) -> int | None:
        return None if self.total_nanos is None else -(-self.total_nanos * 1000 // self.requests)

    def per_month(self) -> int | None:
        """At the window's volume, for 30 days (rounded up: a projection of cost errs high)."""
        if self.total_nanos is None:
            return None
        return -(-self.total_nanos * _MONTH_US // self.window_us)


def usage_of(row: Sequence[Any]) -> TokenUsage:
    """The usage in a row read with ``COLUMNS``."""
    t = [int(v or 0) for v in row[4:]]
    return TokenUsage(
        input_tokens=t[0],
        cache_read_tokens=t[1],
        cache_write_tokens=t[2],
        cache_write_1h_tokens=t[3],
        output_tokens=t[4],
        output_reasoning_tokens=t[5],
        input_audio_tokens=t[6],
        output_audio_tokens=t[7],
        input_image_tokens=t[8],
        web_searches=t[9],
    )


def workflows(rows: Iterable[Sequence[Any]], top: int) -> list[Workflow]:
    """The ``top`` workflows by what they cost (requests with tokens only; smoke runs left out)."""
    found: dict[tuple[str, str], Workflow] = {}
    for row in rows:
        feature = row[0] or UNTAGGED
        if feature == SMOKE_FEATURE:  # a smoke run's requests are not a workflow
            continue
        usage = usage_of(row)
        if not (usage.input_tokens or usage.output_tokens):
            continue
        mode = "embedding" if row[1] == "embeddings" else "chat"
        flow = found.setdefault((feature, mode), Workflow(feature, mode))
        flow.requests.append(Request(int(row[2]), usage))
        flow.actual_nanos += int(row[3] or 0)
    ranked = sorted(found.values(), key=lambda w: (-w.actual_nanos, -len(w.requests), w.feature))
    return ranked[:top]


def price(flow: Workflow, routes: Mapping[str, Route], window_us: int) -> list[Priced]:
    """The workflow priced on every deployment of its mode, cheapest first (unpriced last)."""
    out = []
    for route, dep in each_deployment(routes):
        if route.mode != flow.mode:
            continue
        total: int | None = None
        if dep.pricer.chargeable:
            total = sum(dep.pricer.charge(r.usage, r.ts_us).nanos for r in flow.requests)
        out.append(Priced(dep.id, route.alias, total, len(flow.requests), window_us))
    return sorted(out, key=lambda p: (p.total_nanos is None, p.total_nanos or 0, p.deployment))


def window_us(since_us: int, until_us: int) -> int:
    """The span a monthly projection is made from (at least an hour)."""
    return max(until_us - since_us, _MIN_WINDOW_US)
