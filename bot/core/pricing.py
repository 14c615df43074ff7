"""Prices: ``genai-prices`` for known models, config overrides for custom or self-hosted ones.

All money is ``Decimal`` USD. ``cost()`` prices the usage a provider *reported*; ``worst_case()``
prices the most a call could cost (every input token at the dearest input rate, every allowed
output token), which is what a budget reserves before the call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from bot.core.config import ModelConfig
from bot.core.errors import PricingError
from bot.core.types import ModelInfo, Usage

__all__ = ["MTOK", "Pricer", "Rates", "genai_provider_id"]

MTOK = Decimal(1_000_000)
_ZERO = Decimal(0)


def genai_provider_id(provider_type: str) -> str | None:
    """Return the genai-prices provider id for our provider type (None: match by model name)."""
    return provider_type if provider_type in ("openai", "anthropic") else None


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-million-token rates for one model; the ``max_*`` fields are the dearest tier."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None
    cache_write: Decimal | None
    max_input: Decimal
    max_output: Decimal
    source: str
    #: 1-hour cache writes (Anthropic); None: priced as ``cache_write``.
    cache_write_1h: Decimal | None = None


def _base(price: Decimal | TieredPrices | None) -> Decimal | None:
    if price is None:
        return None
    return price.base if isinstance(price, TieredPrices) else price


def _dearest(price: Decimal | TieredPrices | None) -> Decimal:
    if price is None:
        return _ZERO
    if isinstance(price, TieredPrices):
        return max([price.base, *(tier.price for tier in price.tiers)])
    return price


@lru_cache(maxsize=512)
def _lookup(model: str, provider_id: str | None) -> tuple[ModelPrice, int | None] | None:
    try:
        calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=0), model, provider_id=provider_id)
    except LookupError:
        return None
    return calc.model_price, calc.model.context_window


#: Price fields ``_cost_from_rates`` computes exactly as ``ModelPrice.calc_price`` does: the four
#: token prices, plus prices of units our usage never reports (so calc_price counts them as 0).
_PLAIN_PRICE_KEYS = frozenset(
    {
        "input_mtok",
        "output_mtok",
        "cache_read_mtok",
        "cache_write_mtok",
        "cache_write_1h_mtok",
        "web_searches_kcount",
        "storage_searches_kcount",
    }
)


@lru_cache(maxsize=512)
def _genai_rates(model: str, provider_id: str | None) -> tuple[Rates, bool] | None:
    """The model's rates from genai-prices, and whether they are plain (see ``Pricer.cost``)."""
    found = _lookup(model, provider_id)
    if found is None:
        return None
    price, _ = found
    input_price = _base(getattr(price, "input_mtok", None))
    output_price = _base(getattr(price, "output_mtok", None))
    if input_price is None or output_price is None:
        return None
    # The dearest any input token can be: a 1-hour cache write costs more than a 5-minute one.
    dear_in = max(
        _dearest(getattr(price, key, None))
        for key in ("input_mtok", "cache_write_mtok", "cache_write_1h_mtok")
    )
    rates = Rates(
        input=input_price,
        output=output_price,
        cache_read=_base(getattr(price, "cache_read_mtok", None)),
        cache_write=_base(getattr(price, "cache_write_mtok", None)),
        max_input=dear_in,
        max_output=_dearest(getattr(price, "output_mtok", None)),
        source="genai-prices",
        cache_write_1h=_base(getattr(price, "cache_write_1h_mtok", None)),
    )
    priced = {k: v for k, v in vars(price).items() if v is not None and not k.startswith("_")}
    plain = priced.keys() <= _PLAIN_PRICE_KEYS and not any(
        isinstance(v, TieredPrices) for v in priced.values()
    )
    return rates, plain


class Pricer:
    """Turns usage into money, preferring config overrides over ``genai-prices``."""

    def __init__(self, overrides: Mapping[str, ModelConfig] | None = None) -> None:
        self._overrides = dict(overrides or {})

    def rates(self, model: str, provider_type: str) -> Rates | None:
        """Return the rates for ``model``, or None when nobody knows its price."""
        override = self._overrides.get(model)
        if override and override.input_per_mtok is not None and override.output_per_mtok is not None:
            dear_in = max(
                v for v in (override.input_per_mtok, override.cache_write_per_mtok) if v is not None
            )
            return Rates(
                input=override.input_per_mtok,
                output=override.output_per_mtok,
                cache_read=override.cache_read_per_mtok,
                cache_write=override.cache_write_per_mtok,
                max_input=dear_in,
                max_output=override.output_per_mtok,
                source="config",
            )
        found = _genai_rates(self._upstream_name(model), genai_provider_id(provider_type))
        return None if found is None else found[0]

    def model_info(self, model: str, provider: str, provider_type: str) -> ModelInfo:
        """Describe ``model`` (prices may be None when unknown: such a model cannot be called)."""
        rates = self.rates(model, provider_type)
        override = self._overrides.get(model)
        found = _lookup(self._upstream_name(model), genai_provider_id(provider_type))
        context = (override.context_window if override else None) or (found[1] if found else None)
        return ModelInfo(
            name=model,
            provider=provider,
            context_window=context,
            max_output_tokens=override.max_output_tokens if override else None,
            input_per_mtok=rates.input if rates else None,
            output_per_mtok=rates.output if rates else None,
            cache_read_per_mtok=rates.cache_read if rates else None,
            cache_write_per_mtok=rates.cache_write if rates else None,
            price_source=rates.source if rates else "unknown",
        )

    def cost(self, model: str, provider: str, provider_type: str, usage: Usage) -> Decimal:
        """Price the usage the provider reported; raises ``PricingError`` if the model has no price."""
        override = self._overrides.get(model)
        if override and override.input_per_mtok is not None and override.output_per_mtok is not None:
            rates = self.rates(model, provider_type)
            assert rates is not None
            return _cost_from_rates(rates, usage)
        upstream, provider_id = self._upstream_name(model), genai_provider_id(provider_type)
        simple = _genai_rates(upstream, provider_id)
        if simple is not None and simple[1]:
            # Four flat per-token prices (most models): the same sums as calc_price, without its
            # generic unit machinery (measured in docs/benchmarks.md). A test checks both agree on every such
            # model of the snapshot.
            return _cost_from_rates(simple[0], usage)
        found = _lookup(upstream, provider_id)
        if found is None:
            raise PricingError(model, provider)
        price, _ = found
        # genai-prices wants cache counts as subsets of input_tokens, which is what Usage holds;
        # reasoning tokens are already inside output_tokens, so they are not passed again.
        calc = price.calc_price(
            genai_prices.Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                cache_write_1h_tokens=usage.cache_write_1h_tokens,
            )
        )
        return Decimal(calc["total_price"])

    def worst_case(
        self, model: str, provider: str, provider_type: str, input_tokens: int, max_output: int
    ) -> Decimal:
        """The most a call could cost: what a budget must hold before the call is made."""
        rates = self.rates(model, provider_type)
        if rates is None:
            raise PricingError(model, provider)
        return (Decimal(input_tokens) * rates.max_input + Decimal(max_output) * rates.max_output) / MTOK

    def known_models(self, provider_type: str) -> Iterator[str]:
        """Yield the model ids ``genai-prices`` knows for a provider type (openai/anthropic)."""
        provider_id = genai_provider_id(provider_type)
        for provider in data_snapshot.get_snapshot().providers:
            if provider.id == provider_id:
                for model in provider.models:
                    # Chat models carry a context window; embeddings and legacy completions don't.
                    if not model.deprecated and model.context_window:
                        yield model.id

    def _upstream_name(self, model: str) -> str:
        override = self._overrides.get(model)
        return override.upstream_name if override and override.upstream_name else model


def _cost_from_rates(rates: Rates, usage: Usage) -> Decimal:
    plain_input = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens)
    write = rates.cache_write if rates.cache_write is not None else rates.input
    # 1-hour writes at their own price where the model has one (as calc_price does).
    write_1h = rates.cache_write_1h if rates.cache_write_1h is not None else write
    total = (
        Decimal(plain_input) * rates.input
        + Decimal(usage.cache_read_tokens)
        * (rates.cache_read if rates.cache_read is not None else rates.input)
        + Decimal(usage.cache_write_tokens - usage.cache_write_1h_tokens) * write
        + Decimal(usage.cache_write_1h_tokens) * write_1h
        + Decimal(usage.output_tokens) * rates.output
    )
    return total / MTOK
