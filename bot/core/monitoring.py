"""In-process monitoring of one session: tokens, costs against a budget, and threshold alerts.

The persistent, shared view lives in the ledger; these give a session (and the CLI) cheap answers.
"""

from __future__ import annotations

import inspect
import logging
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bot.core.errors import BudgetExceededError, ValidationError
from bot.core.types import Usage

__all__ = ["Alert", "AlertCallback", "AlertManager", "CostTracker", "TokenMonitor", "TokenStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenStats:
    """Summary of the total tokens per request."""

    requests: int
    total: int
    minimum: int
    maximum: int
    mean: float
    median: float


class TokenMonitor:
    """Records the usage of every request, overall and per model."""

    def __init__(self) -> None:
        self._requests: list[tuple[str, Usage]] = []

    def record(self, model: str, usage: Usage) -> None:
        """Add one request's usage."""
        self._requests.append((model, usage))

    @property
    def total(self) -> Usage:
        """All usage added up."""
        return sum((u for _, u in self._requests), Usage())

    def by_model(self) -> dict[str, Usage]:
        """Usage added up per model."""
        out: dict[str, Usage] = {}
        for model, usage in self._requests:
            out[model] = out.get(model, Usage()) + usage
        return out

    def stats(self, model: str | None = None) -> TokenStats:
        """Min/max/mean/median of total tokens per request (optionally for one model)."""
        totals = [u.total_tokens for m, u in self._requests if model is None or m == model]
        if not totals:
            return TokenStats(0, 0, 0, 0, 0.0, 0.0)
        return TokenStats(
            len(totals),
            sum(totals),
            min(totals),
            max(totals),
            statistics.fmean(totals),
            statistics.median(totals),
        )

    def reset(self) -> None:
        """Forget every request."""
        self._requests.clear()


class CostTracker:
    """Costs against an optional budget, with reservations so concurrent calls cannot overspend.

    ``reserve()`` and ``settle()`` are synchronous on purpose: with no ``await`` inside, each runs
    atomically on the event loop, which is all the locking one session needs.
    """

    def __init__(self, budget: Decimal | None = None, *, name: str = "session") -> None:
        if budget is not None and budget < 0:
            raise ValidationError([f"budget must be >= 0, got {budget}"])
        self.budget = budget
        self.name = name
        self._spent = Decimal(0)
        self._reserved = Decimal(0)
        self._by_model: dict[str, Decimal] = {}

    @property
    def spent(self) -> Decimal:
        """Money charged so far."""
        return self._spent

    @property
    def reserved(self) -> Decimal:
        """Money held by calls in flight."""
        return self._reserved

    @property
    def remaining(self) -> Decimal | None:
        """Money left (after holds), or None without a budget."""
        if self.budget is None:
            return None
        return max(Decimal(0), self.budget - self._spent - self._reserved)

    @property
    def fraction_used(self) -> float | None:
        """Spent / budget (0..1+), or None without a budget."""
        if not self.budget:
            return None
        return float(self._spent / self.budget)

    def reserve(self, amount: Decimal) -> None:
        """Hold ``amount`` or raise ``BudgetExceededError`` (nothing held then)."""
        if self.budget is not None and self._spent + self._reserved + amount > self.budget:
            raise BudgetExceededError(
                budget=self.name,
                limit=self.budget,
                spent=self._spent,
                reserved=self._reserved,
                requested=amount,
            )
        self._reserved += amount

    def settle(self, held: Decimal, cost: Decimal, model: str) -> None:
        """Turn a hold into the real cost (which may be less, or, for an estimate, more)."""
        self._reserved -= held
        self._spent += cost
        self._by_model[model] = self._by_model.get(model, Decimal(0)) + cost

    def release(self, held: Decimal) -> None:
        """Drop a hold without charging it."""
        self._reserved -= held

    def by_model(self) -> dict[str, Decimal]:
        """Cost per model."""
        return dict(self._by_model)

    def breakdown(self) -> dict[str, Any]:
        """Everything above as a JSON-friendly dict (money as strings)."""
        return {
            "budget": None if self.budget is None else str(self.budget),
            "spent": str(self._spent),
            "reserved": str(self._reserved),
            "remaining": None if self.remaining is None else str(self.remaining),
            "fraction_used": self.fraction_used,
            "by_model": {m: str(c) for m, c in self._by_model.items()},
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """A threshold crossed by the fraction of a budget used."""

    threshold: float
    fraction: float
    spent: Decimal
    budget: Decimal


AlertCallback = Callable[[Alert], Awaitable[None] | None]


@dataclass
class AlertManager:
    """Fires each threshold (a fraction in (0, 1]) once, the first time spend reaches it."""

    thresholds: list[float] = field(default_factory=list)
    _callbacks: list[AlertCallback] = field(default_factory=list)
    _triggered: set[float] = field(default_factory=set)

    def __post_init__(self) -> None:
        for t in self.thresholds:
            self._validate(t)
        self.thresholds = sorted(set(self.thresholds))

    @staticmethod
    def _validate(threshold: float) -> None:
        if not 0 < threshold <= 1:
            raise ValidationError([f"alert threshold must be in (0, 1], got {threshold}"])

    def add(self, threshold: float, callback: AlertCallback | None = None) -> None:
        """Watch one more threshold, optionally with a callback for every alert."""
        self._validate(threshold)
        if threshold not in self.thresholds:
            self.thresholds = sorted([*self.thresholds, threshold])
        if callback is not None and callback not in self._callbacks:
            self._callbacks.append(callback)

    @property
    def triggered(self) -> list[float]:
        """Thresholds already fired."""
        return sorted(self._triggered)

    @property
    def pending(self) -> list[float]:
        """Thresholds not yet reached."""
        return [t for t in self.thresholds if t not in self._triggered]

    async def check(self, spent: Decimal, budget: Decimal | None) -> list[Alert]:
        """Fire every newly crossed threshold; a failing callback is logged, never raised."""
        if not budget:
            return []
        fraction = float(spent / budget)
        fired = []
        for threshold in self.pending:
            if fraction >= threshold:
                self._triggered.add(threshold)
                alert = Alert(threshold, fraction, spent, budget)
                fired.append(alert)
                for callback in self._callbacks:
                    try:
                        result = callback(alert)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        log.exception("alert callback failed", extra={"threshold": threshold})
        return fired

    def reset(self) -> None:
        """Forget which thresholds fired (e.g. when a period starts again)."""
        self._triggered.clear()
