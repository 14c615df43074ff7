"""Every money rule of the ledger, once, as pure functions on integer nano-dollars: no I/O.

The transactions (``transactions.py``) read budget rows, ask these functions what to write, and
write it; every database driver runs those same transactions, so a rule changed here changes on
SQLite and PostgreSQL alike. Money is integer nano-dollars (exact, summable in SQL); ``to_nanos``
and ``from_nanos`` are the one conversion from and to the ``Decimal`` dollars of the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_CEILING, Context, Decimal
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "EXHAUSTED_THRESHOLD",
    "MAX_NANOS",
    "NANOS_PER_USD",
    "OVERSPENT_THRESHOLD",
    "Crossing",
    "alert_crossings",
    "charge",
    "fits",
    "from_nanos",
    "limit_in_force",
    "remaining",
    "to_nanos",
]

#: Nano-dollars per dollar: the ledger's unit of account.
NANOS_PER_USD = 10**9
#: The largest amount a BIGINT column holds (about $9.2 billion).
MAX_NANOS = 2**63 - 1

#: Enough digits for any BIGINT of nano-dollars (no rounding before ours), rounding up.
_NANOS = Context(prec=60, rounding=ROUND_CEILING)


def to_nanos(amount: Decimal, *, what: str = "amount") -> int:
    """Convert a non-negative ``Decimal`` of dollars to integer nano-dollars.

    Digits beyond the ninth decimal round *up*, so a hold or a charge is never smaller than asked.
    Floats are refused: they cannot represent most cents exactly.
    """
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError(f"{what} must be a Decimal, not {type(amount).__name__}")
    value = amount if isinstance(amount, Decimal) else Decimal(amount)
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a finite, non-negative number of dollars, got {amount}")
    # Explicit context, not localcontext(): this runs several times per call.
    nanos = int(_NANOS.multiply(value, NANOS_PER_USD).to_integral_value(context=_NANOS))
    if nanos > MAX_NANOS:
        raise ValueError(
            f"{what} of ${amount} is larger than the ledger can count (${MAX_NANOS // NANOS_PER_USD})"
        )
    return nanos


def from_nanos(nanos: int) -> Decimal:
    """Convert integer nano-dollars to an exact ``Decimal`` of dollars in plain notation."""
    nanos = int(nanos)  # PostgreSQL returns SUM(bigint) as Decimal
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return Decimal(sign + text)


def limit_in_force(exact_override: int | None, every_key_override: int | None, config_limit: int) -> int:
    """The limit a budget row is held to: an admin's override of its key, else of every key
    (``*``), else the configured limit."""
    if exact_override is not None:
        return int(exact_override)
    if every_key_override is not None:
        return int(every_key_override)
    return config_limit


def fits(spent: int, reserved: int, amount: int, limit: int) -> bool:
    """Whether holding ``amount`` more keeps spent plus every hold within ``limit``."""
    return spent + reserved + amount <= limit


def remaining(spent: int, reserved: int, limit: int) -> int:
    """What can still be reserved (never negative)."""
    return max(0, limit - spent - reserved)


def charge(spent: int, reserved: int, give_back: int, spend: int) -> tuple[int, int]:
    """A row's (spent, reserved) after giving back ``give_back`` of its holds and charging ``spend``.

    No limit check: this is money already spent (a call may cost more than its hold). ``spend``
    is negative only for a correction: a dead process's call, charged its hold as
    ``interrupted``, whose real bill arrived later and was smaller. Both are clamped at zero so
    that a bug can never turn into extra room in the budget.
    """
    return max(0, spent + spend), max(0, reserved - give_back)


#: The threshold stored for ``overspent`` alerts: one per budget key and period, when a charge
#: takes its spend past its limit (configured thresholds are in (0, 1]; ``outbox.py`` reserves
#: 0 and -1 for the job-made kinds).
OVERSPENT_THRESHOLD = -2.0
#: The threshold stored for ``exhausted`` alerts: one per budget key and period, when the budget
#: first refuses a call for want of room (or an admin lowers its limit to its spend or below).
EXHAUSTED_THRESHOLD = -3.0


class Crossing(NamedTuple):
    """An alert a budget row has reached: the threshold, the fraction spent, the alert's kind."""

    threshold: float
    fraction: float
    kind: str = "threshold"


@lru_cache(maxsize=64)
def _exact(threshold: float) -> tuple[int, int]:
    """The threshold as written, as a fraction: 0.8 is 4/5 (the float itself is not)."""
    return Decimal(str(threshold)).as_integer_ratio()


def alert_crossings(thresholds: Sequence[float], spent: int, limit: int) -> list[Crossing]:
    """Every threshold a row with this spend and limit has reached, and ``overspent`` past it.

    "Reached" rather than "crossed by this charge": alerts are unique per threshold and period,
    so repeats are no-ops, and a threshold passed only because an admin lowered the limit still
    gets its alert. Spend beyond the limit (a provider billed more than a call's hold) is the
    ``overspent`` alert (``OVERSPENT_THRESHOLD``), whatever the thresholds. A limit of zero or
    less sends none.
    """
    if limit <= 0:
        return []
    reached = []
    for t in thresholds:
        numerator, denominator = _exact(t)
        if spent * denominator >= numerator * limit:  # integers: exact at the boundary
            reached.append(Crossing(t, spent / limit))
    if spent > limit:
        reached.append(Crossing(OVERSPENT_THRESHOLD, spent / limit, "overspent"))
    return reached
