"""SQLite hot path: where a reserve or settle transaction (``sqlite_tx``) runs, as plain ``sqlite3``.

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
- all or nothing: in a thread, any exception rolls the transaction back before it returns; on
  the loop, a refusal writes nothing and any other exception rolls back the whole shared
  transaction (``sqlite_batch``), so no caller can leave half a write or an open transaction;
- the statements and their order are ``store.py``'s (``sqlite_tx``).

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
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy.engine import Dialect

from bot.core.config import BudgetConfig
from bot.core.ledger.database import SqliteSetup
from bot.core.ledger.models import Hold
from bot.core.ledger.schema import UTCDateTime
from bot.core.ledger.sqlite_batch import Gate, LoopBatches
from bot.core.ledger.sqlite_tx import CALL_CREATED_AT_INDEX, RowBudget, reserve_tx, settle_args, settle_tx
from bot.core.ledger.store import call_params
from bot.core.types import CallRecord

__all__ = ["FastSqlite"]

T = TypeVar("T")
log = logging.getLogger(__name__)


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
        values[CALL_CREATED_AT_INDEX] = self.stored(values[CALL_CREATED_AT_INDEX])
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
    ) -> tuple[list[int], asyncio.Future[None]] | None:
        """``settle_tx`` at once, in the loop's open shared transaction, if one is open.

        Returns the ids of the alerts it created and the future of the shared commit (failed if
        the commit failed: then nothing was written). None when no shared transaction is open or
        the write failed there (then use ``settle``).
        """
        if self.batches is None or not self.batches.is_open:
            return None
        try:
            args = settle_args(self.call_row(record), hold, budgets, self.stored(now))
            return self.batches.write(settle_tx, *args)
        except Exception:  # never fail the answer here: ``settle`` retries it alone, and logs
            log.warning("a settle could not be written at once; writing it alone", exc_info=True)
            return None

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
        return await self.run(gate, settle_tx, *settle_args(call, hold, budgets, self.stored(now)))

    async def close(self) -> None:
        """Commit what is pending and close the connections (they reopen on next use)."""
        self.commit_pending()
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
