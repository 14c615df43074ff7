"""Where the ledger's transactions run: one ``Writer`` per database, built by ``Database``.

A writer runs a transaction of ``transactions.py`` (given as a function that makes it, so a
retry gets a fresh one) between its own BEGIN and COMMIT: SQLite on the event loop's own
connection or in a thread (``sqlite.py``), PostgreSQL through SQLAlchemy's async engine
(``postgres.py``). Every writer offers the same three operations; only SQLite's can write at
once into a transaction already open (``write_now``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from bot.core.ledger.transactions import Result, Run, Tx

__all__ = ["MakeTx", "Writer", "drive", "drive_async"]

T = TypeVar("T")

#: Makes a fresh transaction (a generator of ``transactions.py``) each time it is called.
MakeTx = Callable[[], Tx[T]]


class Writer(Protocol):
    """Runs the ledger's write transactions on one database, one writer per process."""

    @property
    def gate(self) -> asyncio.Lock | asyncio.Semaphore:
        """Held around every write transaction of this process (the SQLAlchemy ones too)."""

    @property
    def hold_first(self) -> bool:
        """Whether a reserve inserts its hold before locking budget rows (``transactions.reserve``)."""

    async def run(self, make_tx: MakeTx[T], *, durable: bool = True) -> T:
        """Run one transaction; ``durable``: return only once it is committed."""

    def write_now(self, make_tx: MakeTx[T]) -> tuple[T, asyncio.Future[None]] | None:
        """Write the transaction at once into a transaction already open, and return its result
        and the future of that commit (failed: nothing was written); None when none is open."""

    async def settled(self) -> None:
        """Wait until every write made so far is committed (or has failed)."""

    async def close(self) -> None:
        """Commit what is pending and close the writer's connections."""


def drive(tx: Tx[T], execute: Callable[[Run], Result]) -> T:
    """Run a transaction to its end, each statement through ``execute``; return what it returns."""
    try:
        run = next(tx)
        while True:
            run = tx.send(execute(run))
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        tx.close()


async def drive_async(tx: Tx[T], execute: Callable[[Run], Awaitable[Result]]) -> T:
    """``drive`` for a driver whose statements are awaited."""
    try:
        run = next(tx)
        while True:
            run = tx.send(await execute(run))
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        tx.close()
