"""``Gateway``: the core as the faces see it, built once by the composition root.

It owns the session factory (and so the provider clients) and the ledger, and answers the
questions every face asks: make a call for a principal, what are its budgets, which models exist,
what the team spent, and whether the ledger's database answers. Faces go through these methods and
never reach ``gateway.ledger`` themselves, so the ledger can change without touching them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from types import TracebackType
from typing import Self
from zoneinfo import ZoneInfo

from bot.core.config import AppConfig, Period
from bot.core.errors import ConfigurationError
from bot.core.factory import SessionFactory
from bot.core.ledger import BudgetStatus, Ledger, SpendRow, period_bounds
from bot.core.providers import OnText
from bot.core.session import Addon, CallObserver
from bot.core.types import ChatResult, ModelInfo, Principal

__all__ = ["Gateway", "TeamSpend", "tightest"]


@dataclass(frozen=True, slots=True)
class TeamSpend:
    """What everyone spent over a time range: per user and per (provider, model), largest first."""

    #: One row per ``team:user`` key (the key budgets use).
    by_user: list[SpendRow]
    #: One row per model; ``SpendRow.provider`` names the provider that served it.
    by_model: list[SpendRow]


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
        """One call for ``principal``, charged to every budget that applies to it.

        It runs straight through the process's one ``CallPipeline``: no session is built per call.
        """
        return await self.sessions.pipeline.run(
            principal,
            prompt,
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            dry_run=dry_run,
            on_text=on_text,
            request_id=request_id,
            addons=self.sessions.addons,
        )

    @property
    def has_ledger(self) -> bool:
        """True when a ledger is configured: spend is recorded and budgets are enforced."""
        return self.ledger is not None

    def _require_ledger(self, what: str) -> Ledger:
        if self.ledger is None:
            raise ConfigurationError(
                f"no ledger is configured, so {what}",
                hint="Build the gateway with a ledger (bot.app.open_core without with_ledger=False).",
            )
        return self.ledger

    async def ping_ledger(self) -> None:
        """Check that the ledger's database answers one trivial query; raises what it raised.

        Without a ledger there is nothing to reach, so nothing is checked (and nothing raised).
        """
        if self.ledger is not None:
            await self.ledger.ping()

    async def budget_status(self, principal: Principal) -> list[BudgetStatus]:
        """Every budget that applies to ``principal`` (empty without a ledger)."""
        if self.ledger is None:
            return []
        await self.sessions.pending.flush()  # the charges of calls that have answered count
        return await self.ledger.status(principal)

    async def tightest_budget(self, principal: Principal) -> BudgetStatus | None:
        """The applicable budget with the least money left (what limits the next call), or None."""
        return tightest(await self.budget_status(principal))

    async def status_all(self) -> list[BudgetStatus]:
        """Every budget row of the current periods, one per scope key (empty without a ledger).

        For the metrics scrape: it does not wait for the writes in flight, so a scrape stays cheap
        and its figures are at most one answered call behind.
        """
        if self.ledger is None:
            return []
        return await self.ledger.status_all()

    async def team_spend(self, start: datetime, end: datetime) -> TeamSpend:
        """Spend of calls in ``[start, end)`` by user and by model.

        Raises ``ConfigurationError`` without a ledger (check ``has_ledger`` first).
        """
        ledger = self._require_ledger("no spend is recorded")
        await self.sessions.pending.flush()  # as for budget_status: answered calls count
        return TeamSpend(
            by_user=await ledger.spend_by_user(start, end), by_model=await ledger.spend_by_model(start, end)
        )

    async def set_budget_limit(self, name: str, scope_key: str | None, limit: Decimal) -> None:
        """Override budget ``name``'s limit persistently and apply it to the current period.

        ``scope_key`` picks one key of a per-key budget (e.g. ``T1:U2``); None overrides every key.
        Raises ``ConfigurationError`` for an unknown budget, or without a ledger (see ``has_ledger``).
        """
        await self._require_ledger("budgets cannot be changed").set_budget_limit(name, scope_key, limit)

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


def tightest(statuses: Iterable[BudgetStatus]) -> BudgetStatus | None:
    """Of budget statuses, the one with the least money left: it limits the next call (None: no budgets).

    Of equal ones the first wins, so the answer is stable for a given order.
    """
    return min(statuses, key=attrgetter("remaining"), default=None)
