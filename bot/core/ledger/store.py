"""Statements the ledger's write transactions are made of; each runs on a connection in a transaction.

Lock order on PostgreSQL (why replicas never deadlock): every transaction updates
``budget_periods`` rows in ``lock_order`` (one fixed total order), and deletes a hold row before
touching any budget row.

The statements on the hot path are built once with bind parameters: building and hashing a
SQLAlchemy statement costs more CPU than the database spends running it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.core.config import BudgetConfig
from bot.core.ledger import pg_fast
from bot.core.ledger.database import Database
from bot.core.ledger.periods import Target
from bot.core.ledger.schema import (
    UTCDateTime,
    budget_overrides,
    budget_periods,
    calls,
    hold_items,
    holds,
    request_keys,
    to_nanos,
)
from bot.core.types import CallRecord

__all__ = [
    "PeriodKey",
    "call_params",
    "charge_rows",
    "claim_hold",
    "effective_limits",
    "ensure_periods",
    "expired_hold_exists",
    "insert_call",
    "insert_hold",
    "insert_request_key",
    "load_overrides",
    "lock_order",
    "pick_limit",
    "record_and_claim",
    "reserve_row",
    "sweep_batch",
]

#: (budget, scope, scope_key, period, period_start): the unique key of a budget_periods row.
PeriodKey = tuple[str, str, str, str, datetime]

_bp = budget_periods.c
_bind = sa.bindparam  # names start with p_: SQLAlchemy reserves column names in UPDATE … SET

_SELECT_OVERRIDES = sa.select(
    budget_overrides.c.budget, budget_overrides.c.scope_key, budget_overrides.c.limit_nano_usd
).where(budget_overrides.c.budget.in_(_bind("p_names", expanding=True)))

_bo = budget_overrides.c


def _override(scope_key: sa.ColumnElement[str] | str) -> sa.ScalarSelect[Any]:
    return (
        sa.select(_bo.limit_nano_usd)
        .where(_bo.budget == _bp.budget, _bo.scope_key == scope_key)
        .scalar_subquery()
    )


# The limit in force (as pick_limit: the row's key, then "*", then config as p_limit), read in
# the UPDATE itself: one round trip less than reading the overrides first, and just as current.
_LIMIT_IN_FORCE = sa.func.coalesce(
    _override(_bp.scope_key), _override("*"), _bind("p_limit", type_=sa.BigInteger)
)

# The check and the hold in one statement. On PostgreSQL the row lock makes a concurrent reserver
# wait, then re-evaluate the WHERE against our committed result; on SQLite we are the only writer.
# The limit is written too, so a limit changed in config or by an admin applies to this period.
_RESERVE_ROW = (
    sa.update(budget_periods)
    .where(
        _bp.id == _bind("p_id"),
        _bp.spent_nano_usd + _bp.reserved_nano_usd + _bind("p_amount") <= _LIMIT_IN_FORCE,
    )
    .values(reserved_nano_usd=_bp.reserved_nano_usd + _bind("p_amount"), limit_nano_usd=_LIMIT_IN_FORCE)
)
_SELECT_ROW_MONEY = sa.select(_bp.spent_nano_usd, _bp.reserved_nano_usd).where(_bp.id == _bind("p_id"))

# Reserved is clamped at zero so that a bug can never turn into extra room in the budget.
_CHARGE_ROW = (
    sa.update(budget_periods)
    .where(_bp.id == _bind("p_id"))
    .values(
        reserved_nano_usd=sa.case(
            (_bp.reserved_nano_usd > _bind("p_give_back"), _bp.reserved_nano_usd - _bind("p_give_back")),
            else_=0,
        ),
        spent_nano_usd=_bp.spent_nano_usd + _bind("p_spend"),
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
_DELETE_HOLD = sa.delete(holds).where(holds.c.id == _bind("p_id")).returning(holds.c.amount_nano_usd)
_DELETE_HOLD_ITEMS = (
    sa.delete(hold_items)
    .where(hold_items.c.hold_id == _bind("p_id"))
    .returning(hold_items.c.budget_period_id)
)
_EXPIRED_HOLD = (
    sa.select(holds.c.id).where(holds.c.expires_at <= _bind("p_now", type_=UTCDateTime())).limit(1)
)


def lock_order(row_ids: Iterable[int]) -> list[int]:
    """The one order in which any transaction updates budget rows: descending id.

    Any fixed total order rules out deadlocks between replicas. Descending id puts the oldest rows
    last, and those are the most shared (the global budget's row is created by the first call of a
    period, a new user's row later): the hottest row is then locked only from its UPDATE to COMMIT.
    """
    return sorted(set(row_ids), reverse=True)


async def load_overrides(conn: AsyncConnection, names: Iterable[str]) -> dict[tuple[str, str], int]:
    """Return ``{(budget, scope_key): limit in nano-dollars}`` of the admins' overrides of these budgets."""
    rows = await conn.execute(_SELECT_OVERRIDES, {"p_names": sorted(set(names))})
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


@functools.cache
def _insert_call_statement(backend: str) -> sa.Insert:
    insert = sqlite.insert(calls) if backend == "sqlite" else postgresql.insert(calls)
    return insert.on_conflict_do_nothing(index_elements=["request_id"]).returning(calls.c.id)


def call_params(record: CallRecord) -> dict[str, Any]:
    """The calls row of ``record``, by column name (checks the record's timestamp is aware)."""
    p, u = record.principal, record.usage
    if record.created_at.tzinfo is None:
        raise ValueError("CallRecord.created_at must be timezone-aware")
    return {
        "request_id": record.request_id,
        "created_at": record.created_at,
        "surface": p.surface,
        "principal": p.label,
        "team_id": p.team_id,
        "user_id": p.user_id,
        "channel_id": p.channel_id,
        "client_id": p.client_id,
        "provider": record.provider,
        "model": record.model,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "cost_nano_usd": to_nanos(record.cost_usd, what="cost_usd"),
        "cost_estimated": record.cost_estimated,
        "latency_ms": float(record.latency_ms),
        "outcome": record.outcome,
        "error_code": record.error_code,
    }


async def insert_call(conn: AsyncConnection, db: Database, record: CallRecord) -> bool:
    """Insert the calls row; False when ``request_id`` is already recorded (then nothing changes)."""
    result = await conn.execute(_insert_call_statement(db.backend), call_params(record))
    return result.scalar_one_or_none() is not None


_INSERT_HOLD = holds.insert()
_INSERT_HOLD_ITEM = hold_items.insert()


async def insert_hold(
    conn: AsyncConnection, db: Database, hold: dict[str, Any], row_ids: Sequence[int]
) -> None:
    """Insert the hold row (``holds`` columns in ``hold``) and one item per budget row."""
    if not db.is_sqlite:
        await pg_fast.insert_hold(conn, hold, row_ids)  # one round trip instead of two
        return
    await conn.execute(_INSERT_HOLD, hold)
    if row_ids:
        await conn.execute(
            _INSERT_HOLD_ITEM, [{"hold_id": hold["id"], "budget_period_id": i} for i in row_ids]
        )


async def record_and_claim(
    conn: AsyncConnection, db: Database, record: CallRecord | None, hold_id: str
) -> tuple[bool, tuple[int, list[int]] | None]:
    """Insert ``record``'s calls row (if any), then ``claim_hold``; return (row is new, claim)."""
    if record is not None and not db.is_sqlite:
        return await pg_fast.record_and_claim(conn, call_params(record), hold_id)  # one round trip
    new_row = record is not None and await insert_call(conn, db, record)
    return new_row, await claim_hold(conn, hold_id)


async def reserve_row(
    conn: AsyncConnection, row_id: int, amount: int, config_limit: int
) -> tuple[int, int] | None:
    """Add ``amount`` to the row's reserved if it fits under the limit in force; else (spent, reserved).

    The limit in force is an admin's override of the row's budget (see ``pick_limit``), else
    ``config_limit``; it is also written to the row.
    """
    params = {"p_id": row_id, "p_amount": amount, "p_limit": config_limit}
    if (await conn.execute(_RESERVE_ROW, params)).rowcount == 1:
        return None
    row = (await conn.execute(_SELECT_ROW_MONEY, {"p_id": row_id})).one()
    return int(row.spent_nano_usd), int(row.reserved_nano_usd)


async def claim_hold(conn: AsyncConnection, hold_id: str) -> tuple[int, list[int]] | None:
    """Delete a live hold and its items; return (amount, budget row ids), or None if already gone.

    Deleting the hold row first is the claim: of settle, release and the sweeper racing on one
    hold, exactly one deletes it, and only that one gives the reservation back.
    """
    amount = (await conn.execute(_DELETE_HOLD, {"p_id": hold_id})).scalar_one_or_none()
    if amount is None:
        return None
    ids = (await conn.execute(_DELETE_HOLD_ITEMS, {"p_id": hold_id})).scalars()
    return int(amount), [int(i) for i in ids]


async def expired_hold_exists(conn: AsyncConnection, now: datetime) -> bool:
    """True if any hold expired at or before ``now``."""
    return (await conn.execute(_EXPIRED_HOLD, {"p_now": now})).first() is not None


async def charge_rows(
    conn: AsyncConnection, row_ids: Iterable[int], *, unreserve: Mapping[int, int], spend: int
) -> list[sa.Row[Any]]:
    """Take ``unreserve[id]`` off each row's reserved and add ``spend`` to its spent, in lock order.

    No limit check: this is money already spent (a settled call may cost more than its hold).
    """
    updated = []
    for row_id in lock_order(row_ids):
        give_back = unreserve.get(row_id, 0)
        if give_back == 0 and spend == 0:
            continue
        params = {"p_id": row_id, "p_give_back": give_back, "p_spend": spend}
        row = (await conn.execute(_CHARGE_ROW, params)).one_or_none()
        if row is not None:
            updated.append(row)
    return updated


_SWEEP_HOLDS = (
    sa.delete(holds)
    .where(
        holds.c.id.in_(
            sa.select(holds.c.id)
            .where(holds.c.expires_at <= _bind("p_now", type_=UTCDateTime()))
            .order_by(holds.c.id)
            .limit(_bind("p_batch"))
            .scalar_subquery()
        )
    )
    .returning(holds.c.id, holds.c.amount_nano_usd)
)
_SWEEP_ITEMS = (
    sa.delete(hold_items)
    .where(hold_items.c.hold_id.in_(_bind("p_ids", expanding=True)))
    .returning(hold_items.c.hold_id, hold_items.c.budget_period_id)
)


async def sweep_batch(conn: AsyncConnection, now: datetime, batch: int) -> int:
    """Release up to ``batch`` holds that expired at or before ``now``; return how many.

    Like ``claim_hold``, deleting the hold rows is the claim, so a settle racing the sweeper on one
    hold gives its reservation back exactly once.
    """
    claimed = (await conn.execute(_SWEEP_HOLDS, {"p_now": now, "p_batch": batch})).all()
    if not claimed:
        return 0
    amount_of = {r.id: int(r.amount_nano_usd) for r in claimed}
    give_back: dict[int, int] = {}
    for item in await conn.execute(_SWEEP_ITEMS, {"p_ids": list(amount_of)}):
        row_id = int(item.budget_period_id)
        give_back[row_id] = give_back.get(row_id, 0) + amount_of[item.hold_id]
    await charge_rows(conn, give_back, unreserve=give_back, spend=0)
    return len(claimed)


async def insert_request_key(conn: AsyncConnection, request_id: str, now: datetime) -> None:
    """Insert an idempotency key (the primary key makes a second insert fail, on any replica)."""
    await conn.execute(sa.insert(request_keys).values(request_id=request_id, created_at=now))
