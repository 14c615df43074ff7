"""How much input to hold for a call: our count, padded where the provider has billed more.

A hold is the call's worst case, and its input part is our own count of the prompt. That count
is exact for OpenAI (tiktoken) and for Anthropic's count-tokens endpoint, an estimate elsewhere
(padded by ``ESTIMATE_FACTOR`` at the source). A provider may still bill more input than we
counted: a tokenizer we do not know, a template it adds, an upstream that bills a fixed amount.
The difference is charged, since it was billed, but if nothing changed, every later call would
be held short by as much, and a burst of calls in flight could pass a budget by that much each.

So each (provider, model) remembers the largest ratio of billed to counted input it has seen,
and later holds scale the count by it. The overspend of a budget is thereby bounded by what the
calls already in flight when the first over-billed reply arrives were billed beyond their holds;
the charge that passes the limit queues the budget's ``overspent`` alert, and every call after
it is refused (its room is negative). The ratios live in this process (a restart learns anew).
"""

from __future__ import annotations

import logging
import math

from bot.core.types import TokenCount

__all__ = ["InputMargins"]

log = logging.getLogger(__name__)

#: The largest ratio remembered: beyond it a provider's bills are not a tokenizer's difference
#: but nonsense, which ``plausible_usage`` and the budgets' own limits deal with.
MAX_RATIO = 1000.0


class InputMargins:
    """The billed-to-counted input ratio of each (provider, model) seen over-billing; one per process."""

    def __init__(self) -> None:
        """Start with no margins (every count held as it is)."""
        self._ratio: dict[tuple[str, str], float] = {}

    def to_hold(self, provider: str, model: str, counted: TokenCount) -> int:
        """The input tokens to hold for a call whose prompt we counted as ``counted``."""
        ratio = self._ratio.get((provider, model))
        if ratio is None:
            return counted.tokens
        return math.ceil(max(counted.tokens, 1) * ratio)

    def observe(self, provider: str, model: str, counted: int, billed_input: int) -> None:
        """A reply billed ``billed_input`` input tokens for a prompt we counted as ``counted``:
        if that is more than the margin so far allowed for, later holds of the model grow."""
        key = (provider, model)
        ratio = min(MAX_RATIO, billed_input / max(counted, 1))
        if ratio <= self._ratio.get(key, 1.0):
            return
        first = key not in self._ratio
        self._ratio[key] = ratio
        if first:
            log.warning(
                "the provider billed more input than we counted; later holds of this model are raised to match",
                extra={"provider": provider, "model": model, "counted": counted, "billed": billed_input,
                       "ratio": round(ratio, 3)},
            )  # fmt: skip
