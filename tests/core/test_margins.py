"""The learned bound on billed input: it covers every reply seen, and grows only when beaten."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.core.margins import InputMargins
from bot.core.types import TokenCount


def count(tokens: int) -> TokenCount:
    return TokenCount(tokens, exact=True, method="test")


def test_no_over_billing_means_holds_as_counted() -> None:
    margins = InputMargins()
    margins.observe("openai", "m", 100, 100)
    margins.observe("openai", "m", 100, 90)
    assert margins.to_hold("openai", "m", count(500)) == 500


def test_a_fixed_bill_and_a_tokenizer_difference_are_both_covered() -> None:
    margins = InputMargins()
    margins.observe("p", "fixed", 8, 1234)  # bills 1,234 whatever the prompt
    assert margins.to_hold("p", "fixed", count(8)) >= 1234
    assert margins.to_hold("p", "fixed", count(10_000)) >= 1234
    assert margins.to_hold("p", "fixed", count(10_000)) <= 2 * 10_000 + 1234  # not 154 x the prompt
    margins.observe("p", "wide", 1000, 1300)  # a tokenizer counting 30% more
    assert margins.to_hold("p", "wide", count(5000)) >= 6500
    assert margins.to_hold("p", "other", count(5000)) == 5000  # per model


@given(st.lists(st.tuples(st.integers(0, 200_000), st.integers(0, 400_000)), max_size=20))
def test_every_reply_seen_is_covered_by_the_bound(seen: list[tuple[int, int]]) -> None:
    margins = InputMargins()
    for counted, billed in seen:
        margins.observe("p", "m", counted, billed)
    for counted, billed in seen:
        assert margins.to_hold("p", "m", count(counted)) >= billed
