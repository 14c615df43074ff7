"""Budget periods on calendar boundaries, and which budgets apply to a call.

Periods start at local midnight in the configured zone (``daily``), on Monday (``weekly``) or on
the 1st (``monthly``), never "N days after the first request". ``total`` never resets; its rows use
the Unix epoch as period start, because a NULL would escape the unique keys that make row creation
and alerts idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from bot.core.budget_keys import key_matches
from bot.core.config import BudgetConfig, Period
from bot.core.types import Principal

__all__ = [
    "TOTAL_PERIOD_START",
    "Target",
    "applicable_budgets",
    "budget_label",
    "call_scope_keys",
    "model_family",
    "period_bounds",
]

#: Period start stored for ``total`` budgets (which have no calendar period).
TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # fold=0 maps a midnight that falls in a DST gap to the instant of the transition, which is
    # the first instant of that local day; an ambiguous midnight maps to its first occurrence.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _first_day(period: Period, day: date) -> date:
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())  # Monday is weekday 0
    return day.replace(day=1)


def _next_first_day(period: Period, start: date) -> date:
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


def period_bounds(period: Period, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime | None]:
    """Return ``(start, end)`` in UTC of the period containing ``now``; ``end`` is None for ``total``.

    The bounds are local calendar boundaries in ``tz``, so a daily period is 23 or 25 hours long
    on the days DST starts or ends.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if period == "total":
        return TOTAL_PERIOD_START, None
    # Every call asks for the same few periods: reuse the bounds while ``now`` lies inside them.
    cached = _recent_bounds.get((period, tz))
    if cached is not None and cached[0] <= now < cached[1]:
        return cached
    first = _first_day(period, now.astimezone(tz).date())
    bounds = _local_midnight(first, tz), _local_midnight(_next_first_day(period, first), tz)
    _recent_bounds[(period, tz)] = bounds
    return bounds


_recent_bounds: dict[tuple[str, ZoneInfo], tuple[datetime, datetime]] = {}


_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


@lru_cache(maxsize=256)
def model_family(model: str) -> str:
    """A model's name as budgets match it: lower case, without a dated snapshot's suffix.

    ``GPT-4o`` and ``gpt-4o-2024-08-06`` are both ``gpt-4o`` (and ``claude-3-5-haiku-20241022``
    is ``claude-3-5-haiku``), so a model budget cannot be escaped by spelling the model another
    way; the call is still priced as the model it names.
    """
    return _SNAPSHOT.sub("", model.strip().lower())


def call_scope_keys(principal: Principal, *, model: str | None, provider: str | None) -> dict[str, str]:
    """Return the principal's scope keys plus ``model`` (its family) and ``provider`` when known."""
    keys = principal.scope_keys()
    if model:
        keys["model"] = model_family(model)
    if provider:
        keys["provider"] = provider
    return keys


@dataclass(frozen=True, slots=True)
class Target:
    """One budget period a call is charged to: a budget, the scope key it applies to, the period."""

    budget: BudgetConfig
    scope_key: str
    period_start: datetime
    period_end: datetime | None

    @property
    def key(self) -> tuple[str, str, str, str, datetime]:
        """The unique key of this period's row in ``budget_periods``."""
        return (self.budget.name, self.budget.scope, self.scope_key, self.budget.period, self.period_start)


def applicable_budgets(
    budgets: Sequence[BudgetConfig], keys: Mapping[str, str], now: datetime, tz: ZoneInfo
) -> list[Target]:
    """Return a target for every budget that applies to a call with these scope keys.

    A budget applies when the call has a key for the budget's scope kind and either the budget
    names no key (then each key gets its own row: a per-user budget) or names that key
    (``budget_keys.key_matches``: a bare Slack user id names that user in any team).
    ``global`` budgets always apply (their only key is ``*``).
    """
    targets = []
    for budget in budgets:
        if budget.scope == "global":
            scope_key = "*"
        else:
            found = keys.get(budget.scope)
            wanted = budget.key
            if wanted is not None and budget.scope == "model":
                wanted = model_family(wanted)  # the call's model key is a family too
            if found is None or (wanted is not None and not key_matches(budget.scope, wanted, found)):
                continue
            scope_key = found
        start, end = period_bounds(budget.period, now, tz)
        targets.append(Target(budget, scope_key, start, end))
    return targets


def budget_label(name: str, scope: str, scope_key: str) -> str:
    """A budget's name as users see it, with the scope key when it is not the global one."""
    return name if scope == "global" else f"{name} ({scope} {scope_key})"
