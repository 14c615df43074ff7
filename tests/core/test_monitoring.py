"""Token monitor, cost tracker and alert manager on their own."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bot.core.errors import BudgetExceededError, ValidationError
from bot.core.monitoring import Alert, AlertManager, CostTracker, TokenMonitor
from bot.core.types import Usage


def test_token_monitor_stats_per_model_and_reset() -> None:
    monitor = TokenMonitor()
    monitor.record("a", Usage(10, 5))
    monitor.record("a", Usage(20, 10))
    monitor.record("b", Usage(100, 0, cache_read_tokens=50))
    stats = monitor.stats()
    assert (stats.requests, stats.total, stats.minimum, stats.maximum) == (3, 145, 15, 100)
    assert stats.median == 30 and stats.mean == pytest.approx(145 / 3)
    assert monitor.stats("a").total == 45 and monitor.by_model()["b"].cache_read_tokens == 50
    assert monitor.total == Usage(130, 15, 50)
    monitor.reset()
    assert monitor.stats().requests == 0 and monitor.total == Usage()


def test_cost_tracker_reserves_settles_and_refuses() -> None:
    tracker = CostTracker(Decimal("1.00"))
    tracker.reserve(Decimal("0.60"))
    with pytest.raises(BudgetExceededError) as info:
        tracker.reserve(Decimal("0.50"))
    assert info.value.remaining == Decimal("0.40") and info.value.requested == Decimal("0.50")
    tracker.settle(Decimal("0.60"), Decimal("0.25"), "gpt-4o")
    assert tracker.spent == Decimal("0.25") and tracker.reserved == 0
    assert tracker.remaining == Decimal("0.75") and tracker.fraction_used == 0.25
    tracker.reserve(Decimal("0.10"))
    tracker.release(Decimal("0.10"))
    assert tracker.breakdown() == {
        "budget": "1.00", "spent": "0.25", "reserved": "0.00", "remaining": "0.75",
        "fraction_used": 0.25, "by_model": {"gpt-4o": "0.25"},
    }  # fmt: skip
    unlimited = CostTracker()
    unlimited.reserve(Decimal(10**6))
    assert unlimited.remaining is None and unlimited.fraction_used is None
    with pytest.raises(ValidationError):
        CostTracker(Decimal(-1))


async def test_alert_manager_triggered_pending_callbacks_reset() -> None:
    seen: list[Alert] = []

    async def async_callback(alert: Alert) -> None:
        seen.append(alert)

    def broken(alert: Alert) -> None:
        raise RuntimeError("callback bug")

    manager = AlertManager([0.8, 0.5])
    manager.add(1.0, broken)  # a failing callback is logged, never raised
    manager.add(0.5, async_callback)
    assert manager.pending == [0.5, 0.8, 1.0]
    fired = await manager.check(Decimal("0.85"), Decimal("1"))
    assert [a.threshold for a in fired] == [0.5, 0.8] and [a.threshold for a in seen] == [0.5, 0.8]
    assert await manager.check(Decimal("0.9"), Decimal("1")) == []
    assert manager.triggered == [0.5, 0.8] and manager.pending == [1.0]
    assert [a.threshold for a in await manager.check(Decimal("1"), Decimal("1"))] == [1.0]
    manager.reset()
    assert manager.triggered == [] and await manager.check(Decimal(0), None) == []
    with pytest.raises(ValidationError, match=r"\(0, 1\]"):
        manager.add(0)
