"""The routing table: each public model name resolved once, at startup, to its deployments."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from sluice.pricing.cost import Pricer
from sluice.pricing.sheet import PriceSheet, Rates
from sluice.providers.accounts import plan_of
from sluice.providers.base import Adapter, Target
from sluice.providers.presets import PRESETS
from sluice.providers.registry import ADAPTERS
from sluice.settings import Config, DeploymentSettings, PriceSettings


@dataclass(frozen=True, slots=True)
class Deployment:
    """A target, the adapter that speaks its dialect, and how its requests are priced."""

    target: Target
    adapter: Adapter
    pricer: Pricer
    weight: int = 1  # share of traffic under the weighted strategy
    allow_pricier: bool = False  # may serve as a fallback above the alias's price ratio
    id: str = ""  # "provider/upstream-model": its health is kept under this name
    # the response headers naming it, for an answer after one attempt (built once)
    served_by: tuple[tuple[bytes, bytes], ...] = ()


Strategy = Literal["priority", "weighted", "lowest-latency", "lowest-cost"]


@dataclass(frozen=True, slots=True)
class Route:
    """A public model and the deployments that serve it (ordered per request by ``strategy``)."""

    alias: str
    mode: Literal["chat", "embedding"]
    deployments: tuple[Deployment, ...]
    owned_by: str
    strategy: Strategy = "priority"
    max_price_ratio: Decimal = Decimal(2)

    @property
    def solo(self) -> Deployment | None:
        """The alias's one deployment when it has exactly one, with a price: nothing to plan."""
        deps = self.deployments
        return deps[0] if len(deps) == 1 and deps[0].pricer.chargeable else None


def _rates(price: PriceSettings | None) -> Rates | None:
    if price is None:
        return None
    return Rates(**price.model_dump())


def pricer_for(
    dep: DeploymentSettings, preset: str, sheet: PriceSheet | None, *, free_plan: bool = False
) -> Pricer:
    """How one deployment is priced: configured rates, else $0 on a free plan's account, else the
    bundled sheet, else a ceiling."""
    if isinstance(dep.price, PriceSettings):
        price = _rates(dep.price)
    else:  # `price: 0` is free, explicitly; no price at all leaves the bundled sheet (or nothing)
        price = Rates(Decimal(0), Decimal(0)) if dep.price == 0 else None
    if price is None and free_plan:  # the account's plan says free: explicitly $0, not unpriced
        return Pricer(preset, dep.model, rates=Rates(Decimal(0), Decimal(0)), config_source="plan:free")
    source = "config"
    if price is not None:  # which configured price: a short digest of it, stored with every row
        source = "config@" + hashlib.sha256(repr(price).encode()).hexdigest()[:8]
    return Pricer(
        preset, dep.model, rates=price, sheet=sheet, ceiling=_rates(dep.ceiling), config_source=source
    )


def build_routes(
    config: Config, sheets: Mapping[tuple[str, str], PriceSheet | None] | None = None
) -> dict[str, Route]:
    """Resolve every alias; the config has been cross-checked, so every provider exists.

    ``sheets`` holds genai-prices' prices per ``(preset, model)`` (see ``sluice.pricebook``).
    """
    sheets = sheets or {}
    providers = {p.name: p for p in config.providers}
    routes: dict[str, Route] = {}
    for model in config.models:
        deps: list[Deployment] = []
        for dep in model.deployments:
            prov = providers[dep.provider]
            preset = PRESETS[prov.preset]
            target = Target(
                provider=prov.name,
                preset=prov.preset,
                upstream_model=dep.model,
                max_output_tokens=dep.max_output_tokens,
                # OpenAI's reasoning models refuse max_tokens; everyone else knows max_tokens best
                cap_field="max_completion_tokens" if prov.preset == "openai" else "max_tokens",
                anthropic_version=prov.anthropic_version,
            )
            free = plan_of(prov) == "free"
            pricer = pricer_for(dep, prov.preset, sheets.get((prov.preset, dep.model)), free_plan=free)
            dep_id = f"{prov.name}/{dep.model}"
            served_by = (
                (b"x-sluice-provider", prov.name.encode()),
                (b"x-sluice-model", dep.model.encode()),
                (b"x-sluice-attempts", b"1"),
            )
            adapter = ADAPTERS[preset.dialect]
            deps.append(Deployment(target, adapter, pricer, dep.weight, dep.allow_pricier, dep_id, served_by))
        ratio = model.max_price_ratio or config.routing.max_price_ratio
        routes[model.name] = Route(
            model.name, model.mode, tuple(deps), deps[0].target.preset, model.strategy, ratio
        )
    return routes


def each_deployment(routes: Mapping[str, Route]) -> Iterator[tuple[Route, Deployment]]:
    """Every deployment once, with the first alias that serves it (a deployment may serve several)."""
    seen: set[str] = set()
    for route in routes.values():
        for dep in route.deployments:
            if dep.id not in seen:
                seen.add(dep.id)
                yield route, dep
