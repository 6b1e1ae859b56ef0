"""Cost: hand-computed expectations from published per-million prices (USD), and properties.

Rates used below (USD per 1M tokens, genai-prices 0.2.3 bundled data, checked against providers.md §7.1):
gpt-4o-mini 0.15 in / 0.075 cached / 0.60 out; deepseek-flash peak 0.30 / 0.006 / 1.20, off-peak
0.15 / 0.003 / 0.60; claude-sonnet-4-5 cache writes 3.75 (5 min) / 6.00 (1 h); text-embedding-3-small 0.02.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.errors import ModelUnpriced
from sluice.pricing.cost import Pricer, to_nanos
from sluice.pricing.extract import sheet_for
from sluice.pricing.sheet import Rates
from sluice.pricing.usage import TokenUsage

TUESDAY_PEAK = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
TUESDAY_OFF_PEAK = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SUNDAY_PEAK_HOUR = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
SATURDAY_LATE = datetime(2026, 11, 21, 23, 59, tzinfo=UTC)
MONDAY_PEAK = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
M = 1_000_000


def bundled(preset: str, model: str) -> Pricer:
    """A pricer with genai-prices' sheet, as the server builds it at startup."""
    return Pricer(preset, model, sheet=sheet_for(preset, model))


def test_openai_cached_tokens_at_the_cached_rate() -> None:
    # 600 x 0.15 + 400 x 0.075 + 50 x 0.60 = 150 µ$ → 150,000 n$ (cached not billed twice: Bifrost #904)
    usage = TokenUsage(input_tokens=1000, cache_read_tokens=400, output_tokens=50)
    charge = bundled("openai", "gpt-4o-mini").charge(usage, TUESDAY_PEAK)
    assert charge.nanos == 150_000
    assert charge.source.startswith("genai-prices ")


@pytest.mark.parametrize(
    ("at", "nanos"),
    [
        (TUESDAY_PEAK, 1_441_200_000),  # 800k x 0.30 + 200k x 0.006 + 1M x 1.20 = 1.4412 $
        (TUESDAY_OFF_PEAK, 720_600_000),  # 800k x 0.15 + 200k x 0.003 + 1M x 0.60 = 0.7206 $
        (SUNDAY_PEAK_HOUR, 720_600_000),  # weekends are off-peak all day (genai-prices says peak)
        (SATURDAY_LATE, 720_600_000),
        (MONDAY_PEAK, 1_441_200_000),  # across the weekend boundary, peak again
    ],
)
def test_deepseek_peak_and_weekends(at: datetime, nanos: int) -> None:
    usage = TokenUsage(input_tokens=M, cache_read_tokens=200_000, output_tokens=M)
    assert bundled("deepseek", "deepseek-flash").charge(usage, at).nanos == nanos


def test_anthropic_cache_writes_5m_and_1h() -> None:
    # 70k x 3.75 + 30k x 6.00 = 0.4425 $ (no uncached input, no output)
    usage = TokenUsage(input_tokens=100_000, cache_write_tokens=100_000, cache_write_1h_tokens=30_000)
    assert bundled("anthropic", "claude-sonnet-4-5").charge(usage, TUESDAY_PEAK).nanos == 442_500_000


def test_provider_billed_cost_wins() -> None:
    usage = TokenUsage(input_tokens=10, output_tokens=2, billed_usd=Decimal("0.000012"))
    charge = Pricer("openrouter", "qwen/qwen-plus").charge(usage, TUESDAY_PEAK)
    assert (charge.nanos, charge.source) == (12_000, "provider-billed")


def test_qwen_cached_input_defaults_to_40_percent() -> None:
    # configured 0.40 in / 1.20 out: 500 x 0.40 + 500 x 0.16 + 100 x 1.20 = 400 µ$
    pricer = Pricer("dashscope", "qwen-plus", rates=Rates(Decimal("0.40"), Decimal("1.20")))
    usage = TokenUsage(input_tokens=1000, cache_read_tokens=500, output_tokens=100)
    charge = pricer.charge(usage, TUESDAY_PEAK)
    assert (charge.nanos, charge.source) == (400_000, "config")


def test_embeddings_and_tiny_prices_never_round_to_zero() -> None:
    one = TokenUsage(input_tokens=1)
    assert bundled("openai", "text-embedding-3-small").charge(one, TUESDAY_PEAK).nanos == 20  # 0.02 µ$
    tiny = Pricer("openai_compatible", "m", rates=Rates(Decimal("0.0001"), Decimal(0)))
    assert tiny.charge(one, TUESDAY_PEAK).nanos == 1  # 0.1 n$ rounds up, never to 0
    assert to_nanos(Decimal("1e-30")) == 1


def test_local_presets_are_free_by_declaration() -> None:
    charge = Pricer("vllm", "Qwen/Qwen3-8B").charge(TokenUsage(input_tokens=M, output_tokens=M), TUESDAY_PEAK)
    assert (charge.nanos, charge.source) == (0, "preset:vllm:free")


def test_explicit_zero_price_is_free() -> None:
    pricer = Pricer("openai_compatible", "m", rates=Rates(Decimal(0), Decimal(0)))
    assert pricer.is_priced()
    assert pricer.charge(TokenUsage(input_tokens=5), TUESDAY_PEAK).nanos == 0


def test_unpriced_is_never_zero() -> None:
    # guards against LiteLLM #25874: an unknown model priced at $0 so no budget ever trips
    pricer = Pricer("openai_compatible", "mystery-model")
    assert not pricer.is_priced()
    with pytest.raises(ModelUnpriced):
        pricer.charge(TokenUsage(input_tokens=1), TUESDAY_PEAK)
    assert not Pricer("dashscope", "qwen-plus").is_priced()  # genai-prices has no DashScope
    ceiling = Pricer("openai_compatible", "mystery-model", ceiling=Rates(Decimal(10), Decimal(30)))
    charge = ceiling.charge(TokenUsage(input_tokens=100, output_tokens=10), TUESDAY_PEAK)
    assert (charge.nanos, charge.at_ceiling, charge.source) == (1_300_000, True, "ceiling")


rates = st.builds(
    Rates,
    st.decimals(0, 100, places=6),
    st.decimals(0, 100, places=6),
    st.none() | st.decimals(0, 100, places=6),
    st.none() | st.decimals(0, 100, places=6),
    st.none() | st.decimals(0, 100, places=6),
)


@st.composite
def usages(draw: st.DrawFn) -> TokenUsage:
    read = draw(st.integers(0, 10**7))
    write_1h = draw(st.integers(0, 10**7))
    write = write_1h + draw(st.integers(0, 10**7))
    output = draw(st.integers(0, 10**7))
    return TokenUsage(
        input_tokens=read + write + draw(st.integers(0, 10**7)),
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
        output_tokens=output,
    )


@given(rates, usages())
def test_cost_is_never_negative_and_rounds_up_by_less_than_a_nano(r: Rates, u: TokenUsage) -> None:
    usd = r.usd(u)
    assert usd >= 0
    nanos = to_nanos(usd)
    assert 0 <= nanos - usd * 1_000_000_000 < 1


@given(
    rates, usages(), st.sampled_from(["input", "read", "write", "write_1h", "output"]), st.integers(1, 10**6)
)
def test_cost_is_monotone_in_each_token_class(r: Rates, u: TokenUsage, part: str, more: int) -> None:
    grow = {
        "input": {"input_tokens": u.input_tokens + more},
        "read": {"input_tokens": u.input_tokens + more, "cache_read_tokens": u.cache_read_tokens + more},
        "write": {"input_tokens": u.input_tokens + more, "cache_write_tokens": u.cache_write_tokens + more},
        "write_1h": {
            "input_tokens": u.input_tokens + more,
            "cache_write_tokens": u.cache_write_tokens + more,
            "cache_write_1h_tokens": u.cache_write_1h_tokens + more,
        },
        "output": {"output_tokens": u.output_tokens + more},
    }[part]
    bigger = dataclasses.replace(u, **grow)
    assert r.usd(bigger) >= r.usd(u)


@given(rates, st.lists(usages(), min_size=1, max_size=30))
def test_stored_nanos_sum_within_one_nano_per_request_of_the_exact_total(
    r: Rates, batch: list[TokenUsage]
) -> None:
    exact = sum((r.usd(u) for u in batch), Decimal(0)) * 1_000_000_000
    stored = sum(to_nanos(r.usd(u)) for u in batch)
    assert 0 <= stored - exact < len(batch)


@given(
    st.builds(
        Rates,
        st.decimals(0, 100, places=7),
        st.decimals(0, 100, places=7),
        st.none() | st.decimals(0, 100, places=7),
        st.none() | st.decimals(0, 100, places=6),
        st.none() | st.decimals(0, 100, places=6),
        st.none() | st.decimals(0, 100, places=9),
    ),
    usages(),
)
def test_integer_fast_path_equals_decimal(r: Rates, u: TokenUsage) -> None:
    """Whole pico-dollar rates are charged in integers; finer ones in Decimal: the same exact amount."""
    u = dataclasses.replace(u, web_searches=3)
    charge = Pricer("openai_compatible", "m", rates=r).charge(u, TUESDAY_PEAK)
    assert charge.usd == r.usd(u)
    assert charge.nanos == to_nanos(r.usd(u))


@given(rates, usages(), st.sampled_from([TUESDAY_PEAK, SUNDAY_PEAK_HOUR]))
def test_the_worst_case_bounds_every_charge_of_that_size(r: Rates, u: TokenUsage, at: datetime) -> None:
    """What admission reserves for (input, output) tokens is never less than what they can cost, however
    the input splits into cache reads and writes — configured rates and bundled sheets alike."""
    for pricer in (
        Pricer("openai_compatible", "m", rates=r),
        bundled("anthropic", "claude-sonnet-4-5"),
        bundled("deepseek", "deepseek-chat"),
        bundled("openai", "gpt-4o-mini"),
    ):
        worst = pricer.worst_nanos(u.input_tokens, u.output_tokens, at)
        assert pricer.charge(u, at).nanos <= worst


def test_the_worst_case_follows_the_period_and_the_band() -> None:
    deepseek = bundled("deepseek", "deepseek-chat")  # off-peak all day on weekends: half price
    assert deepseek.worst_nanos(M, M, SUNDAY_PEAK_HOUR) * 2 == deepseek.worst_nanos(M, M, TUESDAY_PEAK)
    free = Pricer("ollama", "llama3.2")
    assert free.worst_nanos(M, M, TUESDAY_PEAK) == 0
    ceiling = Pricer("openai_compatible", "x", ceiling=Rates(Decimal(10), Decimal(30)))
    assert ceiling.worst_nanos(100, 10, TUESDAY_PEAK) == 1_300_000
    with pytest.raises(ModelUnpriced):
        Pricer("openai_compatible", "x").worst_nanos(1, 1, TUESDAY_PEAK)
