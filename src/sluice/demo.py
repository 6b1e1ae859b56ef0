"""The embedded default: one demo model per preset, on the real provider when its key is set in the
environment, else on the built-in emulator."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from sluice.providers.presets import PRESETS, DemoModel
from sluice.settings import Config, ServerSettings, env_overrides

EMULATOR_KEY = "sk-emulator-not-a-secret"  # the emulator wants some key; it is not a credential
DEMO_PRESETS = (
    "openai",
    "deepseek",
    "dashscope",
    "openrouter",
    "anthropic",
    "gemini",
    "groq",
    "ollama",
    "vllm",
)


def real_presets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Presets whose provider key is set in the environment (those are served for real)."""
    env = os.environ if environ is None else environ
    return [p for p in DEMO_PRESETS if PRESETS[p].key_env and env.get(PRESETS[p].key_env or "")]


def demo_config(
    emulator_base_url: Callable[[str], str] | None, environ: Mapping[str, str] | None = None
) -> Config:
    """The default config: every preset's demo models; emulated unless the preset's key is set."""
    env = os.environ if environ is None else environ
    real = set(real_presets(env))
    providers: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for name in DEMO_PRESETS:
        preset = PRESETS[name]
        if name in real:
            providers.append({"name": name, "preset": name, "api_key": f"env:{preset.key_env}"})
        elif emulator_base_url is not None:
            providers.append(
                {
                    "name": name,
                    "preset": name,
                    "base_url": emulator_base_url(name),
                    "api_key": EMULATOR_KEY if preset.key_required else None,
                }
            )
        else:
            continue
        models += [
            {"name": m.alias, "mode": m.mode, "deployments": [_deployment(name, m)]}
            for m in preset.demo_models
        ]
    server = env_overrides(ServerSettings, dict(env))
    return Config.model_validate({"server": server, "providers": providers, "models": models})


def _deployment(provider: str, model: DemoModel) -> dict[str, Any]:
    dep: dict[str, Any] = {"provider": provider, "model": model.upstream}
    if model.price is not None:  # published list price (Alibaba international; see docs/providers.md)
        dep["price"] = {"input": model.price[0], "output": model.price[1]}
    return dep
