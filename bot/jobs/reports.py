"""Spend reports: the figures of the last complete day or week (or of today so far), read from
the ledger, as text, JSON or Block Kit, and a PNG chart of spend per day.

A scheduled report covers the last *complete* period in ``database.timezone`` (the daily report at
09:00 covers yesterday; the weekly one on Monday covers last Monday to Sunday), so its figures
never change once posted, and compares it with the period before. ``today`` (``bot report
--period today``) covers today until now, compared with yesterday until the same time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from bot.core.config import Period
from bot.core.ledger import Ledger, SpendRow, Totals, period_bounds
from bot.jobs.chart import spend_chart_png
from bot.slack.formatting import usd

__all__ = ["Report", "ReportPeriod", "build_report", "report_bounds"]

ReportPeriod = Literal["day", "week", "today"]
#: Days the chart shows, ending with the reported period.
_CHART_DAYS = {"day": 7, "week": 14, "today": 7}
#: Rows listed per breakdown in a message (the JSON has them all).
_TOP = 10
Block = dict[str, Any]


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _counted(row: SpendRow) -> str:
    """``12 calls`` or ``12 calls, 3 refused``: a refused call was never made, so never a call."""
    return _calls(row.calls) + (f", {row.refused} refused" if row.refused else "")


def _midnight(day: Any, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def report_bounds(period: ReportPeriod, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime, datetime]:
    """``(previous_start, start, end)`` of the last complete ``period`` before ``now``, in UTC;
    for ``today``, of today until ``now`` (after yesterday's start)."""
    if period == "today":
        start, _ = period_bounds("daily", now, tz)
        previous, _ = period_bounds("daily", start - timedelta(microseconds=1), tz)
        return previous, start, now
    ledger_period: Period = "daily" if period == "day" else "weekly"
    end, _ = period_bounds(ledger_period, now, tz)
    start, _ = period_bounds(ledger_period, end - timedelta(microseconds=1), tz)
    previous, _ = period_bounds(ledger_period, start - timedelta(microseconds=1), tz)
    return previous, start, end


@dataclass(frozen=True, slots=True)
class Report:
    """What was spent in one period, how, and how that compares with the period before."""

    period: ReportPeriod
    start: datetime
    end: datetime
    previous_start: datetime
    timezone: str
    totals: Totals
    previous: Totals
    by_user: list[SpendRow]
    by_model: list[SpendRow]
    by_surface: list[SpendRow]
    #: Every day of the chart, oldest first, days without calls included at $0.
    by_day: list[SpendRow] = field(default_factory=list)
    #: End of the compared range: ``start`` for a complete period; for ``today``, the same time
    #: of day yesterday (so a morning is compared with a morning).
    previous_end: datetime | None = None

    @property
    def change_usd(self) -> Decimal:
        """Spend minus the previous period's."""
        return self.totals.cost_usd - self.previous.cost_usd

    @property
    def change_pct(self) -> float | None:
        """Change in percent of the previous period's spend (None when that was $0)."""
        before = self.previous.cost_usd
        return None if before == 0 else float(self.change_usd / before * 100)

    @property
    def label(self) -> str:
        """``2026-11-25`` for a day, ``2026-11-16 to 2026-11-22`` for a week (local dates)."""
        tz = ZoneInfo(self.timezone)
        first = self.start.astimezone(tz).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(tz).date()
        return first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"

    def chart_png(self) -> bytes:
        """A PNG bar chart of spend per day."""
        return spend_chart_png([(row.key, row.cost_usd) for row in self.by_day])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (money as exact strings)."""
        pct = self.change_pct
        return {
            "period": self.period,
            "label": self.label,
            "timezone": self.timezone,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "previous_start": self.previous_start.isoformat(),
            "total_usd": str(self.totals.cost_usd),
            "calls": self.totals.calls,
            "refused": self.totals.refused,
            "previous_total_usd": str(self.previous.cost_usd),
            "change_usd": str(self.change_usd),
            "change_pct": None if pct is None else round(pct, 2),
            "by_outcome": {k: v.to_dict() for k, v in self.totals.by_outcome.items()},
            "by_user": [r.to_dict() for r in self.by_user],
            "by_model": [r.to_dict() for r in self.by_model],
            "by_surface": [r.to_dict() for r in self.by_surface],
            "by_day": [r.to_dict() for r in self.by_day],
        }

    def _change(self) -> str:
        pct = self.change_pct
        sign = "+" if self.change_usd >= 0 else "-"
        rel = "" if pct is None else f", {pct:+.0f}%"
        before = "yesterday by this time" if self.period == "today" else f"the {self.period} before"
        return f"{sign}{usd(abs(self.change_usd))}{rel} vs {usd(self.previous.cost_usd)} {before}"

    def _lines(self, rows: list[SpendRow], name: str) -> list[str]:
        out = [
            f"{r.label}{f' ({r.provider})' if r.provider else ''}: {usd(r.cost_usd)} · {_counted(r)}"
            for r in rows[:_TOP]
        ]
        if len(rows) > _TOP:
            out.append(f"…and {len(rows) - _TOP} more {name}")
        return out or ["no calls"]

    def title(self) -> str:
        """``Daily spend report, 2026-11-25`` (``Spend report of today so far, …`` for ``today``)."""
        if self.period == "today":
            return f"Spend report of today so far, {self.label}"
        return f"{'Daily' if self.period == 'day' else 'Weekly'} spend report, {self.label}"

    def text(self) -> str:
        """A plain-text report (the CLI's output and the message's fallback text)."""
        parts = [
            self.title(),
            f"Total: {usd(self.totals.cost_usd)} in {_counted(self.totals.total)} ({self._change()})",
        ]
        for name, rows in (("users", self.by_user), ("models", self.by_model), ("surfaces", self.by_surface)):
            parts.append(f"By {name[:-1]}:")
            parts += [f"  {line}" for line in self._lines(rows, name)]
        parts.append("Per day: " + ", ".join(f"{r.key[5:]} {usd(r.cost_usd)}" for r in self.by_day))
        return "\n".join(parts)

    def blocks(self) -> list[Block]:
        """Block Kit: header, total and change, then one section per breakdown."""

        def section(text: str) -> Block:
            return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}

        blocks: list[Block] = [
            {"type": "header", "text": {"type": "plain_text", "text": self.title()[:150]}},
            section(
                f"*Total:* {usd(self.totals.cost_usd)} in {_counted(self.totals.total)}\n{self._change()}"
            ),
        ]
        for name, rows in (("users", self.by_user), ("models", self.by_model), ("surfaces", self.by_surface)):
            lines = self._lines(rows, name)
            blocks.append(section(f"*By {name[:-1]}*\n" + "\n".join(f"• {line}" for line in lines)))
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"Times in {self.timezone}. Chart below."}],
            }
        )
        return blocks


async def build_report(ledger: Ledger, period: ReportPeriod, now: datetime) -> Report:
    """The report of the last complete ``period`` before ``now``, from the ledger's calls rows."""
    tz = ledger.timezone
    previous, start, end = report_bounds(period, now, tz)
    # Today so far is compared with yesterday until the same time; a whole period with the one before.
    previous_end = end - timedelta(days=1) if period == "today" else start
    last_day = (end - timedelta(microseconds=1)).astimezone(tz).date()
    first_day = last_day - timedelta(days=_CHART_DAYS[period] - 1)
    chart_start = min(_midnight(first_day, tz), start)
    spent_days = {r.key: r for r in await ledger.spend_by_day(chart_start, end)}
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    return Report(
        period=period,
        start=start,
        end=end,
        previous_start=previous,
        timezone=str(tz),
        totals=await ledger.totals(start, end),
        previous=await ledger.totals(previous, previous_end),
        by_user=await ledger.spend_by_user(start, end),
        by_model=await ledger.spend_by_model(start, end),
        by_surface=await ledger.spend_by_surface(start, end),
        by_day=[spent_days.get(d.isoformat(), SpendRow(d.isoformat(), 0, Decimal(0))) for d in days],
        previous_end=previous_end,
    )
