"""Read-side queries for the faces (budget status, spend reports) and the admins' limit overrides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bot.core.config import BudgetConfig
from bot.core.ledger import money
from bot.core.ledger.call_log import who
from bot.core.ledger.database import Database
from bot.core.ledger.models import BudgetStatus, Override, SpendRow, Totals
from bot.core.ledger.overrides import load_override_rows
from bot.core.ledger.periods import Target, period_bounds
from bot.core.ledger.schema import (
    UTCDateTime,
    budget_periods,
    calls,
    from_nanos,
    hold_items,
    holds,
)

__all__ = [
    "spend_by_day",
    "spend_by_model",
    "spend_by_surface",
    "spend_by_user",
    "status",
    "status_all",
    "totals",
]

_bp = budget_periods.c
_c = calls.c
#: Width of the UTC buckets spend_by_day sums in SQL before assigning them to local days: every
#: real zone offset and DST transition falls on a quarter hour.
_BUCKET_SECONDS = 900


def _budget_status(
    budget: BudgetConfig,
    scope_key: str,
    start: datetime,
    end: datetime | None,
    limit: int,
    spent: int,
    reserved: int,
    now: datetime,
    override: Override | None = None,
) -> BudgetStatus:
    projected = None
    if end is not None:
        # Linear projection in integer microseconds and nano-dollars: exact, no float.
        elapsed = max((now - start) // timedelta(microseconds=1), 1)
        length = (end - start) // timedelta(microseconds=1)
        projected = from_nanos(spent * length // elapsed if elapsed < length else spent)
    return BudgetStatus(
        name=budget.name,
        scope=budget.scope,
        scope_key=scope_key,
        period=budget.period,
        limit=from_nanos(limit),
        spent=from_nanos(spent),
        reserved=from_nanos(reserved),
        remaining=from_nanos(money.remaining(spent, reserved, limit)),
        fraction_used=spent / limit if limit else 1.0,
        period_start=None if end is None else start,
        resets_at=end,
        projected_spend=projected,
        channel=budget.channel,
        override=override,
        config_limit=budget.limit_usd,
    )


#: Admin overrides of budget limits: ``{(budget, scope_key): Override}``.
Overrides = dict[tuple[str, str], Override]


def override_of(overrides: Overrides, budget: BudgetConfig, scope_key: str) -> Override | None:
    """The override in force on a budget row (its key's, else every key's), as ``money.limit_in_force``
    picks it; None when the config file's limit is in force."""
    return overrides.get((budget.name, scope_key)) or overrides.get((budget.name, "*"))


def limit_of(overrides: Overrides, budget: BudgetConfig, scope_key: str) -> int:
    """A budget row's limit in force (``money.limit_in_force``) from the loaded overrides."""

    def nanos(o: Override | None) -> int | None:
        return None if o is None else money.to_nanos(o.limit)

    return money.limit_in_force(
        nanos(overrides.get((budget.name, scope_key))),
        nanos(overrides.get((budget.name, "*"))),
        money.to_nanos(budget.limit_usd),
    )


_EXPIRED_BY_ROW = (
    sa.select(hold_items.c.budget_period_id, sa.func.sum(holds.c.amount_nano_usd))
    .join(holds, holds.c.id == hold_items.c.hold_id)
    .where(holds.c.expires_at <= sa.bindparam("p_now", type_=UTCDateTime()))
    .group_by(hold_items.c.budget_period_id)
)


async def _expired_by_row(conn: Any, now: datetime) -> dict[int, int]:
    """Per budget row, the money of its holds that have expired (a dead process's): shown as
    spent, as the sweeper will charge them (``transactions.sweep``), even before it runs."""
    return {int(r[0]): int(r[1]) for r in await conn.execute(_EXPIRED_BY_ROW, {"p_now": now})}


def _as_swept(spent: int, reserved: int, expired: int) -> tuple[int, int]:
    """A row's (spent, reserved) once its expired holds are swept: charged, reserved no longer."""
    expired = min(expired, reserved)
    return spent + expired, reserved - expired


async def status(db: Database, targets: Sequence[Target], now: datetime) -> list[BudgetStatus]:
    """Status of each target; a period with no row yet shows as untouched (read-only: no row made)."""
    if not targets:
        return []
    async with db.read() as conn:
        overrides = await load_override_rows(conn)
        expired = await _expired_by_row(conn, now)
        rows = await conn.execute(
            sa.select(
                _bp.id, _bp.budget, _bp.scope, _bp.scope_key, _bp.period, _bp.period_start,
                _bp.spent_nano_usd, _bp.reserved_nano_usd,
            ).where(sa.or_(*(_target_filter(t) for t in targets)))
        )  # fmt: skip
        found = {(r.budget, r.scope, r.scope_key, r.period, r.period_start): r for r in rows}
    result = []
    for t in targets:
        row = found.get(t.key)
        spent, reserved = (0, 0)
        if row is not None:
            spent, reserved = _as_swept(
                int(row.spent_nano_usd), int(row.reserved_nano_usd), expired.get(int(row.id), 0)
            )
        result.append(
            _budget_status(
                t.budget,
                t.scope_key,
                t.period_start,
                t.period_end,
                limit_of(overrides, t.budget, t.scope_key),
                spent,
                reserved,
                now,
                override_of(overrides, t.budget, t.scope_key),
            )
        )
    return result


def _target_filter(t: Target) -> sa.ColumnElement[bool]:
    return sa.and_(
        _bp.budget == t.budget.name,
        _bp.scope == t.budget.scope,
        _bp.scope_key == t.scope_key,
        _bp.period == t.budget.period,
        _bp.period_start == t.period_start,
    )


async def status_all(
    db: Database, budgets: Sequence[BudgetConfig], now: datetime, tz: ZoneInfo
) -> list[BudgetStatus]:
    """Status of every budget row of the current periods, by budget name then scope key."""
    if not budgets:
        return []
    bounds = {b.name: period_bounds(b.period, now, tz) for b in budgets}
    current = sa.or_(
        *(
            sa.and_(
                _bp.budget == b.name,
                _bp.scope == b.scope,
                _bp.period == b.period,
                _bp.period_start == bounds[b.name][0],
            )
            for b in budgets
        )
    )
    by_name = {b.name: b for b in budgets}
    async with db.read() as conn:
        overrides = await load_override_rows(conn)
        expired = await _expired_by_row(conn, now)
        rows = (
            await conn.execute(sa.select(budget_periods).where(current).order_by(_bp.budget, _bp.scope_key))
        ).all()
    result = []
    for r in rows:
        budget = by_name[r.budget]
        start, end = bounds[r.budget]
        limit = limit_of(overrides, budget, r.scope_key)
        spent, reserved = _as_swept(
            int(r.spent_nano_usd), int(r.reserved_nano_usd), expired.get(int(r.id), 0)
        )
        override = override_of(overrides, budget, r.scope_key)
        result.append(_budget_status(budget, r.scope_key, start, end, limit, spent, reserved, now, override))
    return result


def _aggregates() -> list[sa.ColumnElement[Any]]:
    # A refused call was never made: it is counted apart, never as a call.
    refused = _c.outcome == "refused"
    return [
        sa.func.coalesce(sa.func.sum(sa.case((refused, 0), else_=1)), 0).label("calls"),
        sa.func.coalesce(sa.func.sum(sa.case((refused, 1), else_=0)), 0).label("refused"),
        *(
            sa.func.coalesce(sa.func.sum(col), 0).label(col.name)
            for col in (
                _c.cost_nano_usd,
                _c.input_tokens,
                _c.output_tokens,
                _c.cache_read_tokens,
                _c.cache_write_tokens,
                _c.reasoning_tokens,
            )
        ),
    ]


_SUMMED = (
    "calls",
    "refused",
    "cost_nano_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def _spend_row(key: str, row: Any, provider: str | None = None) -> SpendRow:
    return _make_row(key, {f: int(getattr(row, f)) for f in _SUMMED}, provider)


def _sum_rows(key: str, rows: Sequence[Any], kind: str | None = None) -> SpendRow:
    return _make_row(key, {f: sum(int(getattr(r, f)) for r in rows) for f in _SUMMED}, kind=kind)


def _make_row(key: str, v: dict[str, int], provider: str | None = None, kind: str | None = None) -> SpendRow:
    return SpendRow(
        key=key,
        calls=v["calls"],
        refused=v["refused"],
        kind=kind,
        cost_usd=from_nanos(v["cost_nano_usd"]),
        input_tokens=v["input_tokens"],
        output_tokens=v["output_tokens"],
        cache_read_tokens=v["cache_read_tokens"],
        cache_write_tokens=v["cache_write_tokens"],
        reasoning_tokens=v["reasoning_tokens"],
        provider=provider,
    )


def _in_range(start: datetime | None, end: datetime | None) -> list[sa.ColumnElement[bool]]:
    for bound in (start, end):
        if bound is not None and bound.tzinfo is None:
            raise ValueError("start and end must be timezone-aware datetimes")
    where = []
    if start is not None:
        where.append(_c.created_at >= start)
    if end is not None:
        where.append(_c.created_at < end)
    return where


async def _grouped(db: Database, keys: Sequence[sa.ColumnElement[Any]], where: Any) -> list[Any]:
    async with db.read() as conn:
        stmt = sa.select(*keys, *_aggregates()).where(*where).group_by(*keys)
        return list((await conn.execute(stmt)).all())


def _by_cost(rows: list[SpendRow]) -> list[SpendRow]:
    return sorted(rows, key=lambda r: (-r.cost_usd, r.key, r.provider or ""))


async def spend_by_model(db: Database, start: datetime, end: datetime) -> list[SpendRow]:
    """Spend per (provider, model) in ``[start, end)``, largest first."""
    rows = await _grouped(db, [_c.provider, _c.model], _in_range(start, end))
    return _by_cost([_spend_row(r.model, r, r.provider) for r in rows])


async def spend_by_surface(db: Database, start: datetime, end: datetime) -> list[SpendRow]:
    """Spend per surface (``cli``, ``slack``, ``mcp``…) in ``[start, end)``, largest first."""
    rows = await _grouped(db, [_c.surface], _in_range(start, end))
    return _by_cost([_spend_row(r.surface, r) for r in rows])


async def spend_by_user(db: Database, start: datetime, end: datetime) -> list[SpendRow]:
    """Spend per caller in ``[start, end)``, largest first: a person by the key budgets use
    (``team:user``, or a CLI user's name), else the MCP client by name (``call_log.who``)."""
    rows = await _grouped(db, [_c.team_id, _c.user_id, _c.client_id], _in_range(start, end))
    merged: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        merged.setdefault(who(r.team_id, r.user_id, r.client_id), []).append(r)
    return _by_cost([_sum_rows(key, group, kind) for (key, kind), group in merged.items()])


async def spend_by_day(db: Database, start: datetime, end: datetime, tz: ZoneInfo) -> list[SpendRow]:
    """Spend per local calendar day in ``tz`` (key: ISO date), oldest first.

    SQL sums quarter-hour UTC buckets (portable: SQLite has no time zones); Python assigns each
    bucket to its local day, which handles DST days of 23 or 25 hours.
    """
    bucket = db.epoch_seconds(_c.created_at).op("/")(_BUCKET_SECONDS).label("bucket")
    rows = await _grouped(db, [bucket], _in_range(start, end))
    days: dict[str, list[Any]] = {}
    for r in rows:
        instant = datetime.fromtimestamp(int(r.bucket) * _BUCKET_SECONDS, UTC)
        days.setdefault(instant.astimezone(tz).date().isoformat(), []).append(r)
    return [_sum_rows(day, group) for day, group in sorted(days.items())]


async def totals(db: Database, start: datetime | None, end: datetime | None) -> Totals:
    """Cost, calls and tokens in the range, overall and per outcome."""
    rows = await _grouped(db, [_c.outcome], _in_range(start, end))
    order = {"ok": 0, "refused": 1, "error": 2, "cancelled": 3, "interrupted": 4}
    rows.sort(key=lambda r: (order.get(r.outcome, 9), r.outcome))
    by_outcome = {r.outcome: _spend_row(r.outcome, r) for r in rows}
    if "refused" in by_outcome:  # the outcome's own row counts its rows: how many were refused
        by_outcome["refused"] = replace(by_outcome["refused"], calls=by_outcome["refused"].refused)
    return Totals(total=_sum_rows("total", rows), by_outcome=by_outcome)
