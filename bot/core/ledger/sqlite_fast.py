"""SQLite hot path: a whole reserve or settle transaction as one plain ``sqlite3`` function call.

Why: through SQLAlchemy + aiosqlite every statement costs 3–4 hops between the event loop and
aiosqlite's thread (cursor, execute, fetch, close), each ~0.1–0.2 ms of event-loop and GIL
hand-over, plus SQLAlchemy's per-statement work; SQLite itself runs these statements in ~10 µs.
A reserve was ~8 such statements and a settle ~7, so a reserve + settle cost ~7 ms. Here each
transaction is one plain function run in the thread of a dedicated aiosqlite connection:
``BEGIN IMMEDIATE``, the same statements as ``store.py``, ``COMMIT`` (or ``ROLLBACK`` on any
error). The guarantees are unchanged:

- one writer at a time: ``BEGIN IMMEDIATE`` takes SQLite's write lock before the first read
  (other processes wait in ``busy_timeout``), and callers in this process hold the database's
  write gate (``Database.write_gate``) around it, exactly as for SQLAlchemy transactions;
- all or nothing: any exception, a refusal included, rolls the write back (its transaction, or
  its savepoint in the loop's shared transaction) before it returns, so a cancelled caller can
  never leave a transaction open on these connections;
- the statements and their order are ``store.py``'s (hold first, budget rows in ``lock_order``,
  the calls row's unique request_id makes a second settle a no-op, deleting the hold is the claim).

Where the function runs depends on ``synchronous``. Under ``FULL`` a commit waits for an fsync,
so it runs in the thread of a dedicated aiosqlite connection. Under ``NORMAL`` (the default, see
``wal_sync``) nothing in it waits for the disk: the whole transaction takes ~40 µs, less than
handing it to a thread and back (~150 µs, ~400 µs after an idle spell), so it runs on the event
loop itself, on a connection with ``busy_timeout = 0`` and no automatic checkpoint, where the
writes of one loop turn share one commit (``sqlite_batch``). If another
process holds SQLite's write lock, ``BEGIN IMMEDIATE`` fails at once there and the transaction
goes to the thread instead, which waits for the lock (``busy_timeout``) without blocking the loop.

Only ``aiosqlite.Connection._execute`` (run a function in the connection's thread) is not public
API; aiosqlite has had it, unchanged, since its first releases.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple, TypeVar

import aiosqlite
from sqlalchemy.engine import Dialect

from bot.core.config import BudgetConfig
from bot.core.ledger.alerts import alert_values
from bot.core.ledger.database import SqliteSetup
from bot.core.ledger.models import Hold
from bot.core.ledger.schema import CALL_COLUMNS, UTCDateTime
from bot.core.ledger.sqlite_batch import Gate, LoopBatches, NothingWritten
from bot.core.ledger.store import call_params, lock_order
from bot.core.types import CallRecord

__all__ = ["ChargedRow", "DuplicateHold", "FastSqlite", "Refusal", "RowBudget", "reserve_tx", "settle_tx"]

T = TypeVar("T")
log = logging.getLogger(__name__)

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
_COST_INDEX = CALL_COLUMNS.index("cost_nano_usd")
_CREATED_AT_INDEX = CALL_COLUMNS.index("created_at")
_INSERT_CALL = (
    f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' * len(CALL_COLUMNS))}) "
    "ON CONFLICT (request_id) DO NOTHING RETURNING id"
)
_DELETE_HOLD = "DELETE FROM holds WHERE id = ? RETURNING amount_nano_usd"
_DELETE_HOLD_ITEMS = "DELETE FROM hold_items WHERE hold_id = ? RETURNING budget_period_id"
# Same as store._CHARGE_ROW, for all the hold's rows at once (SQLite has one writer: no lock
# order to keep): reserved is clamped at zero, spent grows, no limit check.
_CHARGE_ROWS = (
    "UPDATE budget_periods SET reserved_nano_usd = CASE WHEN reserved_nano_usd > ? "
    "THEN reserved_nano_usd - ? ELSE 0 END, spent_nano_usd = spent_nano_usd + ? WHERE id IN ({}) "
    "RETURNING id, budget, scope, scope_key, period, period_start, spent_nano_usd, limit_nano_usd"
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
    fallback_rows: Sequence[int],
    alert_values: AlertValues,
) -> list[int]:
    """Write the calls row, claim the hold, charge its rows and queue alerts; return new alert ids.

    ``call`` holds the calls row's values in ``_INSERT_CALL`` order (None: no row to write);
    ``spend`` is charged only if that row is new, so a repeated settle charges nothing.
    ``fallback_rows`` are the hold's rows, charged when the hold was already swept.
    """
    if call is not None and conn.execute(_INSERT_CALL, call).fetchone() is None:
        spend = 0
    claimed = conn.execute(_DELETE_HOLD, (hold_id,)).fetchone()
    if claimed is not None:
        held = int(claimed[0])
        row_ids = [int(r[0]) for r in conn.execute(_DELETE_HOLD_ITEMS, (hold_id,))]
    else:
        held, row_ids = 0, list(fallback_rows)
    if not row_ids or (held == 0 and spend == 0):
        return []
    update = _CHARGE_ROWS.format(_placeholders(len(row_ids)))
    charged = [ChargedRow(*row) for row in conn.execute(update, (held, held, spend, *row_ids))]
    if spend == 0:
        return []
    charged.sort(key=lambda row: row.id, reverse=True)  # lock order, as store.charge_rows returns them
    ids = []
    for values in alert_values(charged):
        row = conn.execute(_INSERT_ALERT, [values[c] for c in _ALERT_COLUMNS]).fetchone()
        if row is not None:
            ids.append(int(row[0]))
    return ids


def _settle_args(
    call: tuple[Any, ...] | None, hold: Hold, budgets: Mapping[str, BudgetConfig], created_at: Any
) -> tuple[Any, ...]:
    """``settle_tx``'s arguments after the connection."""
    spend = 0 if call is None else call[_COST_INDEX]

    def values(rows: Sequence[ChargedRow]) -> list[dict[str, Any]]:
        return alert_values(rows, budgets, created_at)  # pure: safe in the database thread

    return call, spend, hold.id, hold.budget_period_ids, values


def _as_stored(value: datetime) -> str:
    """A ``UTCDateTime`` as SQLite stores it: naive UTC text, microseconds always written."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the ledger needs timezone-aware datetimes")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _in_transaction(conn: sqlite3.Connection, work: Callable[..., T], *args: Any) -> T:
    """Run ``work`` between ``BEGIN IMMEDIATE`` and ``COMMIT``; roll back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        # Never leave this connection inside a transaction (it would keep the write lock).
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


async def _in_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(sqlite3_connection, *args)`` in the connection's own thread: one hop."""
    execute: Callable[..., Awaitable[T]] = conn._execute  # aiosqlite's (untyped) internal runner
    return await execute(fn, conn._conn, *args)


class FastSqlite:
    """The hot-path write transactions: on the event loop under ``NORMAL``, else in a thread.

    ``gate`` is the database's write gate (``Database.write_gate``): held around every write of
    this process. Connections are opened on first use with the same pragmas as the engine's
    (``setup.configure``); ``on_commit`` hears every commit.
    """

    def __init__(
        self, path: str, setup: SqliteSetup, dialect: Dialect, on_commit: Callable[[], None]
    ) -> None:
        """``dialect`` is the engine's (datetimes are stored exactly as SQLAlchemy stores them)."""
        self._path = path
        self._setup = setup
        self._on_commit = on_commit
        self._conn: aiosqlite.Connection | None = None
        self._loop_conn: sqlite3.Connection | None = None
        self.on_loop = setup.synchronous == "normal"
        """Whether transactions run on the event loop (no commit waits for the disk)."""
        self.batches = LoopBatches(self._loop_connection, on_commit) if self.on_loop else None
        """The loop's shared transaction (``sqlite_batch``); None when writes run in a thread."""
        bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        assert bind is not None
        # SQLAlchemy's processor chain costs ~2 µs a value and runs four times a call; the same
        # text straight from datetime is ~4x cheaper. Used only if the two agree here.
        sample = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=5, minutes=30)))
        self._bind_datetime = _as_stored if bind(sample) == _as_stored(sample) else bind

    def stored(self, value: datetime) -> Any:
        """``value`` exactly as SQLAlchemy stores a ``UTCDateTime`` (so both paths compare alike)."""
        return self._bind_datetime(value)

    def call_row(self, record: CallRecord) -> tuple[Any, ...]:
        """The calls row of ``record`` as ``settle_tx`` inserts it."""
        values = list(call_params(record).values())  # in CALL_COLUMNS order (a test checks)
        values[_CREATED_AT_INDEX] = self.stored(values[_CREATED_AT_INDEX])
        return tuple(values)

    def commit_pending(self) -> None:
        """Commit the loop's shared transaction now, if one is open (``Database.read`` calls it)."""
        if self.batches is not None:
            self.batches.commit_now()

    async def run(self, gate: Gate, work: Callable[..., T], *args: Any, durable: bool = True) -> T:
        """Run ``work(sqlite3_connection, *args)`` as one all-or-nothing write (see the module doc).

        ``durable``: return only once it is committed (else, on the loop, it commits at the start
        of the next loop turn; see ``sqlite_batch`` for why a reserve may return before).
        """
        if self.batches is not None:
            if await self.batches.begin(gate):
                result, committed = self.batches.write(work, *args)
                if durable:
                    await asyncio.shield(committed)  # shared by the batch: never cancel it
                return result
            try:  # another process holds SQLite's lock: wait for it in the thread, not on the loop
                return await self._run_in_thread(work, *args)
            finally:
                gate.release()
        async with gate:
            return await self._run_in_thread(work, *args)

    async def _run_in_thread(self, work: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            conn = await aiosqlite.connect(self._path, isolation_level=None)
            await _in_thread(conn, self._setup.configure)
            self._conn = conn
        result: T = await _in_thread(self._conn, _in_transaction, work, *args)
        self._on_commit()
        return result

    def _loop_connection(self) -> sqlite3.Connection:
        if self._loop_conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None)
            self._setup.configure(conn)
            # Never wait on the loop: a busy file goes to the thread path instead. Never
            # checkpoint in a commit here either: the WalSyncer does it in its own thread.
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._loop_conn = conn
        return self._loop_conn

    async def reserve(self, gate: Gate, hold: Hold, nanos: int, rows: Mapping[int, RowBudget]) -> None:
        """``reserve_tx``; a repeated request_id raises ValueError. May return before its commit."""
        values = (hold.id, hold.request_id, nanos, self.stored(hold.created_at), self.stored(hold.expires_at))
        try:
            await self.run(gate, reserve_tx, values, rows, durable=False)
        except sqlite3.IntegrityError as exc:
            if "request_id" in str(exc) or "holds" in str(exc):
                raise ValueError(f"request_id '{hold.request_id}' already has a hold") from None
            raise

    def settle_now(
        self, hold: Hold, record: CallRecord, budgets: Mapping[str, BudgetConfig], now: datetime
    ) -> asyncio.Future[list[int]] | None:
        """``settle_tx`` at once, in the loop's open shared transaction, if one is open.

        Returns a future of the ids of the alerts it created, done once committed (failed if the
        commit failed: nothing was written). None when no shared transaction is open or the
        write failed there (then use ``settle``).
        """
        if self.batches is None or not self.batches.is_open:
            return None
        call = self.call_row(record)
        try:
            ids, committed = self.batches.write(
                settle_tx, *_settle_args(call, hold, budgets, self.stored(now))
            )
        except Exception:  # the shared transaction is lost with it; ``settle`` will retry alone
            log.warning("a settle failed in the shared transaction; writing it again", exc_info=True)
            return None
        alert_ids: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        def done(commit: asyncio.Future[None]) -> None:
            error = asyncio.CancelledError() if commit.cancelled() else commit.exception()
            if error is not None:
                alert_ids.set_exception(error)
            else:
                alert_ids.set_result(ids)

        committed.add_done_callback(done)
        return alert_ids

    async def settle(
        self,
        gate: Gate,
        hold: Hold,
        record: CallRecord | None,
        budgets: Mapping[str, BudgetConfig],
        now: datetime,
    ) -> list[int]:
        """``settle_tx``, committed; returns the ids of the alerts it created."""
        call = None if record is None else self.call_row(record)
        return await self.run(gate, settle_tx, *_settle_args(call, hold, budgets, self.stored(now)))

    async def close(self) -> None:
        """Commit what is pending and close the connections (they reopen on next use)."""
        self.commit_pending()
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
