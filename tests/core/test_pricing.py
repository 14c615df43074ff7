"""Prices: equal to genai-prices for known models, overrides for custom ones, never a silent $0."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
import pytest

from bot.core.config import ModelConfig
from bot.core.errors import PricingError
from bot.core.pricing import Pricer
from bot.core.types import Usage


def reference(model: str, provider: str, usage: Usage) -> Decimal:
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
        ),
        model,
        provider_id=provider,
    )
    return calc.total_price


@pytest.mark.parametrize(
    ("model", "provider", "usage"),
    [
        ("gpt-4o", "openai", Usage(1000, 200)),
        ("gpt-4o", "openai", Usage(1000, 200, cache_read_tokens=600)),
        ("gpt-4o-mini", "openai", Usage(12_345, 678, cache_read_tokens=1024)),
        ("o3", "openai", Usage(500, 2000, reasoning_tokens=1500)),
        ("claude-haiku-4-5", "anthropic", Usage(2000, 300, cache_read_tokens=1500, cache_write_tokens=200)),
        ("claude-opus-4-1", "anthropic", Usage(100, 50)),
        # Mixed 5-minute and 1-hour cache writes: the 1-hour ones at their own (higher) price.
        (
            "claude-haiku-4-5",
            "anthropic",
            Usage(4000, 100, cache_write_tokens=2000, cache_write_1h_tokens=1500),
        ),
        (
            "claude-sonnet-4-5",
            "anthropic",
            Usage(4000, 100, 500, cache_write_tokens=3000, cache_write_1h_tokens=1000),
        ),
    ],
)
def test_cost_equals_genai_prices(model: str, provider: str, usage: Usage) -> None:
    assert Pricer().cost(model, provider, provider, usage) == reference(model, provider, usage)


def _snapshot_models(provider_id: str) -> list[str]:
    from genai_prices import data_snapshot

    return next(
        [m.id for m in p.models] for p in data_snapshot.get_snapshot().providers if p.id == provider_id
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_fast_path_agrees_with_calc_price_on_every_model(provider: str) -> None:
    """``Pricer.cost`` skips calc_price for flat-priced models: the sums must be the same, to the digit."""
    usages = [
        Usage(0, 0),
        Usage(1, 1),
        Usage(12_345, 678),
        Usage(12_345, 678, cache_read_tokens=10_000),
        Usage(12_345, 678, cache_write_tokens=2_345),
        Usage(9_999, 7, cache_read_tokens=4_000, cache_write_tokens=5_999),
        Usage(9_999, 7, cache_read_tokens=1_000, cache_write_tokens=5_999, cache_write_1h_tokens=2_500),
        Usage(180_000, 31_999, cache_read_tokens=1, reasoning_tokens=31_000),
    ]
    pricer, compared = Pricer(), 0
    for model in _snapshot_models(provider):
        for usage in usages:
            try:
                expected = reference(model, provider, usage)
            except (LookupError, ValueError):
                continue  # not priced per token (images, audio-only…), or usage it does not take
            assert pricer.cost(model, provider, provider, usage) == expected, (model, usage)
            compared += 1
    assert compared > 50  # the snapshot's chat models were really compared


def test_cached_tokens_are_cheaper_and_reasoning_is_output() -> None:
    pricer = Pricer()
    plain = pricer.cost("gpt-4o", "openai", "openai", Usage(1000, 0))
    cached = pricer.cost("gpt-4o", "openai", "openai", Usage(1000, 0, cache_read_tokens=1000))
    assert cached < plain
    # Reasoning tokens are already inside output_tokens: adding the detail must not change the price.
    assert pricer.cost("o3", "openai", "openai", Usage(10, 100)) == pricer.cost(
        "o3", "openai", "openai", Usage(10, 100, reasoning_tokens=80)
    )


def test_anthropic_cache_write_costs_more_than_plain_input() -> None:
    pricer = Pricer()
    plain = pricer.cost("claude-haiku-4-5", "anthropic", "anthropic", Usage(1000, 0))
    written = pricer.cost(
        "claude-haiku-4-5", "anthropic", "anthropic", Usage(1000, 0, cache_write_tokens=1000)
    )
    assert written > plain


def test_override_prices_a_self_hosted_model() -> None:
    pricer = Pricer(
        {
            "llama3.2": ModelConfig(
                provider="ollama", input_per_mtok=Decimal("0.10"), output_per_mtok=Decimal("0.30"),
                cache_read_per_mtok=Decimal("0.01"),
            )
        }
    )  # fmt: skip
    usage = Usage(1_000_000, 1_000_000, cache_read_tokens=500_000)
    assert pricer.cost("llama3.2", "ollama", "openai_compatible", usage) == Decimal("0.05") + Decimal(
        "0.005"
    ) + Decimal("0.30")
    info = pricer.model_info("llama3.2", "ollama", "openai_compatible")
    assert info.input_per_mtok == Decimal("0.10") and info.price_source == "config"


def test_unknown_model_cannot_be_priced() -> None:
    with pytest.raises(PricingError, match="no price is known for model 'my-model'") as info:
        Pricer().cost("my-model", "vllm", "openai_compatible", Usage(10, 10))
    assert "input_per_mtok" in str(info.value)


def test_worst_case_covers_every_real_outcome() -> None:
    pricer = Pricer()
    worst = pricer.worst_case("claude-haiku-4-5", "anthropic", "anthropic", 1000, 500)
    for usage in (Usage(1000, 500), Usage(1000, 500, cache_write_tokens=1000), Usage(1000, 500, 900)):
        assert pricer.cost("claude-haiku-4-5", "anthropic", "anthropic", usage) <= worst
    assert isinstance(worst, Decimal)


def test_a_one_hour_cache_write_costs_more_than_a_five_minute_one() -> None:
    """Anthropic: 5-minute writes at 1.25x input, 1-hour writes at 2x (genai-prices' own rates)."""
    pricer = Pricer()
    five = pricer.cost("claude-haiku-4-5", "anthropic", "anthropic", Usage(1000, 0, cache_write_tokens=1000))
    hour = pricer.cost(
        "claude-haiku-4-5",
        "anthropic",
        "anthropic",
        Usage(1000, 0, cache_write_tokens=1000, cache_write_1h_tokens=1000),
    )
    plain = pricer.cost("claude-haiku-4-5", "anthropic", "anthropic", Usage(1000, 0))
    assert five == plain * Decimal("1.25") and hour == plain * 2
    # The worst case holds enough for a prompt written entirely to the 1-hour cache.
    assert pricer.worst_case("claude-haiku-4-5", "anthropic", "anthropic", 1000, 0) >= hour
