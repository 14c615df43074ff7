"""Replies' usage is read with genai-prices' own field map: the same figures as its extract_usage."""

from __future__ import annotations

from typing import Any

import genai_prices
import pytest
from anthropic.types import Usage as AnthropicUsage
from openai.types import CompletionUsage

from bot.core.providers.anthropic_provider import usage_from_anthropic
from bot.core.providers.openai_provider import usage_from_openai
from bot.core.providers.usage_fields import billed_usage
from bot.core.types import Usage

ANTHROPIC = [
    {"input_tokens": 12, "output_tokens": 5},
    {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 700},
    {
        "input_tokens": 12,
        "output_tokens": 5,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 3500,
        "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1500},
    },
    {"input_tokens": 1, "output_tokens": 0, "cache_creation_input_tokens": 10,
     "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 10}},
]  # fmt: skip
OPENAI = [
    {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49},
    {"prompt_tokens": 4000, "completion_tokens": 90, "total_tokens": 4090,
     "prompt_tokens_details": {"cached_tokens": 1024},
     "completion_tokens_details": {"reasoning_tokens": 64}},
]  # fmt: skip


def expected(raw: dict[str, Any], provider: str, flavor: str, model: str) -> Usage:
    """genai-prices' own reading of the whole reply."""
    got = genai_prices.extract_usage(
        {"model": model, "usage": raw}, provider_id=provider, api_flavor=flavor
    ).usage
    return Usage(
        input_tokens=int(got.input_tokens or 0),
        output_tokens=int(got.output_tokens or 0),
        cache_read_tokens=int(got.cache_read_tokens or 0),
        cache_write_tokens=int(got.cache_write_tokens or 0),
        reasoning_tokens=int(got.output_reasoning_tokens or 0),
        cache_write_1h_tokens=int(got.cache_write_1h_tokens or 0),
    )


@pytest.mark.parametrize("raw", ANTHROPIC)
def test_anthropic_usage_is_read_as_genai_prices_reads_it(raw: dict[str, Any]) -> None:
    want = expected(raw, "anthropic", "default", "claude-haiku-4-5")
    assert billed_usage(raw, "anthropic", "default") == want
    # The SDK's own object reads the same (the provider gets those, not dicts).
    assert usage_from_anthropic(AnthropicUsage.model_validate(raw)) == want


@pytest.mark.parametrize("raw", OPENAI)
def test_openai_usage_is_read_as_genai_prices_reads_it(raw: dict[str, Any]) -> None:
    want = expected(raw, "openai", "chat", "gpt-4o-mini")
    assert billed_usage(raw, "openai", "chat") == want
    assert usage_from_openai(CompletionUsage.model_validate(raw)) == want


def test_a_usage_without_a_billed_field_genai_prices_requires_is_no_usage() -> None:
    """Charged conservatively as missing usage, never as zero tokens."""
    assert billed_usage({"completion_tokens": 9}, "openai", "chat") is None
    assert billed_usage({"input_tokens": 9}, "anthropic", "default") is None
    assert billed_usage(None, "openai", "chat") is None
