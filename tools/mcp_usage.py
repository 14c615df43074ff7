"""``my_usage`` and ``usage://me``: the caller's own calls and spend this period, from the ledger.

The same rows as ``bot calls`` (``Gateway.recent_calls``), kept to exactly the caller: a person
(behind a personal token) sees their calls from every face, a shared client its own. So an
assistant can answer "how much have I spent today?" without anyone reading the ledger for it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from bot.core.errors import USER_ERRORS
from bot.core.face_words import in_words_of
from bot.core.gateway import Gateway
from bot.core.types import Principal
from tools.mcp_identity import NOT_AUTHENTICATED, current_principal, require_principal
from tools.mcp_results import Budgets, UsageResult, call_row

__all__ = ["PERIOD_CALLS", "USAGE_DESCRIPTION", "register_usage", "usage"]

#: Calls of one period read to sum its spend; a caller with more is told the sum is of these.
PERIOD_CALLS = 10_000

USAGE_DESCRIPTION = """Show your own calls and what they cost this period (today, this week or
this month, in the gateway's time zone): the total spent in USD, how many calls, the most recent
ones with model, tokens, cost and outcome, and what is left of your tightest budget. The same
records as the gateway's ledger. Read-only and free."""

PeriodName = Literal["daily", "weekly", "monthly"]
Period = Annotated[
    PeriodName,
    Field(description="daily (today), weekly or monthly (the default)."),
]
Limit = Annotated[int, Field(ge=1, le=200, description="How many recent calls to list, 1 to 200.")]


async def usage(
    gateway: Gateway, principal: Principal, period: PeriodName = "monthly", limit: int = 20
) -> UsageResult:
    """``principal``'s calls and spend in the current ``period``, the latest ``limit`` calls listed.

    Raises the core's ``ConfigurationError`` without a ledger (no call is recorded then).
    """
    start, end = gateway.current_period(period)
    calls = await gateway.recent_calls(since=start, of=principal, limit=PERIOD_CALLS)
    budgets = Budgets(await gateway.budget_status(principal))
    caller = principal.client_id or ""
    if principal.user_id:
        caller = f"{principal.team_id}:{principal.user_id}" if principal.team_id else principal.user_id
    return UsageResult(
        caller=caller,
        period=period,
        period_start=start.isoformat(),
        period_end=end.isoformat(),
        spent_usd=str(sum((c.cost_usd for c in calls), Decimal(0))),
        call_count=len(calls),
        calls=[call_row(c) for c in calls[:limit]],
        remaining_budget_usd=budgets.remaining_usd,
    )


def register_usage(server: MCPServer, gateway: Gateway) -> None:
    """Add the ``my_usage`` tool and the ``usage://me`` resource (this month) to ``server``."""

    @server.tool(
        title="My calls and spend",
        description=USAGE_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def my_usage(period: Period = "monthly", limit: Limit = 20) -> UsageResult:
        principal = require_principal()
        try:
            return await usage(gateway, principal, period, limit)
        except USER_ERRORS as err:
            raise ToolError(in_words_of(err, "mcp")) from err

    @server.resource(
        "usage://me",
        name="my-usage",
        title="My calls and spend this month",
        description="Your calls and spend this month, as JSON (same as the my_usage tool).",
        mime_type="application/json",
    )
    async def my_usage_resource() -> str:
        principal = current_principal()
        if principal is None:
            raise ResourceError(NOT_AUTHENTICATED)
        try:
            result = await usage(gateway, principal)
        except USER_ERRORS as err:
            raise ResourceError(in_words_of(err, "mcp")) from err
        return result.model_dump_json(indent=2)
