"""Every write transaction of the ledger, written once and run by every driver.

A transaction is a generator: it yields each statement to run with its parameters (a ``Run``)
and is sent back its ``Result``, and it decides what to write with the pure rules of ``money.py``. It does no I/O of
its own, so the same code runs synchronously on a ``sqlite3`` connection (on the event loop or
in a thread) and asynchronously on PostgreSQL (``drivers/``); the driver owns BEGIN, COMMIT and
ROLLBACK. The rules every transaction keeps:

- budget rows are read and locked with one statement, in one order for every transaction
  (descending id, ``lock_order``; the statement orders them), so replicas never deadlock; on PostgreSQL the lock makes a
  concurrent writer wait for our commit, on SQLite we are the only writer anyway;
- deleting a hold's row is its claim: of settle, release and the sweeper racing on one hold,
  exactly one deletes it, and only that one gives its money back;
- a calls row's unique request id makes a repeated settle or record charge nothing;
- a refusal raises before anything is written (``NothingWritten``), so a transaction shared by
  several writes (SQLite's loop batch) goes on untouched.

Transactions read only integer and text columns, so a driver needs no result conversion.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from bot.core.config import BudgetConfig
from bot.core.ledger import money
from bot.core.ledger.call_rows import interrupted_row
from bot.core.ledger.statements import Statements, in_params, in_size

__all__ = [
    "Charged",
    "DuplicateRequest",
    "NothingWritten",
    "Refusal",
    "Result",
    "Run",
    "Tx",
    "charge_rows",
    "claim_request",
    "ensure_periods",
    "lock_order",
    "prune_request_keys",
    "queue_alerts",
    "queue_exhausted",
    "record",
    "renew",
    "reserve",
    "settle",
    "sweep",
]

T = TypeVar("T")


#: One statement for the driver to run, ``(statement, params)``: once with a dict of parameters,
#: or once per dict with a list of them. (Plain tuples: a transaction yields several per call.)
Run = tuple[Any, Any]
#: What a statement gave back, ``(rows, rowcount)``: its rows (empty unless it returns rows) and
#: its row count.
Result = tuple[Sequence[Sequence[Any]], int]


#: A transaction that returns a ``T``.
Tx = Generator[Run, Result, T]


class NothingWritten(Exception):
    """Raised by a transaction that failed before writing anything: a shared transaction goes on."""


class Refusal(NothingWritten):
    """A budget row lacks room for the hold: raised before the reserve writes anything."""

    def __init__(self, row_id: int, limit: int, spent: int, reserved: int) -> None:
        super().__init__(row_id, limit, spent, reserved)
        self.row_id, self.limit, self.spent, self.reserved = row_id, limit, spent, reserved


class DuplicateRequest(NothingWritten):
    """The request id has a hold (or an idempotency key) already; nothing was written."""

    def __init__(self, request_id: str) -> None:
        super().__init__(request_id)
        self.request_id = request_id


#: A budget row after a charge, ``(id, budget, spent, limit)``: what its alerts are decided on.
Charged = tuple[int, str, int, int]


def lock_order(row_ids: Iterable[int]) -> list[int]:
    """The one order in which any transaction locks budget rows: descending id.

    Any fixed total order rules out deadlocks between replicas. Descending id puts the oldest rows
    last, and those are the most shared (the global budget's row is made by a period's first call).
    """
    return sorted(set(row_ids), reverse=True)


def reserve(
    s: Statements, hold: Mapping[str, Any], config_limits: Mapping[int, int], *, hold_first: bool
) -> Tx[None]:
    """Hold ``hold["amount_nano_usd"]`` on every budget row of ``config_limits`` (row id → the
    configured limit), or raise ``Refusal`` for the first row in lock order without room.

    ``hold`` holds the ``holds`` columns. ``hold_first``: insert the hold before locking any
    budget row (PostgreSQL: the hottest row's lock is then held for fewer round trips; a
    refusal rolls the transaction back); else check first, so a refusal writes nothing (SQLite's
    shared transaction).
    """
    amount = int(hold["amount_nano_usd"])
    ids = list(config_limits)
    if hold_first:
        yield from _insert_hold(s, hold, ids)
    updates = []
    if ids:
        # The statement locks (and returns) the rows in lock order.
        locked, _ = yield s.lock_rows_to_reserve(in_size(len(ids))), in_params(ids)
        for row_id, spent, reserved, exact, every_key in locked:
            limit = money.limit_in_force(exact, every_key, config_limits[row_id])
            if not money.fits(spent, reserved, amount, limit):
                raise Refusal(row_id, limit, spent, reserved)
            updates.append({"p_id": row_id, "p_reserved": reserved + amount, "p_limit": limit})
    if not hold_first:
        yield from _insert_hold(s, hold, ids)
    if updates:
        yield s.reserve_row, updates


def _insert_hold(s: Statements, hold: Mapping[str, Any], ids: Sequence[int]) -> Tx[None]:
    _, inserted = yield s.insert_hold, hold
    if inserted == 0:
        raise DuplicateRequest(hold["request_id"])
    if ids:
        yield s.insert_hold_item, [{"p_hold": hold["id"], "p_row": i} for i in ids]


def settle(
    s: Statements,
    call: Mapping[str, Any] | None,
    hold_id: str,
    held: int,
    row_ids: Sequence[int],
    budgets: Mapping[str, BudgetConfig],
    now: datetime,
) -> Tx[list[int]]:
    """Write the calls row, claim the hold, charge its rows and queue alerts; return new alert ids.

    ``call`` is the calls row (None: a release with nothing to record); its cost is charged only
    if the row is new. ``held`` and ``row_ids`` are the hold's amount and budget rows as its
    reserve wrote them: the amount is given back only if this claims the hold (a hold swept after
    expiry was given back by the sweeper); the cost is charged to its rows either way.
    """
    # The hold first, then the calls row: the sweeper locks them in that order too (it turns an
    # expired hold into a calls row of the same request), so the two can never deadlock.
    _, claimed = yield s.delete_hold, {"p_hold": hold_id}
    if claimed:
        yield s.delete_hold_items, {"p_hold": hold_id}
    else:
        held = 0
    spend = 0 if call is None else int(call["cost_nano_usd"])
    if call is not None and (yield s.insert_call, call)[1] == 0:
        spend = yield from _replace_interrupted(s, call)
    if not row_ids or (held == 0 and spend == 0):
        return []
    charged = yield from charge_rows(s, dict.fromkeys(row_ids, held), spend)
    return (yield from queue_alerts(s, charged, budgets, now)) if spend > 0 else []


def _replace_interrupted(s: Statements, call: Mapping[str, Any]) -> Tx[int]:
    """The request has a calls row already. A repeated settle charges nothing (0); but if the
    row is the sweeper's ``interrupted`` estimate (the hold expired before this settle, e.g. it
    was journaled while the database was down), the real record replaces it and the difference
    is charged (negative when the estimate was higher)."""
    found, _ = yield s.interrupted_cost, {"p_request": call["request_id"]}
    if not found:
        return 0
    yield s.replace_call, {**call, "p_request": call["request_id"]}
    return int(call["cost_nano_usd"]) - int(found[0][0])


def record(
    s: Statements,
    call: Mapping[str, Any],
    row_ids: Sequence[int],
    budgets: Mapping[str, BudgetConfig],
    now: datetime,
) -> Tx[list[int]]:
    """Write a call that had no hold (a refusal at $0); a cost is charged to ``row_ids`` if the row
    is new. Returns the ids of the alerts it created."""
    spend = int(call["cost_nano_usd"])
    if (yield s.insert_call, call)[1] == 0 or spend == 0 or not row_ids:
        return []
    charged = yield from charge_rows(s, dict.fromkeys(row_ids, 0), spend)
    return (yield from queue_alerts(s, charged, budgets, now))


def charge_rows(
    s: Statements, give_back: Mapping[int, int], spend: int | Mapping[int, int]
) -> Tx[list[Charged]]:
    """Lock the rows of ``give_back`` (row id → reserved amount to free), free it and charge
    ``spend`` on each (``money.charge``; a mapping: row id → its own spend); return the rows as
    charged."""
    ids = list(give_back)
    spend_of = spend if isinstance(spend, Mapping) else dict.fromkeys(ids, spend)
    # The statement locks (and returns) the rows in lock order.
    locked, _ = yield s.lock_rows(in_size(len(ids))), in_params(ids)
    updates: list[dict[str, int]] = []
    charged: list[Charged] = []
    for row_id, budget, spent, reserved, limit in locked:
        new_spent, new_reserved = money.charge(spent, reserved, give_back[row_id], spend_of.get(row_id, 0))
        updates.append({"p_id": row_id, "p_spent": new_spent, "p_reserved": new_reserved})
        charged.append((row_id, budget, new_spent, limit))
    if updates:
        yield s.charge_row, updates
    return charged


def queue_alerts(
    s: Statements, charged: Sequence[Charged], budgets: Mapping[str, BudgetConfig], now: datetime
) -> Tx[list[int]]:
    """Queue an alert for every threshold a charged row has reached (``money.alert_crossings``);
    return the ids of those created now (an existing one is left as it is)."""
    created: list[int] = []
    for row_id, name, spent, limit in charged:
        budget = budgets.get(name)
        if budget is None:
            continue  # a budget removed from config keeps its rows but sends no more alerts
        for crossing in money.alert_crossings(budget.alert_thresholds, spent, limit):
            created += yield from _insert_alert(s, row_id, crossing, budget, now)
    return created


def _insert_alert(
    s: Statements, row_id: int, crossing: money.Crossing, budget: BudgetConfig, now: datetime
) -> Tx[list[int]]:
    params = {
        "p_id": row_id,
        "p_threshold": crossing.threshold,
        "p_kind": crossing.kind,
        "p_fraction": crossing.fraction,
        "p_channel": budget.channel,
        "p_created_at": now,
    }
    rows, _ = yield s.insert_alert, params
    return [int(r[0]) for r in rows]


def queue_exhausted(
    s: Statements, row_id: int, fraction: float, budget: BudgetConfig, now: datetime
) -> Tx[list[int]]:
    """Queue the ``exhausted`` alert of a budget row that refused a call (once per key and
    period: a later one is a no-op); return its id if created now."""
    crossing = money.Crossing(money.EXHAUSTED_THRESHOLD, fraction, "exhausted")
    return (yield from _insert_alert(s, row_id, crossing, budget, now))


def sweep(s: Statements, now: datetime, batch: int, budgets: Mapping[str, BudgetConfig]) -> Tx[int]:
    """Turn up to ``batch`` holds expired at ``now`` into ``interrupted`` calls; return how many.

    A live call renews its hold (``Ledger.renew``), so an expired hold is a dead process's: its
    call may have been billed, and what it cost is unknown. Each becomes a calls row charged the
    hold's amount, flagged estimated (``call_rows.interrupted_row``), and its budgets are charged
    that amount in place of the hold (alerts queued as for any charge). A later settle of the
    same request (a journaled record replayed) replaces the estimate with the real figures.

    The expired holds are locked first (on PostgreSQL a hold a settle is claiming is skipped),
    so deleting them is this transaction's claim, as in ``settle``.
    """
    expired, _ = yield s.expired_holds, {"p_now": now, "p_batch": batch}
    if not expired:
        return 0
    amount_of = {hold_id: int(amount) for hold_id, amount, _, _ in expired}
    ids, size = list(amount_of), in_size(len(amount_of))
    yield s.delete_holds(size), in_params(ids)
    items, _ = yield s.items_of_holds(size), in_params(ids)
    yield s.delete_items_of_holds(size), in_params(ids)
    charged_holds = set()
    for hold_id, amount, request_id, identity in expired:
        if (yield s.insert_call, interrupted_row(identity, request_id, int(amount), now))[1]:
            charged_holds.add(hold_id)
    give_back: dict[int, int] = {}
    spend: dict[int, int] = {}
    for hold_id, row_id in items:
        give_back[row_id] = give_back.get(row_id, 0) + amount_of[hold_id]
        if hold_id in charged_holds:
            spend[row_id] = spend.get(row_id, 0) + amount_of[hold_id]
    if give_back:
        charged = yield from charge_rows(s, give_back, spend)
        yield from queue_alerts(s, [c for c in charged if spend.get(c[0])], budgets, now)
    return len(ids)


def renew(s: Statements, hold_id: str, expires_at: datetime) -> Tx[bool]:
    """Push a live hold's expiry to ``expires_at``; False if it is gone (settled, or swept)."""
    _, renewed = yield s.renew_hold, {"p_hold": hold_id, "p_expires": expires_at}
    return renewed == 1


def claim_request(s: Statements, request_id: str, now: datetime) -> Tx[None]:
    """Claim an idempotency key, or raise ``DuplicateRequest`` if any replica has (keys are kept)."""
    if (yield s.insert_request_key, {"p_request": request_id, "p_now": now})[1] == 0:
        raise DuplicateRequest(request_id)


def prune_request_keys(s: Statements, before: datetime) -> Tx[int]:
    """Delete the idempotency keys claimed before ``before``; return how many."""
    _, pruned = yield s.prune_request_keys, {"p_before": before}
    return pruned


def ensure_periods(s: Statements, rows: Sequence[Mapping[str, Any]]) -> Tx[list[int]]:
    """The ids of these ``budget_periods`` rows (all columns but id), creating missing ones clean.

    A new period, or a budget added to config, gets a fresh row on first use: it never inherits
    older spend. A replica creating the same row at once is harmless (the insert does nothing).
    """
    yield s.insert_period, list(rows)
    ids = []
    for row in rows:
        key = {f"p_{c}": row[c] for c in ("budget", "scope", "scope_key", "period", "period_start")}
        found, _ = yield s.find_period, key
        ids.append(int(found[0][0]))
    return ids
