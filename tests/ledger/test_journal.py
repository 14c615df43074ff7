"""No record is ever lost: a write the database refuses after every retry goes to the local
journal, and the next start writes it (on every driver, against a real database that fails)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.core.ledger import Ledger
from bot.core.ledger.journal import Journal

from .conftest import ALICE, FakeClock, OpenLedger, budget, check_invariants, fetch, record

NOW = datetime(2025, 6, 11, 15, 30, tzinfo=UTC)
ZERO = Decimal(0)


async def fail_call_inserts(ledger: Ledger) -> None:
    """Make the database itself refuse every new calls row, as a full disk or a failover would."""
    async with ledger._db.write() as conn:
        if ledger.backend == "sqlite":
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER calls_down BEFORE INSERT ON calls"
                    " BEGIN SELECT RAISE(ABORT, 'the disk is on fire'); END"
                )
            )
        else:
            await conn.execute(
                sa.text(
                    "CREATE OR REPLACE FUNCTION calls_down() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN RAISE EXCEPTION 'the disk is on fire'; END $$"
                )
            )
            await conn.execute(
                sa.text(
                    "CREATE TRIGGER calls_down BEFORE INSERT ON calls FOR EACH ROW EXECUTE FUNCTION calls_down()"
                )
            )


async def mend_call_inserts(ledger: Ledger) -> None:
    """Undo ``fail_call_inserts``."""
    async with ledger._db.write() as conn:
        if ledger.backend == "sqlite":
            await conn.execute(sa.text("DROP TRIGGER calls_down"))
        else:
            await conn.execute(sa.text("DROP TRIGGER calls_down ON calls"))
            await conn.execute(sa.text("DROP FUNCTION calls_down()"))


async def spent(ledger: Ledger) -> dict[str, tuple[Decimal, Decimal]]:
    return {s.name: (s.spent, s.reserved) for s in await ledger.status(ALICE)}


def journal_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_records_the_database_refuses_are_journaled_and_written_at_the_next_start(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    path = tmp_path / "journal" / "unrecorded.jsonl"
    clock = FakeClock(NOW)
    budgets = [budget("global", "1.00"), budget("u", "0.50", scope="user")]
    ledger = await open_ledger(budgets, clock=clock, journal_path=str(path))
    hold = await ledger.reserve(ALICE, Decimal("0.30"), request_id="settled", model="m", provider="p")
    await fail_call_inserts(ledger)

    # The settle and a record fail against the database after their retries: neither raises,
    # both are on disk in the journal.
    assert await ledger.settle(hold, record(hold, "0.25")) == []
    await ledger.record(record("recorded", "0.05"))
    entries = journal_lines(path)
    assert [(e["kind"], e["call"]["request_id"]) for e in entries] == [
        ("settle", "settled"),
        ("record", "recorded"),
    ]
    assert await fetch(ledger, "SELECT * FROM calls") == []
    # Housekeeping while the database still refuses keeps them in the journal.
    assert await ledger.replay_journal() == 0
    assert len(journal_lines(path)) == 2
    await mend_call_inserts(ledger)
    await ledger.close()

    # The next start writes both: the ledger is as if nothing had failed.
    ledger = await open_ledger(budgets, clock=clock, journal_path=str(path))
    rows = await fetch(ledger, "SELECT request_id, outcome, cost_nano_usd FROM calls ORDER BY request_id")
    assert [tuple(r) for r in rows] == [("recorded", "ok", 50_000_000), ("settled", "ok", 250_000_000)]
    assert await spent(ledger) == {"global": (Decimal("0.30"), ZERO), "u": (Decimal("0.30"), ZERO)}
    assert not path.exists() and list(path.parent.iterdir()) == []
    assert await ledger.replay_journal() == 0
    await check_invariants(ledger)


async def test_a_journaled_settle_replaces_the_sweepers_estimate(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    """The hold expired while its record waited in the journal: the sweeper charged it as an
    interrupted call; the replayed record puts the real cost in its place."""
    path = tmp_path / "unrecorded.jsonl"
    clock = FakeClock(NOW)
    budgets = [budget("global", "1.00")]
    ledger = await open_ledger(budgets, clock=clock, ttl=60, journal_path=str(path))
    hold = await ledger.reserve(ALICE, Decimal("0.30"), request_id="late", model="m", provider="p")
    await fail_call_inserts(ledger)
    await ledger.settle(hold, record(hold, "0.10"))
    await mend_call_inserts(ledger)
    clock.advance(seconds=61)
    assert await ledger.sweep_expired() == 1
    assert await spent(ledger) == {"global": (Decimal("0.30"), ZERO)}
    assert await ledger.housekeeping() == (0, 0)  # replays the journal first
    (row,) = await fetch(ledger, "SELECT outcome, cost_nano_usd, cost_estimated FROM calls")
    assert tuple(row) == ("ok", 100_000_000, False)
    assert await spent(ledger) == {"global": (Decimal("0.10"), ZERO)}
    await check_invariants(ledger)


def test_a_torn_last_line_is_skipped_and_a_dead_replay_is_taken_over(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.append(
        {"kind": "record", "call": {"request_id": "a", "created_at": NOW}, "row_ids": [], "now": NOW}
    )
    with open(journal.path, "a") as file:
        file.write('{"kind": "rec')  # the process died mid-append
    # A replay by a process that died (pid 2**22 + 1 is above Linux's pid_max default).
    orphan = tmp_path / f"j.jsonl.replaying-{2**22 + 1}"
    orphan.write_text(
        json.dumps({"kind": "record", "call": {"request_id": "b"}, "row_ids": [], "now": None}) + "\n"
    )
    with journal.replaying() as entries:
        assert sorted(e["call"]["request_id"] for e in entries) == ["a", "b"]
        assert entries[0]["call"]["created_at"] == NOW or entries[1]["call"].get("created_at") is None
    assert not journal.pending()


@pytest.mark.parametrize("kind", ["settle", "record"])
async def test_without_a_journal_a_failed_write_still_raises(open_ledger: OpenLedger, kind: str) -> None:
    """PostgreSQL with no journal configured: the failure reaches the caller (who logs the record)."""
    ledger = await open_ledger([budget("global", "1.00")])
    ledger.journal = None
    ledger._writes._journal = None
    hold = await ledger.reserve(ALICE, Decimal("0.30"), request_id="r", model="m", provider="p")
    await fail_call_inserts(ledger)
    with pytest.raises(Exception, match="on fire"):
        if kind == "settle":
            await ledger.settle(hold, record(hold, "0.25"))
        else:
            await ledger.record(record("x", "0.05"))
