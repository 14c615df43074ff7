"""A budget limit as a person types it (``3``, ``$0.001``, ``1e9``, ``1,000``), checked once for every face.

Every face hands the text it was given to the gateway, which parses it here: so ``/budget set``,
``bot budget set`` and the config file accept the same amounts and refuse the same ones with the
same words.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from bot.core.errors import ValidationError
from bot.core.money_text import usd

__all__ = ["MAX_LIMIT_USD", "parse_limit"]

#: The largest budget limit accepted. A limit above a billion dollars is a typo (an exponent, a
#: pasted number), never a budget; the ledger could count higher, nobody could spend it.
MAX_LIMIT_USD = Decimal(1_000_000_000)
#: The ledger counts nano-dollars: a limit cannot be finer than that.
_PLACES = 9


def parse_limit(amount: Decimal | int | str) -> Decimal:
    """``amount`` as a budget limit in dollars, or ``ValidationError`` saying what is wrong and the range."""
    text = str(amount).strip()
    try:
        value = Decimal(text.removeprefix("$").replace(",", "").replace("_", ""))
    except InvalidOperation:
        value = Decimal("NaN")
    wanted = f"give an amount in dollars above $0 and at most {usd(MAX_LIMIT_USD)}, such as 25 or 0.50"
    if not value.is_finite():
        raise ValidationError([f"'{text}' is not an amount of dollars."], hint=wanted.capitalize() + ".")
    if value <= 0:
        raise ValidationError(
            [f"a budget limit must be above $0 (got {text})."], hint=wanted.capitalize() + "."
        )
    if value > MAX_LIMIT_USD:
        raise ValidationError(
            [f"{usd(value)} is larger than any budget limit ({usd(MAX_LIMIT_USD)} at most)."],
            hint="Check the number of zeros (or the exponent).",
        )
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > _PLACES:
        raise ValidationError(
            [f"'{text}' has more decimals than the ledger counts (nine: $0.000000001)."],
            hint="Round it to nine decimals at most.",
        )
    # Plain notation from here on: a face shows it through money_text.usd, never as 1E+9.
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()
