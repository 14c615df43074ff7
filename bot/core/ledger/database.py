"""One async SQLAlchemy engine over SQLite or PostgreSQL, and the transactions the ledger runs on it.

SQLite (aiosqlite): WAL so readers never block the writer; ``synchronous = NORMAL`` with a
checkpoint soon after every write (``wal_sync``), or ``FULL`` if configured; ``busy_timeout`` so a second process
waits for the write lock instead of failing; every write transaction starts with
``BEGIN IMMEDIATE`` (SQLAlchemy's documented recipe: the driver's own BEGIN is switched off with
``isolation_level = None`` and the ``begin`` event emits ours), so the check-and-reserve of one
transaction can never interleave with another writer's. Within one process, writers also queue on
an ``asyncio.Lock``: SQLite's busy handler polls with sleeps, far slower than a queue.

PostgreSQL (asyncpg): READ COMMITTED. Reservations lock each budget row with a conditional UPDATE,
in one fixed order, so concurrent replicas serialise per row and never deadlock. At most
``PG_CONCURRENT_WRITES`` write transactions per process run at once: every call updates the same
global row, and a transaction holding that row's lock must not wait behind dozens of others for the
event loop (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.core.config import DatabaseConfig
from bot.core.errors import ConfigurationError
from bot.core.ledger.wal_sync import WalSyncer

__all__ = ["Backend", "Database", "SqliteSetup", "configure_sqlite", "normalise_url"]

Backend = Literal["sqlite", "postgresql"]
Synchronous = Literal["normal", "full"]

#: How long a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Write transactions one process runs at once on PostgreSQL (more only queue on row locks).
PG_CONCURRENT_WRITES = 8
_BEGIN_OPTION = "ledger_sqlite_begin"


def normalise_url(raw: str) -> tuple[URL, Backend]:
    """Parse a database URL and pick the async driver the ledger uses for it."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(
            f"cannot parse database url '{raw}'",
            field="database.url",
            hint="Use sqlite+aiosqlite:///path/to/bot.db or postgresql+asyncpg://user@host/db.",
        ) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
            raise ConfigurationError(
                "an in-memory SQLite ledger would be lost at exit and cannot be shared between connections",
                field="database.url",
                hint="Give a file path, e.g. sqlite+aiosqlite:///data/bot.db.",
            )
        return url.set(drivername="sqlite+aiosqlite"), "sqlite"
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg"), "postgresql"
    raise ConfigurationError(
        f"unsupported database '{backend}'",
        field="database.url",
        hint="The ledger runs on SQLite (sqlite+aiosqlite:///...) or PostgreSQL (postgresql+asyncpg://...).",
    )


def configure_sqlite(dbapi_connection: Any, synchronous: Synchronous = "full") -> None:
    """Set up a new SQLite connection (SQLAlchemy's, or the hot path's plain ``sqlite3`` one)."""
    # Stop the driver from issuing its own (deferred) BEGIN; _on_begin issues ours.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching to WAL needs a lock another process may hold.
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    _enable_wal(cursor)
    # FULL: each commit waits for the disk; NORMAL: a WalSyncer checkpoints soon after (wal_sync).
    cursor.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (persistent, so only its first opener really does it).

    SQLite does not call the busy handler for this switch: when several processes open a new
    file at once, all but one get "database is locked" at once, whatever ``busy_timeout`` says.
    So: skip it when another opener already did, else retry briefly.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteSetup:
    """How this ledger's SQLite connections are set up, and what keeps NORMAL's commits durable."""

    def __init__(self, path: str | None, synchronous: Synchronous, sync_interval: float) -> None:
        """``path`` is None when the URL has options a plain connection would not share."""
        self.synchronous: Synchronous = synchronous
        self.syncer = (
            WalSyncer(path, self.configure, sync_interval) if path and synchronous == "normal" else None
        )
        """Checkpoints after writes under ``NORMAL`` (None under ``FULL``: commits sync themselves)."""

    def configure(self, dbapi_connection: Any) -> None:
        """``configure_sqlite`` with this ledger's ``synchronous``."""
        configure_sqlite(dbapi_connection, self.synchronous)


def _install_sqlite_events(engine: AsyncEngine, setup: SqliteSetup) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        setup.configure(dbapi_connection)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """The engine plus the two kinds of transaction the ledger needs: write and read."""

    def __init__(
        self,
        engine: AsyncEngine,
        backend: Backend,
        sqlite_path: str | None = None,
        sqlite_setup: SqliteSetup | None = None,
    ) -> None:
        self.engine = engine
        self.backend: Backend = backend
        self.sqlite_path = sqlite_path
        """The SQLite file when a plain connection to it is equivalent to the engine's (else None)."""
        self.sqlite_setup = sqlite_setup
        """SQLite: the connections' pragmas and the checkpointer (None on PostgreSQL)."""
        # SQLite has one writer at a time anyway: queue here rather than in its polling busy handler.
        self.write_gate = asyncio.Lock() if backend == "sqlite" else asyncio.Semaphore(PG_CONCURRENT_WRITES)
        """Held around every write transaction of this process (also the SQLite hot path's)."""
        self.before_read: Callable[[], None] | None = None
        """Run before every read: the SQLite hot path commits its shared transaction (sqlite_batch)."""

    @classmethod
    def connect(cls, config: DatabaseConfig) -> Database:
        """Create the engine for ``config.url`` (no connection is made yet)."""
        url, backend = normalise_url(config.url)
        if backend == "sqlite":
            assert url.database is not None
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, pool_size=5, max_overflow=10)
            # URL options (uri, mode…) would make a plain connection differ: no hot path then.
            path = None if url.query else url.database
            setup = SqliteSetup(path, config.sqlite_synchronous, config.sqlite_sync_interval_ms / 1000)
            _install_sqlite_events(engine, setup)
            return cls(engine, backend, path, setup)
        else:
            # Enough connections that contention is on rows, not on the pool.
            engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_timeout=60)
        return cls(engine, backend)

    @property
    def is_sqlite(self) -> bool:
        """True on SQLite."""
        return self.backend == "sqlite"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on normal exit, rolled back on an exception."""
        async with self.write_gate, self.engine.begin() as conn:
            yield conn
        self.note_write()

    def note_write(self) -> None:
        """A write transaction committed (under ``NORMAL``, a checkpoint will follow shortly)."""
        if self.sqlite_setup is not None and self.sqlite_setup.syncer is not None:
            self.sqlite_setup.syncer.note_write()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (a consistent snapshot; on SQLite it takes no write lock)."""
        if self.before_read is not None:
            self.before_read()  # a read must see every write made before it
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
            async with conn.begin():
                yield conn

    def insert_ignore(self, table: sa.Table, conflict: Sequence[str]) -> sa.Insert:
        """``INSERT … ON CONFLICT (conflict) DO NOTHING`` in this database's dialect."""
        if self.is_sqlite:
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict))

    def upsert(self, table: sa.Table, conflict: Sequence[str], update: Sequence[str]) -> sa.Insert:
        """``INSERT … ON CONFLICT (conflict) DO UPDATE SET`` each of ``update`` to the new value."""
        stmt = sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)
        return stmt.on_conflict_do_update(
            index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update}
        )

    def epoch_seconds(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """Seconds since the Unix epoch of a ``UTCDateTime`` column, as an SQL expression."""
        if self.is_sqlite:
            return sa.cast(sa.func.strftime("%s", column), sa.BigInteger)
        return sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)

    async def dispose(self) -> None:
        """Sync what is not yet on disk, then close every pooled connection."""
        if self.sqlite_setup is not None and self.sqlite_setup.syncer is not None:
            await self.sqlite_setup.syncer.close()
        await self.engine.dispose()
