"""Golden pricing cases: a provider's answer in, nano-dollars out, through the real adapters.

Each file in ``golden/`` is one hand-checked case: the client's request, the provider's response or raw
SSE stream, the published USD-per-million prices, the hand computation (``working``) and the expected
nano-dollars. Expected values were worked out by hand from the prices in the file, never by the code under
test. A case priced from genai-prices' bundled data also pins those prices, so a silent data change fails
here and names the rate that moved. A case whose code is known to be wrong carries ``known_bug`` and runs
as a strict xfail.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice

from sluice.errors import ModelUnpriced
from sluice.pricing.cost import FREE_PRESETS, GENAI_PROVIDER, Pricer
from sluice.pricing.extract import sheet_for
from sluice.pricing.sheet import RATE_FIELDS, PriceSheet, Rates
from sluice.pricing.usage import TokenUsage, from_embeddings
from sluice.providers.base import Target
from sluice.providers.presets import PRESETS
from sluice.providers.registry import ADAPTERS
from sluice.wire.requests import validate_chat, validate_embeddings
from sluice.wire.sse import SSEDecoder

GOLDEN = Path(__file__).parent / "golden"
CASE_FILES = sorted(GOLDEN.glob("*.json"))
DIALECTS = ("openai", "anthropic", "embeddings")
PRICE_SOURCES = frozenset({"bundled", "config", "ceiling", "free", "provider-billed", "unpriced"})
# Published rates genai-prices has but Sluice's price sheet does not apply (a case may state them).
UNMODELLED_RATES: dict[str, str] = {}
FIELDS = frozenset(
    {
        "description",
        "guards",
        "dialect",
        "preset",
        "model",
        "at",
        "prices",
        "price_source",
        "request",
        "response",
        "stream",
        "working",
        "expected_nanos",
        "expected_error",
        "known_bug",
    }
)


def load(path: Path) -> dict[str, Any]:
    """One case file."""
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def case_params() -> list[Any]:
    """Every case file as a pytest param named after the file; a ``known_bug`` case is a strict xfail."""
    params = []
    for path in CASE_FILES:
        bug = load(path).get("known_bug")
        marks = [pytest.mark.xfail(strict=True, reason=str(bug))] if bug else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def request_time(case: dict[str, Any]) -> datetime:
    """The case's request time (must carry an offset: a naive time cannot pick a peak window)."""
    at = datetime.fromisoformat(case["at"])
    assert at.tzinfo is not None, f"'at' must carry a UTC offset: {case['at']!r}"
    return at


def target(case: dict[str, Any]) -> Target:
    """The deployment the case was served by."""
    return Target(
        provider=case["preset"], preset=case["preset"], upstream_model=case["model"], max_output_tokens=4096
    )


def case_rates(prices: dict[str, str]) -> Rates:
    """The case's published prices as configured ``Rates``."""
    return Rates(**{name: Decimal(value) for name, value in prices.items()})


def sse_bytes(events: list[str]) -> bytes:
    """The stream as it came over the wire: each event ends with a blank line."""
    return b"".join(event.encode() + b"\n\n" for event in events)


def usage_of(case: dict[str, Any]) -> TokenUsage:
    """The usage as the gateway builds it: the dialect's adapter on the raw provider body or stream."""
    if case["dialect"] == "embeddings":
        validate_embeddings(case["request"])
        tokens: TokenUsage | None = from_embeddings(case["response"]["usage"])
    else:
        assert PRESETS[case["preset"]].dialect == case["dialect"]
        adapter = ADAPTERS[case["dialect"]]
        req = validate_chat(case["request"])
        if "response" in case:
            tokens = adapter.chat_response(orjson.dumps(case["response"]), req, target(case)).tokens
        else:
            assert req.stream, "a stream case must send a streaming request"
            translator = adapter.chat_stream(req, target(case))
            decoder = SSEDecoder()
            raw = sse_bytes(case["stream"])
            for start in range(0, len(raw), 64):  # arrives in pieces, as over a socket
                for event in decoder.feed(raw[start : start + 64]):
                    translator.feed(event)
            assert decoder.pending() == b""
            assert translator.done, "the stream did not end cleanly ([DONE] or message_stop)"
            tokens = translator.tokens()
    assert tokens is not None, "the adapter found no usage in the provider's answer"
    return tokens


def rate_used(name: str, usage: TokenUsage) -> bool:
    """Whether a usage has tokens billed at rate ``name`` (so the case must state that price)."""
    return {
        "input": True,
        "output": True,
        "cache_read": usage.cache_read_tokens > 0,
        "cache_write": usage.cache_write_tokens > usage.cache_write_1h_tokens,
        "cache_write_1h": usage.cache_write_1h_tokens > 0,
        "web_search": usage.web_searches > 0,
        "input_audio": usage.input_audio_tokens > 0,
        "output_audio": usage.output_audio_tokens > 0,
        "input_image": usage.input_image_tokens > 0,
    }[name]


def unmodelled_rate(case: dict[str, Any], key: str) -> Decimal | None:
    """A rate straight from genai-prices' data (one the price sheet leaves out, e.g. audio)."""
    _, info = data_snapshot.get_snapshot().find_provider_model(
        case["model"], None, GENAI_PROVIDER[case["preset"]], None
    )
    assert isinstance(info.prices, ModelPrice), "only unconditional prices are looked up here"
    value = getattr(info.prices, key)
    assert value is None or isinstance(value, Decimal)
    return value


def price_mismatches(case: dict[str, Any], sheet: PriceSheet, usage: TokenUsage, at: datetime) -> list[str]:
    """Where the prices written in the case differ from genai-prices' rates for this request (its time and
    input size): each one means the bundled data, or a rule applied to it, changed under the case."""
    bundled = sheet.rates(at, usage.input_tokens)
    written: dict[str, str] = case["prices"]
    listed: dict[str, Decimal | None] = {name: getattr(bundled, name) for name in RATE_FIELDS}
    listed.update(
        {name: unmodelled_rate(case, key) for name, key in UNMODELLED_RATES.items() if name in written}
    )
    problems = []
    for name, rate in listed.items():
        if name in written and (rate is None or Decimal(written[name]) != rate):
            problems.append(
                f"{sheet.source} prices {case['preset']}/{case['model']} {name} at {rate} per million at "
                f"{at.isoformat()}; the case was worked out with {written[name]}"
            )
    problems.extend(
        f"the usage bills {name} tokens but the case states no {name} price"
        for name in (*RATE_FIELDS, *UNMODELLED_RATES)
        if name not in written and rate_used(name, usage)
    )
    return problems


def pricer_for(case: dict[str, Any]) -> tuple[Pricer, PriceSheet | None]:
    """The pricer the server builds for this deployment (sluice.routing.table.pricer_for)."""
    preset, model, source = case["preset"], case["model"], case["price_source"]
    sheet = sheet_for(preset, model)
    if source == "bundled":
        assert sheet is not None, f"genai-prices has no price for {preset}/{model}"
        return Pricer(preset, model, sheet=sheet), sheet
    if source == "config":
        return Pricer(preset, model, rates=case_rates(case["prices"]), sheet=sheet), sheet
    if source == "ceiling":
        assert sheet is None, "a ceiling case needs a model nothing else prices"
        return Pricer(preset, model, ceiling=case_rates(case["prices"])), sheet
    if source == "free":
        assert preset in FREE_PRESETS and sheet is None
        return Pricer(preset, model), sheet
    if source == "provider-billed":
        return Pricer(preset, model, sheet=sheet), sheet
    assert source == "unpriced"
    assert sheet is None, f"{preset}/{model} has a bundled price: not an unpriced case"
    return Pricer(preset, model), sheet


@pytest.mark.parametrize("path", case_params())
def test_golden_case(path: Path) -> None:
    case = load(path)
    at = request_time(case)
    usage = usage_of(case)
    pricer, sheet = pricer_for(case)
    source = case["price_source"]
    mismatches = []
    if source in ("bundled", "provider-billed") and sheet is not None and case["prices"]:
        mismatches = price_mismatches(case, sheet, usage, at)

    if source == "unpriced":
        assert case["expected_error"] == "model_unpriced"
        assert not pricer.chargeable  # admission refuses it before it reaches a provider
        with pytest.raises(ModelUnpriced):
            pricer.charge(usage, at)
        return

    assert pricer.chargeable
    charge = pricer.charge(usage, at)
    assert (charge.nanos, mismatches) == (case["expected_nanos"], []), "\n".join(
        [f"{path.name}: {case['working']}", *mismatches]
    )
    assert charge.at_ceiling is (source == "ceiling")
    expected_source = {
        "bundled": sheet.source if sheet is not None else None,
        "config": "config",
        "ceiling": "ceiling",
        "free": f"preset:{case['preset']}:free",
        "provider-billed": "provider-billed",
    }[source]
    assert charge.source == expected_source
    if source == "provider-billed":
        assert usage.billed_usd is not None
    if source == "free":
        assert usage.input_tokens and usage.output_tokens  # free by declaration, not for lack of tokens


def openai_stream_params() -> list[Any]:
    """The OpenAI-dialect stream cases."""
    return [
        pytest.param(path, id=path.stem)
        for path in CASE_FILES
        if "stream" in (case := load(path)) and case["dialect"] == "openai"
    ]


@pytest.mark.parametrize("path", openai_stream_params())
def test_openai_stream_asks_upstream_for_usage(path: Path) -> None:
    """Whatever the client sent, the upstream request asks for the usage chunk (LiteLLM #36168)."""
    case = load(path)
    call = ADAPTERS["openai"].chat_call(validate_chat(case["request"]), target(case))
    assert orjson.loads(call.body)["stream_options"]["include_usage"] is True


def test_the_golden_set_is_complete() -> None:
    cases = {path.name: load(path) for path in CASE_FILES}
    assert len(cases) >= 30
    numbers = [name.split("-", 1)[0] for name in cases]
    assert len(set(numbers)) == len(numbers), "two cases share a number"
    for name, case in cases.items():
        assert re.fullmatch(r"\d{3}-[a-z0-9-]+\.json", name), name
        assert set(case) <= FIELDS, f"{name}: unknown fields {set(case) - FIELDS}"
        for field in ("description", "guards", "working"):
            assert isinstance(case.get(field), str) and case[field].strip(), f"{name}: no {field}"
        assert case["dialect"] in DIALECTS, name
        assert case["preset"] in PRESETS, name
        assert case["price_source"] in PRICE_SOURCES, name
        assert ("response" in case) != ("stream" in case), f"{name}: needs exactly one of response/stream"
        assert ("expected_nanos" in case) != ("expected_error" in case), name
        if "expected_nanos" in case:
            nanos = case["expected_nanos"]
            assert isinstance(nanos, int) and not isinstance(nanos, bool) and nanos >= 0, name
        else:
            assert case["price_source"] == "unpriced" and case["expected_error"] == "model_unpriced", name
        assert all(isinstance(v, str) and Decimal(v) >= 0 for v in case["prices"].values()), name
        assert set(case["prices"]) <= {*RATE_FIELDS, *UNMODELLED_RATES}, name
        if case["price_source"] in ("bundled", "config", "ceiling"):
            assert {"input", "output"} <= set(case["prices"]), f"{name}: input and output prices required"
        if "stream" in case:
            assert all(isinstance(e, str) and e for e in case["stream"]), name
        request_time(case)

    shapes = {(c["dialect"], "stream" if "stream" in c else "response") for c in cases.values()}
    assert shapes >= {
        ("openai", "response"),
        ("openai", "stream"),
        ("anthropic", "response"),
        ("anthropic", "stream"),
        ("embeddings", "response"),  # embeddings do not stream
    }
    assert {c["preset"] for c in cases.values()} >= set(PRESETS), "every preset has a case"
    assert {c["price_source"] for c in cases.values()} == PRICE_SOURCES
    guarded = " ".join(c["guards"] for c in cases.values())
    for issue in ("Bifrost #904", "#3451", "#5354", "LiteLLM #11364", "LiteLLM #36168", "Bifrost #4484"):
        assert issue in guarded, f"no case guards {issue}"
    for issue in ("Bifrost #5243", "LiteLLM #25874"):
        assert issue in guarded, f"no case guards {issue}"
