"""The SQLite writer's shared transaction (``bot.core.ledger.drivers.sqlite_batch``): the writes of one
event-loop turn share one commit, and each is still all or nothing on its own."""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from bot.core.accounting import Accountant, CallContext, SessionFigures
from bot.core.config import DatabaseConfig
from bot.core.errors import BudgetExceededError
from bot.core.ledger import Ledger
from bot.core.ledger.drivers.sqlite import SqliteWriter
from bot.core.ledger.drivers.sqlite_batch import BatchLostError, LoopBatches
from bot.core.ledger.models import Hold
from bot.core.monitoring import CostTracker, TokenMonitor
from bot.core.pending import PendingWrites
from bot.core.types import CallRecord

from .conftest import ALICE, budget, record


async def open_ledger(path: Path, limit: str = "1") -> Ledger:
    config = DatabaseConfig(url=f"sqlite+aiosqlite:///{path}")
    return await Ledger.open(config, [budget("global", limit)])


def writer_of(ledger: Ledger) -> SqliteWriter:
    writer = ledger._db.writer
    assert isinstance(writer, SqliteWriter) and writer.batches is not None
    return writer


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """What another connection (another process) sees: only committed data."""
    with sqlite3.connect(path) as db:
        return list(db.execute(sql).fetchall())


async def reserve(ledger: Ledger, rid: str, amount: str = "0.1") -> Hold:
    return await ledger.reserve(ALICE, Decimal(amount), request_id=rid, model="gpt-test", provider="openai")


async def warm(ledger: Ledger) -> None:
    """The first call of a period creates its budget row (a transaction of its own)."""
    hold = await reserve(ledger, "warm", "0.01")
    await ledger.settle(hold, record(hold, "0"))


async def test_writes_of_one_loop_turn_share_one_commit(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "l.db")
    try:
        await warm(ledger)
        batches = writer_of(ledger).batches
        assert batches is not None
        commits, writes = batches.commits, batches.writes
        holds = await asyncio.gather(*(reserve(ledger, f"r{i}") for i in range(5)))
        assert batches.writes == writes + 5
        await asyncio.sleep(0)  # the commit runs at the start of the next loop turn
        assert batches.commits == commits + 1
        assert rows(tmp_path / "l.db", "SELECT count(*) FROM holds") == [(5,)]
        await asyncio.gather(*(ledger.settle(h, record(h, "0.02")) for h in holds))
        assert batches.commits == commits + 2
        # A settle returns once committed: another connection sees its row at once.
        assert rows(tmp_path / "l.db", "SELECT count(*) FROM calls") == [(6,)]
        assert rows(tmp_path / "l.db", "SELECT count(*) FROM holds") == [(0,)]
        [status] = await ledger.status(ALICE)
        assert (status.spent, status.reserved) == (Decimal("0.1"), Decimal(0))
    finally:
        await ledger.close()


async def test_a_refusal_rolls_back_only_its_own_writes(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "l.db", limit="1")
    try:
        await warm(ledger)
        results = await asyncio.gather(
            reserve(ledger, "a", "0.4"), reserve(ledger, "b", "0.9"), reserve(ledger, "c", "0.5"),
            return_exceptions=True,
        )  # fmt: skip
        assert isinstance(results[1], BudgetExceededError)
        assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
        [status] = await ledger.status(ALICE)
        assert status.reserved == Decimal("0.9")  # a and c, not b
        held = rows(tmp_path / "l.db", "SELECT request_id FROM holds ORDER BY request_id")
        assert held == [("a",), ("c",)]
    finally:
        await ledger.close()


async def test_a_repeated_request_id_is_refused_inside_the_shared_transaction(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "l.db")
    try:
        await warm(ledger)
        first, second = await asyncio.gather(
            reserve(ledger, "dup"), reserve(ledger, "dup"), return_exceptions=True
        )
        assert not isinstance(first, BaseException)
        assert isinstance(second, ValueError) and "already has a hold" in str(second)
        [status] = await ledger.status(ALICE)
        assert status.reserved == Decimal("0.1")
    finally:
        await ledger.close()


async def test_a_read_right_after_a_reserve_sees_it(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "l.db")
    try:
        await warm(ledger)
        await reserve(ledger, "r1")
        batches = writer_of(ledger).batches
        assert batches is not None and batches.is_open
        [status] = await ledger.status(ALICE)  # no loop turn in between: the read commits first
        assert status.reserved == Decimal("0.1")
    finally:
        await ledger.close()


async def test_close_commits_a_reserve_still_pending(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "l.db")
    await warm(ledger)
    await reserve(ledger, "r1")
    await ledger.close()
    assert rows(tmp_path / "l.db", "SELECT request_id FROM holds") == [("r1",)]


async def test_other_writers_of_the_process_wait_for_the_commit_not_for_sqlite(tmp_path: Path) -> None:
    """Another write (here: the sweeper) queues on the write gate behind the open batch."""
    ledger = await open_ledger(tmp_path / "l.db")
    try:
        await warm(ledger)
        await reserve(ledger, "r1")
        assert await asyncio.wait_for(ledger.sweep_expired(), timeout=2) == 0
        await ledger.record(record_refused("r2"))  # a write right after one in the open batch
        assert rows(tmp_path / "l.db", "SELECT request_id FROM calls ORDER BY request_id") == [
            ("r2",),
            ("warm",),
        ]
    finally:
        await ledger.close()


def record_refused(rid: str) -> CallRecord:
    """A refused call's record (no hold, $0)."""
    return CallRecord(rid, ALICE, "openai", "gpt-test", "refused", error_code="budget_exceeded")


async def test_a_transaction_sqlite_rolled_back_fails_its_durable_writes_and_the_next_one_works(
    tmp_path: Path,
) -> None:
    """SQLite ends the whole transaction on some errors (a full disk): every write in it is lost,
    the settles waiting for it get the error (and retry), and the next write opens a new one."""
    conn = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    conn.execute("CREATE TABLE t (v INTEGER)")
    commits: list[int] = []
    batches = LoopBatches(lambda: conn, lambda: commits.append(1))
    gate = asyncio.Lock()

    def insert(c: sqlite3.Connection, v: int) -> int:
        c.execute("INSERT INTO t VALUES (?)", (v,))
        return v

    def disk_full(c: sqlite3.Connection) -> None:
        c.execute("ROLLBACK")  # what SQLite does itself on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    assert await batches.begin(gate)
    _, first = batches.write(insert, 1)
    with pytest.raises(sqlite3.OperationalError):
        batches.write(disk_full)
    with pytest.raises(BatchLostError):
        await first
    assert not gate.locked() and not batches.is_open
    assert await batches.begin(gate)
    assert batches.write(insert, 2)[0] == 2
    await asyncio.sleep(0)
    assert conn.execute("SELECT v FROM t").fetchall() == [(2,)]
    assert not gate.locked() and len(commits) == 2

    # A write failing half-way (no rollback by SQLite) takes the whole transaction with it.
    def half_done(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t VALUES (4)")
        raise ValueError("a bug after the first statement")

    assert await batches.begin(gate)
    _, third = batches.write(insert, 3)
    with pytest.raises(ValueError):
        batches.write(half_done)
    with pytest.raises(BatchLostError):
        await third
    assert conn.execute("SELECT v FROM t").fetchall() == [(2,)] and not conn.in_transaction
    conn.close()


async def test_a_settle_is_written_at_once_into_the_open_transaction(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "l.db")
    try:
        await warm(ledger)
        hold = await reserve(ledger, "r1")  # opens the shared transaction for this loop turn
        batches = writer_of(ledger).batches
        assert batches is not None
        writes = batches.writes
        settlement = ledger.settle(hold, record(hold, "0.02"))
        assert batches.writes == writes + 1 and not settlement.future.done()  # written, not committed
        assert rows(tmp_path / "l.db", "SELECT count(*) FROM calls") == [(1,)]
        assert await settlement == []  # committed at the start of the next turn; no alert crossed
        assert rows(tmp_path / "l.db", "SELECT count(*) FROM calls") == [(2,)]
        other = await reserve(ledger, "r2")
        await asyncio.sleep(0)  # its transaction commits; none is open now
        writes = batches.writes
        await ledger.settle(other, record(other, "0.01"))  # then it is written on its own
        assert batches.writes == writes + 1
        [status] = await ledger.status(ALICE)
        assert (status.spent, status.reserved) == (Decimal("0.03"), Decimal(0))
    finally:
        await ledger.close()


async def test_a_settle_written_at_once_is_written_again_if_its_transaction_is_lost(tmp_path: Path) -> None:
    """The accountant's fallback: the commit failed, so nothing was written; it settles again."""
    ledger = await open_ledger(tmp_path / "l.db")
    try:
        await warm(ledger)
        pending = PendingWrites()
        accountant = Accountant(ledger, [], pending)
        hold = await reserve(ledger, "r1")
        ctx = CallContext("r1", ALICE, "gpt-test", "openai", [], 10, 5, Decimal("0.1"))
        accountant.settle(hold, ctx, record(hold, "0.02"), SessionFigures(CostTracker(), TokenMonitor()))
        assert len(pending) == 1  # written, waiting for its commit

        def half_done(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM calls")
            raise ValueError("a write failing half-way")

        batches = writer_of(ledger).batches
        assert batches is not None
        with pytest.raises(ValueError):
            batches.write(half_done)  # the shared transaction (hold and settle) is rolled back
        await pending.flush()
        assert rows(tmp_path / "l.db", "SELECT count(*) FROM calls WHERE request_id = 'r1'") == [(1,)]
        [status] = await ledger.status(ALICE)
        # The hold went with the lost transaction; the settle charged the budget without it.
        assert (status.spent, status.reserved) == (Decimal("0.02"), Decimal(0))
    finally:
        await ledger.close()


async def test_two_ledgers_on_one_file_share_it_through_sqlites_lock(tmp_path: Path) -> None:
    """Two replicas' ledgers (here in one process, each with its own connections): while one holds
    its loop turn's transaction, the other's writes wait in a thread, and nothing is lost."""
    first = await open_ledger(tmp_path / "l.db", limit="100")
    second = await open_ledger(tmp_path / "l.db", limit="100")
    try:
        await warm(first)  # the second's first reserve finds the rows the first created

        async def call(ledger: Ledger, rid: str) -> None:
            hold = await reserve(ledger, rid, "0.5")
            await asyncio.sleep(0)
            await ledger.settle(hold, record(hold, "0.25"))

        await asyncio.gather(*(call(first if i % 2 else second, f"r{i}") for i in range(40)))
        [status] = await first.status(ALICE)
        assert (status.spent, status.reserved) == (Decimal("10"), Decimal(0))
        assert rows(tmp_path / "l.db", "SELECT count(*) FROM calls") == [(41,)]
    finally:
        await first.close()
        await second.close()
