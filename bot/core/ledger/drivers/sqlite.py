"""The SQLite writer: the ledger's transactions on plain ``sqlite3`` connections, one writer per process.

Why plain ``sqlite3``: through SQLAlchemy + aiosqlite every statement costs several hops between
the event loop and aiosqlite's thread plus SQLAlchemy's per-statement work, while SQLite itself
runs the ledger's statements in microseconds. So each transaction's statements are compiled
once from SQLAlchemy Core (``Compiled``: its SQL, its parameter order and the column types' own
bind processors, so values are stored exactly as SQLAlchemy stores them) and run here directly.

Where a transaction runs depends on ``synchronous``. Under ``NORMAL`` (the default, see
``wal_sync``) no commit waits for the disk, so transactions run on the event loop itself, on a
connection with ``busy_timeout = 0`` and no automatic checkpoint, and the writes of one loop
turn share one ``COMMIT`` (``sqlite_batch``). If another process holds SQLite's write lock,
``BEGIN IMMEDIATE`` fails at once there and the transaction goes to the thread instead, which
waits for the lock (``busy_timeout``) without blocking the loop. Under ``FULL`` every commit
waits for an fsync, so every transaction runs in the writer's own thread.

One writer at a time: callers in this process hold ``gate`` around every write (the SQLAlchemy
writes of the outbox too), and ``BEGIN IMMEDIATE`` takes SQLite's lock against other processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import Dialect

from bot.core.ledger.drivers import MakeTx, drive
from bot.core.ledger.drivers.sqlite_batch import LoopBatches
from bot.core.ledger.outage import translated
from bot.core.ledger.transactions import Result, Run

__all__ = ["Compiled", "SqliteWriter"]

T = TypeVar("T")


class Compiled:
    """One Core statement compiled for SQLite: its SQL (named parameters) and how to bind them.

    The parameters are handed to ``sqlite3`` as the transaction's dict, by name: only the values
    of columns whose type converts them (datetimes, booleans) are converted first.
    """

    __slots__ = ("_fixed", "_processors", "plain", "sql")

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        """Compile ``statement`` once for ``dialect`` (SQLite's, with ``named`` parameters)."""
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        processors = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        self._processors = tuple(processors.items())
        # Values fixed in the statement itself (SQLite's OFFSET beside a bound LIMIT).
        self._fixed = {n: b.value for n, b in compiled.binds.items() if b.value is not None}
        self.plain = not self._processors and not self._fixed
        """Whether the parameters go to ``sqlite3`` as they are (no ``args`` needed)."""

    def args(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """A copy of ``params`` with the fixed values added and the typed values converted."""
        values = {**self._fixed, **params}
        for name, process in self._processors:
            values[name] = process(values[name])
        return values


class _Executor:
    """Runs a transaction's statements on a ``sqlite3`` connection (compiled once each)."""

    def __init__(self, dialect: Dialect) -> None:
        # The engine's own dialect, with named parameters: sqlite3 binds a dict by name in C.
        self._dialect: Dialect = type(dialect)(paramstyle="named")  # type: ignore[call-arg]
        self._compiled: dict[Any, Compiled] = {}

    def transaction(self, conn: sqlite3.Connection, make_tx: MakeTx[T]) -> T:
        """Run a fresh transaction from ``make_tx`` on ``conn`` (inside a BEGIN someone made)."""
        compiled_of, dialect = self._compiled, self._dialect

        def execute(run: Run) -> Result:
            statement, params = run
            compiled = compiled_of.get(statement)
            if compiled is None:
                compiled = compiled_of[statement] = Compiled(statement, dialect)
            if type(params) is list:
                if not compiled.plain:
                    params = [compiled.args(p) for p in params]
                cursor = conn.executemany(compiled.sql, params)
                return (), cursor.rowcount
            cursor = conn.execute(compiled.sql, params if compiled.plain else compiled.args(params))
            return (cursor.fetchall() if cursor.description is not None else ()), cursor.rowcount

        return drive(make_tx(), execute)


class SqliteWriter:
    """The ledger's SQLite writer: on the event loop under ``NORMAL``, else in its own thread.

    ``connect`` opens a connection to the ledger's file with its pragmas applied; ``on_commit``
    hears every commit (the WAL syncer).
    """

    hold_first = False  # a refusal must write nothing: the loop's transaction is shared

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        dialect: Dialect,
        on_loop: bool,
        on_commit: Callable[[], None],
    ) -> None:
        """``on_loop``: write on the event loop (no commit waits for the disk)."""
        self.gate = asyncio.Lock()
        self._connect = connect
        self._on_commit = on_commit
        self._execute = _Executor(dialect)
        self._loop_conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._thread_conn: sqlite3.Connection | None = None
        self.batches = LoopBatches(self._loop_connection, on_commit) if on_loop else None
        """The loop's shared transaction (``sqlite_batch``); None when writes run in the thread."""

    async def run(self, make_tx: MakeTx[T], *, durable: bool = True) -> T:
        """Run one transaction; ``durable``: return only once committed (else, on the loop, it
        commits at the start of the next loop turn; see ``sqlite_batch`` for why a reserve may
        return before). A file that cannot be opened or written raises ``LedgerUnavailable``."""
        with translated():
            return await self._run(make_tx, durable)

    async def _run(self, make_tx: MakeTx[T], durable: bool) -> T:
        if self.batches is not None:
            if await self.batches.begin(self.gate):
                written: tuple[T, asyncio.Future[None]] = self.batches.write(
                    self._execute.transaction, make_tx
                )
                result, committed = written
                if durable:
                    await asyncio.shield(committed)  # shared by the batch: never cancel it
                return result
            try:  # another process holds SQLite's lock: wait for it in the thread, not on the loop
                return await self._in_thread(make_tx)
            finally:
                self.gate.release()
        async with self.gate:
            return await self._in_thread(make_tx)

    def write_now(self, make_tx: MakeTx[T]) -> tuple[T, asyncio.Future[None]] | None:
        """Write into the loop's open shared transaction; None when none is open.

        Raises what the transaction raised (the shared transaction is then rolled back).
        """
        if self.batches is None or not self.batches.is_open:
            return None
        return self.batches.write(self._execute.transaction, make_tx)

    async def settled(self) -> None:
        """Wait for the open shared transaction's commit, if one is open."""
        committed = self.batches.pending if self.batches is not None else None
        if committed is not None:
            await asyncio.wait([committed])  # its failure is its writers' business

    async def _in_thread(self, make_tx: MakeTx[T]) -> T:
        loop = asyncio.get_running_loop()
        result: T = await loop.run_in_executor(self._thread, self._thread_transaction, make_tx)
        self._on_commit()
        return result

    def _thread_transaction(self, make_tx: MakeTx[T]) -> T:
        """In the writer's thread: one transaction between ``BEGIN IMMEDIATE`` and ``COMMIT``."""
        if self._thread_conn is None:
            self._thread_conn = self._connect()
        conn = self._thread_conn
        conn.execute("BEGIN IMMEDIATE")  # waits for another process's lock (busy_timeout)
        try:
            result = self._execute.transaction(conn, make_tx)
            conn.execute("COMMIT")
        except BaseException:
            # Never leave this connection inside a transaction (it would keep the write lock).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _loop_connection(self) -> sqlite3.Connection:
        if self._loop_conn is None:
            conn = self._connect()
            # Never wait on the loop: a busy file goes to the thread instead. Never checkpoint
            # in a commit here either: the WalSyncer does it in its own thread.
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._loop_conn = conn
        return self._loop_conn

    def _close_thread_connection(self) -> None:
        if self._thread_conn is not None:
            self._thread_conn.close()
            self._thread_conn = None

    async def close(self) -> None:
        """Commit what is pending and close the connections (they reopen on next use)."""
        if self.batches is not None:
            self.batches.commit_now()
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close_thread_connection)
