"""Money conversions: Decimal dollars <-> integer nano-dollars, exact both ways."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.ledger.schema import MAX_NANOS, from_nanos, to_nanos


@given(st.decimals(min_value=0, max_value=10**9, places=9, allow_nan=False, allow_infinity=False))
def test_nine_decimal_places_round_trip_exactly(amount: Decimal) -> None:
    assert from_nanos(to_nanos(amount)) == amount


@given(st.integers(min_value=0, max_value=MAX_NANOS))
def test_nanos_round_trip_exactly(nanos: int) -> None:
    assert to_nanos(from_nanos(nanos)) == nanos


def test_rounding_and_refusals() -> None:
    assert to_nanos(Decimal("0.0000000001")) == 1  # up: a hold is never smaller than asked
    assert str(from_nanos(1_500_000_000)) == "1.5" and str(from_nanos(0)) == "0"
    assert from_nanos(-5) == Decimal("-0.000000005")
    for bad, error in ((0.1, TypeError), (True, TypeError), (Decimal("-0.01"), ValueError),
                       (Decimal("NaN"), ValueError), (Decimal("1e10"), ValueError)):  # fmt: skip
        with pytest.raises(error):
            to_nanos(bad)  # type: ignore[arg-type]
