"""Reports for the faces: spend by model, user and local day; totals; status of every budget."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from bot.core.ledger import BudgetStatus
from bot.core.types import Outcome, Principal, Usage

from .conftest import ALICE, BOB, FakeClock, OpenLedger, budget, record

T0 = datetime(2025, 3, 8, tzinfo=UTC)
T_END = datetime(2025, 3, 12, tzinfo=UTC)
ZERO = Decimal(0)


async def test_spend_reports(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([], timezone="America/New_York")
    mcp = Principal(surface="mcp", client_id="claude-code")
    calls: list[tuple[str, Principal, str, str, str, datetime, Outcome]] = [
        # 03:00 UTC on the 9th is still the 8th in New York.
        ("a", ALICE, "gpt-4o", "openai", "0.10", datetime(2025, 3, 9, 3, tzinfo=UTC), "ok"),
        ("b", ALICE, "claude", "anthropic", "0.20", datetime(2025, 3, 9, 5, 0, tzinfo=UTC), "ok"),
        ("c", BOB, "gpt-4o", "openai", "0.05", datetime(2025, 3, 10, 3, 59, 59, tzinfo=UTC), "error"),
        ("d", BOB, "gpt-4o", "openai", "0", datetime(2025, 3, 10, 4, 0, tzinfo=UTC), "refused"),
        ("e", mcp, "gpt-4o", "azure", "0.01", datetime(2025, 3, 11, 12, tzinfo=UTC), "ok"),
        ("outside", ALICE, "gpt-4o", "openai", "9", datetime(2025, 3, 12, 0, tzinfo=UTC), "ok"),
    ]
    for rid, who, model, provider, cost, when, outcome in calls:
        await ledger.record(
            record(rid, cost, principal=who, model=model, provider=provider, created_at=when, outcome=outcome,
                   usage=Usage(input_tokens=10, output_tokens=5, cache_read_tokens=2, reasoning_tokens=1))
        )  # fmt: skip

    by_model = await ledger.spend_by_model(T0, T_END)
    # A refused call was never made: it is counted apart from the calls.
    assert [(r.provider, r.key, r.calls, r.refused, r.cost_usd) for r in by_model] == [
        ("anthropic", "claude", 1, 0, Decimal("0.2")),
        ("openai", "gpt-4o", 2, 1, Decimal("0.15")),
        ("azure", "gpt-4o", 1, 0, Decimal("0.01")),
    ]
    assert by_model[1].input_tokens == 30 and by_model[1].cache_read_tokens == 6

    by_user = await ledger.spend_by_user(T0, T_END)
    # Every caller by name: an MCP client is no "(none)".
    assert [(r.key, r.kind, r.calls, r.refused, r.cost_usd) for r in by_user] == [
        ("T1:alice", "slack_user", 2, 0, Decimal("0.3")),
        ("T1:bob", "slack_user", 1, 1, Decimal("0.05")),
        ("claude-code", "mcp_client", 1, 0, Decimal("0.01")),
    ]
    assert by_user[2].label == "mcp client claude-code"

    by_day = await ledger.spend_by_day(T0, T_END)
    assert [(r.key, r.calls, r.cost_usd) for r in by_day] == [
        ("2025-03-08", 1, Decimal("0.1")),
        ("2025-03-09", 2, Decimal("0.25")),  # the 23-hour DST day ends at 04:00 UTC
        ("2025-03-10", 0, Decimal("0")),
        ("2025-03-11", 1, Decimal("0.01")),
    ]

    totals = await ledger.totals(T0, T_END)
    assert (totals.calls, totals.refused, totals.cost_usd, totals.total.reasoning_tokens) == (
        4, 1, Decimal("0.36"), 5,
    )  # fmt: skip
    assert {k: (v.calls, v.refused, v.cost_usd) for k, v in totals.by_outcome.items()} == {
        "ok": (3, 0, Decimal("0.31")),
        "refused": (1, 1, Decimal(0)),
        "error": (1, 0, Decimal("0.05")),
    }
    assert (await ledger.totals()).cost_usd == Decimal("9.36")
    assert totals.to_dict()["total"]["cost_usd"] == "0.36"


async def test_status_for_a_principal_and_for_every_row(open_ledger: OpenLedger) -> None:
    clock = FakeClock(datetime(2025, 6, 11, 12, tzinfo=UTC))
    budgets = [
        budget("global", "100", period="total"),
        budget("per-user", "1", scope="user", period="daily", channel="#spend"),
        budget("gpt", "5", scope="model", key="gpt-test", period="weekly"),
    ]
    ledger = await open_ledger(budgets, clock=clock)
    # Before any call, status shows every applicable budget untouched (and creates nothing).
    fresh = await ledger.status(ALICE, model="gpt-test", provider="openai")
    assert [(s.name, s.scope_key, s.spent, s.remaining) for s in fresh] == [
        ("global", "*", ZERO, Decimal(100)),
        ("per-user", "T1:alice", ZERO, Decimal(1)),
        ("gpt", "gpt-test", ZERO, Decimal(5)),
    ]
    assert await ledger.status_all() == []
    for who, rid, cost in ((ALICE, "a", "0.25"), (BOB, "b", "0.5")):
        hold = await ledger.reserve(who, Decimal("0.5"), request_id=rid, model="gpt-test", provider="openai")
        await ledger.settle(hold, record(hold, cost, principal=who))
    held = await ledger.reserve(ALICE, Decimal("0.1"), request_id="c", model="other", provider="openai")

    everything = await ledger.status_all()
    assert [(s.name, s.scope_key, s.spent, s.reserved) for s in everything] == [
        ("global", "*", Decimal("0.75"), Decimal("0.1")),
        ("gpt", "gpt-test", Decimal("0.75"), 0),
        ("per-user", "T1:alice", Decimal("0.25"), Decimal("0.1")),
        ("per-user", "T1:bob", Decimal("0.5"), 0),
    ]
    alice = {s.name: s for s in await ledger.status(ALICE)}
    assert set(alice) == {"global", "per-user"}  # no model given: the model budget does not apply
    user = alice["per-user"]
    assert isinstance(user, BudgetStatus)
    assert (user.remaining, user.fraction_used, user.channel) == (Decimal("0.65"), 0.25, "#spend")
    assert user.period_start == datetime(2025, 6, 11, tzinfo=UTC)
    assert user.resets_at == datetime(2025, 6, 12, tzinfo=UTC)
    assert user.projected_spend == Decimal("0.5")  # half the day gone, a quarter spent
    total = alice["global"]
    assert (total.period_start, total.resets_at, total.projected_spend) == (None, None, None)
    assert user.to_dict()["remaining"] == "0.65" and not user.exceeded
    await ledger.release(held)
    # A new day: the daily rows of yesterday are not current any more.
    clock.set(datetime(2025, 6, 12, 0, 0, 1, tzinfo=UTC))
    assert [s.name for s in await ledger.status_all()] == ["global", "gpt"]
