"""Period boundaries in the configured zone, and which budgets apply to a call (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.config import Period
from bot.core.ledger import period_bounds
from bot.core.ledger.periods import TOTAL_PERIOD_START, applicable_budgets, call_scope_keys, model_family
from bot.core.types import Principal

from .conftest import budget

NY = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")


def local(
    tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """A wall-clock time in ``tz``, as aware UTC."""
    return datetime(year, month, day, hour, minute, second, tzinfo=tz).astimezone(UTC)


def test_daily_starts_at_local_midnight() -> None:
    start, end = period_bounds("daily", local(NY, 2025, 1, 15, 23, 59), NY)
    assert start == local(NY, 2025, 1, 15) == datetime(2025, 1, 15, 5, tzinfo=UTC)
    assert end == datetime(2025, 1, 16, 5, tzinfo=UTC)
    # One second after local midnight is the next day, although UTC is still on the same date.
    assert period_bounds("daily", local(NY, 2025, 1, 16, 0, 0, 1), NY)[0] == end


def test_weekly_starts_on_monday_in_tokyo() -> None:
    sunday_late = local(TOKYO, 2025, 3, 16, 23, 59, 59)  # a Sunday
    start, end = period_bounds("weekly", sunday_late, TOKYO)
    assert start == local(TOKYO, 2025, 3, 10) and start.astimezone(TOKYO).weekday() == 0
    assert end == local(TOKYO, 2025, 3, 17) == datetime(2025, 3, 16, 15, tzinfo=UTC)
    assert period_bounds("weekly", end, TOKYO)[0] == end


def test_monthly_starts_on_the_first_and_crosses_the_year() -> None:
    start, end = period_bounds("monthly", local(NY, 2025, 12, 31, 23, 0), NY)
    assert (start, end) == (local(NY, 2025, 12, 1), local(NY, 2026, 1, 1))
    assert period_bounds("monthly", local(NY, 2024, 2, 29, 12), NY) == (
        local(NY, 2024, 2, 1),
        local(NY, 2024, 3, 1),
    )


def test_dst_days_are_23_and_25_hours_long() -> None:
    start, end = period_bounds("daily", local(NY, 2025, 3, 9, 12), NY)
    assert (start, end) == (datetime(2025, 3, 9, 5, tzinfo=UTC), datetime(2025, 3, 10, 4, tzinfo=UTC))
    assert length("daily", local(NY, 2025, 3, 9, 12)) == timedelta(hours=23)
    assert length("daily", local(NY, 2025, 11, 2, 12)) == timedelta(hours=25)
    # The March month spans the change: 31 days less one hour.
    assert length("monthly", local(NY, 2025, 3, 20)) == timedelta(days=31, hours=-1)


def length(period: Period, now: datetime, tz: ZoneInfo = NY) -> timedelta:
    start, end = period_bounds(period, now, tz)
    assert end is not None
    return end - start


def test_midnight_inside_a_dst_gap() -> None:
    # Santiago moved clocks from 24:00 to 01:00 on 2024-09-08: that day has no midnight.
    santiago = ZoneInfo("America/Santiago")
    start, _ = period_bounds("daily", datetime(2024, 9, 8, 12, tzinfo=UTC), santiago)
    assert start == datetime(2024, 9, 8, 4, tzinfo=UTC)  # the instant of the change
    assert start.astimezone(santiago).hour == 1
    assert length("daily", start, santiago) == timedelta(hours=23)


def test_total_never_resets() -> None:
    assert period_bounds("total", datetime(2031, 5, 5, tzinfo=UTC), NY) == (TOTAL_PERIOD_START, None)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_bounds("daily", datetime(2025, 1, 1), NY)


@settings(max_examples=300, deadline=None)
@given(
    instant=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)),
    zone=st.sampled_from(["UTC", "America/New_York", "Asia/Tokyo", "Europe/London", "Asia/Kathmandu",
                          "Australia/Lord_Howe", "America/Santiago", "Pacific/Chatham"]),
    period=st.sampled_from(["daily", "weekly", "monthly"]),
)  # fmt: skip
def test_period_contains_now_and_starts_on_a_local_boundary(
    instant: datetime, zone: str, period: str
) -> None:
    tz = ZoneInfo(zone)
    start, end = period_bounds(period, instant, tz)  # type: ignore[arg-type]
    assert end is not None
    assert start <= instant < end
    local_start = start.astimezone(tz)
    # The first instant of a local day: midnight, or the end of a DST gap that swallowed midnight.
    before = (start - timedelta(microseconds=1)).astimezone(tz)
    assert before.date() < local_start.date()
    if period == "weekly":
        assert local_start.weekday() == 0
    if period == "monthly":
        assert local_start.day == 1
    assert period_bounds(period, start, tz) == (start, end)  # type: ignore[arg-type]
    assert period_bounds(period, end, tz)[0] == end  # type: ignore[arg-type]


def test_budgets_apply_by_scope_and_key() -> None:
    budgets = [
        budget("global", "10", key="ignored-for-global"),
        budget("each-user", "1", scope="user"),
        budget("alice", "1", scope="user", key="T1:alice"),
        budget("team-2", "1", scope="team", key="T2"),
        budget("gpt", "1", scope="model", key="gpt-test"),
        budget("per-provider", "1", scope="provider"),
        budget("per-client", "1", scope="client"),
    ]
    alice = Principal(surface="slack", team_id="T1", user_id="alice")
    keys = call_scope_keys(alice, model="gpt-test", provider="openai")
    targets = applicable_budgets(budgets, keys, datetime(2025, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))
    assert [(t.budget.name, t.scope_key) for t in targets] == [
        ("global", "*"),
        ("each-user", "T1:alice"),
        ("alice", "T1:alice"),
        ("gpt", "gpt-test"),
        ("per-provider", "openai"),
    ]
    # Without model/provider (status before a call is chosen) those budgets do not apply.
    keys = call_scope_keys(Principal.cli("bob"), model=None, provider=None)
    names = [
        t.budget.name
        for t in applicable_budgets(budgets, keys, datetime(2025, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))
    ]
    assert names == ["global", "each-user"]


def test_a_models_family_is_its_name_in_lower_case_without_a_dated_snapshot() -> None:
    assert model_family("GPT-4o") == model_family("gpt-4o-2024-08-06") == "gpt-4o"
    assert model_family("claude-3-5-haiku-20241022") == "claude-3-5-haiku"
    assert model_family("gpt-4o-mini") == "gpt-4o-mini"  # a different model, not a snapshot
    assert model_family("llama3:8b") == "llama3:8b"
