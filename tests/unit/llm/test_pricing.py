"""Costs in nano-USD: overrides, the bundled genai-prices table, rounding, caching."""

from __future__ import annotations

import math
import time
from decimal import Decimal

import genai_prices
import pytest
from pydantic import ValidationError

from stalwart.errors import ConfigurationError
from stalwart.llm.pricing import (
    NANOS_PER_USD,
    ModelPrice,
    Pricing,
    nanos,
    pricing_from_settings,
    usd,
)
from stalwart.settings import Settings

KNOWN = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-haiku-4-5")]


def table_nanos(provider: str | None, model: str, inp: int, out: int, cached: int = 0) -> int:
    """What `calc_price` says, converted to nano-USD and rounded up."""
    usage = genai_prices.Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cached)
    price = genai_prices.calc_price(usage, model, provider_id=provider).total_price
    return math.ceil(price * NANOS_PER_USD)


@pytest.mark.parametrize(("provider", "model"), KNOWN)
@pytest.mark.parametrize(
    ("inp", "out", "cached"), [(1, 1, 0), (1234, 567, 0), (10_000, 1_000, 4_096), (0, 0, 0)]
)
def test_table_prices_match_calc_price(
    provider: str, model: str, inp: int, out: int, cached: int
) -> None:
    cost = Pricing().cost_nanos(
        provider, model, input_tokens=inp, output_tokens=out, cached_tokens=cached
    )
    assert cost == table_nanos(provider, model, inp, out, cached)


def test_gpt_4o_mini_by_hand() -> None:
    # $0.15 / $0.60 per million, cached input $0.075: 800*0.15 + 200*0.075 + 500*0.6 = 435 µUSD.
    cost = Pricing().cost_nanos(
        "openai", "gpt-4o-mini", input_tokens=1000, output_tokens=500, cached_tokens=200
    )
    assert cost == 435_000


def test_one_token_costs_whole_nanos() -> None:
    # One gpt-4o-mini input token costs $0.15 / 1M = 150 nano-USD.
    assert Pricing().cost_nanos("openai", "gpt-4o-mini", input_tokens=1, output_tokens=0) == 150


def test_tiered_prices_follow_the_table() -> None:
    # claude-sonnet-4-5 charges more for every token once a prompt passes 200k tokens.
    pricing = Pricing()
    for inp in (199_000, 201_000):
        assert pricing.cost_nanos(
            "anthropic", "claude-sonnet-4-5", input_tokens=inp, output_tokens=1000
        ) == table_nanos("anthropic", "claude-sonnet-4-5", inp, 1000)


@pytest.mark.parametrize(("provider", "model"), KNOWN)
def test_cached_tokens_are_cheaper(provider: str, model: str) -> None:
    pricing = Pricing()
    fresh = pricing.cost_nanos(provider, model, input_tokens=10_000, output_tokens=100)
    cached = pricing.cost_nanos(
        provider, model, input_tokens=10_000, output_tokens=100, cached_tokens=8_000
    )
    assert fresh is not None and cached is not None
    assert 0 < cached < fresh


def test_cached_tokens_beyond_the_input_are_capped() -> None:
    pricing = Pricing()
    all_cached = pricing.cost_nanos(
        "openai", "gpt-4o", input_tokens=100, output_tokens=0, cached_tokens=100
    )
    assert (
        pricing.cost_nanos("openai", "gpt-4o", input_tokens=100, output_tokens=0, cached_tokens=500)
        == all_cached
    )


def test_unknown_provider_falls_back_to_the_model_name() -> None:
    pricing = Pricing()
    assert pricing.cost_nanos(
        "my-gateway", "gpt-4o-mini", input_tokens=1000, output_tokens=10
    ) == table_nanos(None, "gpt-4o-mini", 1000, 10)


def test_unknown_model_has_no_price() -> None:
    pricing = Pricing()
    assert pricing.cost_nanos("ollama", "llama3-local", input_tokens=10, output_tokens=10) is None
    assert pricing.cost_nanos("openai", "gpt-nonexistent", input_tokens=1, output_tokens=1) is None
    assert (
        pricing.worst_case_nanos("ollama", "llama3-local", input_tokens=1, max_output_tokens=1)
        is None
    )
    assert not pricing.is_priced("ollama", "llama3-local")
    assert pricing.is_priced("openai", "gpt-4o-mini")


def test_scripted_is_free_unless_overridden() -> None:
    assert Pricing().cost_nanos("scripted", "demo", input_tokens=10**6, output_tokens=10**6) == 0
    assert Pricing().worst_case_nanos("scripted", "demo", input_tokens=5, max_output_tokens=5) == 0
    assert Pricing().is_priced("scripted", "demo")
    priced = Pricing({"scripted:demo": ModelPrice(input_per_mtok=1, output_per_mtok=2)})
    assert priced.cost_nanos("scripted", "demo", input_tokens=10**6, output_tokens=10**6) == (
        3 * NANOS_PER_USD
    )


def test_overrides_win_and_qualified_beats_bare() -> None:
    pricing = Pricing(
        {
            "gpt-4o-mini": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
            "azure:gpt-4o-mini": ModelPrice(input_per_mtok=10.0, output_per_mtok=20.0),
            "llama3-local": ModelPrice(input_per_mtok=0, output_per_mtok=0),
        }
    )
    million = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert pricing.cost_nanos("openai", "gpt-4o-mini", **million) == 3 * NANOS_PER_USD
    assert pricing.cost_nanos("azure", "gpt-4o-mini", **million) == 30 * NANOS_PER_USD
    assert pricing.cost_nanos("ollama", "llama3-local", **million) == 0
    assert pricing.is_priced("ollama", "llama3-local")


def test_override_cached_rate_defaults_to_the_input_rate() -> None:
    plain = Pricing({"m": ModelPrice(input_per_mtok=2.0, output_per_mtok=0)})
    assert plain.cost_nanos(
        "p", "m", input_tokens=1_000_000, output_tokens=0, cached_tokens=500_000
    ) == (2 * NANOS_PER_USD)
    discounted = Pricing(
        {"m": ModelPrice(input_per_mtok=2.0, output_per_mtok=0, cached_input_per_mtok=0.5)}
    )
    assert discounted.cost_nanos(
        "p", "m", input_tokens=1_000_000, output_tokens=0, cached_tokens=500_000
    ) == (1_250_000_000)


def test_override_amounts_are_exact_and_round_up() -> None:
    pricing = Pricing({"m": ModelPrice(input_per_mtok=0.1, output_per_mtok=0.3)})
    # 3 * 0.1 + 7 * 0.3 = 2.4 µUSD = 2400 nano-USD exactly (no float drift).
    assert pricing.cost_nanos("p", "m", input_tokens=3, output_tokens=7) == 2400
    # 1 token at $0.1/M = 0.1 nano-USD, rounded up.
    tiny = Pricing({"m": ModelPrice(input_per_mtok=0.0001, output_per_mtok=0)})
    assert tiny.cost_nanos("p", "m", input_tokens=1, output_tokens=0) == 1


@pytest.mark.parametrize(("provider", "model"), [*KNOWN, ("scripted", "x")])
def test_worst_case_covers_the_actual_cost(provider: str, model: str) -> None:
    pricing = Pricing()
    actual = pricing.cost_nanos(
        provider, model, input_tokens=5000, output_tokens=800, cached_tokens=3000
    )
    worst = pricing.worst_case_nanos(provider, model, input_tokens=5000, max_output_tokens=800)
    assert actual is not None and worst is not None
    assert worst >= actual
    assert worst == pricing.cost_nanos(provider, model, input_tokens=5000, output_tokens=800)


def test_worst_case_with_an_override() -> None:
    pricing = Pricing(
        {"m": ModelPrice(input_per_mtok=1.0, output_per_mtok=4.0, cached_input_per_mtok=0.1)}
    )
    # 1000 * $1/M + 1000 * $4/M = $0.005, the cached rate never applies.
    assert pricing.worst_case_nanos("p", "m", input_tokens=1000, max_output_tokens=1000) == (
        5_000_000
    )


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        Pricing().cost_nanos("openai", "gpt-4o", input_tokens=-1, output_tokens=0)


def test_model_price_validation() -> None:
    with pytest.raises(ValidationError):
        ModelPrice(input_per_mtok=-1, output_per_mtok=0)
    with pytest.raises(ValidationError):
        ModelPrice(input_per_mtok=1, output_per_mtok=1, surprise=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ModelPrice(input_per_mtok=float("inf"), output_per_mtok=0)
    price = ModelPrice(input_per_mtok=1, output_per_mtok=1)
    with pytest.raises(ValidationError):
        price.input_per_mtok = 2  # type: ignore[misc]


def test_pricing_from_settings() -> None:
    settings = Settings(
        llm_prices={"openai:gpt-4o-mini": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}
    )
    pricing = pricing_from_settings(settings)
    assert (
        pricing.cost_nanos("openai", "gpt-4o-mini", input_tokens=10**6, output_tokens=0)
        == NANOS_PER_USD
    )
    bad = Settings(llm_prices={"m": {"input_per_mtok": -1.0, "output_per_mtok": 1.0}})
    with pytest.raises(ConfigurationError, match="llm_prices"):
        pricing_from_settings(bad)


@pytest.mark.parametrize(
    "amount", [0, 1, 7, 999_999_999, 1_000_000_000, 123_456_789_012, 10**15 + 1]
)
def test_nanos_usd_round_trip(amount: int) -> None:
    assert nanos(usd(amount)) == amount


def test_nanos_conversions() -> None:
    assert nanos(0.1) == 100_000_000
    assert nanos("0.000000001") == 1
    assert nanos(Decimal("2.5")) == 2_500_000_000
    assert nanos(1) == NANOS_PER_USD
    assert usd(1_500_000_000) == 1.5
    with pytest.raises(ValueError):
        nanos(float("nan"))


def test_repeated_lookups_are_cheap() -> None:
    pricing = Pricing()
    pricing.cost_nanos("openai", "gpt-4o-mini", input_tokens=1, output_tokens=1)
    pricing.cost_nanos("ollama", "llama3-local", input_tokens=1, output_tokens=1)
    calls = 200
    started = time.perf_counter()
    for i in range(calls):
        pricing.cost_nanos("openai", "gpt-4o-mini", input_tokens=1000 + i, output_tokens=200)
        pricing.cost_nanos("ollama", "llama3-local", input_tokens=1000 + i, output_tokens=200)
    per_call = (time.perf_counter() - started) / (2 * calls)
    assert per_call < 0.002  # the gateway's whole overhead budget; measured ~50 µs
