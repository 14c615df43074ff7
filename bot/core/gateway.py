"""``Gateway``: the core as the faces see it, built once by the composition root.

It owns the session factory (and so the provider clients) and the ledger, and answers the
questions every face asks: make a call for a principal, what are its budgets, which models exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from types import TracebackType
from typing import Any, Self, TypeVar
from zoneinfo import ZoneInfo

from bot.core.config import AppConfig, Period
from bot.core.factory import SessionFactory
from bot.core.ledger import Ledger, period_bounds
from bot.core.providers import OnText
from bot.core.session import Addon, CallObserver
from bot.core.types import ChatResult, ModelInfo, Principal

__all__ = ["Gateway", "tightest"]

T = TypeVar("T")


class Gateway:
    """The single session core shared by the CLI, the MCP tools and the Slack commands."""

    def __init__(
        self,
        config: AppConfig,
        *,
        ledger: Ledger | None = None,
        env: Mapping[str, str] | None = None,
        addons: Sequence[Addon] = (),
        observers: Sequence[CallObserver] = (),
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.sessions = SessionFactory(config, ledger=ledger, env=env, addons=addons, observers=observers)

    def add_observer(self, observer: CallObserver) -> None:
        """Tell ``observer`` about every later call (metrics, immediate alert delivery)."""
        self.sessions.observers.append(observer)

    def remove_observer(self, observer: CallObserver) -> None:
        """Stop telling ``observer`` about calls (sessions already running may still tell it once)."""
        if observer in self.sessions.observers:
            self.sessions.observers.remove(observer)

    async def generate(
        self,
        principal: Principal,
        prompt: str,
        *,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        dry_run: bool = False,
        on_text: OnText | None = None,
        request_id: str | None = None,
    ) -> ChatResult:
        """One call for ``principal``, charged to every budget that applies to it."""
        async with self.sessions.create(principal=principal) as session:
            return await session.chat(
                prompt,
                model=model,
                system=system,
                max_tokens=max_tokens,
                temperature=temperature,
                dry_run=dry_run,
                on_text=on_text,
                request_id=request_id,
            )

    async def budget_status(self, principal: Principal) -> list[dict[str, Any]]:
        """Every budget that applies to ``principal``, as JSON-friendly dicts (money as strings)."""
        if self.ledger is None:
            return []
        await self.sessions.pending.flush()  # the charges of calls that have answered count
        return [s.to_dict() for s in await self.ledger.status(principal)]

    async def tightest_budget(self, principal: Principal) -> dict[str, Any] | None:
        """The applicable budget with the least money left (what limits the next call), or None."""
        return tightest(await self.budget_status(principal))

    def current_period(self, period: Period = "monthly") -> tuple[datetime, datetime]:
        """Start and end (UTC) of the current day/week/month in the configured time zone."""
        if period == "total":
            raise ValueError("a total budget has no current period")
        start, end = period_bounds(period, datetime.now(UTC), ZoneInfo(self.config.database.timezone))
        assert end is not None
        return start, end

    async def list_models(self, provider: str | None = None) -> list[tuple[ModelInfo, bool]]:
        """Usable models with whether their provider has a key."""
        return await self.sessions.list_models(provider)

    async def close(self) -> None:
        """Close provider clients and the ledger."""
        await self.sessions.close()
        if self.ledger is not None:
            await self.ledger.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def tightest(statuses: Sequence[T], remaining: Callable[[T], Any] | None = None) -> T | None:
    """Of budget statuses, the one with the least money left: it limits the next call (None: no budgets).

    ``remaining`` reads an entry's money left (a Decimal or its string); by default ``entry["remaining"]``.
    """
    read: Callable[[Any], Any] = remaining or itemgetter("remaining")
    return min(statuses, key=lambda s: Decimal(read(s)), default=None)
