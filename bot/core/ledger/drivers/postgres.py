"""The PostgreSQL writer: the ledger's transactions through SQLAlchemy's async engine (asyncpg).

READ COMMITTED: a transaction locks the budget rows it changes with ``SELECT … FOR UPDATE`` in
the one lock order (descending id, ``transactions.lock_order``), so replicas serialise per row and never
deadlock. At most ``PG_CONCURRENT_WRITES`` write transactions per process run at once: every
call locks the same global row, and a transaction holding that lock must not wait behind dozens
of others for the event loop (measured in docs/benchmarks.md). PostgreSQL's own durable commits
(``synchronous_commit = on``) make every commit durable, so nothing is written "now" into a
transaction of someone else (``write_now`` is always None).
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.core.ledger.drivers import MakeTx, drive_async
from bot.core.ledger.outage import translated
from bot.core.ledger.transactions import Result, Run

__all__ = ["PG_CONCURRENT_WRITES", "PostgresWriter"]

T = TypeVar("T")

#: Write transactions one process runs at once on PostgreSQL (more only queue on row locks).
PG_CONCURRENT_WRITES = 8


async def _execute(conn: AsyncConnection, run: Run) -> Result:
    statement, params = run  # a list of parameter dicts: executemany
    result = await conn.execute(statement, params)
    return (result.all() if result.returns_rows else ()), result.rowcount


class PostgresWriter:
    """Runs each transaction in its own database transaction, ``PG_CONCURRENT_WRITES`` at once."""

    # The hold's insert locks no budget row: doing it first keeps the hottest row's lock short.
    hold_first = True

    def __init__(self, engine: AsyncEngine) -> None:
        """Write through ``engine``'s pool."""
        self._engine = engine
        self.gate = asyncio.Semaphore(PG_CONCURRENT_WRITES)

    async def run(self, make_tx: MakeTx[T], *, durable: bool = True) -> T:
        """Run one transaction, committed when this returns (``durable`` changes nothing here).

        A database that cannot be reached raises ``LedgerUnavailable`` (``outage``)."""
        with translated():
            async with self.gate, self._engine.begin() as conn:
                return await drive_async(make_tx(), lambda run: _execute(conn, run))

    def write_now(self, make_tx: MakeTx[T]) -> None:
        """Never: every transaction commits on its own."""
        return None

    async def settled(self) -> None:
        """Nothing to wait for: a transaction has committed when ``run`` returns."""

    async def close(self) -> None:
        """Nothing of its own to close (the engine is the database's)."""
