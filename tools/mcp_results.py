"""What the MCP tools answer: structured results (their output schemas) and how budgets become them.

Money is always an exact decimal string, never a float, so a model reading it cannot round it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from bot.core.gateway import tightest
from bot.core.ledger import BudgetStatus, CallEntry
from bot.core.types import ChatResult

__all__ = [
    "BudgetEntry",
    "BudgetStatusResult",
    "Budgets",
    "CallRow",
    "GenerateResult",
    "ModelEntry",
    "ModelListResult",
    "TokenUsage",
    "UsageResult",
    "budget_entry",
    "call_row",
    "generate_result",
    "money",
]


# -- structured results ------------------------------------------------------------------------


class TokenUsage(BaseModel):
    """Tokens of one call, as the provider reported them."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int


class GenerateResult(BaseModel):
    """The outcome of ``generate``: the text itself plus what it cost and what is left."""

    text: str = Field(description="The generated text (empty for a dry run).")
    model: str
    provider: str
    usage: TokenUsage
    cost_usd: str = Field(description="Exact cost in USD as a decimal string (worst case for a dry run).")
    cost_estimated: bool = Field(
        description="True when the provider reported no usage and the cost is our estimate."
    )
    dry_run: bool
    finish_reason: str | None
    request_id: str
    remaining_budget_usd: str | None = Field(
        description="Smallest amount left across your budgets after this call; null when no budget applies."
    )
    tightest_budget: str | None = Field(description="The budget that has the least left, if any.")
    text_truncated: bool = Field(
        default=False,
        description="True when text is only the first part of a long answer; read full_text_uri for all of it.",
    )
    full_text_chars: int = Field(default=0, description="Characters of the whole answer.")
    full_text_uri: str | None = Field(
        default=None,
        description="For a long answer: the resource (resources/read) holding all of it, for a while.",
    )


class BudgetEntry(BaseModel):
    """Where one budget stands for the caller in its current period (money as exact decimal strings)."""

    name: str
    scope: str
    scope_key: str
    period: str
    limit_usd: str
    spent_usd: str
    reserved_usd: str = Field(description="Held for calls in flight.")
    remaining_usd: str
    fraction_used: float
    resets_at: str | None = Field(description="ISO 8601 time the period ends; null for `total` budgets.")
    projected_spend_usd: str | None
    config_limit_usd: str | None = Field(description="The config file's limit (limit_usd without override).")
    limit_source: str | None = Field(description="Who set limit_usd, when, via which face (null: config).")


class BudgetStatusResult(BaseModel):
    """Every budget that applies to the caller."""

    client: str = Field(description="The client name your token (or the stdio connection) maps to.")
    budgets: list[BudgetEntry]
    remaining_budget_usd: str | None = Field(description="Smallest amount left; null when no budget applies.")


class ModelEntry(BaseModel):
    """One model you can call, with its prices per million tokens (exact decimal strings)."""

    name: str
    provider: str
    input_per_mtok_usd: str | None
    output_per_mtok_usd: str | None
    cached_input_per_mtok_usd: str | None
    context_window: int | None
    max_output_tokens: int | None
    key_configured: bool = Field(description="False means calls to this model will fail until a key is set.")


class ModelListResult(BaseModel):
    """The models ``generate`` accepts."""

    models: list[ModelEntry]


def money(value: Any) -> str | None:
    """An amount as an exact decimal string, or None."""
    return None if value is None else str(value)


def budget_entry(status: BudgetStatus) -> BudgetEntry:
    """One budget's status as the tools answer it."""
    return BudgetEntry(
        name=status.name,
        scope=status.scope,
        scope_key=status.scope_key,
        period=status.period,
        limit_usd=str(status.limit),
        spent_usd=str(status.spent),
        reserved_usd=str(status.reserved),
        remaining_usd=str(status.remaining),
        fraction_used=status.fraction_used,
        resets_at=None if status.resets_at is None else status.resets_at.isoformat(),
        projected_spend_usd=money(status.projected_spend),
        config_limit_usd=money(status.config_limit),
        limit_source=None if status.override is None else status.override.source,
    )


class Budgets:
    """The caller's budgets as the tools answer them, and the one with the least left."""

    def __init__(self, statuses: list[BudgetStatus]) -> None:
        """From the caller's statuses (``Gateway.budget_status``)."""
        self.entries = [budget_entry(s) for s in statuses]
        self.tightest = tightest(statuses)

    @property
    def remaining_usd(self) -> str | None:
        """The tightest budget's money left, or None when no budget applies."""
        return None if self.tightest is None else str(self.tightest.remaining)


def generate_result(result: ChatResult, budgets: Budgets) -> GenerateResult:
    """A call's result, with what is left of the tightest budget after it."""
    return GenerateResult(
        text=result.text,
        model=result.model,
        provider=result.provider,
        usage=TokenUsage(**result.usage.to_dict()),
        cost_usd=str(result.cost_usd),
        cost_estimated=result.cost_estimated,
        dry_run=result.dry_run,
        finish_reason=result.finish_reason,
        request_id=result.request_id,
        remaining_budget_usd=budgets.remaining_usd,
        tightest_budget=budgets.tightest.name if budgets.tightest else None,
        full_text_chars=len(result.text),
    )


class CallRow(BaseModel):
    """One of your calls as the ledger recorded it (the same row as ``bot calls``)."""

    created_at: str = Field(description="ISO 8601 time of the call.")
    surface: str = Field(description="The face it came through: mcp, slack or cli.")
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: str = Field(description="What it cost, as an exact decimal string.")
    cost_estimated: bool
    outcome: str = Field(description="ok, refused, error, cancelled or interrupted.")
    error_code: str | None
    request_id: str


class UsageResult(BaseModel):
    """Your calls and spend in the current period (the same data as ``bot calls``)."""

    caller: str = Field(description="Whose calls these are: a person (team:user) or an MCP client's name.")
    period: str = Field(description="daily, weekly or monthly, in the gateway's time zone.")
    period_start: str
    period_end: str
    spent_usd: str = Field(description="Sum of cost_usd of every call in the period.")
    call_count: int = Field(description="Calls in the period (calls may list only the latest of them).")
    calls: list[CallRow] = Field(description="The most recent calls of the period, newest first.")
    remaining_budget_usd: str | None = Field(description="Smallest amount left; null when no budget applies.")


def call_row(entry: CallEntry) -> CallRow:
    """One ledger call as the usage tool answers it."""
    return CallRow(
        created_at=entry.created_at.isoformat(),
        surface=entry.surface,
        provider=entry.provider,
        model=entry.model,
        input_tokens=entry.input_tokens,
        output_tokens=entry.output_tokens,
        cost_usd=str(entry.cost_usd),
        cost_estimated=entry.cost_estimated,
        outcome=entry.outcome,
        error_code=entry.error_code,
        request_id=entry.request_id,
    )
