"""The values the ledger hands out: holds, budget statuses, alerts and spend summaries.

Money is ``Decimal`` in every field; ratios (``fraction_used``, thresholds) are floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bot.core.money_text import usd

__all__ = ["Alert", "BudgetStatus", "Hold", "Override", "SpendRow", "Totals"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation made by ``Ledger.reserve``: money set aside until the call settles or fails.

    Pass it back to ``settle`` or ``release`` (in a ``finally``). If neither happens, the sweeper
    frees it once ``expires_at`` has passed.
    """

    id: str
    request_id: str
    amount: Decimal
    created_at: datetime
    expires_at: datetime
    #: The ``budget_periods`` rows this hold reserves against (empty when no budget applies).
    budget_period_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Override:
    """An admin's override of a budget's limit, and where it came from.

    ``scope_key`` is ``*`` when it covers every key of the budget (and always for a budget that
    names its one key in config). ``set_by``/``set_via`` are None for an override written before
    the ledger recorded them.
    """

    budget: str
    scope_key: str
    limit: Decimal
    set_at: datetime
    #: Who set it: a Slack user (``T1:U2``), a CLI user, an MCP client.
    set_by: str | None
    #: Through which face: ``slack``, ``cli`` or ``mcp``.
    set_via: str | None

    @property
    def source(self) -> str:
        """``set by T1:UADMIN via slack on 2026-11-25 14:03 UTC``, for every face to show."""
        who = f" by {self.set_by}" if self.set_by else ""
        via = f" via {self.set_via}" if self.set_via else ""
        return f"set{who}{via} on {self.set_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (money as a string to keep it exact)."""
        return {
            "budget": self.budget,
            "scope_key": self.scope_key,
            "limit": str(self.limit),
            "set_at": self.set_at.isoformat(),
            "set_by": self.set_by,
            "set_via": self.set_via,
        }


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Where one budget stands for one scope key in its current period."""

    name: str
    scope: str
    scope_key: str
    period: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    remaining: Decimal
    fraction_used: float
    #: None for ``total`` budgets, which have no period.
    period_start: datetime | None
    resets_at: datetime | None
    #: Spend at period end if it continues at the rate so far (None for ``total``).
    projected_spend: Decimal | None
    channel: str | None = None
    #: The override in force, when an admin's override sets ``limit`` instead of the config file.
    override: Override | None = None
    #: The config file's limit (what ``limit`` is without an override).
    config_limit: Decimal | None = None

    @property
    def label(self) -> str:
        """The budget as users read it: ``eng (channel C1)``, or its name alone for a global one."""
        return self.name if self.scope == "global" else f"{self.name} ({self.scope} {self.scope_key})"

    @property
    def exceeded(self) -> bool:
        """True when nothing more can be reserved (spent, plus holds, reached the limit)."""
        return self.remaining <= 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (money as strings to keep it exact)."""
        return {
            "name": self.name,
            "scope": self.scope,
            "scope_key": self.scope_key,
            "period": self.period,
            "limit": str(self.limit),
            "spent": str(self.spent),
            "reserved": str(self.reserved),
            "remaining": str(self.remaining),
            "fraction_used": self.fraction_used,
            "period_start": _iso(self.period_start),
            "resets_at": _iso(self.resets_at),
            "projected_spend": None if self.projected_spend is None else str(self.projected_spend),
            "channel": self.channel,
            "config_limit": None if self.config_limit is None else str(self.config_limit),
            "override": None if self.override is None else self.override.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """A budget crossed one of its alert thresholds; a row of the alerts outbox."""

    id: int
    budget: str
    scope: str
    scope_key: str
    period: str
    #: None for ``total`` budgets.
    period_start: datetime | None
    threshold: float
    kind: str
    fraction: float
    spent: Decimal
    limit: Decimal
    channel: str | None
    created_at: datetime
    delivered_at: datetime | None = None
    attempts: int = 0
    #: Why the last delivery attempt failed (or why it was skipped), if it did.
    last_error: str | None = None
    #: Projected spend at period end, for ``forecast`` alerts.
    projected: Decimal | None = None
    #: Earliest time of the next delivery attempt after a failure.
    next_attempt_at: datetime | None = None

    @property
    def message(self) -> str:
        """A one-line, human-readable description."""
        who = self.budget if self.scope == "global" else f"{self.budget} ({self.scope} {self.scope_key})"
        return (
            f"Budget '{who}' has reached {self.threshold:.0%} of its {self.period} limit: "
            f"{usd(self.spent)} of {usd(self.limit)} spent ({self.fraction:.0%})."
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (money as strings to keep it exact)."""
        return {
            "id": self.id,
            "budget": self.budget,
            "scope": self.scope,
            "scope_key": self.scope_key,
            "period": self.period,
            "period_start": _iso(self.period_start),
            "threshold": self.threshold,
            "kind": self.kind,
            "fraction": self.fraction,
            "spent": str(self.spent),
            "limit": str(self.limit),
            "channel": self.channel,
            "created_at": self.created_at.isoformat(),
            "delivered_at": _iso(self.delivered_at),
            "attempts": self.attempts,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend and token counts of a group of calls (one model, user, day or outcome)."""

    key: str
    #: Calls made (any outcome but ``refused``: a refused call was never made).
    calls: int
    cost_usd: Decimal
    #: Calls refused by a budget (at $0).
    refused: int = 0
    #: For a caller's row (``spend_by_user``): ``slack_user``, ``cli_user``, ``mcp_client`` or
    #: ``unknown`` (``call_log.who``).
    kind: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    #: Set by ``spend_by_model`` (one model name can be served by several providers).
    provider: str | None = None

    @property
    def label(self) -> str:
        """The row's name as text: the key, or ``mcp client alice`` / ``cli user local`` for a caller."""
        kinds = {"cli_user": "cli user", "mcp_client": "mcp client"}
        return f"{kinds[self.kind]} {self.key}" if self.kind in kinds else self.key

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (money as a string to keep it exact)."""
        return {
            "key": self.key,
            "kind": self.kind,
            "label": self.label,
            "provider": self.provider,
            "calls": self.calls,
            "refused": self.refused,
            "cost_usd": str(self.cost_usd),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass(frozen=True, slots=True)
class Totals:
    """Spend over a time range: everything, and split by outcome (ok/refused/error/cancelled).

    ``total.calls`` counts the calls made and ``total.refused`` those refused apart; each row of
    ``by_outcome`` counts its own outcome's rows in ``calls`` (``by_outcome["refused"].calls`` is
    how many were refused).
    """

    total: SpendRow
    by_outcome: dict[str, SpendRow] = field(default_factory=dict)

    @property
    def cost_usd(self) -> Decimal:
        """Total cost of every call in the range."""
        return self.total.cost_usd

    @property
    def calls(self) -> int:
        """Number of calls made in the range (every outcome but ``refused``)."""
        return self.total.calls

    @property
    def refused(self) -> int:
        """Number of calls refused by a budget in the range."""
        return self.total.refused

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "total": self.total.to_dict(),
            "by_outcome": {k: v.to_dict() for k, v in self.by_outcome.items()},
        }
