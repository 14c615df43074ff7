"""Money as people read it: one way, for every face, every error and every log line.

``$1,000,000,000.00``, never ``$1E+9``; ``$0.001``, never ``$0.00`` (a tenth of a cent limit is
real on these budgets); cents always shown, and as many more digits, down to the ledger's
nano-dollar, as the amount has.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = ["usd"]

#: The ledger counts nano-dollars: no amount has more digits than that.
_NANO = Decimal("0.000000001")


def usd(amount: Decimal | int | str) -> str:
    """``amount`` dollars as text: thousands separated, at least cents, no exponent, nothing lost."""
    value = Decimal(amount).quantize(_NANO)
    sign = "-" if value < 0 else ""
    whole, _, fraction = f"{abs(value):f}".partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{sign}${int(whole):,}.{fraction}"
