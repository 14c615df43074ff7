"""The alerts outbox: threshold alerts written in the settling transaction, delivered later.

A row per (budget, scope, scope key, period, period start, threshold), made unique in the schema,
so replicas that cross the same threshold at once still create one alert. Delivery (Slack, logs)
reads ``pending_alerts`` and marks each one delivered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.core.config import BudgetConfig
from bot.core.ledger.database import Database
from bot.core.ledger.models import Alert
from bot.core.ledger.periods import TOTAL_PERIOD_START
from bot.core.ledger.schema import alerts, from_nanos

__all__ = [
    "alert_values",
    "alerts_by_id",
    "insert_alerts",
    "mark_alert_delivered",
    "mark_alert_failed",
    "pending_alerts",
    "row_to_alert",
]


def row_to_alert(row: Any) -> Alert:
    """Build an ``Alert`` from an alerts row."""
    start = row.period_start
    return Alert(
        id=int(row.id),
        budget=row.budget,
        scope=row.scope,
        scope_key=row.scope_key,
        period=row.period,
        period_start=None if start == TOTAL_PERIOD_START else start,
        threshold=float(row.threshold),
        kind=row.kind,
        fraction=float(row.fraction),
        spent=from_nanos(row.spent_nano_usd),
        limit=from_nanos(row.limit_nano_usd),
        channel=row.channel,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        attempts=int(row.attempts),
        last_error=row.last_error,
        projected=None if row.projected_nano_usd is None else from_nanos(row.projected_nano_usd),
        next_attempt_at=row.next_attempt_at,
    )


@lru_cache(maxsize=64)
def _exact(threshold: float) -> Decimal:
    """The threshold as written: Decimal(str(0.8)) is 0.8, the float itself is not."""
    return Decimal(str(threshold))


def alert_values(
    rows: Sequence[Any], budgets: Mapping[str, BudgetConfig], created_at: Any
) -> list[dict[str, Any]]:
    """The alerts rows for every threshold each charged budget row has reached (not yet inserted).

    "Reached" rather than "crossed by this charge": the unique key makes repeats no-ops, and a
    threshold passed only because an admin lowered the limit still gets its alert. Pure: the SQLite
    hot path (``sqlite_fast``) calls it in the database thread, with ``created_at`` as stored.
    """
    values = []
    for row in rows:
        budget = budgets.get(row.budget)
        spent, limit = int(row.spent_nano_usd), int(row.limit_nano_usd)
        if budget is None or limit <= 0:
            continue  # a budget removed from config keeps its rows but sends no more alerts
        for threshold in budget.alert_thresholds:
            if spent >= _exact(threshold) * limit:
                values.append(
                    {
                        "budget": row.budget,
                        "scope": row.scope,
                        "scope_key": row.scope_key,
                        "period": row.period,
                        "period_start": row.period_start,
                        "threshold": threshold,
                        "kind": "threshold",
                        "fraction": spent / limit,
                        "spent_nano_usd": spent,
                        "limit_nano_usd": limit,
                        "channel": budget.channel,
                        "created_at": created_at,
                        "attempts": 0,
                    }
                )
    return values


async def insert_alerts(
    conn: AsyncConnection,
    db: Database,
    rows: Sequence[sa.Row[Any]],
    budgets: Mapping[str, BudgetConfig],
    now: datetime,
) -> list[Alert]:
    """Queue an alert for every threshold each budget row has reached; return the ones created now."""
    values = alert_values(rows, budgets, now)
    if not values:
        return []
    conflict = ["budget", "scope", "scope_key", "period", "period_start", "threshold"]
    result = await conn.execute(db.insert_ignore(alerts, conflict).values(values).returning(*alerts.c))
    return sorted((row_to_alert(r) for r in result), key=lambda a: a.id)


async def alerts_by_id(db: Database, ids: Sequence[int]) -> list[Alert]:
    """The alerts with these ids, by id (used after the hot path committed them)."""
    if not ids:
        return []
    async with db.read() as conn:
        rows = await conn.execute(sa.select(alerts).where(alerts.c.id.in_(list(ids))).order_by(alerts.c.id))
        return [row_to_alert(r) for r in rows]


async def pending_alerts(db: Database, limit: int) -> list[Alert]:
    """Undelivered alerts, oldest first, at most ``limit``."""
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(alerts).where(alerts.c.delivered_at.is_(None)).order_by(alerts.c.id).limit(limit)
        )
        return [row_to_alert(r) for r in rows]


async def mark_alert_delivered(db: Database, alert_id: int, now: datetime) -> bool:
    """Set ``delivered_at``; False when it was already set or the alert does not exist."""
    async with db.write() as conn:
        result = await conn.execute(
            sa.update(alerts)
            .where(alerts.c.id == alert_id, alerts.c.delivered_at.is_(None))
            .values(delivered_at=now, attempts=alerts.c.attempts + 1)
        )
        return result.rowcount == 1


async def mark_alert_failed(db: Database, alert_id: int) -> None:
    """Count one failed delivery attempt."""
    async with db.write() as conn:
        await conn.execute(
            sa.update(alerts)
            .where(alerts.c.id == alert_id, alerts.c.delivered_at.is_(None))
            .values(attempts=alerts.c.attempts + 1)
        )
