"""No overspend under contention: 500 concurrent calls, two OS processes, and a SIGKILLed process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from asyncio.subprocess import Process
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from bot.core.config import BudgetConfig
from bot.core.errors import BudgetExceededError
from bot.core.ledger import Ledger

from ._worker import USERS, run_calls
from .conftest import FakeClock, OpenLedger, fetch

ROOT = Path(__file__).resolve().parents[2]

# $0.01 holds against budgets with room for 50: global, the model, and each of 4 users (20 each).
BUDGETS = [
    {"name": "global", "limit_usd": "0.50", "period": "total"},
    {"name": "model", "scope": "model", "key": "gpt-test", "limit_usd": "0.50", "period": "total"},
    {"name": "per-user", "scope": "user", "limit_usd": "0.20", "period": "total"},
]


def budgets() -> list[BudgetConfig]:
    return [BudgetConfig(**b) for b in BUDGETS]  # type: ignore[arg-type]


async def assert_no_overspend(ledger: Ledger, ok: list[str], refused: list[str]) -> None:
    """Every budget within its limit, every call accounted for, and budgets equal to the calls rows."""
    rows = await fetch(
        ledger,
        "SELECT budget, scope_key, limit_nano_usd, spent_nano_usd, reserved_nano_usd FROM budget_periods",
    )
    assert {r.budget for r in rows} == {"global", "model", "per-user"}
    for r in rows:
        assert r.spent_nano_usd <= r.limit_nano_usd, r
        assert r.reserved_nano_usd == 0, r
    calls = await fetch(ledger, "SELECT request_id, outcome, cost_nano_usd, team_id, user_id FROM calls")
    assert sorted(c.request_id for c in calls if c.outcome == "ok") == sorted(ok)
    assert sorted(c.request_id for c in calls if c.outcome == "refused") == sorted(refused)
    assert all(c.cost_nano_usd == 0 for c in calls if c.outcome == "refused")
    assert len(calls) == len(ok) + len(refused)
    per_user: dict[str, int] = defaultdict(int)
    for c in calls:
        per_user[f"{c.team_id}:{c.user_id}"] += c.cost_nano_usd
    total = sum(per_user.values())
    spent = {(r.budget, r.scope_key): r.spent_nano_usd for r in rows}
    assert spent[("global", "*")] == total == spent[("model", "gpt-test")]
    assert {k: v for (b, k), v in spent.items() if b == "per-user"} == {
        k: v for k, v in per_user.items() if v
    }
    # Each call holds $0.01 and costs at most that, so at least 50 must have got through.
    assert len(ok) >= 50
    assert (await ledger.totals()).cost_usd * 10**9 == total
    assert await fetch(ledger, "SELECT * FROM holds") == []


async def test_500_concurrent_calls_never_overspend(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(budgets())
    outcome = await run_calls(ledger, "p", ops=500, concurrency=500)
    await assert_no_overspend(ledger, outcome["ok"], outcome["refused"])


async def start_worker(mode: str, url: str, budgets_json: list[dict[str, str]], *args: str) -> Process:
    """Start ``tests/ledger/_worker.py`` in a new Python process."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.ledger._worker", mode, "--url", url, "--budgets", json.dumps(budgets_json),
        *args,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def stop(worker: Process) -> None:
    if worker.returncode is None:
        worker.kill()
    await worker.wait()


async def test_two_processes_never_overspend(open_ledger: OpenLedger, ledger_url: str) -> None:
    # The workers create the schema themselves, at the same moment: migrations must cope.
    workers = [
        await start_worker(
            "contend", ledger_url, BUDGETS, "--prefix", f"proc{i}", "--ops", "250", "--seed", str(i)
        )
        for i in (1, 2)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            assert await asyncio.wait_for(w.stdout.readline(), 60) == b"ready\n"
        for w in workers:  # release both at once
            assert w.stdin is not None
            w.stdin.write(b"go\n")
            await w.stdin.drain()
        outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), 90)
    finally:
        for w in workers:
            await stop(w)
    assert [w.returncode for w in workers] == [0, 0]
    results = [json.loads(out) for out, _ in outputs]
    ledger = await open_ledger(budgets())
    ok = [rid for r in results for rid in r["ok"]]
    refused = [rid for r in results for rid in r["refused"]]
    assert len(ok) + len(refused) == 500
    await assert_no_overspend(ledger, ok, refused)


async def test_sigkill_mid_calls_loses_nothing_and_holds_expire(
    open_ledger: OpenLedger, ledger_url: str
) -> None:
    ttl = 60
    limits = [{"name": "global", "limit_usd": "10", "period": "total"}]
    worker = await start_worker("loop", ledger_url, limits, "--ttl", str(ttl), "--prefix", "k")
    try:
        assert worker.stdout is not None
        while True:
            line = await asyncio.wait_for(worker.stdout.readline(), 60)
            assert line, "the worker exited early"
            if int(line.split()[1]) >= 40:
                break
        worker.send_signal(signal.SIGKILL)  # mid-loop: calls in flight, holds taken, maybe mid-commit
        await worker.wait()
    finally:
        await stop(worker)
    assert worker.returncode == -signal.SIGKILL

    clock = FakeClock(datetime.now(UTC))
    ledger = await open_ledger(
        [BudgetConfig(name="global", limit_usd=Decimal(10), period="total")], clock=clock, ttl=ttl
    )
    (status,) = await ledger.status_all()
    calls = await fetch(ledger, "SELECT COUNT(*), SUM(cost_nano_usd) FROM calls WHERE outcome = 'ok'")
    assert calls[0][0] >= 40
    # Every settle was all or nothing: the budget's spend is exactly the sum of the calls rows.
    assert status.spent * 10**9 == calls[0][1]
    assert (await ledger.totals()).cost_usd == status.spent
    # The dead process's holds (at least the $1 call in flight) still count until they expire...
    assert status.reserved >= 1
    held = await fetch(ledger, "SELECT request_id, amount_nano_usd FROM holds ORDER BY request_id")
    everything_left = status.limit - status.spent
    with pytest.raises(BudgetExceededError):
        await ledger.reserve(USERS[0], everything_left, request_id="after", model="m", provider="p")
    # ...and once the clock passes their expiry, the sweep (run by that reserve's refusal) turns
    # each into an interrupted call charged its hold: it may have been billed.
    clock.advance(seconds=ttl + 1)
    with pytest.raises(BudgetExceededError):
        await ledger.reserve(USERS[0], everything_left, request_id="after", model="m", provider="p")
    interrupted = await fetch(
        ledger,
        "SELECT request_id, cost_nano_usd, cost_estimated, surface, model, error_code FROM calls"
        " WHERE outcome = 'interrupted' ORDER BY request_id",
    )
    assert [(r[0], r[1]) for r in interrupted] == [tuple(h) for h in held]
    assert all(
        r[2] and r[3] == "slack" and r[4] == "gpt-test" and r[5] == "process_died" for r in interrupted
    )
    (status,) = await ledger.status_all()
    everything = await fetch(ledger, "SELECT SUM(cost_nano_usd) FROM calls")
    assert status.reserved == 0 and status.spent * 10**9 == everything[0][0]
    hold = await ledger.reserve(USERS[0], status.remaining, request_id="after", model="m", provider="p")
    (status,) = await ledger.status_all()
    assert status.remaining == Decimal(0)
    assert [r.id for r in await fetch(ledger, "SELECT id FROM holds")] == [hold.id]
    assert hold.expires_at == clock.now + timedelta(seconds=ttl)
