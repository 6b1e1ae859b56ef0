"""The adapter for each dialect."""

from __future__ import annotations

from sluice.providers.anthropic import AnthropicAdapter
from sluice.providers.base import Adapter
from sluice.providers.openai import OpenAIAdapter
from sluice.providers.presets import Dialect

ADAPTERS: dict[Dialect, Adapter] = {"openai": OpenAIAdapter(), "anthropic": AnthropicAdapter()}
