"""The routing table: each public model name resolved once, at startup, to its deployments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sluice.providers.base import Adapter, Target
from sluice.providers.presets import PRESETS
from sluice.providers.registry import ADAPTERS
from sluice.settings import Config


@dataclass(frozen=True, slots=True)
class Deployment:
    """A target and the adapter that speaks its dialect."""

    target: Target
    adapter: Adapter


@dataclass(frozen=True, slots=True)
class Route:
    """A public model and its deployments in order (the first is used; later ones are fallbacks)."""

    alias: str
    mode: Literal["chat", "embedding"]
    deployments: tuple[Deployment, ...]
    owned_by: str


def build_routes(config: Config) -> dict[str, Route]:
    """Resolve every alias; the config has been cross-checked, so every provider exists."""
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
            deps.append(Deployment(target, ADAPTERS[preset.dialect]))
        routes[model.name] = Route(model.name, model.mode, tuple(deps), deps[0].target.preset)
    return routes
