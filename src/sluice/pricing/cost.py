"""What one request costs: exact ``Decimal`` USD, stored as integer nano-dollars rounded up.

Where a price comes from, in order:
1. the provider's own statement of what it billed (OpenRouter's ``usage.cost``) — it is the invoice;
2. the deployment's configured rates (DashScope/Qwen, which genai-prices lacks; negotiated discounts;
   new models), where a missing cached-input rate defaults to the preset's rule (Qwen: 40 % of input);
3. genai-prices' bundled data (never fetched at runtime), with DeepSeek's off-peak rule fixed: DeepSeek
   bills weekends off-peak all day, which genai-prices' time-of-day constraint does not know;
4. local presets (Ollama, vLLM) are free by declaration, not by accident;
5. otherwise the model is unpriced: a configured ceiling is charged (and flagged), or nothing can be
   priced and admission must refuse the request. Unpriced is never $0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from importlib.metadata import version

from genai_prices import Usage, calc_price

from sluice.errors import ModelUnpriced
from sluice.pricing.usage import TokenUsage

GENAI_PRICES = f"genai-prices {version('genai-prices')}"
# Our preset → genai-prices' provider id (presets absent here have no bundled prices).
GENAI_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "deepseek": "deepseek",
    "openrouter": "openrouter",
    "gemini": "google",
    "groq": "groq",
}
FREE_PRESETS = frozenset({"ollama", "vllm"})  # local servers: explicitly free
CACHE_READ_SHARE = {"dashscope": Decimal("0.4")}  # Qwen bills cached input at 40 % of the input rate
DEEPSEEK_OFF_PEAK_HOUR = 12  # UTC; DeepSeek's peak is 01:00-04:00 and 06:00-10:00 UTC on weekdays


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens. A cache rate left unset is charged at the input rate (or the preset rule)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None

    def usd(self, usage: TokenUsage, cache_read_share: Decimal | None = None) -> Decimal:
        """The exact charge for ``usage`` (embeddings: output is simply 0)."""
        read_rate = self.cache_read
        if read_rate is None:
            read_rate = self.input * cache_read_share if cache_read_share is not None else self.input
        write_rate = self.input if self.cache_write is None else self.cache_write
        write_1h_rate = write_rate if self.cache_write_1h is None else self.cache_write_1h
        total = (
            usage.uncached_input_tokens * self.input
            + usage.cache_read_tokens * read_rate
            + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * write_rate
            + usage.cache_write_1h_tokens * write_1h_rate
            + usage.output_tokens * self.output
        )
        return total.scaleb(-6)  # per million: an exact exponent shift, whatever the context precision


@dataclass(frozen=True, slots=True)
class Charge:
    """A priced request: exact USD, the stored nano-dollars, where the price came from, and flags."""

    usd: Decimal
    nanos: int
    source: str
    at_ceiling: bool = False


def to_nanos(usd: Decimal) -> int:
    """Integer nano-dollars, rounded up: a tiny charge never rounds to 0."""
    return int(usd.scaleb(9).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class Pricer:
    """Prices one deployment's requests; built once at startup."""

    preset: str
    model: str
    rates: Rates | None = None  # configured: wins over genai-prices
    ceiling: Rates | None = None  # charged, and flagged, when nothing else prices the model

    def is_priced(self) -> bool:
        """True if requests can be priced other than at the ceiling (checked once, at startup)."""
        if self.rates is not None or self.preset in FREE_PRESETS:
            return True
        return self._bundled(TokenUsage(), datetime.now(UTC)) is not None

    def charge(self, usage: TokenUsage, at: datetime) -> Charge:
        """Price ``usage`` for a request made at ``at`` (timezone-aware)."""
        if usage.billed_usd is not None:
            return Charge(usage.billed_usd, to_nanos(usage.billed_usd), "provider-billed")
        if self.rates is not None:
            usd = self.rates.usd(usage, CACHE_READ_SHARE.get(self.preset))
            return Charge(usd, to_nanos(usd), "config")
        if self.preset in FREE_PRESETS:
            return Charge(Decimal(0), 0, f"preset:{self.preset}:free")
        bundled = self._bundled(usage, at)
        if bundled is not None:
            return Charge(bundled, to_nanos(bundled), GENAI_PRICES)
        if self.ceiling is not None:
            usd = self.ceiling.usd(usage)
            return Charge(usd, to_nanos(usd), "ceiling", at_ceiling=True)
        raise ModelUnpriced(
            f"No price is known for {self.preset} model {self.model!r}; the operator must configure one "
            "(or a ceiling) before it can be used."
        )

    def _bundled(self, usage: TokenUsage, at: datetime) -> Decimal | None:
        provider = GENAI_PROVIDER.get(self.preset)
        if provider is None:
            return None
        if provider == "deepseek" and at.astimezone(UTC).weekday() >= 5:
            at = at.astimezone(UTC).replace(hour=DEEPSEEK_OFF_PEAK_HOUR, minute=0)  # weekends are off-peak
        try:
            priced = calc_price(
                Usage(**usage.as_genai_usage()), self.model, provider_id=provider, genai_request_timestamp=at
            )
        except LookupError:
            return None
        return priced.total_price
