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

from bot.core import budget_admin
from bot.core.amounts import parse_limit
from bot.core.config import AppConfig, BudgetConfig, Period
from bot.core.errors import ConfigurationError, ValidationError
from bot.core.factory import SessionFactory
from bot.core.ledger import BudgetStatus, CallEntry, Ledger, Override, SpendRow, period_bounds
from bot.core.people import IssuedToken, People, PersonalToken
from bot.core.providers import OnText
from bot.core.session import Addon, CallObserver
from bot.core.types import ChatResult, Message, ModelInfo, Principal

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
        prompt: str | Sequence[Message],
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

        ``prompt`` is one user message or a whole conversation (every turn is counted and reserved).

        ``prompt`` is one user message, or a whole conversation (a Slack thread): every message
        is counted and held for like a single prompt.

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

    def budget_target(self, target: str) -> tuple[str, str | None]:
        """``NAME[:KEY]`` as an admin writes it, split into the budget's name and the key."""
        return budget_admin.split_target(target, self.config.budgets)

    async def _override_key(
        self, ledger: Ledger, name: str, scope_key: str | None, team: str | None
    ) -> tuple[BudgetConfig, str, list[str]]:
        budget = next((b for b in self.config.budgets if b.name == name), None)
        if budget is None:
            raise budget_admin.unknown_budget(name, self.config.budgets)
        known = await ledger.known_keys(name, limit=50)
        # Clients with spend count too: a personal token's name is a client no config lists.
        clients = {*self.config.mcp.clients, self.config.mcp.stdio_client, *known}
        key = budget_admin.resolve_key(
            budget, scope_key, team=team, known=known, clients=clients, providers=self.config.providers
        )
        return budget, key, known

    async def set_budget_limit(
        self,
        name: str,
        scope_key: str | None,
        limit: Decimal | str,
        *,
        by: str | None = None,
        via: str | None = None,
        team: str | None = None,
    ) -> budget_admin.LimitChange:
        """Override budget ``name``'s limit persistently and apply it to the current period.

        ``scope_key`` picks one key of a per-key budget (``T1:U2``; a bare Slack user ``U2`` is
        completed with ``team``, the admin's own); None overrides every key (or the budget's one
        configured key). ``limit`` may be the text the admin typed (``$0.50``, ``1e9``). ``by`` and
        ``via`` record who set it and through which face. Raises ``ConfigurationError`` for an
        unknown budget or without a ledger (see ``has_ledger``), ``ValidationError`` for an amount
        out of range or a key that could never match (naming the forms that work).
        """
        ledger = self._require_ledger("budgets cannot be changed")
        amount = parse_limit(limit)
        budget, key, known = await self._override_key(ledger, name, scope_key, team)
        before = {(o.budget, o.scope_key): o for o in await ledger.overrides()}
        await ledger.set_budget_limit(name, key, amount, set_by=by, set_via=via)
        notes = budget_admin.shadow_notes(budget, key, list(before.values()))
        if key != "*" and key not in known:
            notes.append(
                f"no call from {budget.scope} {key} is recorded yet; the limit applies from its first"
            )
        return budget_admin.LimitChange(
            name, budget.scope, key, amount, budget.limit_usd, before.get((name, key)), notes
        )

    async def unset_budget_limit(
        self, name: str, scope_key: str | None, *, team: str | None = None
    ) -> budget_admin.LimitChange:
        """Remove an admin's override, so the config file's limit (or every key's override) applies.

        Raises ``ValidationError`` naming the overrides that exist when there is none to remove.
        """
        ledger = self._require_ledger("budgets cannot be changed")
        budget, key, _ = await self._override_key(ledger, name, scope_key, team)
        before = {(o.budget, o.scope_key): o for o in await ledger.overrides()}
        previous = before.get((name, key))
        if previous is None and key == "*" and budget.key is not None:  # an older version's override
            previous = next((o for o in before.values() if o.budget == name), None)
        if previous is None or not await ledger.unset_budget_limit(name, key):
            mine = [o.scope_key for o in before.values() if o.budget == name]
            listed = ", ".join(name if k == "*" else f"{name}:{k}" for k in mine) or "none"
            raise ValidationError(
                [f"budget '{name}' has no override for {'every key' if key == '*' else key}."],
                hint=f"Its overrides: {listed}.",
            )
        every = before.get((name, "*")) if key != "*" else None
        limit = every.limit if every is not None else budget.limit_usd
        return budget_admin.LimitChange(name, budget.scope, key, limit, budget.limit_usd, previous)

    async def budget_overrides(self) -> list[Override]:
        """Every admin override in the ledger, with who set it, when and through which face."""
        return await self._require_ledger("no override is recorded").overrides()

    async def log_override_drift(self) -> None:
        """Log (warning) every override that makes a limit differ from the config file, with both
        figures: run at start-up, so an override never wins silently."""
        if self.ledger is None:
            return
        try:
            overrides = await self.ledger.overrides()
        except Exception:  # start-up goes on: readiness reports a ledger that does not answer
            budget_admin.log.warning("could not read the budget overrides to compare them with config")
            return
        budget_admin.log_drift(self.config, overrides)

    async def recent_calls(
        self,
        *,
        since: datetime | None = None,
        caller: str | None = None,
        limit: int = 50,
        of: Principal | None = None,
    ) -> list[CallEntry]:
        """The most recent calls, newest first (``bot calls``); ``caller`` is a user key (``T1:U2``),
        a bare Slack user id, a CLI user's or an MCP client's name. ``of`` keeps exactly one
        principal's: a person's calls from every face, or an MCP client's (never a CLI user's
        of the same name)."""
        ledger = self._require_ledger("no call is recorded")
        await self.sessions.pending.flush()  # the calls that have answered are listed
        return await ledger.recent_calls(since=since, caller=caller, limit=limit, of=of)

    # -- personal MCP tokens (the rules of who may do what are in bot.core.people) -------------

    def _people(self, what: str) -> People:
        ledger = self._require_ledger(what)
        return People(ledger.tokens, reserved_names=self.config.mcp.clients)

    async def issue_token(
        self,
        asking: Principal,
        *,
        name: str | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
    ) -> IssuedToken:
        """Make a personal MCP token: a Slack user's for themselves, the CLI's for anyone named.

        The secret is in the result only (stored hashed). Raises ``TokenPermissionError``,
        ``ValidationError`` (bad name, too many tokens), or ``ConfigurationError`` without a ledger.
        """
        people = self._people("personal tokens cannot be made")
        return await people.issue(asking, name=name, user_id=user_id, team_id=team_id)

    async def list_tokens(
        self, asking: Principal, *, user_id: str | None = None, include_revoked: bool = False
    ) -> list[PersonalToken]:
        """The personal tokens ``asking`` may see (never their secrets), newest first."""
        people = self._people("there are no personal tokens")
        return await people.list(asking, user_id=user_id, include_revoked=include_revoked)

    async def revoke_token(self, asking: Principal, token_id: str) -> PersonalToken:
        """Revoke a personal token ``asking`` may manage; raises ``ValidationError`` if there is none."""
        return await self._people("there are no personal tokens").revoke(asking, token_id)

    async def check_token(self, secret: str) -> PersonalToken | None:
        """The person behind a personal token's bearer secret, or None (unknown, revoked, no ledger).

        ``bot.core.people.token_principal`` turns the answer into the principal its calls charge.
        """
        if self.ledger is None:
            return None
        return await self._people("").check(secret)

    def current_period(self, period: Period = "monthly") -> tuple[datetime, datetime]:
        """Start and end (UTC) of the current day/week/month in the configured time zone."""
        if period == "total":
            raise ValueError("a total budget has no current period")
        start, end = period_bounds(period, datetime.now(UTC), ZoneInfo(self.config.database.timezone))
        assert end is not None
        return start, end

    async def list_models(self, provider: str | None = None) -> list[tuple[ModelInfo, bool]]:
        """Usable models with whether their provider has a key.

        Raises ``ValidationError`` listing the known providers when ``provider`` is not one.
        """
        if provider is not None and provider not in self.config.providers:
            raise ValidationError(
                [f"unknown provider '{provider}'."],
                hint=f"Known providers: {', '.join(sorted(self.config.providers)) or '(none)'}.",
            )
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
