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
Plan = Literal["paid", "free", "trial"]
Balance = Literal["openrouter", "deepseek"]


@dataclass(frozen=True, slots=True)
class DemoModel:
    """A model the demo exposes under the name the real provider uses."""

    alias: str
    upstream: str
    mode: Literal["chat", "embedding"] = "chat"
    price: tuple[str, str] | None = None  # USD per million (input, output) where genai-prices has none


@dataclass(frozen=True, slots=True)
class Tier:
    """A free or trial plan's published allowances (``None``: not published). ``account``: the limits are
    shared by every model of the account (Sluice enforces them itself); else they apply per model and
    are only shown, unless the account's config sets them. ``reset``: the IANA zone whose midnight
    starts a new day. ``as_of``: when the numbers were read."""

    as_of: str
    requests_per_day: int | None = None
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_minute: int | None = None
    requests_per_month: int | None = None
    credits_usd: str | None = None  # a trial's credit
    credits_days: int | None = None  # ... and how many days it lasts
    account: bool = True
    reset: str = "UTC"
    note: str = ""


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
    plan: Plan = "paid"  # an account's plan unless its config says otherwise
    tier: Tier | None = None  # the free or trial plan's published allowances (for an account on it)
    balance: Balance | None = None  # the provider's balance endpoint, polled for the runway


# The free, no-card and trial tiers (facts and sources: docs/providers.md, "Free tiers").
FREE_TIER_PRESETS = (
    Preset(
        "mistral",
        "openai",
        "https://api.mistral.ai/v1",
        key_env="MISTRAL_API_KEY",
        plan="free",
        tier=Tier("2026-11-10", note="Experiment plan: per organization, values only in the console"),
    ),
    Preset(
        "openrouter_free",
        "openai",
        "https://openrouter.ai/api/v1",
        key_env="OPENROUTER_API_KEY",
        embeddings=False,
        plan="free",
        tier=Tier("2026-11-24", 50, 20, note="every :free model together; 1,000/day after 10 credits bought"),
        balance="openrouter",
    ),
    Preset(
        "cloudflare",
        "openai",
        "https://api.cloudflare.com/client/v4/accounts/ACCOUNT_ID/ai/v1",
        key_env="CLOUDFLARE_API_TOKEN",
        plan="free",
        tier=Tier("2026-07-29", None, 300, note="10,000 neurons a day; the base_url names the account"),
    ),
    Preset(
        "nvidia_nim",
        "openai",
        "https://integrate.api.nvidia.com/v1",
        key_env="NVIDIA_API_KEY",
        plan="free",
        tier=Tier("2026-08-20", None, 40, note="about 40 requests a minute, varies by model and load"),
    ),
    Preset(
        "sambanova",
        "openai",
        "https://api.sambanova.ai/v1",
        key_env="SAMBANOVA_API_KEY",
        embeddings=False,
        plan="free",
        tier=Tier("2026-07-21", 20, 20, 200_000, account=False, note="per free model"),
    ),
    Preset(
        "cohere",
        "openai",
        "https://api.cohere.ai/compatibility/v1",
        key_env="COHERE_API_KEY",
        plan="trial",
        tier=Tier("2026-09-01", None, 20, requests_per_month=1_000, note="per trial key; not for production"),
    ),
    Preset(
        "zai",
        "openai",
        "https://api.z.ai/api/paas/v4",
        key_env="ZAI_API_KEY",
        embeddings=False,
        plan="free",
        tier=Tier("2026-08-31", note="only the GLM Flash models are free; limits unpublished"),
    ),
    Preset(
        "siliconflow",
        "openai",
        "https://api.siliconflow.com/v1",
        key_env="SILICONFLOW_API_KEY",
        plan="free",
        tier=Tier("2026-08-22", account=False, note="fixed per free model, shown on the model page"),
    ),
    Preset(
        "vercel",
        "openai",
        "https://ai-gateway.vercel.sh/v1",
        key_env="AI_GATEWAY_API_KEY",
        plan="trial",
        tier=Tier(
            "2026-09-08", credits_usd="5", credits_days=30, note="$5 every 30 days until the team pays"
        ),
    ),
    Preset(
        "cerebras",
        "openai",
        "https://api.cerebras.ai/v1",
        key_env="CEREBRAS_API_KEY",
        embeddings=False,
        plan="trial",
        tier=Tier("2026-08-22", None, 5, 1_000_000, 30_000, credits_usd="5", credits_days=30),
    ),
)

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
            balance="deepseek",
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
            balance="openrouter",
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
            tier=Tier(
                "2026-10-17",
                account=False,
                reset="America/Los_Angeles",
                note="per project and model; numbers only in AI Studio",
            ),
        ),
        Preset(
            "groq",
            "openai",
            "https://api.groq.com/openai/v1",
            key_env="GROQ_API_KEY",
            embeddings=False,
            demo_models=(DemoModel("llama-3.3-70b-versatile", "llama-3.3-70b-versatile"),),
            tier=Tier(
                "2026-10-01", 1_000, 30, 200_000, 8_000, account=False, note="per model (gpt-oss rows)"
            ),
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
        *FREE_TIER_PRESETS,
        Preset("openai_compatible", "openai", "", key_required=False),
    )
}

PRESET_NAMES = tuple(PRESETS)
