"""Block Kit for ``/budget``, ``/budget team`` and ``/models``, kept inside Slack's limits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC
from decimal import Decimal
from typing import Any

from bot.core.ledger import BudgetStatus, Override, SpendRow
from bot.core.types import ModelInfo
from bot.slack.formatting import progress_bar, usd

__all__ = ["MAX_BLOCKS", "SECTION_LIMIT", "budget_blocks", "models_blocks", "team_blocks"]

Block = dict[str, Any]
#: Slack allows 50 blocks per message and 3,000 characters per section text.
MAX_BLOCKS = 50
SECTION_LIMIT = 3000


def _section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:SECTION_LIMIT]}}


def _header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:150]}}


def _context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:SECTION_LIMIT]}]}


def _sections(lines: Iterable[str], *, max_sections: int) -> list[Block]:
    """Pack lines into as few sections as fit; the last says how many lines were left out."""
    lines = list(lines)
    blocks: list[Block] = []
    chunk: list[str] = []
    for i, line in enumerate(lines):
        if sum(len(x) + 1 for x in chunk) + len(line) > SECTION_LIMIT - 60:
            if len(blocks) == max_sections - 1:
                chunk.append(f"_…and {len(lines) - i} more._")
                break
            blocks.append(_section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        blocks.append(_section("\n".join(chunk)))
    return blocks


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _reset(status: BudgetStatus) -> str:
    resets = status.resets_at
    return f"resets {resets.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if resets else "never resets"


def _source(override: Override) -> str:
    """``set by <@U9> via slack on …``: a Slack user who set it is mentioned, anyone else named."""
    team, sep, user = (override.set_by or "").partition(":")
    if sep and override.set_via == "slack" and team and user:
        return override.source.replace(f"by {override.set_by}", f"by <@{user}>", 1)
    return override.source


def _caller(row: SpendRow) -> str:
    """A caller as Slack shows it: a Slack user mentioned, an MCP client or CLI user by name."""
    if row.kind == "slack_user":
        return f"<@{row.key.rpartition(':')[2]}>"
    return {"mcp_client": f"MCP client *{row.key}*", "cli_user": f"CLI user *{row.key}*"}.get(
        row.kind or "", f"*{row.key}*"
    )


def _counts(row: SpendRow) -> str:
    return _calls(row.calls) + (f" ({row.refused} refused)" if row.refused else "")


def budget_blocks(statuses: Sequence[BudgetStatus]) -> list[Block]:
    """One section per budget: name, spent of limit, a progress bar, reset time and projection."""
    if not statuses:
        return [_section("No budget applies to you: your calls are not capped.")]
    blocks: list[Block] = [_header("Your budgets")]
    for status in statuses[: MAX_BLOCKS - 2]:
        projected = status.projected_spend
        held = f" ({usd(status.reserved)} held for calls in flight)" if status.reserved else ""
        lines = [
            f"*{status.name}* ({status.scope}, {status.period})",
            f"{usd(status.spent)} of {usd(status.limit)} spent · {usd(status.remaining)} left{held}",
            f"`{progress_bar(status.fraction_used)}`",
            _reset(status) + (f" · projected {usd(projected)} this period" if projected is not None else ""),
        ]
        if status.override is not None:
            config = (
                f"; the config file says {usd(status.config_limit)}"
                if status.config_limit is not None
                else ""
            )
            lines.append(f"_limit {usd(status.limit)} {_source(status.override)}{config}_")
        blocks.append(_section("\n".join(lines)))
    if len(statuses) > MAX_BLOCKS - 2:
        blocks.append(_context(f"…and {len(statuses) - (MAX_BLOCKS - 2)} more budgets."))
    return blocks


def team_blocks(by_user: Sequence[SpendRow], by_model: Sequence[SpendRow], period: str) -> list[Block]:
    """Spend by user and by model over ``period`` (a label such as "November 2026")."""
    total = sum((row.cost_usd for row in by_user), Decimal(0))
    blocks: list[Block] = [_header(f"Team spend, {period}"), _section(f"*Total:* {usd(total)}")]
    users = [f"{_caller(row)} {usd(row.cost_usd)} · {_counts(row)}" for row in by_user]
    models = [f"`{row.key}` ({row.provider}) {usd(row.cost_usd)} · {_counts(row)}" for row in by_model]
    blocks.append(_section("*By caller*"))
    blocks += _sections(users or ["_no calls yet_"], max_sections=20)
    blocks.append(_section("*By model*"))
    blocks += _sections(models or ["_no calls yet_"], max_sections=20)
    return blocks[:MAX_BLOCKS]


def _price(value: Decimal | None) -> str:
    return "?" if value is None else usd(value)


def models_blocks(models: Sequence[tuple[ModelInfo, bool]], *, cap: int = 60) -> list[Block]:
    """Models with prices per million tokens; providers with a key first, at most ``cap`` listed."""
    ordered = sorted(models, key=lambda m: (not m[1], m[0].provider, m[0].name))
    lines = [
        f"`{info.name}` ({info.provider}) in {_price(info.input_per_mtok)} / out "
        f"{_price(info.output_per_mtok)} per 1M tokens" + ("" if has_key else " — _no key configured_")
        for info, has_key in ordered[:cap]
    ]
    blocks: list[Block] = [_header("Models")]
    blocks += _sections(lines or ["_No model is configured._"], max_sections=MAX_BLOCKS - 3)
    if len(ordered) > cap:
        blocks.append(_context(f"Showing {cap} of {len(ordered)} models. `bot models` lists them all."))
    blocks.append(_context("Use one with `/generate --model NAME your prompt`."))
    return blocks
