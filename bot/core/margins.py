"""How much input to hold for a call: our count, padded where the provider has billed more.

A hold is the call's worst case, and its input part is our own count of the prompt. That count
is exact for OpenAI (tiktoken) and for Anthropic's count-tokens endpoint, an estimate elsewhere
(padded by ``ESTIMATE_FACTOR`` at the source). A provider may still bill more input than we
counted: a tokenizer we do not know, a template it adds, an upstream that bills a fixed amount.
The difference is charged, since it was billed, but if nothing changed, every later call would
be held short by as much, and a burst of calls in flight could pass a budget by that much each.

So each (provider, model) learns, from the replies that billed more than we counted, a bound
``billed <= ratio * counted + extra``: ``ratio`` (at most ``MAX_RATIO``) for a tokenizer that
counts differently, ``extra`` for what is added whatever the prompt (a template, a minimum).
Later holds take their input from that bound. The overspend of a budget is thereby bounded by
what the calls already in flight when the first over-billed reply arrives were billed beyond
their holds; the charge that passes the limit queues the budget's ``overspent`` alert, and
every call after it is refused (its room is negative). The bounds live in this process (a
restart learns anew).
"""

from __future__ import annotations

import logging
import math

from bot.core.types import TokenCount

__all__ = ["InputMargins"]

log = logging.getLogger(__name__)

#: The largest ratio remembered: tokenizers differ by less; what is beyond it is taken as
#: input added whatever the prompt (``extra``).
MAX_RATIO = 2.0


class InputMargins:
    """The learned bound on billed input of each (provider, model) seen over-billing; one per process."""

    def __init__(self) -> None:
        """Start with no margins (every count held as it is)."""
        self._bound: dict[tuple[str, str], tuple[float, int]] = {}

    def to_hold(self, provider: str, model: str, counted: TokenCount) -> int:
        """The input tokens to hold for a call whose prompt we counted as ``counted``."""
        bound = self._bound.get((provider, model))
        if bound is None:
            return counted.tokens
        ratio, extra = bound
        return math.ceil(counted.tokens * ratio) + extra

    def observe(self, provider: str, model: str, counted: int, billed_input: int) -> None:
        """A reply billed ``billed_input`` input tokens for a prompt we counted as ``counted``:
        if the bound so far did not cover it, it grows, and later holds of the model with it."""
        key = (provider, model)
        ratio, extra = self._bound.get(key, (1.0, 0))
        if billed_input <= math.ceil(counted * ratio) + extra:
            return
        ratio = max(ratio, min(MAX_RATIO, billed_input / max(counted, 1)))
        extra = max(extra, billed_input - math.ceil(counted * ratio))
        first = key not in self._bound
        self._bound[key] = (ratio, extra)
        if first:
            log.warning(
                "the provider billed more input than we counted; later holds of this model are raised to match",
                extra={"provider": provider, "model": model, "counted": counted, "billed": billed_input,
                       "ratio": round(ratio, 3), "extra_tokens": extra},
            )  # fmt: skip
