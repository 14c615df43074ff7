"""Billed above the hold: the overage is charged, bounded, refused after, and alerted (case 5).

A stand-in upstream bills 1,234 input tokens whatever the prompt (as a provider with another
tokenizer, a hidden template or a fixed minimum might): each call costs more than its hold.
Before, 200 of 200 calls passed a $0.10 budget. Through the Gateway both faces call, against the
fake upstream through the official SDK, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from bot.core import BudgetExceededError, ChatResult, Principal
from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.core.pricing import Pricer
from bot.core.types import Usage
from tests.conftest import fast_config
from tests.fakes.upstream import FakeUpstream
from tests.ledger.conftest import undelivered_alerts

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
ALICE = Principal(surface="mcp", client_id="assistant")
BILLED_INPUT = 1234
MAX_TOKENS = 20


def billed_cost(output_tokens: int) -> Decimal:
    """What one over-billed call costs, priced as the gateway prices it."""
    return Pricer().cost(
        MODEL, "openai", "openai", Usage(input_tokens=BILLED_INPUT, output_tokens=output_tokens)
    )


async def open_gateway(url: str, limit: Decimal, fake_env: dict[str, str]) -> Gateway:
    budgets = [
        BudgetConfig(name="global", scope="global", limit_usd=limit, period="monthly", channel="#spend")
    ]
    ledger = await Ledger.open(DatabaseConfig(url=url), budgets)
    return Gateway(fast_config(budgets=[b.model_dump() for b in budgets]), ledger=ledger, env=fake_env)


@pytest.fixture
def overbilling(fake: FakeUpstream) -> FakeUpstream:
    fake.usage_patch = {"prompt_tokens": BILLED_INPUT}
    fake.latency = 0.2  # so a wave's calls are all in flight together
    return fake


async def wave(gateway: Gateway, calls: int) -> tuple[list[ChatResult], list[BudgetExceededError]]:
    async def one() -> ChatResult | BudgetExceededError:
        try:
            return await gateway.generate(ALICE, "x", model=MODEL, max_tokens=MAX_TOKENS)
        except BudgetExceededError as err:
            return err

    results = await asyncio.gather(*(one() for _ in range(calls)))
    await gateway.sessions.pending.flush()
    return (
        [r for r in results if isinstance(r, ChatResult)],
        [r for r in results if isinstance(r, BudgetExceededError)],
    )


async def test_overbilling_is_charged_bounded_by_the_calls_in_flight_then_refused_and_alerted(
    db_url: str, overbilling: FakeUpstream, fake_env: dict[str, str]
) -> None:
    async with await open_gateway(db_url, billed_cost(MAX_TOKENS) * 6, fake_env) as gateway:
        assert gateway.ledger is not None
        hold = (await gateway.generate(ALICE, "x", model=MODEL, max_tokens=MAX_TOKENS, dry_run=True)).cost_usd
        assert hold < billed_cost(0)  # the hold is what we counted: far below the bill

        # Ten calls in flight at once: each held little, each billed 1,234 input tokens.
        ok, refused = await wave(gateway, 10)
        assert (len(ok), refused) == (10, [])
        (status,) = await gateway.budget_status(ALICE)
        # Every cent billed is charged: the ledger equals what the upstream served.
        served = sum((billed_cost(r.usage.output_tokens) for r in ok), Decimal(0))
        assert status.spent == served == sum((r.cost_usd for r in ok), Decimal(0))
        assert all(r.usage.input_tokens == BILLED_INPUT for r in ok)
        # Bounded: past the limit by no more than what the calls in flight were billed beyond their holds.
        assert status.limit < status.spent <= status.limit + 10 * (billed_cost(MAX_TOKENS) - hold)
        # Loud: one overspent alert for the budget, to its channel.
        overspent = [a for a in await undelivered_alerts(gateway.ledger) if a.kind == "overspent"]
        assert len(overspent) == 1 and overspent[0].channel == "#spend"
        assert overspent[0].limit == status.limit < overspent[0].spent <= status.spent  # as it passed

        # Refused after: nothing more reaches the upstream.
        ok_after, refused_after = await wave(gateway, 50)
        assert (ok_after, len(refused_after)) == ([], 50)
        assert len(overbilling.requests_to(CHAT)) == 10
        totals = await gateway.ledger.totals()
        assert totals.by_outcome["refused"].calls == 50 and totals.cost_usd == status.spent
        assert len([a for a in await undelivered_alerts(gateway.ledger) if a.kind == "overspent"]) == 1


async def test_after_one_overbilled_reply_holds_cover_the_bill_and_the_budget_holds(
    db_url: str, overbilling: FakeUpstream, fake_env: dict[str, str]
) -> None:
    limit = billed_cost(MAX_TOKENS) * Decimal("5.5")
    async with await open_gateway(db_url, limit, fake_env) as gateway:
        assert gateway.ledger is not None
        first = await gateway.generate(ALICE, "x", model=MODEL, max_tokens=MAX_TOKENS)
        assert first.cost_usd == billed_cost(first.usage.output_tokens)
        # The model's holds now allow for the input it is really billed.
        dry = await gateway.generate(ALICE, "x", model=MODEL, max_tokens=MAX_TOKENS, dry_run=True)
        assert dry.cost_usd >= billed_cost(MAX_TOKENS)
        ok, refused = await wave(gateway, 20)
        assert ok and refused and len(ok) + len(refused) == 20
        (status,) = await gateway.budget_status(ALICE)
        assert status.spent == first.cost_usd + sum((r.cost_usd for r in ok), Decimal(0)) <= status.limit
        assert [a for a in await undelivered_alerts(gateway.ledger) if a.kind == "overspent"] == []
