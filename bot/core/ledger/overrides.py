"""Admins' overrides of budget limits: set (with who and through which face), unset, listed.

An override wins over the config file's limit until it is unset (``money.limit_in_force``: the
override of a row's own key, else of every key, ``*``, else the config). Setting or unsetting one
writes the limit then in force into the budget's rows of the current period in the same
transaction, so the next reserve and every status read agree at once; a row whose spend the new
limit does not exceed gets its ``exhausted`` alert. ``LedgerOverrides`` is a base of ``Ledger``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bot.core.config import BudgetConfig
from bot.core.errors import ConfigurationError
from bot.core.ledger import money
from bot.core.ledger.database import Database
from bot.core.ledger.models import Override
from bot.core.ledger.periods import period_bounds
from bot.core.ledger.schema import budget_overrides, budget_periods, from_nanos
from bot.core.ledger.statements import Statements
from bot.core.ledger.transactions import Tx, queue_exhausted

__all__ = ["LedgerOverrides", "load_override_rows", "set_override", "unset_override"]

_bo = budget_overrides.c
_SELECT = sa.select(
    _bo.budget, _bo.scope_key, _bo.limit_nano_usd, _bo.updated_at, _bo.set_by, _bo.set_via
).order_by(_bo.budget, _bo.scope_key)


async def load_override_rows(conn: Any) -> dict[tuple[str, str], Override]:
    """Every override, ``{(budget, scope_key): Override}``, on an open read connection."""
    return {
        (r.budget, r.scope_key): Override(
            r.budget, r.scope_key, from_nanos(int(r.limit_nano_usd)), r.updated_at, r.set_by, r.set_via
        )
        for r in await conn.execute(_SELECT)
    }


def _apply_limits(s: Statements, budget: BudgetConfig, period_start: datetime, now: datetime) -> Tx[None]:
    """Write the limit in force into each of ``budget``'s rows of the period starting at
    ``period_start``; queue the ``exhausted`` alert of a row whose spend reaches it."""
    overrides, _ = yield s.overrides_of, {"p_budget": budget.name}
    limit_of = {key: int(value) for key, value in overrides}
    where = {
        "p_budget": budget.name,
        "p_scope": budget.scope,
        "p_period": budget.period,
        "p_start": period_start,
    }
    rows, _ = yield s.current_rows, where
    config_limit = money.to_nanos(budget.limit_usd)
    updates, exhausted = [], []
    for row_id, key, spent in rows:
        new_limit = money.limit_in_force(limit_of.get(key), limit_of.get("*"), config_limit)
        updates.append({"p_id": row_id, "p_limit": new_limit})
        if int(spent) >= new_limit:  # lowered to its spend or below: every call is refused now
            exhausted.append((row_id, int(spent) / new_limit))
    if updates:
        yield s.set_row_limit, updates
    for row_id, fraction in exhausted:
        yield from queue_exhausted(s, row_id, fraction, budget, now)


def set_override(
    s: Statements,
    budget: BudgetConfig,
    scope_key: str,
    limit: int,
    period_start: datetime,
    now: datetime,
    *,
    set_by: str | None = None,
    set_via: str | None = None,
) -> Tx[None]:
    """Store an admin's override of ``budget`` for ``scope_key`` (``*``: every key), with its
    source, and write the limits then in force into the current period's rows.

    For a budget that names its one key in config, ``*`` is that key: overrides of the key itself
    (which older versions wrote, and which would win over ``*``) are removed, so the limit set is
    the limit in force.
    """
    if scope_key == "*" and budget.key is not None:
        yield s.delete_key_overrides, {"p_budget": budget.name}
    params = {"p_budget": budget.name, "p_key": scope_key, "p_limit": limit, "p_now": now}
    yield s.upsert_override, {**params, "p_by": set_by, "p_via": set_via}
    yield from _apply_limits(s, budget, period_start, now)


def unset_override(
    s: Statements, budget: BudgetConfig, scope_key: str, period_start: datetime, now: datetime
) -> Tx[bool]:
    """Remove the override of ``budget`` for ``scope_key`` and write the limits then in force
    (another override's, else the config file's); False when there was none.

    For a budget that names its one key in config, ``*`` also removes overrides of that key
    (written by older versions), so nothing keeps overriding it.
    """
    _, removed = yield s.delete_override, {"p_budget": budget.name, "p_key": scope_key}
    if scope_key == "*" and budget.key is not None:
        _, legacy = yield s.delete_key_overrides, {"p_budget": budget.name}
        removed += legacy
    if not removed:
        return False
    yield from _apply_limits(s, budget, period_start, now)
    return True


_KNOWN_KEYS = (
    sa.select(budget_periods.c.scope_key)
    .where(budget_periods.c.budget == sa.bindparam("p_budget"))
    .group_by(budget_periods.c.scope_key)
    .order_by(sa.func.max(budget_periods.c.id).desc())
    .limit(sa.bindparam("p_limit"))
)


class LedgerOverrides:
    """Overrides of a ledger (its database, statements, budgets, zone and clock are the ``Ledger``'s)."""

    _db: Database
    _s: Statements
    _by_name: Mapping[str, BudgetConfig]
    _tz: ZoneInfo

    def _now(self) -> datetime:
        raise NotImplementedError  # pragma: no cover - the Ledger's clock

    def _budget(self, name: str) -> BudgetConfig:
        budget = self._by_name.get(name)
        if budget is None:
            raise ConfigurationError(
                f"unknown budget '{name}'",
                hint=f"Known budgets: {', '.join(sorted(self._by_name)) or '(none)'}.",
            )
        return budget

    async def set_budget_limit(
        self,
        name: str,
        scope_key: str | None,
        limit: Decimal,
        *,
        set_by: str | None = None,
        set_via: str | None = None,
    ) -> None:
        """Override a budget's limit persistently (wins over config) and apply it to the current period.

        ``scope_key`` picks one key of a per-key budget (e.g. one user); None overrides every key.
        The key is stored as given: ``Gateway.set_budget_limit`` checks and normalises it first.
        """
        budget = self._budget(name)
        nanos = money.to_nanos(limit, what="limit")
        if nanos == 0:
            raise ValueError("a budget limit must be greater than zero")
        key = "*" if scope_key is None or budget.scope == "global" else scope_key
        now = self._now()
        start, _ = period_bounds(budget.period, now, self._tz)
        tx = partial(set_override, self._s, budget, key, nanos, start, now, set_by=set_by, set_via=set_via)
        await self._db.writer.run(tx)

    async def unset_budget_limit(self, name: str, scope_key: str | None) -> bool:
        """Remove an override (``scope_key`` None: the one of every key); False when there was none."""
        budget = self._budget(name)
        key = "*" if scope_key is None or budget.scope == "global" else scope_key
        now = self._now()
        start, _ = period_bounds(budget.period, now, self._tz)
        return bool(await self._db.writer.run(partial(unset_override, self._s, budget, key, start, now)))

    async def overrides(self) -> list[Override]:
        """Every override in the ledger (of configured budgets or not), by budget then key."""
        async with self._db.read() as conn:
            return list((await load_override_rows(conn)).values())

    async def known_keys(self, name: str, limit: int = 20) -> list[str]:
        """The scope keys budget ``name`` has rows for, most recently created first."""
        async with self._db.read() as conn:
            rows = await conn.execute(_KNOWN_KEYS, {"p_budget": name, "p_limit": limit})
            return [r.scope_key for r in rows]
