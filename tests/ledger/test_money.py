"""Money conversions: Decimal dollars <-> integer nano-dollars, exact both ways."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.ledger import money
from bot.core.ledger.money import MAX_NANOS, from_nanos, to_nanos


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


_NANOS = st.integers(min_value=0, max_value=10**15)
_OVERRIDE = st.none() | _NANOS


@given(_OVERRIDE, _OVERRIDE, _NANOS)
def test_the_limit_in_force_is_the_keys_override_then_every_keys_then_config(
    exact: int | None, every_key: int | None, config: int
) -> None:
    limit = money.limit_in_force(exact, every_key, config)
    expected = exact if exact is not None else every_key if every_key is not None else config
    assert limit == expected


@given(_NANOS, _NANOS, _NANOS, _NANOS)
def test_a_hold_fits_exactly_when_it_leaves_spend_and_holds_within_the_limit(
    spent: int, reserved: int, amount: int, limit: int
) -> None:
    assert money.fits(spent, reserved, amount, limit) == (spent + reserved + amount <= limit)
    if money.fits(spent, reserved, amount, limit):
        # What is left after the hold is what was left, less the hold.
        assert (
            money.remaining(spent, reserved + amount, limit)
            == money.remaining(spent, reserved, limit) - amount
        )
    assert money.remaining(spent, reserved, limit) >= 0


@given(_NANOS, _NANOS, _NANOS, _NANOS)
def test_a_charge_adds_the_spend_and_never_leaves_a_negative_reservation(
    spent: int, reserved: int, give_back: int, spend: int
) -> None:
    new_spent, new_reserved = money.charge(spent, reserved, give_back, spend)
    assert new_spent == spent + spend  # no limit check: the money was spent
    assert new_reserved == max(0, reserved - give_back)


@given(
    st.lists(st.sampled_from([0.25, 0.5, 0.8, 0.9, 1.0]), unique=True),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=-5, max_value=10**12),
)
def test_alerts_are_every_threshold_reached_at_its_exact_value(
    thresholds: list[float], spent: int, limit: int
) -> None:
    crossings = money.alert_crossings(thresholds, spent, limit)
    if limit <= 0:
        assert crossings == []
        return
    # Exact decimal comparison: 80% of $1 is reached at 800,000,000 nanos, not a float's idea of it.
    reached = [t for t in thresholds if spent * 100 >= round(t * 100) * limit]
    # Past the limit, whatever the thresholds: the overspent alert, once.
    overspent = [money.OVERSPENT_THRESHOLD] if spent > limit else []
    assert [c.threshold for c in crossings] == reached + overspent
    assert [c.kind for c in crossings] == ["threshold"] * len(reached) + ["overspent"] * len(overspent)
    assert all(c.fraction == spent / limit for c in crossings)


def test_a_threshold_is_reached_at_its_exact_value_not_a_floats() -> None:
    assert [c.threshold for c in money.alert_crossings([0.8], 800_000_000, 1_000_000_000)] == [0.8]
    assert money.alert_crossings([0.8], 799_999_999, 1_000_000_000) == []
