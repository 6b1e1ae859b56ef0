"""What one request costs: exact ``Decimal`` USD, stored as integer nano-dollars rounded up.

Where a price comes from, in order:
1. the provider's own statement of what it billed (OpenRouter's ``usage.cost``) — it is the invoice;
2. the deployment's configured rates (DashScope/Qwen, which genai-prices lacks; negotiated discounts;
   new models), where a missing cached-input rate defaults to the preset's rule (Qwen: 40 % of input);
3. genai-prices' bundled data (never fetched at runtime), resolved at startup into a ``PriceSheet``, with
   DeepSeek's off-peak rule fixed: DeepSeek bills weekends off-peak all day, which genai-prices'
   time-of-day constraint does not know;
4. local presets (Ollama, vLLM) are free by declaration, not by accident;
5. otherwise the model is unpriced: a configured ceiling is charged (and flagged), or nothing can be
   priced and admission must refuse the request. Unpriced is never $0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_CEILING, Decimal

from sluice.errors import ModelUnpriced
from sluice.pricing.sheet import PriceSheet, Rates
from sluice.pricing.usage import TokenUsage

# Our preset → genai-prices' provider id (presets absent here have no bundled prices).
GENAI_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "deepseek": "deepseek",
    "openrouter": "openrouter",
    "gemini": "google",
    "groq": "groq",
    "openrouter_free": "openrouter",
    "mistral": "mistral",
    "cloudflare": "cloudflare",
    "cohere": "cohere",
    "zai": "zai",
    "cerebras": "cerebras",
}
FREE_PRESETS = frozenset({"ollama", "vllm"})  # local servers: explicitly free
CACHE_READ_SHARE = {"dashscope": Decimal("0.4")}  # Qwen bills cached input at 40 % of the input rate


class Charge:
    """A priced request: exact USD, the stored nano-dollars, where the price came from, and flags.

    The exact amount is kept as whole pico-dollars when the rates allowed it, and made a ``Decimal`` only
    when asked for (the stored nano-dollars are all a request needs).
    """

    __slots__ = ("_exact", "at_ceiling", "nanos", "source")

    def __init__(self, usd: Decimal | int, nanos: int, source: str, at_ceiling: bool = False) -> None:
        self._exact = usd  # Decimal USD, or int pico-dollars
        self.nanos = nanos
        self.source = source
        self.at_ceiling = at_ceiling

    @property
    def usd(self) -> Decimal:
        """The exact charge in USD."""
        exact = self._exact
        return Decimal(exact).scaleb(-12) if isinstance(exact, int) else exact

    def __repr__(self) -> str:
        flags = ", at_ceiling=True" if self.at_ceiling else ""
        return f"Charge(usd={self.usd!r}, nanos={self.nanos}, source={self.source!r}{flags})"


def to_nanos(usd: Decimal) -> int:
    """Integer nano-dollars, rounded up: a tiny charge never rounds to 0."""
    return int(usd.scaleb(9).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class Pricer:
    """Prices one deployment's requests; built once at startup, evaluated without I/O or lookups."""

    preset: str
    model: str
    rates: Rates | None = None  # configured: wins over the bundled sheet
    sheet: PriceSheet | None = None  # genai-prices' prices for this model, resolved at startup
    ceiling: Rates | None = None  # charged, and flagged, when nothing else prices the model
    config_source: str = "config"  # "config@<digest>": which configured price was used
    # decided once, here: a request to a deployment that is not chargeable is refused at admission
    chargeable: bool = field(init=False, default=False)
    # the one set of rates that applies whatever the time and size, when there is one (found once)
    _fixed: Rates | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        share = CACHE_READ_SHARE.get(self.preset)
        if self.rates is not None and self.rates.cache_read is None and share is not None:
            object.__setattr__(self, "rates", replace(self.rates, cache_read=self.rates.input * share))
        object.__setattr__(self, "chargeable", self.is_priced() or self.ceiling is not None)
        object.__setattr__(self, "_fixed", self.rates if self.rates is not None else _timeless(self.sheet))

    def is_priced(self) -> bool:
        """True if requests can be priced other than at the ceiling (admission refuses otherwise)."""
        return self.rates is not None or self.sheet is not None or self.preset in FREE_PRESETS

    def worst_nanos(self, input_tokens: int, output_tokens: int, at: datetime | int) -> int:
        """The most a request of this size can cost (what admission reserves), in nano-dollars.

        A provider's own billed amount (OpenRouter) is bounded by the price it publishes, which is what
        the rates here are."""
        fixed = self._fixed
        if fixed is not None:
            return fixed.worst_nanos(input_tokens, output_tokens)
        if self.sheet is not None:
            return self.sheet.rates(at, input_tokens).worst_nanos(input_tokens, output_tokens)
        if self.preset in FREE_PRESETS:
            return 0
        if self.ceiling is not None:
            return self.ceiling.worst_nanos(input_tokens, output_tokens)
        raise ModelUnpriced(f"No price is known for {self.preset} model {self.model!r}.")

    def charge(self, usage: TokenUsage, at: datetime | int) -> Charge:
        """Price ``usage`` for a request made at ``at`` (timezone-aware, or unix microseconds)."""
        if usage.billed_usd is not None:
            return Charge(usage.billed_usd, to_nanos(usage.billed_usd), "provider-billed")
        if self.rates is not None:
            return _priced(self.rates, usage, self.config_source)
        if self._fixed is not None and self.sheet is not None:  # no clock or size rule: nothing to look up
            return _priced(self._fixed, usage, self.sheet.source)
        if self.sheet is not None:
            return _priced(self.sheet.rates(at, usage.input_tokens), usage, self.sheet.source)
        if self.preset in FREE_PRESETS:
            return Charge(Decimal(0), 0, f"preset:{self.preset}:free")
        if self.ceiling is not None:
            return _priced(self.ceiling, usage, "ceiling", at_ceiling=True)
        raise ModelUnpriced(
            f"No price is known for {self.preset} model {self.model!r}; the operator must configure one "
            "(or a ceiling) before it can be used."
        )


def _timeless(sheet: PriceSheet | None) -> Rates | None:
    """A sheet's rates when neither the time nor the input size can change them."""
    if sheet is None or len(sheet.periods) != 1:
        return None
    period = sheet.periods[0]
    if period.since is not None or period.window is not None or len(period.bands) != 1:
        return None
    return period.bands[0].rates


def _priced(rates: Rates, usage: TokenUsage, source: str, *, at_ceiling: bool = False) -> Charge:
    """The charge at ``rates``: whole pico-dollars when the rates allow it, else ``Decimal`` (both exact)."""
    pico = rates.pico(usage)
    if pico is None:
        usd = rates.usd(usage)
        return Charge(usd, to_nanos(usd), source, at_ceiling)
    return Charge(pico, -(-pico // 1000), source, at_ceiling)
