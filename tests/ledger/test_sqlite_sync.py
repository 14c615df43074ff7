"""SQLite under ``synchronous = normal`` (the default) and ``full``: where transactions run, and the
WAL sync that bounds what a power loss could take (``bot.core.ledger.wal_sync``)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite as sqlite_dialect

from bot.core.config import DatabaseConfig
from bot.core.ledger import Ledger
from bot.core.ledger.drivers.sqlite import SqliteWriter
from bot.core.ledger.schema import UTCDateTime
from bot.core.ledger.wal_sync import CHECKPOINT_EVERY_WRITES, WalSyncer

from .conftest import ALICE, budget, record


async def open_sqlite(
    path: Path, synchronous: Literal["normal", "full"] = "normal", interval_ms: int = 20
) -> Ledger:
    config = DatabaseConfig(
        url=f"sqlite+aiosqlite:///{path}",
        sqlite_synchronous=synchronous,
        sqlite_sync_interval_ms=interval_ms,
    )
    return await Ledger.open(config, [budget("global", "100")])


def syncer_of(ledger: Ledger) -> WalSyncer:
    setup = ledger._db.sqlite_setup
    assert setup is not None and setup.syncer is not None
    return setup.syncer


async def one_call(ledger: Ledger, rid: str, cost: str = "0.01") -> None:
    hold = await ledger.reserve(ALICE, Decimal("0.05"), request_id=rid, model="gpt-test", provider="openai")
    await ledger.settle(hold, record(hold, cost))


async def test_normal_is_the_default_and_commits_are_synced_within_the_interval(tmp_path: Path) -> None:
    assert DatabaseConfig().sqlite_synchronous == "normal"
    ledger = await open_sqlite(tmp_path / "l.db", interval_ms=20)
    try:
        syncer = syncer_of(ledger)
        await one_call(ledger, "r1")  # the first call of a period also creates its budget row
        await one_call(ledger, "r2")
        before = syncer.syncs
        await asyncio.sleep(0.2)  # ten intervals: the last call's writes are synced by now
        # One sync covers them, or two on a loaded machine where its writes fell in two intervals.
        synced = syncer.syncs
        assert before + 1 <= synced <= before + 2
        await asyncio.sleep(0.1)
        assert syncer.syncs == synced  # no write, no sync
    finally:
        await ledger.close()
    # Everything reached the file (another connection sees it) and the file is consistent.
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert db.execute("SELECT count(*) FROM calls").fetchone()[0] == 2
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_close_syncs_what_the_interval_has_not_yet(tmp_path: Path) -> None:
    ledger = await open_sqlite(tmp_path / "l.db", interval_ms=60_000)
    syncer = syncer_of(ledger)
    await one_call(ledger, "r1")
    await one_call(ledger, "r2")
    assert syncer.syncs == 0  # the interval is a minute away
    await ledger.close()
    assert syncer.syncs == 1


async def test_the_wal_is_checkpointed_every_so_many_writes(tmp_path: Path) -> None:
    ledger = await open_sqlite(tmp_path / "l.db", interval_ms=1)
    try:
        syncer = syncer_of(ledger)
        # A reserve and its settle made back to back share one commit (sqlite_batch).
        for i in range(CHECKPOINT_EVERY_WRITES + 5):
            await one_call(ledger, f"r{i}")
        await asyncio.sleep(0.05)
        assert syncer.checkpoints >= 1
    finally:
        await ledger.close()


async def test_another_process_writing_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """Writes run on the loop with busy_timeout 0; a held write lock sends them to the thread."""
    path = tmp_path / "l.db"
    ledger = await open_sqlite(path)
    try:
        await one_call(ledger, "warm")  # the budget row exists: later calls only reserve and settle
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        call = asyncio.create_task(one_call(ledger, "blocked"))
        await asyncio.sleep(0.3)
        assert not call.done()  # waiting for the lock, in the thread…
        assert ticks >= 10  # …while the loop kept running
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(call, 10)
        beat.cancel()
        (row,) = [s for s in await ledger.status_all() if s.name == "global"]
        assert row.spent == Decimal("0.02") and row.reserved == 0
    finally:
        await ledger.close()


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_the_connections_use_the_configured_mode(
    tmp_path: Path, synchronous: Literal["normal", "full"]
) -> None:
    ledger = await open_sqlite(tmp_path / "l.db", synchronous)
    try:
        await one_call(ledger, "r1")
        await one_call(ledger, "r2")
        writer = ledger._db.writer
        assert isinstance(writer, SqliteWriter)
        assert (writer.batches is not None) == (synchronous == "normal")
        if synchronous == "normal":  # the writes ran on the loop's own connection
            conn = writer._loop_conn
            assert conn is not None and writer._thread_conn is None
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        else:  # in the database thread, each commit waiting for its fsync
            assert writer._loop_conn is None and writer._thread_conn is not None
        assert (ledger._db.sqlite_setup and ledger._db.sqlite_setup.syncer is not None) == (
            synchronous == "normal"
        )
        assert (await ledger.totals()).calls == 2
    finally:
        await ledger.close()


async def test_a_url_with_query_options_runs_the_same_writer_as_a_plain_path(tmp_path: Path) -> None:
    """URL options (``uri=true``, ``mode``…) reach the writer's own connections, so the ledger
    writes on the event loop as with a plain path (the contract suite runs all of it on both)."""
    url = f"sqlite+aiosqlite:///file:{tmp_path}/opts/l.db?mode=rwc&uri=true"
    ledger = await Ledger.open(DatabaseConfig(url=url), [budget("global", "100")])
    try:
        await one_call(ledger, "r1")
        await one_call(ledger, "r2")
        writer = ledger._db.writer
        assert isinstance(writer, SqliteWriter) and writer.batches is not None
        assert writer.batches.writes >= 4 and writer._thread_conn is None
        assert (tmp_path / "opts" / "l.db").exists() and not (tmp_path / "file:").exists()
        assert (await ledger.totals()).calls == 2
    finally:
        await ledger.close()


@given(st.datetimes(timezones=st.timezones(), min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_a_datetime_is_stored_as_sqlalchemys_own_datetime_text(value: datetime) -> None:
    """``UTCDateTime``'s quick SQLite bind writes exactly what SQLAlchemy's DATETIME would."""
    dialect = sqlite_dialect.dialect()
    ours = UTCDateTime().bind_processor(dialect)
    theirs = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None and theirs is not None
    assert ours(value) == theirs(value.astimezone(UTC).replace(tzinfo=None))
