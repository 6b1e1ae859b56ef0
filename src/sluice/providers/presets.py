"""Provider presets: what Sluice knows about each provider so a config entry can stay one line.

A preset fixes the wire dialect, the default base URL, the auth header, the environment variable that
conventionally holds the key, and the demo models shown when Sluice runs on its embedded default.
A provider that speaks the OpenAI dialect and is not listed here is ``openai_compatible`` with a
``base_url``: a config entry, not code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Dialect = Literal["openai", "anthropic"]
AuthStyle = Literal["bearer", "x-api-key"]


@dataclass(frozen=True, slots=True)
class DemoModel:
    """A model the demo exposes under the name the real provider uses."""

    alias: str
    upstream: str
    mode: Literal["chat", "embedding"] = "chat"
    price: tuple[str, str] | None = None  # USD per million (input, output) where genai-prices has none


@dataclass(frozen=True, slots=True)
class Preset:
    """Static facts about one provider."""

    name: str
    dialect: Dialect
    base_url: str
    auth: AuthStyle = "bearer"
    key_env: str | None = None
    key_required: bool = True
    embeddings: bool = True
    demo_models: tuple[DemoModel, ...] = field(default_factory=tuple)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "openai",
            "openai",
            "https://api.openai.com/v1",
            key_env="OPENAI_API_KEY",
            demo_models=(
                DemoModel("gpt-4o-mini", "gpt-4o-mini"),
                DemoModel("text-embedding-3-small", "text-embedding-3-small", "embedding"),
            ),
        ),
        Preset(
            "deepseek",
            "openai",
            "https://api.deepseek.com",
            key_env="DEEPSEEK_API_KEY",
            embeddings=False,
            demo_models=(DemoModel("deepseek-flash", "deepseek-flash"),),
        ),
        Preset(
            "dashscope",
            "openai",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            key_env="DASHSCOPE_API_KEY",
            demo_models=(DemoModel("qwen-plus", "qwen-plus", price=("0.40", "1.20")),),
        ),
        Preset(
            "openrouter",
            "openai",
            "https://openrouter.ai/api/v1",
            key_env="OPENROUTER_API_KEY",
            demo_models=(DemoModel("openrouter/qwen/qwen-plus", "qwen/qwen-plus"),),
        ),
        Preset(
            "anthropic",
            "anthropic",
            "https://api.anthropic.com/v1",
            auth="x-api-key",
            key_env="ANTHROPIC_API_KEY",
            embeddings=False,
            demo_models=(DemoModel("claude-sonnet-5", "claude-sonnet-5"),),
        ),
        Preset(
            "gemini",
            "openai",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            key_env="GEMINI_API_KEY",
            demo_models=(DemoModel("gemini-2.5-flash", "gemini-2.5-flash"),),
        ),
        Preset(
            "groq",
            "openai",
            "https://api.groq.com/openai/v1",
            key_env="GROQ_API_KEY",
            embeddings=False,
            demo_models=(DemoModel("llama-3.3-70b-versatile", "llama-3.3-70b-versatile"),),
        ),
        Preset(
            "ollama",
            "openai",
            "http://127.0.0.1:11434/v1",
            key_required=False,
            demo_models=(DemoModel("ollama/llama3.2", "llama3.2"),),
        ),
        Preset(
            "vllm",
            "openai",
            "http://127.0.0.1:8000/v1",
            key_required=False,
            demo_models=(DemoModel("vllm/qwen3-8b", "Qwen/Qwen3-8B"),),
        ),
        Preset("openai_compatible", "openai", "", key_required=False),
    )
}

PRESET_NAMES = tuple(PRESETS)
