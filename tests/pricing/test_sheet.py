"""The startup price sheet agrees with genai-prices itself, to the exact Decimal, for every model.

The serving process prices from ``PriceSheet`` values extracted once from genai-prices; this checks the
extraction against the library's own ``calc_price`` over every model of every provider we map, across
start dates, daily windows and input-size tiers. DeepSeek's weekends are the one intended difference.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price, data_snapshot
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from sluice.pricing.cost import GENAI_PROVIDER, Pricer, to_nanos
from sluice.pricing.extract import sheet_for, sheets_for
from sluice.pricing.sheet import PriceSheet
from sluice.pricing.usage import TokenUsage

MODELS = sorted(
    (preset, model.id)
    for preset, provider_id in GENAI_PROVIDER.items()
    for provider in data_snapshot.get_snapshot().providers
    if provider.id == provider_id
    for model in provider.models
)
ALL_SHEETS = {pair: sheet_for(*pair) for pair in MODELS}
SHEETS = {pair: sheet for pair, sheet in ALL_SHEETS.items() if sheet is not None}


def _genai_knows(preset: str, model: str) -> bool:
    try:
        calc_price(Usage(input_tokens=1), model, provider_id=GENAI_PROVIDER[preset])
    except LookupError:
        return False
    return True


def test_every_model_genai_prices_can_price_has_a_sheet() -> None:
    assert len(SHEETS) > 100
    missing = [pair for pair, sheet in ALL_SHEETS.items() if sheet is None]
    assert all(not _genai_knows(*pair) for pair in missing)  # ids like "ft:gpt-4o" match only "ft:gpt-4o:…"


@st.composite
def usages(draw: st.DrawFn) -> TokenUsage:
    read = draw(st.integers(0, 400_000))
    write_1h = draw(st.integers(0, 100_000))
    write = write_1h + draw(st.integers(0, 100_000))
    audio_in = draw(st.integers(0, 50_000))
    image_in = draw(st.integers(0, 50_000))
    audio_out = draw(st.integers(0, 50_000))
    return TokenUsage(
        input_tokens=read + write + audio_in + image_in + draw(st.integers(0, 1_500_000)),
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
        output_tokens=audio_out + draw(st.integers(0, 100_000)),
        input_audio_tokens=audio_in,
        input_image_tokens=image_in,
        output_audio_tokens=audio_out,
        web_searches=draw(st.integers(0, 3)),
    )


# hypothesis takes naive bounds; `timezones` makes every drawn value aware (UTC)
instants = st.datetimes(
    min_value=datetime(2024, 1, 1),  # noqa: DTZ001
    max_value=datetime(2027, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(SHEETS)), usages(), instants)
def test_sheet_equals_genai_prices(pair: tuple[str, str], usage: TokenUsage, at: datetime) -> None:
    preset, model = pair
    sheet = SHEETS[pair]
    assert sheet is not None
    if preset == "deepseek" and at.weekday() >= 5:
        at -= timedelta(days=2)  # weekends differ on purpose (test_cost covers them)
    try:
        expected = calc_price(
            Usage(**usage.as_genai_usage()),
            model,
            provider_id=GENAI_PROVIDER[preset],
            genai_request_timestamp=at,
        ).total_price
    except ValueError:  # e.g. cached audio: a class our usage record never reports on its own
        reject()
    # units a sheet does not apply (pages, hours…) never appear in a usage record
    assert expected == sheet.usd(usage, at), sheet.unmodelled
    charge = Pricer(preset, model, sheet=sheet).charge(usage, at)  # the hot path's integer form, if any
    assert charge.usd == expected
    assert charge.nanos == to_nanos(expected)


def test_json_round_trip_is_exact() -> None:
    raw = sheets_for([*sorted(SHEETS)[:50], ("dashscope", "qwen-plus"), ("openai", "no-such-model-xyz")])
    assert raw["dashscope/qwen-plus"] is None
    assert raw["openai/no-such-model-xyz"] is None
    for key, data in raw.items():
        if data is not None:
            preset, _, model = key.partition("/")
            assert PriceSheet.from_json(data) == SHEETS[(preset, model)]


@pytest.mark.parametrize(
    ("at", "rate"),
    [
        (datetime(2026, 11, 24, 0, 59, tzinfo=UTC), "0.15"),  # Tuesday, before the first window
        (datetime(2026, 11, 24, 1, 0, tzinfo=UTC), "0.3"),  # peak starts
        (datetime(2026, 11, 24, 4, 0, tzinfo=UTC), "0.15"),  # window end is exclusive
        (datetime(2026, 11, 24, 9, 59, tzinfo=UTC), "0.3"),
        (datetime(2026, 11, 28, 2, 0, tzinfo=UTC), "0.15"),  # Saturday: off-peak all day
        (datetime(2026, 11, 30, 2, 0, tzinfo=UTC), "0.3"),  # Monday: peak again
    ],
)
def test_deepseek_windows_are_weekday_only(at: datetime, rate: str) -> None:
    sheet = SHEETS[("deepseek", "deepseek-flash")]
    assert sheet is not None and sheet.weekday_windows
    assert sheet.rates(at, 10).input == Decimal(rate)


def test_the_serving_process_never_imports_genai_prices() -> None:
    """genai-prices costs a worker 12-23 MB for life: only the startup subprocess may import it."""
    code = (
        "import sys; import sluice.app, sluice.cli.main, sluice.pricebook; "
        "print([m for m in sys.modules if m.startswith(('genai_prices', 'holidays'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_chinese_public_holidays_are_off_peak_for_deepseek() -> None:
    sheet = SHEETS[("deepseek", "deepseek-flash")]
    national_day = datetime(2026, 10, 1, 2, 0, tzinfo=UTC)  # a Thursday, 10:00 in Beijing
    assert sheet.rates(national_day, 10).input == Decimal("0.15")
    assert sheet.rates(national_day + timedelta(days=7), 10).input == Decimal("0.3")
