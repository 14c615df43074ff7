"""Delivering the alerts outbox safely from several replicas, and the alert kinds made by jobs.

Every delivery goes through ``Outbox.claim``: one UPDATE that leases undelivered, due rows to one
caller (``claimed_until``/``claimed_by``). On PostgreSQL the candidate rows are picked
``FOR UPDATE SKIP LOCKED``, so two replicas claiming at once get disjoint rows; SQLite serialises
writers (``BEGIN IMMEDIATE``). Only the lease holder can then mark a row delivered, failed (with
the time of its next attempt) or skipped. A replica that dies mid-send leaves a lease that
expires, after which another replica retries the row.

Job-made alert kinds share the outbox unique key through reserved threshold values, which never
collide with configured thresholds (those are in (0, 1]):

- ``forecast`` (threshold ``FORECAST_THRESHOLD``): spend projected to pass the limit, once per
  budget key and period;
- ``reset`` (threshold ``RESET_THRESHOLD``): a new period began for a budget key that had alerts in
  the previous one, once per period.

``job_runs`` makes a scheduled job (a report) run once per schedule slot across replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bot.core.config import BudgetConfig
from bot.core.ledger.alerts import row_to_alert
from bot.core.ledger.database import Database
from bot.core.ledger.models import Alert, BudgetStatus
from bot.core.ledger.periods import period_bounds
from bot.core.ledger.schema import alerts, budget_periods, job_runs, to_nanos

__all__ = ["FORECAST_THRESHOLD", "RESET_THRESHOLD", "Outbox"]

#: Threshold value stored for ``forecast`` alerts (configured thresholds are in (0, 1]).
FORECAST_THRESHOLD = 0.0
#: Threshold value stored for ``reset`` alerts.
RESET_THRESHOLD = -1.0
_ERROR_LEN = 255
_a = alerts.c
#: Returns the current aware UTC time (the ledger's clock).
Clock = Callable[[], datetime]
_CONFLICT = ["budget", "scope", "scope_key", "period", "period_start", "threshold"]


class Outbox:
    """The alerts outbox and job-run claims of one ledger (``ledger.outbox``)."""

    def __init__(self, db: Database, budgets: Mapping[str, BudgetConfig], tz: ZoneInfo, clock: Clock) -> None:
        """Bound to the ledger's database, budgets, time zone and clock."""
        self._db = db
        self._budgets = budgets
        self._tz = tz
        self._clock = clock

    def _due(self, now: datetime) -> list[sa.ColumnElement[bool]]:
        return [
            _a.delivered_at.is_(None),
            sa.or_(_a.claimed_until.is_(None), _a.claimed_until < now),
            sa.or_(_a.next_attempt_at.is_(None), _a.next_attempt_at <= now),
        ]

    async def claim(
        self, owner: str, *, lease: timedelta, limit: int, ids: Sequence[int] | None = None
    ) -> list[Alert]:
        """Lease up to ``limit`` due, undelivered alerts (only ``ids`` if given) to ``owner``."""
        now = self._clock()
        where = self._due(now)
        if ids is not None:
            if not ids:
                return []
            where.append(_a.id.in_(list(ids)))
        pick = sa.select(_a.id).where(*where).order_by(_a.id).limit(limit).with_for_update(skip_locked=True)
        # The conditions are repeated outside: PostgreSQL re-checks them on the newest row version.
        stmt = (
            sa.update(alerts)
            .where(_a.id.in_(pick), *where)
            .values(claimed_until=now + lease, claimed_by=owner)
            .returning(*alerts.c)
        )
        async with self._db.write() as conn:
            rows = (await conn.execute(stmt)).all()
        return sorted((row_to_alert(r) for r in rows), key=lambda a: a.id)

    async def _finish(self, alert_id: int, owner: str, **values: Any) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.update(alerts)
                .where(_a.id == alert_id, _a.claimed_by == owner, _a.delivered_at.is_(None))
                .values(claimed_until=None, **values)
            )
            return bool(result.rowcount == 1)

    async def delivered(self, alert_id: int, owner: str) -> bool:
        """Slack accepted the alert: mark it delivered (False if ``owner`` no longer holds it)."""
        now = self._clock()
        return await self._finish(
            alert_id, owner, delivered_at=now, attempts=_a.attempts + 1, last_error=None
        )

    async def failed(self, alert_id: int, owner: str, error: str, retry_at: datetime) -> bool:
        """Count a failed attempt, remember why, and make the alert due again at ``retry_at``."""
        return await self._finish(
            alert_id,
            owner,
            attempts=_a.attempts + 1,
            last_error=error[:_ERROR_LEN],
            next_attempt_at=retry_at,
        )

    async def skipped(self, alert_id: int, owner: str, reason: str) -> bool:
        """Close an alert that has nowhere to go (no channel): delivered, with ``reason`` kept."""
        now = self._clock()
        return await self._finish(alert_id, owner, delivered_at=now, last_error=reason[:_ERROR_LEN])

    async def gave_up(self, alert_id: int, owner: str, error: str) -> bool:
        """Close an alert whose delivery failed too often: out of the queue, the reason kept
        (``last_error`` starts with ``failed:``)."""
        now = self._clock()
        return await self._finish(
            alert_id,
            owner,
            delivered_at=now,
            attempts=_a.attempts + 1,
            last_error=f"failed: {error}"[:_ERROR_LEN],
        )

    async def _insert(self, values: list[dict[str, Any]]) -> list[Alert]:
        if not values:
            return []
        stmt = self._db.insert_ignore(alerts, _CONFLICT).values(values).returning(*alerts.c)
        async with self._db.write() as conn:
            rows = (await conn.execute(stmt)).all()
        return sorted((row_to_alert(r) for r in rows), key=lambda a: a.id)

    async def queue_forecasts(self, statuses: Sequence[BudgetStatus], min_elapsed: float) -> list[Alert]:
        """Queue a ``forecast`` alert for each status whose projected spend passes its limit.

        Only once ``min_elapsed`` of the period has gone by (a few cents in the first minutes of a
        month project to absurd sums), and not for a budget already exhausted (its 100% alert says
        more). Returns the alerts created now; the unique key makes a repeat a no-op.
        """
        now = self._clock()
        values = []
        for s in statuses:
            budget = self._budgets.get(s.name)
            if budget is None or s.projected_spend is None or s.period_start is None or s.resets_at is None:
                continue
            length = (s.resets_at - s.period_start).total_seconds()
            elapsed = (now - s.period_start).total_seconds()
            if length <= 0 or elapsed / length < min_elapsed:
                continue
            if s.limit <= 0 or s.spent >= s.limit or s.projected_spend <= s.limit:
                continue
            values.append(
                self._row(
                    s.name, s.scope, s.scope_key, s.period, s.period_start, FORECAST_THRESHOLD,
                    "forecast", s.spent, s.limit, budget.channel, now, projected=s.projected_spend,
                )
            )  # fmt: skip
        return await self._insert(values)

    async def queue_resets(self) -> list[Alert]:
        """Queue a ``reset`` alert for each budget key alerted in its previous period (once per period)."""
        now = self._clock()
        values = []
        async with self._db.read() as conn:
            for budget in self._budgets.values():
                if budget.period == "total":
                    continue
                start, _ = period_bounds(budget.period, now, self._tz)
                previous, _ = period_bounds(budget.period, start - timedelta(microseconds=1), self._tz)
                alerted = await conn.execute(
                    sa.select(_a.scope_key, sa.func.max(_a.limit_nano_usd).label("limit_nano_usd"))
                    .where(
                        _a.budget == budget.name,
                        _a.scope == budget.scope,
                        _a.period == budget.period,
                        _a.period_start == previous,
                        _a.kind == "threshold",
                    )
                    .group_by(_a.scope_key)
                )
                for row in alerted:
                    spent, limit = await _current(conn, budget, row.scope_key, start)
                    limit = limit or int(row.limit_nano_usd)
                    values.append(
                        self._row(
                            budget.name, budget.scope, row.scope_key, budget.period, start,
                            RESET_THRESHOLD, "reset", spent, limit, budget.channel, now,
                        )
                    )  # fmt: skip
        return await self._insert(values)

    @staticmethod
    def _row(
        budget: str,
        scope: str,
        scope_key: str,
        period: str,
        period_start: datetime,
        threshold: float,
        kind: str,
        spent: Decimal | int,
        limit: Decimal | int,
        channel: str | None,
        now: datetime,
        *,
        projected: Decimal | None = None,
    ) -> dict[str, Any]:
        spent_n = spent if isinstance(spent, int) else to_nanos(spent)
        limit_n = limit if isinstance(limit, int) else to_nanos(limit)
        return {
            "budget": budget,
            "scope": scope,
            "scope_key": scope_key,
            "period": period,
            "period_start": period_start,
            "threshold": threshold,
            "kind": kind,
            "fraction": spent_n / limit_n if limit_n else 0.0,
            "spent_nano_usd": spent_n,
            "limit_nano_usd": limit_n,
            "channel": channel,
            "created_at": now,
            "attempts": 0,
            "projected_nano_usd": None if projected is None else to_nanos(projected),
        }

    # -- job runs ------------------------------------------------------------------------------

    async def claim_run(self, name: str, run_key: str, owner: str) -> bool:
        """Claim one run of a scheduled job; False when another replica already has it."""
        stmt = (
            self._db.insert_ignore(job_runs, ["name", "run_key"])
            .values(name=name, run_key=run_key, claimed_by=owner, claimed_at=self._clock())
            .returning(job_runs.c.name)
        )
        async with self._db.write() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def finish_run(self, name: str, run_key: str) -> None:
        """Record that a claimed run completed."""
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(job_runs)
                .where(job_runs.c.name == name, job_runs.c.run_key == run_key)
                .values(finished_at=self._clock())
            )

    async def release_run(self, name: str, run_key: str) -> None:
        """Give a failed run back, so a later attempt (here or on another replica) can claim it."""
        async with self._db.write() as conn:
            await conn.execute(
                sa.delete(job_runs).where(
                    job_runs.c.name == name,
                    job_runs.c.run_key == run_key,
                    job_runs.c.finished_at.is_(None),
                )
            )


async def _current(conn: Any, budget: BudgetConfig, scope_key: str, start: datetime) -> tuple[int, int]:
    """Spent and limit of the budget key's current-period row, (0, 0) when it has none yet."""
    bp = budget_periods.c
    row = (
        await conn.execute(
            sa.select(bp.spent_nano_usd, bp.limit_nano_usd).where(
                bp.budget == budget.name,
                bp.scope == budget.scope,
                bp.scope_key == scope_key,
                bp.period == budget.period,
                bp.period_start == start,
            )
        )
    ).first()
    return (int(row.spent_nano_usd), int(row.limit_nano_usd)) if row else (0, 0)
