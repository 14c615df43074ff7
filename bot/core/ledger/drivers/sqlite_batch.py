"""Group commit for the SQLite writer on the event loop: one ``COMMIT`` per loop turn, not per call.

Why: under ``synchronous = NORMAL`` a ledger transaction runs on the event loop (see
``drivers/sqlite.py``), and its ``COMMIT`` (writing every page it touched to the WAL) is most of
its cost, far more than its statements. With calls in flight, the reserves and settles of one
loop turn touch the same pages (the budget rows, the holds), so one commit for all of them
writes each page once (the measured gain is in docs/benchmarks.md, "Core overhead").

How: the first write of a loop turn takes the database's write gate, runs ``BEGIN IMMEDIATE``
and schedules the ``COMMIT`` with ``loop.call_soon``, so it runs at the start of the next turn.
Every write until then joins that transaction. A refusal leaves it untouched: a reserve checks
every budget row before it writes anything (``NothingWritten``), which is also why no write
needs a ``SAVEPOINT`` of its own (two statements more per write). Any other error in a write
(a full disk, an I/O error) may leave it half done, so the whole transaction is rolled back and
the writes in it fail together. The gate stays held until the commit, so the
SQLAlchemy writers of this process (alert outbox, overrides) queue behind it instead of
meeting SQLite's lock, and ``Database.read`` waits for that commit, so a read never misses a
write made before it.

What a caller waits for: a settle (the call's row and its charge) waits for the commit before it
returns, so whoever is told the call was recorded (observers, ``PendingWrites.flush``) can rely
on it. A reserve does not: the SQLite write lock is held from its statements to the commit, so
no other writer, in any process, can see or take the money it reserved meanwhile, and it is the
hold's row that commits a moment later. If that commit fails (a full disk), the hold is gone
with it, which is what the sweeper does to a crashed process's holds anyway: the call's settle
then finds no hold and charges the budgets all the same (the rows its ``Hold`` names); until
then, other calls could take that money. Waiting for the commit in every reserve would close
that gap for a failing disk, at a cost to every call measured in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from bot.core.ledger.transactions import NothingWritten

__all__ = ["BatchLostError", "LoopBatches"]

T = TypeVar("T")


class BatchLostError(sqlite3.OperationalError):
    """SQLite rolled back the shared transaction (an I/O error, a full disk): its writes are gone."""


class _Batch:
    """One shared transaction: the gate it holds and the future its commit resolves."""

    __slots__ = ("committed", "done", "gate", "lost")

    def __init__(self, gate: asyncio.Lock, committed: asyncio.Future[None]) -> None:
        self.gate = gate
        self.committed = committed
        self.done = False
        self.lost: BaseException | None = None


class LoopBatches:
    """The loop connection's shared write transaction (use only on the event loop's thread)."""

    def __init__(self, connection: Callable[[], sqlite3.Connection], on_commit: Callable[[], None]) -> None:
        """``connection`` returns the loop's connection; ``on_commit`` hears every commit."""
        self._connection = connection
        self._on_commit = on_commit
        self._open: _Batch | None = None
        self.commits = 0
        """Shared transactions committed (for tests and benchmarks)."""
        self.writes = 0
        """Writes that joined one (for tests and benchmarks)."""

    @property
    def is_open(self) -> bool:
        """True while a shared transaction waits for its commit."""
        return self._open is not None

    @property
    def pending(self) -> asyncio.Future[None] | None:
        """The commit future of the open shared transaction (None when none is open)."""
        return None if self._open is None else self._open.committed

    async def begin(self, gate: asyncio.Lock) -> bool:
        """Make sure a shared transaction is open; False if another process holds SQLite's lock.

        On False the caller holds ``gate`` and must release it (it then writes in a thread,
        where waiting for the other process does not block the loop).
        """
        if self._open is not None:
            return True
        await gate.acquire()  # an open batch holds the gate: none is open once we have it
        try:
            self._connection().execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            gate.release()
            raise
        except BaseException:
            gate.release()
            raise
        loop = asyncio.get_running_loop()
        batch = _Batch(gate, loop.create_future())
        # Nobody may be waiting when the commit fails: retrieve the error so it is not reported
        # as "never retrieved" (the settles that do wait get it and retry).
        batch.committed.add_done_callback(_retrieve)
        self._open = batch
        loop.call_soon(self._commit, batch)
        return True

    def write(self, work: Callable[..., T], *args: Any) -> tuple[T, asyncio.Future[None]]:
        """Run ``work(connection, *args)`` in the open transaction.

        Returns its result and the future of the commit that makes it durable. If ``work``
        raises ``NothingWritten`` (a refused reserve: it checks before it writes), the batch goes
        on. Any other exception may have left some of its statements done, so the whole shared
        transaction is rolled back and the other writes in it fail with ``BatchLostError`` (the
        settles waiting for it retry; see the module doc for the reserves).
        """
        batch = self._open
        assert batch is not None, "call begin() first"
        try:
            result = work(self._connection(), *args)
        except NothingWritten:
            raise
        except BaseException as exc:
            self._lose(batch, exc)
            raise
        self.writes += 1
        return result, batch.committed

    def commit_now(self) -> None:
        """Commit the open transaction at once (before a read, at close); a no-op if none."""
        if self._open is not None:
            self._commit(self._open)

    def _commit(self, batch: _Batch) -> None:
        if batch.done:
            return
        batch.done = True
        if self._open is batch:
            self._open = None
        try:
            if batch.lost is not None:
                raise BatchLostError(f"the ledger's shared transaction was rolled back: {batch.lost}")
            self._connection().execute("COMMIT")
        except BaseException as exc:
            try:
                conn = self._connection()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # nothing more to undo here; the waiters must hear of it all the same
            batch.committed.set_exception(exc)
        else:
            self.commits += 1
            batch.committed.set_result(None)
        finally:
            batch.gate.release()
            self._on_commit()

    def _lose(self, batch: _Batch, exc: BaseException) -> None:
        """Roll the whole transaction back now; the next write opens another one."""
        batch.lost = exc
        if self._open is batch:
            self._open = None
        self._commit(batch)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
