"""The SQLite hot path's two write transactions, as plain ``sqlite3`` functions.

``reserve_tx`` and ``settle_tx`` run the same statements, in the same order, as ``store.py``'s
SQLAlchemy path (hold first, budget rows in ``lock_order``, the calls row's unique request_id
makes a second settle a no-op, deleting the hold is the claim); ``sqlite_fast`` decides where
they run (on the event loop, inside the loop turn's shared transaction, or in a thread).
A reserve checks every budget row before it writes anything, so a refusal leaves the
transaction it runs in untouched (``NothingWritten``).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from bot.core.config import BudgetConfig
from bot.core.ledger.alerts import alert_values
from bot.core.ledger.models import Hold
from bot.core.ledger.schema import CALL_COLUMNS, to_nanos
from bot.core.ledger.sqlite_batch import NothingWritten
from bot.core.ledger.store import lock_order

__all__ = [
    "CALL_COST_INDEX",
    "CALL_CREATED_AT_INDEX",
    "AlertValues",
    "ChargedRow",
    "DuplicateHold",
    "Refusal",
    "RowBudget",
    "reserve_tx",
    "settle_args",
    "settle_tx",
]

# The money of the budget rows a call reserves against, with the override in force on each (an
# exact key first, then "*"; see store.pick_limit). Read inside the write lock, so an admin's
# change committed by any process applies at once, and checked before anything is written.
_RESERVE_CHECK = (
    "SELECT bp.id, bp.spent_nano_usd, bp.reserved_nano_usd, COALESCE("
    "(SELECT o.limit_nano_usd FROM budget_overrides o WHERE o.budget = bp.budget AND o.scope_key = bp.scope_key), "
    "(SELECT o.limit_nano_usd FROM budget_overrides o WHERE o.budget = bp.budget AND o.scope_key = '*')) "
    "FROM budget_periods bp WHERE bp.id IN ({})"
)
_INSERT_HOLD = (
    "INSERT INTO holds (id, request_id, amount_nano_usd, created_at, expires_at) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_HOLD_ITEM = "INSERT INTO hold_items (hold_id, budget_period_id) VALUES (?, ?)"
# The check was made above, under the same lock: here only the write (and the limit in force).
_RESERVE_ROW = (
    "UPDATE budget_periods SET reserved_nano_usd = reserved_nano_usd + ?, limit_nano_usd = ? WHERE id = ?"
)
CALL_COST_INDEX = CALL_COLUMNS.index("cost_nano_usd")
CALL_CREATED_AT_INDEX = CALL_COLUMNS.index("created_at")
# No RETURNING on these three: SQLite runs a RETURNING statement to the end into a temporary
# table before the first row comes back (~7 µs more per statement, measured). Whether the row
# was written (a repeated settle's calls row, a hold already swept) is the statement's change
# count, and what RETURNING gave back (the hold's amount and rows) never changes after the
# reserve wrote it: the caller's ``Hold`` already has it.
_INSERT_CALL = (
    f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' * len(CALL_COLUMNS))}) "
    "ON CONFLICT (request_id) DO NOTHING"
)
_DELETE_HOLD = "DELETE FROM holds WHERE id = ?"
_DELETE_HOLD_ITEMS = "DELETE FROM hold_items WHERE hold_id = ?"
# Same as store._CHARGE_ROW, for all the hold's rows at once (SQLite has one writer: no lock
# order to keep): reserved is clamped at zero, spent grows, no limit check.
_CHARGE_ROWS = (
    "UPDATE budget_periods SET reserved_nano_usd = CASE WHEN reserved_nano_usd > ? "
    "THEN reserved_nano_usd - ? ELSE 0 END, spent_nano_usd = spent_nano_usd + ? WHERE id IN ({})"
)
# Read back in the same transaction rather than with RETURNING: cheaper (see _INSERT_CALL).
_CHARGED_ROWS = (
    "SELECT id, budget, scope, scope_key, period, period_start, spent_nano_usd, limit_nano_usd "
    "FROM budget_periods WHERE id IN ({})"
)
_ALERT_COLUMNS = (
    "budget",
    "scope",
    "scope_key",
    "period",
    "period_start",
    "threshold",
    "kind",
    "fraction",
    "spent_nano_usd",
    "limit_nano_usd",
    "channel",
    "created_at",
    "attempts",
)
_INSERT_ALERT = (
    f"INSERT INTO alerts ({', '.join(_ALERT_COLUMNS)}) VALUES ({', '.join('?' * len(_ALERT_COLUMNS))}) "
    "ON CONFLICT (budget, scope, scope_key, period, period_start, threshold) DO NOTHING RETURNING id"
)


class Refusal(NothingWritten):
    """A budget row lacks room: raised before the reserve writes anything."""

    def __init__(self, row_id: int, limit: int, spent: int, reserved: int) -> None:
        super().__init__(row_id, limit, spent, reserved)
        self.row_id, self.limit, self.spent, self.reserved = row_id, limit, spent, reserved


class DuplicateHold(NothingWritten, sqlite3.IntegrityError):
    """The request_id already has a hold: the hold's INSERT, the reserve's first write, failed."""


class RowBudget(NamedTuple):
    """What picks a budget row's limit: its budget's name, its scope key, the configured limit."""

    budget: str
    scope_key: str
    config_limit: int


class ChargedRow(NamedTuple):
    """A budget row after a charge: what ``alerts.alert_values`` needs (period_start as stored)."""

    id: int
    budget: str
    scope: str
    scope_key: str
    period: str
    period_start: Any
    spent_nano_usd: int
    limit_nano_usd: int


#: Builds alert rows (dicts of ``_ALERT_COLUMNS``) from charged rows: ``alerts.alert_values``.
AlertValues = Callable[[Sequence[ChargedRow]], list[dict[str, Any]]]


@functools.cache
def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def reserve_tx(
    conn: sqlite3.Connection, hold: tuple[str, str, int, str, str], rows: Mapping[int, RowBudget]
) -> None:
    """Check every budget row has room, then insert the hold and its items and reserve on each.

    ``hold`` is (id, request_id, amount, created_at, expires_at) with datetimes already as stored.
    Raises ``Refusal`` for the first row (in lock order) without room and ``DuplicateHold`` for a
    request_id that has one: both before anything is written (``NothingWritten``), so the loop's
    shared transaction goes on without a savepoint (``sqlite_batch``).
    """
    amount = hold[2]
    row_ids = lock_order(rows)
    limits: dict[int, int] = {}
    if row_ids:
        money = {
            r[0]: r[1:] for r in conn.execute(_RESERVE_CHECK.format(_placeholders(len(row_ids))), row_ids)
        }
        for row_id in row_ids:
            spent, reserved, override = money[row_id]
            limit = rows[row_id].config_limit if override is None else int(override)
            if spent + reserved + amount > limit:
                raise Refusal(row_id, limit, int(spent), int(reserved))
            limits[row_id] = limit
    try:
        conn.execute(_INSERT_HOLD, hold)
    except sqlite3.IntegrityError as exc:
        raise DuplicateHold(*exc.args) from exc
    hold_id = hold[0]
    conn.executemany(_INSERT_HOLD_ITEM, [(hold_id, i) for i in row_ids])
    conn.executemany(_RESERVE_ROW, [(amount, limits[i], i) for i in row_ids])


def settle_tx(
    conn: sqlite3.Connection,
    call: tuple[Any, ...] | None,
    spend: int,
    hold_id: str,
    held: int,
    row_ids: Sequence[int],
    alert_values: AlertValues,
) -> list[int]:
    """Write the calls row, claim the hold, charge its rows and queue alerts; return new alert ids.

    ``call`` holds the calls row's values in ``_INSERT_CALL`` order (None: no row to write);
    ``spend`` is charged only if that row is new, so a repeated settle charges nothing.
    ``held`` (nano-USD) and ``row_ids`` are the hold's amount and budget rows, as its reserve
    wrote them: the amount is given back only if this claims the hold (deletes its row), since a
    hold already swept was given back by the sweeper; the spend is charged to its rows either way.
    """
    if call is not None and conn.execute(_INSERT_CALL, call).rowcount == 0:
        spend = 0
    if conn.execute(_DELETE_HOLD, (hold_id,)).rowcount:
        conn.execute(_DELETE_HOLD_ITEMS, (hold_id,))
    else:
        held = 0
    if not row_ids or (held == 0 and spend == 0):
        return []
    marks = _placeholders(len(row_ids))
    conn.execute(_CHARGE_ROWS.format(marks), (held, held, spend, *row_ids))
    if spend == 0:
        return []
    charged = [ChargedRow(*row) for row in conn.execute(_CHARGED_ROWS.format(marks), row_ids)]
    charged.sort(key=lambda row: row.id, reverse=True)  # lock order, as store.charge_rows returns them
    ids = []
    for values in alert_values(charged):
        row = conn.execute(_INSERT_ALERT, [values[c] for c in _ALERT_COLUMNS]).fetchone()
        if row is not None:
            ids.append(int(row[0]))
    return ids


def settle_args(
    call: tuple[Any, ...] | None, hold: Hold, budgets: Mapping[str, BudgetConfig], created_at: Any
) -> tuple[Any, ...]:
    """``settle_tx``'s arguments after the connection."""
    spend = 0 if call is None else call[CALL_COST_INDEX]

    def values(rows: Sequence[ChargedRow]) -> list[dict[str, Any]]:
        return alert_values(rows, budgets, created_at)  # pure: safe in the database thread

    return call, spend, hold.id, to_nanos(hold.amount), hold.budget_period_ids, values
