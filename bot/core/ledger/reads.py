"""The ledger's read side: where budgets stand, and spend by model, user, day and surface.

A base of ``Ledger`` (``ledger.py`` holds the writes); every query is one of ``queries.py``.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.core.config import BudgetConfig
from bot.core.ledger import queries
from bot.core.ledger.call_log import CallEntry, recent_calls
from bot.core.ledger.database import Database
from bot.core.ledger.models import BudgetStatus, SpendRow, Totals
from bot.core.ledger.periods import Target, applicable_budgets, call_scope_keys
from bot.core.types import Principal

__all__ = ["LedgerReads"]


class LedgerReads:
    """The queries of a ledger (its database, budgets, zone and clock are the ``Ledger``'s)."""

    _db: Database
    _budgets: tuple[BudgetConfig, ...]
    _tz: ZoneInfo

    def _now(self) -> datetime:
        raise NotImplementedError  # pragma: no cover - the Ledger's clock

    def _targets(
        self, principal: Principal, model: str | None, provider: str | None, now: datetime
    ) -> list[Target]:
        keys = call_scope_keys(principal, model=model, provider=provider)
        return applicable_budgets(self._budgets, keys, now, self._tz)

    async def status(
        self, principal: Principal, *, model: str | None = None, provider: str | None = None
    ) -> list[BudgetStatus]:
        """Where every budget that applies to this principal (and model/provider) stands now."""
        now = self._now()
        targets = self._targets(principal, model, provider, now)
        return await queries.status(self._db, targets, now)

    async def status_all(self) -> list[BudgetStatus]:
        """Every budget row of the current periods (one per scope key of a per-key budget)."""
        now = self._now()
        return await queries.status_all(self._db, self._budgets, now, self._tz)

    async def spend_by_model(self, start: datetime, end: datetime) -> list[SpendRow]:
        """Spend per (provider, model) of calls created in ``[start, end)``, largest first."""
        return await queries.spend_by_model(self._db, start, end)

    async def spend_by_user(self, start: datetime, end: datetime) -> list[SpendRow]:
        """Spend per user (``team:user`` key, as in budgets) of calls in ``[start, end)``, largest first."""
        return await queries.spend_by_user(self._db, start, end)

    async def spend_by_day(self, start: datetime, end: datetime) -> list[SpendRow]:
        """Spend per local day (ISO date in the configured zone) of calls in ``[start, end)``."""
        return await queries.spend_by_day(self._db, start, end, self._tz)

    async def spend_by_surface(self, start: datetime, end: datetime) -> list[SpendRow]:
        """Spend per surface (cli, slack, mcp…) of calls in ``[start, end)``, largest first."""
        return await queries.spend_by_surface(self._db, start, end)

    async def totals(self, start: datetime | None = None, end: datetime | None = None) -> Totals:
        """Cost, calls and tokens in ``[start, end)`` (all time by default), also by outcome."""
        return await queries.totals(self._db, start, end)

    async def recent_calls(
        self,
        *,
        since: datetime | None = None,
        caller: str | None = None,
        limit: int = 50,
        of: Principal | None = None,
    ) -> list[CallEntry]:
        """The most recent calls, newest first: at or after ``since``, of ``caller`` (a user key,
        a bare Slack user id, a CLI user's or an MCP client's name) and of principal ``of`` when given."""
        return await recent_calls(self._db, since=since, caller=caller, limit=limit, of=of)
