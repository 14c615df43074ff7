"""Budgets reset on local calendar boundaries, and threshold alerts fire once per period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from bot.core.errors import BudgetExceededError
from bot.core.ledger import Alert, Ledger

from .conftest import ALICE, FakeClock, OpenLedger, budget, record, undelivered_alerts

NY = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")


def local(
    tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """A wall-clock time in ``tz``, as aware UTC."""
    return datetime(year, month, day, hour, minute, second, tzinfo=tz).astimezone(UTC)


async def spend(ledger: Ledger, rid: str, amount: str) -> list[Alert]:
    hold = await ledger.reserve(ALICE, Decimal(amount), request_id=rid, model="m", provider="p")
    return await ledger.settle(hold, record(hold, amount))


async def refused(ledger: Ledger, rid: str, amount: str) -> BudgetExceededError:
    with pytest.raises(BudgetExceededError) as info:
        await ledger.reserve(ALICE, Decimal(amount), request_id=rid, model="m", provider="p")
    return info.value


@pytest.mark.parametrize(
    ("zone", "period", "last_moment", "reset"),
    [
        # Daily in New York on the day DST starts (a 23-hour day).
        ("America/New_York", "daily", (2025, 3, 9, 23, 59, 59), (2025, 3, 10)),
        # Daily in New York on the day DST ends (a 25-hour day): 01:30 happens twice, no reset.
        ("America/New_York", "daily", (2025, 11, 2, 23, 59, 59), (2025, 11, 3)),
        # Weekly in Tokyo: Sunday night to Monday.
        ("Asia/Tokyo", "weekly", (2025, 3, 16, 23, 59, 59), (2025, 3, 17)),
        # Monthly in New York: the last second of January to the 1st of February.
        ("America/New_York", "monthly", (2025, 1, 31, 23, 59, 59), (2025, 2, 1)),
    ],
)
async def test_budget_resets_on_the_local_boundary(
    open_ledger: OpenLedger, zone: str, period: str, last_moment: tuple[int, ...], reset: tuple[int, ...]
) -> None:
    tz = ZoneInfo(zone)
    clock = FakeClock(local(tz, *last_moment) - timedelta(hours=20))
    ledger = await open_ledger([budget("b", "0.10", period=period)], clock=clock, timezone=zone)
    await spend(ledger, "early", "0.10")
    clock.set(local(tz, *last_moment))
    err = await refused(ledger, "late", "0.01")
    assert err.resets_at == local(tz, *reset)
    clock.set(local(tz, *reset))
    await spend(ledger, "next-period", "0.10")
    (status,) = await ledger.status_all()
    assert status.period_start == local(tz, *reset) and status.spent == Decimal("0.1")
    # Last period's row is untouched and still there.
    assert (await ledger.totals()).cost_usd == Decimal("0.2")


async def test_dst_day_length_drives_the_projection(open_ledger: OpenLedger) -> None:
    clock = FakeClock(local(NY, 2025, 3, 9, 0, 0))
    ledger = await open_ledger(
        [budget("daily", "10", period="daily")], clock=clock, timezone="America/New_York"
    )
    clock.advance(hours=2)  # 02:00 local does not exist: it is 03:00 EDT, 2 real hours in
    await spend(ledger, "r1", "1.00")
    (status,) = await ledger.status(ALICE)
    assert status.resets_at == local(NY, 2025, 3, 10)
    assert status.projected_spend == Decimal("11.5")  # $1 per 2 h over a 23-hour day
    assert (status.fraction_used, status.remaining) == (0.1, Decimal(9))


async def test_threshold_alerts_once_per_period_and_again_next_period(open_ledger: OpenLedger) -> None:
    clock = FakeClock(local(TOKYO, 2025, 5, 20, 9))
    ledger = await open_ledger(
        [
            budget(
                "team", "1.00", scope="team", period="daily", alert_thresholds=[0.5, 0.8, 1.0], channel="#ops"
            )
        ],
        clock=clock,
        timezone="Asia/Tokyo",
    )
    assert await spend(ledger, "r1", "0.40") == []
    crossed = await spend(ledger, "r2", "0.45")  # 85%: crosses 50% and 80% at once
    assert [a.threshold for a in crossed] == [0.5, 0.8]
    assert crossed[0].channel == "#ops" and crossed[0].scope_key == "T1"
    assert crossed[1].spent == Decimal("0.85") and crossed[1].fraction == pytest.approx(0.85)
    assert crossed[0].period_start == local(TOKYO, 2025, 5, 20)
    assert await spend(ledger, "r3", "0.05") == []  # 90%: nothing new
    assert [a.threshold for a in await spend(ledger, "r4", "0.10")] == [1.0]
    pending = await undelivered_alerts(ledger)
    assert [a.threshold for a in pending] == [0.5, 0.8, 1.0]
    assert "team (team T1)" in pending[2].message and "100%" in pending[2].message
    # Delivered alerts leave the outbox; a second delivery of the same alert learns it lost.
    assert len(await ledger.outbox.claim("r1", lease=timedelta(minutes=1), limit=10)) == 3
    assert await ledger.outbox.delivered(pending[0].id, "r1") is True
    assert await ledger.outbox.delivered(pending[0].id, "r1") is False
    await ledger.outbox.failed(pending[1].id, "r1", "Slack said no", retry_at=clock.now)
    pending = await undelivered_alerts(ledger)
    assert [(a.threshold, a.attempts) for a in pending] == [(0.8, 1), (1.0, 0)]
    # The next day is a new period: the same thresholds alert again.
    clock.set(local(TOKYO, 2025, 5, 21, 0, 0, 1))
    again = await spend(ledger, "r5", "0.60")
    assert [a.threshold for a in again] == [0.5]
    assert again[0].period_start == local(TOKYO, 2025, 5, 21)
    assert len(await undelivered_alerts(ledger)) == 3


async def test_alerts_are_created_once_across_replicas(open_ledger: OpenLedger) -> None:
    clock = FakeClock(datetime(2025, 5, 20, 12, tzinfo=UTC))
    budgets = [budget("global", "1.00", period="total", alert_thresholds=[0.5])]
    first = await open_ledger(budgets, clock=clock)
    second = await open_ledger(budgets, clock=clock)
    created = await first.settle(
        await first.reserve(ALICE, Decimal("0.6"), request_id="a", model="m", provider="p"),
        record("a", "0.6"),
    )
    assert [a.threshold for a in created] == [0.5] and created[0].period_start is None
    # The other replica reaches the same threshold in the same period: no second alert.
    assert await second.settle(
        await second.reserve(ALICE, Decimal("0.1"), request_id="b", model="m", provider="p"), record("b", "0.1")
    ) == []  # fmt: skip
    assert len(await undelivered_alerts(second)) == 1
