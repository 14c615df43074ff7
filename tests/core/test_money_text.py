"""Money shown one way everywhere: separators, cents, no exponent, nothing lost."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.money_text import usd


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("1E+9", "$1,000,000,000.00"),
        ("0.001", "$0.001"),
        ("0", "$0.00"),
        ("3", "$3.00"),
        ("0.30", "$0.30"),
        ("0.17065", "$0.17065"),
        ("1234.5", "$1,234.50"),
        ("0.000000001", "$0.000000001"),
        ("-2.5", "-$2.50"),
    ],
)
def test_amounts_read_as_money(amount: str, shown: str) -> None:
    assert usd(Decimal(amount)) == shown


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_every_ledger_amount_is_shown_exactly(nanos: int) -> None:
    amount = Decimal(nanos) / 10**9
    text = usd(amount)
    assert "E" not in text and "e" not in text
    assert Decimal(text.replace("$", "").replace(",", "")) == amount
