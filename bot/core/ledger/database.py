"""One async SQLAlchemy engine over SQLite or PostgreSQL, and the transactions the ledger runs on it.

SQLite (aiosqlite): WAL so readers never block the writer; ``synchronous = NORMAL`` with a
checkpoint soon after every write (``wal_sync``), or ``FULL`` if configured; ``busy_timeout`` so a second process
waits for the write lock instead of failing; every write transaction starts with
``BEGIN IMMEDIATE`` (SQLAlchemy's documented recipe: the driver's own BEGIN is switched off with
``isolation_level = None`` and the ``begin`` event emits ours), so the check-and-reserve of one
transaction can never interleave with another writer's. Within one process, writers also queue on
an ``asyncio.Lock``: SQLite's busy handler polls with sleeps, far slower than a queue.

PostgreSQL (asyncpg): READ COMMITTED, with the row locks of ``drivers/postgres.py``.

The money transactions (``transactions.py``) run through the database's one writer
(``drivers/``); the outbox's and the overrides' writes run here through SQLAlchemy, queued on
the same gate.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlparse

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.core.config import DatabaseConfig
from bot.core.errors import ConfigurationError
from bot.core.ledger.drivers import Writer
from bot.core.ledger.drivers.postgres import PostgresWriter
from bot.core.ledger.drivers.sqlite import SqliteWriter
from bot.core.ledger.outage import translated
from bot.core.ledger.wal_sync import WalSyncer

__all__ = ["Backend", "Database", "SqliteSetup", "configure_sqlite", "normalise_url"]

Backend = Literal["sqlite", "postgresql"]
Synchronous = Literal["normal", "full"]

#: How long a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
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
    """Set up a new SQLite connection (SQLAlchemy's, or the writer's plain ``sqlite3`` one)."""
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

    def __init__(self, path: str, synchronous: Synchronous, sync_interval: float) -> None:
        """``path`` is the ledger's file."""
        self.path = path
        """The ledger's file."""
        self.synchronous: Synchronous = synchronous
        self.syncer = WalSyncer(path, self.configure, sync_interval) if synchronous == "normal" else None
        """Checkpoints after writes under ``NORMAL`` (None under ``FULL``: commits sync themselves)."""

    def note_write(self) -> None:
        """A write transaction committed (under ``NORMAL``, a sync will follow shortly)."""
        if self.syncer is not None:
            self.syncer.note_write()

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
    """The engine, the one writer of this process (``drivers``), and read and write transactions."""

    def __init__(
        self,
        engine: AsyncEngine,
        backend: Backend,
        writer: Writer,
        sqlite_setup: SqliteSetup | None = None,
    ) -> None:
        """Use ``Database.connect``."""
        self.engine = engine
        self.backend: Backend = backend
        self.writer = writer
        """Runs the ledger's money transactions; its gate is held around every write."""
        self.sqlite_setup = sqlite_setup
        """SQLite: the connections' pragmas and the checkpointer (None on PostgreSQL)."""

    @classmethod
    def connect(cls, config: DatabaseConfig) -> Database:
        """Create the engine and the writer for ``config.url`` (no connection is made yet)."""
        url, backend = normalise_url(config.url)
        if backend == "postgresql":
            # Enough connections that contention is on rows, not on the pool.
            engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_timeout=60)
            return cls(engine, backend, PostgresWriter(engine))
        engine = create_async_engine(url, pool_size=5, max_overflow=10)
        # The writer's plain connections take the URL's options exactly as the engine's do.
        args, options = engine.dialect.create_connect_args(url)
        path = urlparse(args[0]).path if options.get("uri") else args[0]
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        setup = SqliteSetup(path, config.sqlite_synchronous, config.sqlite_sync_interval_ms / 1000)
        _install_sqlite_events(engine, setup)

        def connect() -> sqlite3.Connection:
            conn: sqlite3.Connection = cast(Any, sqlite3.connect)(*args, **options, isolation_level=None)
            setup.configure(conn)
            return conn

        writer = SqliteWriter(connect, engine.dialect, setup.synchronous == "normal", setup.note_write)
        return cls(engine, backend, writer, setup)

    @property
    def is_sqlite(self) -> bool:
        """True on SQLite."""
        return self.backend == "sqlite"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction through SQLAlchemy (the outbox's, overrides): committed on normal
        exit, rolled back on an exception; it queues on the writer's gate like every write.

        A database that cannot be reached raises ``LedgerUnavailable`` (``outage``)."""
        with translated():
            async with self.writer.gate, self.engine.begin() as conn:
                yield conn
        self.note_write()

    def note_write(self) -> None:
        """A write transaction committed (under ``NORMAL``, a sync will follow shortly)."""
        if self.sqlite_setup is not None:
            self.sqlite_setup.note_write()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (a consistent snapshot; on SQLite it takes no write lock).

        It first waits for the writes made before it to commit, so a read sees them all. A
        database that cannot be reached raises ``LedgerUnavailable`` (``outage``).
        """
        await self.writer.settled()
        with translated():
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

    def epoch_seconds(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """Seconds since the Unix epoch of a ``UTCDateTime`` column, as an SQL expression."""
        if self.is_sqlite:
            return sa.cast(sa.func.strftime("%s", column), sa.BigInteger)
        return sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)

    async def dispose(self) -> None:
        """Commit what is pending, sync what is not yet on disk, then close every connection."""
        await self.writer.close()
        if self.sqlite_setup is not None and self.sqlite_setup.syncer is not None:
            await self.sqlite_setup.syncer.close()
        await self.engine.dispose()
