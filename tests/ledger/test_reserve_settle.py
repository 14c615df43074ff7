"""Reserve, settle, release, record and sweep: the money rules, on every backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from bot.core.errors import BudgetExceededError, ConfigurationError, DuplicateRequestError
from bot.core.ledger import Hold, Ledger
from bot.core.ledger import upkeep as ledger_module
from bot.core.types import Principal

from .conftest import (
    ALICE,
    BOB,
    FakeClock,
    OpenLedger,
    budget,
    check_invariants,
    fetch,
    record,
    undelivered_alerts,
)

NOW = datetime(2025, 6, 11, 15, 30, tzinfo=UTC)
ZERO = Decimal(0)


async def reserve(
    ledger: Ledger, amount: str, rid: str, principal: Principal = ALICE, model: str = "gpt-test"
) -> Hold:
    return await ledger.reserve(principal, Decimal(amount), request_id=rid, model=model, provider="openai")


async def spent(ledger: Ledger, name: str) -> tuple[Decimal, Decimal]:
    (row,) = [s for s in await ledger.status_all() if s.name == name]
    return row.spent, row.reserved


async def test_reserve_settle_charges_the_real_cost(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([budget("global", "1.00"), budget("per-user", "0.50", scope="user")])
    hold = await reserve(ledger, "0.30", "r1")
    assert hold.amount == Decimal("0.30") and len(hold.budget_period_ids) == 2
    assert await spent(ledger, "global") == (ZERO, Decimal("0.3"))
    await ledger.settle(hold, record(hold, "0.123456789"))
    assert await spent(ledger, "global") == (Decimal("0.123456789"), ZERO)
    assert await spent(ledger, "per-user") == (Decimal("0.123456789"), ZERO)
    totals = await ledger.totals()
    assert totals.cost_usd == Decimal("0.123456789") and totals.calls == 1
    (row,) = await fetch(ledger, "SELECT outcome, cost_nano_usd, input_tokens FROM calls")
    assert tuple(row) == ("ok", 123456789, 100)


async def test_all_or_nothing_names_the_budget_that_lacks_room(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(
        [budget("global", "1.00"), budget("per-user", "0.10", scope="user", period="daily")],
        clock=FakeClock(NOW),
    )
    hold = await reserve(ledger, "0.08", "r1")
    with pytest.raises(BudgetExceededError) as info:
        await reserve(ledger, "0.05", "r2")
    err = info.value
    assert err.budget == "per-user (user T1:alice)"
    assert (err.limit, err.spent, err.reserved, err.requested) == (
        Decimal("0.1"), Decimal(0), Decimal("0.08"), Decimal("0.05")
    )  # fmt: skip
    assert err.resets_at == datetime(2025, 6, 12, tzinfo=UTC)
    # Nothing of the refused call was held on the global budget either, and no row was written.
    assert await spent(ledger, "global") == (ZERO, Decimal("0.08"))
    assert (await ledger.totals()).calls == 0
    # Bob has his own per-user budget.
    await reserve(ledger, "0.05", "r3", principal=BOB)
    await ledger.release(hold)
    assert await spent(ledger, "global") == (ZERO, Decimal("0.05"))


async def test_settle_and_release_are_idempotent(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([budget("global", "1.00")])
    hold = await reserve(ledger, "0.10", "r1")
    await ledger.settle(hold, record(hold, "0.07"))
    await ledger.settle(hold, record(hold, "0.07"))
    await ledger.release(hold, record(hold, "0.07", outcome="error"))
    await ledger.release(hold)
    await ledger.record(record(hold, "0.07"))
    assert await spent(ledger, "global") == (Decimal("0.07"), ZERO)
    assert (await ledger.totals()).calls == 1


async def test_settle_above_the_hold_charges_everything_and_then_refuses(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([budget("global", "0.10")])
    hold = await reserve(ledger, "0.09", "r1")
    await ledger.settle(hold, record(hold, "0.12"))  # provider billed more than estimated
    assert await spent(ledger, "global") == (Decimal("0.12"), ZERO)
    with pytest.raises(BudgetExceededError):
        await reserve(ledger, "0", "r2")  # even a free call: the budget is over


async def test_release_with_billed_tokens_charges_them(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([budget("global", "1.00")])
    failed = await reserve(ledger, "0.20", "r1")
    await ledger.release(failed, record(failed, "0.015", outcome="error"))
    cancelled = await reserve(ledger, "0.20", "r2")
    await ledger.release(cancelled, record(cancelled, outcome="cancelled"))
    assert await spent(ledger, "global") == (Decimal("0.015"), ZERO)
    by_outcome = (await ledger.totals()).by_outcome
    assert {k: (v.calls, v.cost_usd) for k, v in by_outcome.items()} == {
        "error": (1, Decimal("0.015")),
        "cancelled": (1, ZERO),
    }


async def test_record_refused_at_zero_and_unreserved_cost(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(
        [budget("global", "1.00"), budget("gpt", "1.00", scope="model", key="gpt-test")]
    )
    await ledger.record(record("refused-1", outcome="refused"))
    assert await ledger.status_all() == []  # a $0 row creates no budget rows
    await ledger.record(record("direct", "0.25"))  # e.g. a cost learned after the fact
    assert await spent(ledger, "global") == (Decimal("0.25"), ZERO)
    assert await spent(ledger, "gpt") == (Decimal("0.25"), ZERO)
    assert (await ledger.totals()).cost_usd == Decimal("0.25")


async def test_no_budgets_still_holds_and_writes_rows(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([])
    hold = await reserve(ledger, "5", "r1")
    assert hold.budget_period_ids == ()
    assert await ledger.settle(hold, record(hold, "4.5")) == []
    assert (await ledger.totals()).cost_usd == Decimal("4.5")
    assert await fetch(ledger, "SELECT * FROM holds") == []


async def test_money_is_exact_and_never_float(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([budget("global", "0.3")])
    for i in range(3):
        hold = await reserve(ledger, "0.1", f"r{i}")
        await ledger.settle(hold, record(hold, "0.1"))
    # 0.1 + 0.1 + 0.1 == 0.3 exactly (as floats it would not be), so the budget is exactly full.
    assert await spent(ledger, "global") == (Decimal("0.3"), ZERO)
    assert (await ledger.status_all())[0].remaining == 0
    with pytest.raises(TypeError, match="Decimal"):
        await ledger.reserve(ALICE, 0.1, request_id="f", model="m", provider="p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        await reserve(ledger, "-1", "neg")
    # Below a nano-dollar rounds up: never hold less than asked.
    hold = await reserve(ledger, "0", "tiny")
    await ledger.settle(hold, record(hold, "0.0000000001"))
    assert (await ledger.totals()).cost_usd == Decimal("0.300000001")


async def test_duplicate_request_and_mismatched_record(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([budget("global", "1")])
    hold = await reserve(ledger, "0.1", "same")
    with pytest.raises(ValueError, match="already has a hold"):
        await reserve(ledger, "0.1", "same")
    with pytest.raises(ValueError, match="hold is for 'same'"):
        await ledger.settle(hold, record("other", "0.1"))
    assert await spent(ledger, "global") == (ZERO, Decimal("0.1"))


async def test_expired_holds_become_interrupted_calls_and_late_settles_correct_them(
    open_ledger: OpenLedger,
) -> None:
    clock = FakeClock(NOW)
    ledger = await open_ledger([budget("global", "1.00")], clock=clock, ttl=60)
    await reserve(ledger, "0.70", "crashed")
    late = await reserve(ledger, "0.20", "slow")
    assert late.expires_at == datetime(2025, 6, 11, 15, 31, tzinfo=UTC)
    assert await ledger.sweep_expired() == 0
    with pytest.raises(BudgetExceededError):
        await reserve(ledger, "0.5", "blocked")
    clock.advance(seconds=60)
    # Expired: each hold is now a call that may have been billed, charged its hold (estimated).
    assert await spent(ledger, "global") == (Decimal("0.9"), ZERO)  # as the sweep will leave it
    with pytest.raises(BudgetExceededError):
        await reserve(ledger, "0.5", "after-expiry")  # swept before refusing: still no room
    rows = await fetch(
        ledger, "SELECT request_id, outcome, cost_nano_usd, cost_estimated FROM calls ORDER BY request_id"
    )
    assert [tuple(r) for r in rows] == [
        ("crashed", "interrupted", 700_000_000, True),
        ("slow", "interrupted", 200_000_000, True),
    ]
    assert await ledger.sweep_expired() == 0
    # The slow call finishes after all (its process lived; its record was late): the real cost
    # replaces the estimate, and the difference is given back.
    await ledger.settle(late, record(late, "0.05"))
    assert await spent(ledger, "global") == (Decimal("0.75"), ZERO)
    (slow,) = await fetch(
        ledger, "SELECT outcome, cost_nano_usd, cost_estimated FROM calls WHERE request_id = 'slow'"
    )
    assert tuple(slow) == ("ok", 50_000_000, False)
    # A repeated settle still charges nothing.
    await ledger.settle(late, record(late, "0.05"))
    assert await spent(ledger, "global") == (Decimal("0.75"), ZERO)
    fresh = await reserve(ledger, "0.25", "fits")
    await ledger.release(fresh)
    assert await fetch(ledger, "SELECT * FROM holds") == []
    await check_invariants(ledger)


async def test_sweep_returns_the_number_released(
    open_ledger: OpenLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "_SWEEP_BATCH", 3)  # several batches
    clock = FakeClock(NOW)
    ledger = await open_ledger([budget("global", "10"), budget("u", "10", scope="user")], clock=clock, ttl=10)
    for i in range(7):
        await reserve(ledger, "0.1", f"r{i}", principal=ALICE if i % 2 else BOB)
    clock.advance(seconds=5)
    keep = await reserve(ledger, "0.1", "keep")
    clock.advance(seconds=5)
    assert await ledger.sweep_expired() == 7
    assert await spent(ledger, "global") == (Decimal("0.7"), Decimal("0.1"))
    assert {s.scope_key: s.spent for s in await ledger.status_all() if s.name == "u"} == {
        "T1:alice": Decimal("0.3"),
        "T1:bob": Decimal("0.4"),
    }
    await ledger.release(keep)
    assert all(s.reserved == 0 for s in await ledger.status_all())


async def test_limit_changes_and_admin_overrides(open_ledger: OpenLedger, ledger_url: str) -> None:
    clock = FakeClock(NOW)
    ledger = await open_ledger([budget("global", "1.00"), budget("u", "0.10", scope="user")], clock=clock)
    hold = await reserve(ledger, "0.10", "r1")
    await ledger.settle(hold, record(hold, "0.10"))
    await ledger.close()
    # Config raised the per-user limit: the current period uses the new limit.
    ledger = await open_ledger([budget("global", "1.00"), budget("u", "0.20", scope="user")], clock=clock)
    status = {s.name: s for s in await ledger.status(ALICE)}
    assert status["u"].limit == Decimal("0.2") and status["u"].spent == Decimal("0.1")
    hold = await reserve(ledger, "0.10", "r2")
    await ledger.release(hold)
    # An admin override wins over config, for one user or for every key, and survives a restart.
    await ledger.set_budget_limit("u", "T1:alice", Decimal("0.5"))
    await ledger.set_budget_limit("u", None, Decimal("0.15"))
    await ledger.close()
    ledger = await open_ledger([budget("global", "1.00"), budget("u", "0.20", scope="user")], clock=clock)
    assert [s.limit for s in await ledger.status(ALICE) if s.name == "u"] == [Decimal("0.5")]
    assert [s.limit for s in await ledger.status(BOB) if s.name == "u"] == [Decimal("0.15")]
    await reserve(ledger, "0.35", "r3")
    with pytest.raises(BudgetExceededError):
        await reserve(ledger, "0.16", "r4", principal=BOB)
    with pytest.raises(ConfigurationError, match="unknown budget"):
        await ledger.set_budget_limit("nope", None, Decimal(1))


async def test_budget_added_later_starts_clean(open_ledger: OpenLedger) -> None:
    clock = FakeClock(NOW)
    ledger = await open_ledger([budget("global", "1.00")], clock=clock)
    hold = await reserve(ledger, "0.5", "r1")
    await ledger.settle(hold, record(hold, "0.5"))
    await ledger.close()
    ledger = await open_ledger([budget("global", "1.00"), budget("team", "0.6", scope="team")], clock=clock)
    team = next(s for s in await ledger.status(ALICE) if s.name == "team")
    assert (team.spent, team.remaining) == (ZERO, Decimal("0.6"))
    hold = await reserve(ledger, "0.5", "r2")  # the whole team limit is free; global has 0.5 left
    await ledger.settle(hold, record(hold, "0.5"))
    assert await spent(ledger, "team") == (Decimal("0.5"), ZERO)
    assert await spent(ledger, "global") == (Decimal("1.0"), ZERO)


async def test_settles_racing_the_sweeper_give_each_hold_back_once(open_ledger: OpenLedger) -> None:
    clock = FakeClock(NOW)
    budgets = [budget("global", "100"), budget("u", "100", scope="user")]
    settler = await open_ledger(budgets, clock=clock, ttl=10)
    sweeper = await open_ledger(budgets, clock=clock, ttl=10)  # another replica: its own connections
    holds = [await reserve(settler, "1", f"r{i}", principal=ALICE if i % 2 else BOB) for i in range(40)]
    clock.advance(seconds=11)
    await sweeper.status_all()  # open its connection first, so that it races from the start
    settles = [
        settler.settle(h, record(h, "0.5", principal=ALICE if i % 2 else BOB)) for i, h in enumerate(holds)
    ]
    results = await asyncio.gather(sweeper.sweep_expired(), *settles)
    swept = results[0]
    assert isinstance(swept, int) and 0 <= swept <= 40
    # Whoever won each race, every call is charged once and every hold given back once.
    assert await spent(settler, "global") == (Decimal(20), ZERO)
    assert {s.scope_key: (s.spent, s.reserved) for s in await settler.status_all() if s.name == "u"} == {
        "T1:alice": (Decimal(10), ZERO),
        "T1:bob": (Decimal(10), ZERO),
    }


async def test_expired_holds_are_never_room_nor_reservation_even_in_a_burst(open_ledger: OpenLedger) -> None:
    """$0.513 of a dead process's expired holds on a $0.60 budget: shown at once as the spend
    the sweep makes of them (never as held, never as free); a burst of 20 calls that fit in what
    is left all pass, and the first that does not fit is refused."""
    clock = FakeClock(NOW)
    ledger = await open_ledger([budget("global", "0.60")], clock=clock, ttl=60)
    for i in range(9):
        await reserve(ledger, "0.057", f"dead-{i}")  # 9 x 0.057 = 0.513, never settled
    clock.advance(seconds=61)
    (status,) = await ledger.status(ALICE)
    assert (status.spent, status.reserved, status.remaining) == (Decimal("0.513"), ZERO, Decimal("0.087"))
    (row,) = await ledger.status_all()
    assert row.reserved == ZERO
    holds = await asyncio.gather(*(reserve(ledger, "0.004", f"burst-{i}") for i in range(20)))
    assert len(holds) == 20  # 20 x 0.004 = 0.08 <= 0.087: none refused
    with pytest.raises(BudgetExceededError):
        await reserve(ledger, "0.01", "over")  # 0.513 + 0.08 + 0.01 > 0.60: refused, as it must be
    (status,) = await ledger.status(ALICE)
    assert (status.spent, status.reserved) == (Decimal("0.513"), Decimal("0.08"))
    assert len(await fetch(ledger, "SELECT * FROM calls WHERE outcome = 'interrupted'")) == 9
    for hold in holds:
        await ledger.release(hold)
    await check_invariants(ledger)


@pytest.mark.parametrize(
    "spelling", ["gpt-4o", "GPT-4O", "Gpt-4o", " gpt-4o", "gpt-4o-2024-08-06", "GPT-4o-2024-11-20"]
)
async def test_a_model_budget_covers_every_spelling_and_snapshot_of_its_model(
    open_ledger: OpenLedger, spelling: str
) -> None:
    """``scope: model, key: GPT-4o``: case and dated snapshots never escape it."""
    ledger = await open_ledger([budget("global", "100"), budget("4o", "0.10", scope="model", key="GPT-4o")])
    held = await ledger.reserve(ALICE, Decimal("0.08"), request_id="a", model=spelling, provider="openai")
    with pytest.raises(BudgetExceededError, match="4o"):
        await ledger.reserve(ALICE, Decimal("0.05"), request_id="b", model="gpt-4o", provider="openai")
    await ledger.settle(held, record(held, "0.08", model=spelling))
    statuses = {s.name: s for s in await ledger.status(ALICE, model=spelling.upper())}
    assert statuses["4o"].spent == Decimal("0.08") and statuses["4o"].scope_key == "gpt-4o"
    # Another model is not charged to it.
    other = await ledger.reserve(
        ALICE, Decimal("0.5"), request_id="c", model="gpt-4o-mini", provider="openai"
    )
    assert len(other.budget_period_ids) == 1


async def test_housekeeping_frees_expired_holds_and_prunes_old_request_keys(open_ledger: OpenLedger) -> None:
    clock = FakeClock(NOW)
    ledger = await open_ledger([budget("global", "1.00")], clock=clock, ttl=60)
    await ledger.claim_request("slack-old")
    await reserve(ledger, "0.40", "dead")
    clock.advance(hours=71)
    await ledger.claim_request("slack-recent")
    assert await ledger.housekeeping() == (1, 0)  # the hold expired long ago; no key is 72 h old yet
    assert await spent(ledger, "global") == (Decimal("0.4"), ZERO)  # an interrupted call now
    clock.advance(hours=2)
    assert await ledger.housekeeping() == (0, 1)
    await ledger.claim_request("slack-old")  # pruned: claimable again
    with pytest.raises(DuplicateRequestError):
        await ledger.claim_request("slack-recent")


async def test_a_budget_that_starts_refusing_posts_its_exhausted_alert_once(open_ledger: OpenLedger) -> None:
    """A channel budget refusing at 88% (the call needs more than is left) says so, once per
    period; an admin lowering a limit to the spend says so too."""
    clock = FakeClock(NOW)
    ledger = await open_ledger(
        [
            budget("global", "100"),
            budget("chan", "0.20", scope="channel", channel="#eng", alert_thresholds=[0.5]),
        ],
        clock=clock,
    )
    hold = await reserve(ledger, "0.176", "r1")
    await ledger.settle(hold, record(hold, "0.176"))
    for i in range(5):  # a burst of refusals: 0.024 left, each call needs 0.03
        with pytest.raises(BudgetExceededError, match="chan"):
            await reserve(ledger, "0.03", f"refused-{i}")
    exhausted = [a for a in await undelivered_alerts(ledger) if a.kind == "exhausted"]
    assert len(exhausted) == 1
    (alert,) = exhausted
    assert (alert.budget, alert.scope_key, alert.channel) == ("chan", "C1", "#eng")
    assert (alert.spent, alert.limit) == (Decimal("0.176"), Decimal("0.2"))
    # A fresh ledger (another replica, a restart) refusing again still makes no second alert.
    again = await open_ledger(
        [budget("global", "100"), budget("chan", "0.20", scope="channel", channel="#eng")], clock=clock
    )
    with pytest.raises(BudgetExceededError):
        await reserve(again, "0.03", "refused-again")
    assert len([a for a in await undelivered_alerts(ledger) if a.kind == "exhausted"]) == 1
    # Lowering the global limit below its spend exhausts it at once.
    await ledger.set_budget_limit("global", None, Decimal("0.10"))
    kinds = sorted((a.budget, a.kind) for a in await undelivered_alerts(ledger) if a.kind == "exhausted")
    assert kinds == [("chan", "exhausted"), ("global", "exhausted")]
    # The next period starts clean: its first refusal alerts again.
    clock.advance(days=40)
    with pytest.raises(BudgetExceededError):
        await reserve(ledger, "0.25", "next-period")
    assert len([a for a in await undelivered_alerts(ledger) if a.kind == "exhausted"]) == 3
