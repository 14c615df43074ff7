"""The statements of the ledger's transactions, built once from ``schema.py`` with SQLAlchemy Core.

One ``Statements`` per dialect: ``INSERT … ON CONFLICT`` is dialect-specific, everything else is
the same construct on both. Each statement is built once and kept, so neither SQLAlchemy nor the
SQLite driver (which compiles each one once, ``drivers/sqlite.py``) rebuilds it per call. Bind
parameters are named ``p_*`` where SQLAlchemy would otherwise take a column's name.

A list of ids is bound as ``IN (:p_in_0, …)``: the list is padded to a power of two by repeating
its last id (``in_params``), which changes nothing in an ``IN`` and keeps the number of
distinct statements per list small. ``FOR NO KEY UPDATE`` locks budget rows in the one lock order
(descending id) on PostgreSQL: the lock an ``UPDATE`` takes, which does not conflict with the key
share lock a hold item's foreign key takes on its row. SQLite, which has a single writer,
renders no such clause.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from bot.core.ledger.schema import (
    CALL_COLUMNS,
    UTCDateTime,
    alerts,
    budget_overrides,
    budget_periods,
    calls,
    hold_items,
    holds,
    request_keys,
)

__all__ = ["ALERT_COLUMNS", "Statements", "in_params", "in_size"]

_bp = budget_periods.c
_bo = budget_overrides.c
_bind = sa.bindparam

#: The columns of a threshold alert as the settle writes it (the rest are the outbox's).
ALERT_COLUMNS = (
    "budget", "scope", "scope_key", "period", "period_start", "threshold", "kind", "fraction",
    "spent_nano_usd", "limit_nano_usd", "channel", "created_at", "attempts",
)  # fmt: skip
_PERIOD_KEY = ("budget", "scope", "scope_key", "period", "period_start")


def in_size(count: int) -> int:
    """The padded length of an id list of ``count`` ids (the next power of two)."""
    return 1 << max(0, count - 1).bit_length()


def in_params(ids: Sequence[Any]) -> dict[str, Any]:
    """Bind values for an ``IN`` of ``in_size(len(ids))`` parameters (``ids`` must not be empty)."""
    size = in_size(len(ids))
    last = ids[-1]
    return {f"p_in_{i}": ids[i] if i < len(ids) else last for i in range(size)}


def _in(column: sa.ColumnElement[Any], size: int) -> sa.ColumnElement[bool]:
    return column.in_([_bind(f"p_in_{i}", type_=column.type) for i in range(size)])


def _override(scope_key: sa.ColumnElement[str] | str) -> sa.ScalarSelect[Any]:
    return (
        sa.select(_bo.limit_nano_usd)
        .where(_bo.budget == _bp.budget, _bo.scope_key == scope_key)
        .scalar_subquery()
    )


class Statements:
    """Every statement the ledger's transactions run, for one dialect (``sqlite``/``postgresql``)."""

    def __init__(self, backend: Literal["sqlite", "postgresql"]) -> None:
        """Build the fixed statements; those taking id lists are built per padded size, on use."""
        self.backend = backend
        insert = sqlite.insert if backend == "sqlite" else postgresql.insert
        self.insert_hold = (
            insert(holds)
            .values({c: _bind(c, type_=holds.c[c].type) for c in holds.c.keys()})
            .on_conflict_do_nothing(index_elements=["request_id"])
        )
        """A hold; nothing when its request_id has one already (rowcount 0)."""
        self.insert_hold_item = hold_items.insert().values(
            hold_id=_bind("p_hold"), budget_period_id=_bind("p_row")
        )
        """One budget row of a hold (run once per row)."""
        self.reserve_row = (
            sa.update(budget_periods)
            .where(_bp.id == _bind("p_id"))
            .values(reserved_nano_usd=_bind("p_reserved"), limit_nano_usd=_bind("p_limit"))
        )
        """A row's new reserved amount and the limit in force (checked before, under the lock)."""
        self.charge_row = (
            sa.update(budget_periods)
            .where(_bp.id == _bind("p_id"))
            .values(spent_nano_usd=_bind("p_spent"), reserved_nano_usd=_bind("p_reserved"))
        )
        """A row's new spent and reserved amounts (``money.charge``)."""
        self.insert_call = (
            insert(calls)
            .values({c: _bind(c, type_=calls.c[c].type) for c in CALL_COLUMNS})
            .on_conflict_do_nothing(index_elements=["request_id"])
        )
        """A calls row; nothing when the request is recorded already (rowcount 0)."""
        self.interrupted_cost = sa.select(calls.c.cost_nano_usd).where(
            calls.c.request_id == _bind("p_request"), calls.c.outcome == "interrupted"
        )
        """The estimated cost of a request's ``interrupted`` row, if it has one."""
        self.replace_call = (
            sa.update(calls)
            .where(calls.c.request_id == _bind("p_request"))
            .values({c: _bind(c, type_=calls.c[c].type) for c in CALL_COLUMNS if c != "request_id"})
        )
        """Every column of a request's calls row (the real record in place of an estimate)."""
        self.delete_hold = sa.delete(holds).where(holds.c.id == _bind("p_hold"))
        """The claim of a hold: whoever deletes its row gives its money back."""
        self.delete_hold_items = sa.delete(hold_items).where(hold_items.c.hold_id == _bind("p_hold"))
        """A claimed hold's items."""
        columns = [alerts.c[c] for c in ALERT_COLUMNS]
        self.insert_alert = (
            insert(alerts)
            .from_select(
                columns,
                sa.select(
                    _bp.budget,
                    _bp.scope,
                    _bp.scope_key,
                    _bp.period,
                    _bp.period_start,
                    _bind("p_threshold", type_=sa.Float),
                    _bind("p_kind", type_=sa.String),
                    _bind("p_fraction", type_=sa.Float),
                    _bp.spent_nano_usd,
                    _bp.limit_nano_usd,
                    _bind("p_channel", type_=sa.String),
                    _bind("p_created_at", type_=UTCDateTime()),
                    sa.literal_column("0"),
                ).where(_bp.id == _bind("p_id")),
            )
            .on_conflict_do_nothing(index_elements=[*_PERIOD_KEY, "threshold"])
            .returning(alerts.c.id)
        )
        """A threshold (or overspent) alert of a budget row, copied from the row; its id, or none
        if it exists."""
        self.renew_hold = (
            sa.update(holds)
            .where(holds.c.id == _bind("p_hold"))
            .values(expires_at=_bind("p_expires", type_=UTCDateTime()))
        )
        """A live hold's new expiry (its call is still running)."""
        self.expired_holds = (
            sa.select(holds.c.id, holds.c.amount_nano_usd, holds.c.request_id, holds.c.call_identity)
            .where(holds.c.expires_at <= _bind("p_now", type_=UTCDateTime()))
            .order_by(holds.c.id)
            .limit(_bind("p_batch", type_=sa.Integer))
            .with_for_update(skip_locked=True)
        )
        """Up to ``p_batch`` expired holds (id, amount, request id, call identity), locked
        (PostgreSQL skips those a settle has)."""
        self.any_expired_hold = (
            sa.select(holds.c.id).where(holds.c.expires_at <= _bind("p_now", type_=UTCDateTime())).limit(1)
        )
        """Whether any hold has expired (a cheap read before the sweeper writes)."""
        self.insert_request_key = (
            insert(request_keys)
            .values(request_id=_bind("p_request"), created_at=_bind("p_now", type_=UTCDateTime()))
            .on_conflict_do_nothing(index_elements=["request_id"])
        )
        """An idempotency key; nothing when any replica claimed it already (rowcount 0)."""
        self.prune_request_keys = sa.delete(request_keys).where(
            request_keys.c.created_at < _bind("p_before", type_=UTCDateTime())
        )
        """Idempotency keys older than the retention (a retry comes within minutes, not days)."""
        self.insert_period = (
            insert(budget_periods)
            .values(
                {c: _bind(c, type_=budget_periods.c[c].type) for c in budget_periods.c.keys() if c != "id"}
            )
            .on_conflict_do_nothing(index_elements=list(_PERIOD_KEY))
        )
        """A clean budget period row; nothing when one exists (a replica may race to create it)."""
        upsert = insert(budget_overrides).values(
            budget=_bind("p_budget"),
            scope_key=_bind("p_key"),
            limit_nano_usd=_bind("p_limit"),
            updated_at=_bind("p_now", type_=UTCDateTime()),
            set_by=_bind("p_by"),
            set_via=_bind("p_via"),
        )
        self.upsert_override = upsert.on_conflict_do_update(
            index_elements=["budget", "scope_key"],
            set_={c: upsert.excluded[c] for c in ("limit_nano_usd", "updated_at", "set_by", "set_via")},
        )
        """An admin's override of a budget's limit for one key (or ``*``: every key), with who set
        it and through which face."""
        self.delete_override = sa.delete(budget_overrides).where(
            _bo.budget == _bind("p_budget"), _bo.scope_key == _bind("p_key")
        )
        """One override (rowcount 0 when there was none)."""
        self.delete_key_overrides = sa.delete(budget_overrides).where(
            _bo.budget == _bind("p_budget"), _bo.scope_key != "*"
        )
        """The overrides of single keys of a budget (a budget with a fixed key has only ``*``)."""
        self.overrides_of = sa.select(_bo.scope_key, _bo.limit_nano_usd).where(
            _bo.budget == _bind("p_budget")
        )
        """Every override of one budget: scope key, limit."""
        self.current_rows = (
            sa.select(_bp.id, _bp.scope_key, _bp.spent_nano_usd)
            .where(
                _bp.budget == _bind("p_budget"),
                _bp.scope == _bind("p_scope"),
                _bp.period == _bind("p_period"),
                _bp.period_start == _bind("p_start", type_=UTCDateTime()),
            )
            .order_by(_bp.id.desc())
            .with_for_update(key_share=True)
        )
        """A budget's rows of one period, locked in lock order: id, scope key, spent."""
        self.set_row_limit = (
            sa.update(budget_periods).where(_bp.id == _bind("p_id")).values(limit_nano_usd=_bind("p_limit"))
        )
        """A row's limit in force."""
        self.find_period = sa.select(_bp.id).where(
            *(_bp[c] == _bind(f"p_{c}", type_=_bp[c].type) for c in _PERIOD_KEY)
        )
        """The id of the budget period row with this key."""

    @functools.cache  # noqa: B019 - one Statements per dialect lives as long as the process
    def lock_rows(self, size: int) -> sa.Select[Any]:
        """Budget rows to charge, locked in lock order: id, budget, spent, reserved, limit."""
        return (
            sa.select(_bp.id, _bp.budget, _bp.spent_nano_usd, _bp.reserved_nano_usd, _bp.limit_nano_usd)
            .where(_in(_bp.id, size))
            .order_by(_bp.id.desc())
            .with_for_update(key_share=True)
        )

    @functools.cache  # noqa: B019
    def lock_rows_to_reserve(self, size: int) -> sa.Select[Any]:
        """Budget rows to reserve on, locked in lock order: id, spent, reserved, and the overrides
        of the row's key and of every key (``*``), read under the same lock."""
        return (
            sa.select(
                _bp.id,
                _bp.spent_nano_usd,
                _bp.reserved_nano_usd,
                _override(_bp.scope_key),
                _override(sa.literal_column("'*'")),
            )
            .where(_in(_bp.id, size))
            .order_by(_bp.id.desc())
            .with_for_update(of=budget_periods, key_share=True)
        )

    @functools.cache  # noqa: B019
    def delete_holds(self, size: int) -> sa.Delete:
        """Holds by id (the sweeper's claim of holds it locked)."""
        return sa.delete(holds).where(_in(holds.c.id, size))

    @functools.cache  # noqa: B019
    def items_of_holds(self, size: int) -> sa.Select[Any]:
        """The items of holds by id: hold id, budget row id."""
        return sa.select(hold_items.c.hold_id, hold_items.c.budget_period_id).where(
            _in(hold_items.c.hold_id, size)
        )

    @functools.cache  # noqa: B019
    def delete_items_of_holds(self, size: int) -> sa.Delete:
        """The items of holds by id."""
        return sa.delete(hold_items).where(_in(hold_items.c.hold_id, size))


@functools.cache
def statements_for(backend: Literal["sqlite", "postgresql"]) -> Statements:
    """The one ``Statements`` of a dialect."""
    return Statements(backend)
