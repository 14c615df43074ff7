"""Alerts as values: threshold alerts are written in the settling transaction
(``transactions.queue_alerts``), delivered later through the outbox (``outbox.py``).

A row per (budget, scope, scope key, period, period start, threshold), made unique in the schema,
so replicas that cross the same threshold at once still create one alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from bot.core.ledger.database import Database
from bot.core.ledger.models import Alert
from bot.core.ledger.periods import TOTAL_PERIOD_START
from bot.core.ledger.schema import alerts, from_nanos

__all__ = ["alerts_by_id", "row_to_alert"]


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


async def alerts_by_id(db: Database, ids: Sequence[int]) -> list[Alert]:
    """The alerts with these ids, by id (a settle's, once committed)."""
    if not ids:
        return []
    async with db.read() as conn:
        rows = await conn.execute(sa.select(alerts).where(alerts.c.id.in_(list(ids))).order_by(alerts.c.id))
        return [row_to_alert(r) for r in rows]
