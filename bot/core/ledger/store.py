"""Statements the ledger's write transactions are made of; each runs on a connection in a transaction.

Lock order on PostgreSQL (why replicas never deadlock): a transaction touches ``budget_periods``
rows only in ascending id order, and takes any hold row before any budget row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.core.config import BudgetConfig
from bot.core.ledger.database import Database
from bot.core.ledger.models import Alert
from bot.core.ledger.periods import TOTAL_PERIOD_START, Target
from bot.core.ledger.schema import (
    alerts,
    budget_overrides,
    budget_periods,
    calls,
    from_nanos,
    hold_items,
    holds,
    to_nanos,
)
from bot.core.types import CallRecord

__all__ = [
    "PeriodKey",
    "charge_rows",
    "claim_hold",
    "effective_limits",
    "ensure_periods",
    "insert_alerts",
    "insert_call",
    "load_overrides",
    "pick_limit",
    "row_to_alert",
]

#: (budget, scope, scope_key, period, period_start): the unique key of a budget_periods row.
PeriodKey = tuple[str, str, str, str, datetime]

_bp = budget_periods.c


async def load_overrides(conn: AsyncConnection, names: Iterable[str]) -> dict[tuple[str, str], int]:
    """Return ``{(budget, scope_key): limit in nano-dollars}`` of the admins' overrides of these budgets."""
    rows = await conn.execute(
        sa.select(
            budget_overrides.c.budget, budget_overrides.c.scope_key, budget_overrides.c.limit_nano_usd
        ).where(budget_overrides.c.budget.in_(sorted(set(names))))
    )
    return {(r.budget, r.scope_key): int(r.limit_nano_usd) for r in rows}


def pick_limit(overrides: Mapping[tuple[str, str], int], budget: BudgetConfig, scope_key: str) -> int:
    """The limit in force: an override for this key, else one for every key (``*``), else config."""
    limit = overrides.get((budget.name, scope_key), overrides.get((budget.name, "*")))
    return to_nanos(budget.limit_usd) if limit is None else limit


async def effective_limits(conn: AsyncConnection, targets: Sequence[Target]) -> dict[PeriodKey, int]:
    """Return each target's limit in force, in nano-dollars (see ``pick_limit``)."""
    if not targets:
        return {}
    overrides = await load_overrides(conn, (t.budget.name for t in targets))
    return {t.key: pick_limit(overrides, t.budget, t.scope_key) for t in targets}


def _key_filter(keys: Iterable[PeriodKey]) -> sa.ColumnElement[bool]:
    return sa.or_(
        *(
            sa.and_(
                _bp.budget == b,
                _bp.scope == s,
                _bp.scope_key == k,
                _bp.period == p,
                _bp.period_start == start,
            )
            for b, s, k, p, start in keys
        )
    )


async def _find_periods(conn: AsyncConnection, keys: Sequence[PeriodKey]) -> dict[PeriodKey, int]:
    rows = await conn.execute(
        sa.select(_bp.id, _bp.budget, _bp.scope, _bp.scope_key, _bp.period, _bp.period_start).where(
            _key_filter(keys)
        )
    )
    return {(r.budget, r.scope, r.scope_key, r.period, r.period_start): int(r.id) for r in rows}


async def ensure_periods(
    conn: AsyncConnection,
    db: Database,
    targets: Sequence[Target],
    limits: Mapping[PeriodKey, int],
    now: datetime,
    known: Mapping[PeriodKey, int],
) -> dict[PeriodKey, int]:
    """Return the row id of every target's period, creating missing rows (clean: nothing spent).

    ``known`` holds ids found earlier (rows are never deleted, so ids stay valid). A new period or a
    budget added to config gets a fresh row here on first use: it never inherits older spend.
    """
    ids = {t.key: known[t.key] for t in targets if t.key in known}
    missing = [t for t in targets if t.key not in ids]
    if not missing:
        return ids
    ids.update(await _find_periods(conn, [t.key for t in missing]))
    to_create = [t for t in missing if t.key not in ids]
    if to_create:
        # ON CONFLICT DO NOTHING: a concurrent replica may create the same row first; we then find it.
        await conn.execute(
            db.insert_ignore(
                budget_periods, ["budget", "scope", "scope_key", "period", "period_start"]
            ).values(
                [
                    {
                        "budget": t.budget.name,
                        "scope": t.budget.scope,
                        "scope_key": t.scope_key,
                        "period": t.budget.period,
                        "period_start": t.period_start,
                        "period_end": t.period_end,
                        "limit_nano_usd": limits[t.key],
                        "spent_nano_usd": 0,
                        "reserved_nano_usd": 0,
                        "created_at": now,
                    }
                    for t in to_create
                ]
            )
        )
        ids.update(await _find_periods(conn, [t.key for t in to_create]))
    return ids


async def insert_call(conn: AsyncConnection, db: Database, record: CallRecord) -> bool:
    """Insert the calls row; False when ``request_id`` is already recorded (then nothing changes)."""
    p, u = record.principal, record.usage
    created = record.created_at
    if created.tzinfo is None:
        raise ValueError("CallRecord.created_at must be timezone-aware")
    stmt = (
        db.insert_ignore(calls, ["request_id"])
        .values(
            request_id=record.request_id,
            created_at=created,
            surface=p.surface,
            principal=p.label,
            team_id=p.team_id,
            user_id=p.user_id,
            channel_id=p.channel_id,
            client_id=p.client_id,
            provider=record.provider,
            model=record.model,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens,
            cache_write_tokens=u.cache_write_tokens,
            reasoning_tokens=u.reasoning_tokens,
            cost_nano_usd=to_nanos(record.cost_usd, what="cost_usd"),
            cost_estimated=record.cost_estimated,
            latency_ms=float(record.latency_ms),
            outcome=record.outcome,
            error_code=record.error_code,
        )
        .returning(calls.c.id)
    )
    return (await conn.execute(stmt)).scalar_one_or_none() is not None


async def claim_hold(conn: AsyncConnection, hold_id: str) -> tuple[int, list[int]] | None:
    """Delete a live hold and its items; return (amount, budget row ids), or None if already gone.

    Deleting the hold row first is the claim: of settle, release and the sweeper racing on one
    hold, exactly one deletes it, and only that one gives the reservation back.
    """
    amount = (
        await conn.execute(sa.delete(holds).where(holds.c.id == hold_id).returning(holds.c.amount_nano_usd))
    ).scalar_one_or_none()
    if amount is None:
        return None
    ids = (
        await conn.execute(
            sa.delete(hold_items)
            .where(hold_items.c.hold_id == hold_id)
            .returning(hold_items.c.budget_period_id)
        )
    ).scalars()
    return int(amount), sorted(int(i) for i in ids)


async def charge_rows(
    conn: AsyncConnection, row_ids: Iterable[int], *, unreserve: Mapping[int, int], spend: int
) -> list[sa.Row[Any]]:
    """Take ``unreserve[id]`` off each row's reserved and add ``spend`` to its spent, in id order.

    No limit check: this is money already spent (a settled call may cost more than its hold).
    Reserved is clamped at zero so that a bug can never turn into extra room in the budget.
    """
    updated = []
    for row_id in sorted(set(row_ids)):
        give_back = unreserve.get(row_id, 0)
        if give_back == 0 and spend == 0:
            continue
        result = await conn.execute(
            sa.update(budget_periods)
            .where(_bp.id == row_id)
            .values(
                reserved_nano_usd=sa.case(
                    (_bp.reserved_nano_usd > give_back, _bp.reserved_nano_usd - give_back), else_=0
                ),
                spent_nano_usd=_bp.spent_nano_usd + spend,
            )
            .returning(
                _bp.id,
                _bp.budget,
                _bp.scope,
                _bp.scope_key,
                _bp.period,
                _bp.period_start,
                _bp.spent_nano_usd,
                _bp.limit_nano_usd,
            )
        )
        row = result.one_or_none()
        if row is not None:
            updated.append(row)
    return updated


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
    )


async def insert_alerts(
    conn: AsyncConnection,
    db: Database,
    rows: Sequence[sa.Row[Any]],
    budgets: Mapping[str, BudgetConfig],
    now: datetime,
) -> list[Alert]:
    """Queue an alert for every threshold each budget row has reached; return the ones created now.

    "Reached" rather than "crossed by this charge": the unique key makes repeats no-ops, and a
    threshold passed only because an admin lowered the limit still gets its alert.
    """
    values = []
    for row in rows:
        budget = budgets.get(row.budget)
        spent, limit = int(row.spent_nano_usd), int(row.limit_nano_usd)
        if budget is None or limit <= 0:
            continue  # a budget removed from config keeps its rows but sends no more alerts
        for threshold in budget.alert_thresholds:
            # Exact comparison: Decimal(str(0.8)) is 0.8, the float itself is not.
            if spent >= Decimal(str(threshold)) * limit:
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
                        "created_at": now,
                        "attempts": 0,
                    }
                )
    if not values:
        return []
    conflict = ["budget", "scope", "scope_key", "period", "period_start", "threshold"]
    result = await conn.execute(db.insert_ignore(alerts, conflict).values(values).returning(*alerts.c))
    return sorted((row_to_alert(r) for r in result), key=lambda a: a.id)
