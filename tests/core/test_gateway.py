"""``Gateway`` as the faces use it: typed budget statuses, team spend, limits and the ledger ping.

The faces never reach ``gateway.ledger``; these are the methods they use instead, with a SQLite
ledger and without one (the CLI's ``models`` builds the gateway without a ledger).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from bot.core.accounting import CallContext
from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.errors import AddonError, ConfigurationError
from bot.core.gateway import Gateway, tightest
from bot.core.ledger import BudgetStatus, Ledger
from bot.core.types import ChatResult, Principal
from tests.conftest import fast_config
from tests.fakes.upstream import FakeUpstream

ALICE = Principal(surface="slack", team_id="T1", user_id="alice", channel_id="C1")
BUDGETS = [
    BudgetConfig(name="per-user", scope="user", limit_usd=Decimal(5), period="daily"),
    BudgetConfig(name="global", scope="global", limit_usd=Decimal(100), period="monthly"),
]


@pytest.fixture
async def gateway(tmp_path: Path, fake_env: dict[str, str]) -> AsyncIterator[Gateway]:
    ledger = await Ledger.open(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/ledger.db"), BUDGETS)
    config = fast_config(budgets=[b.model_dump() for b in BUDGETS])
    async with Gateway(config, ledger=ledger, env=fake_env) as gw:
        yield gw


async def test_budget_status_is_typed_and_the_tightest_is_the_one_with_least_left(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    result = await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
    statuses = await gateway.budget_status(ALICE)
    assert all(isinstance(s, BudgetStatus) for s in statuses)
    by_name = {s.name: s for s in statuses}
    assert set(by_name) == {"per-user", "global"}
    assert by_name["per-user"].spent == by_name["global"].spent == result.cost_usd
    assert by_name["per-user"].remaining == Decimal(5) - result.cost_usd
    least = await gateway.tightest_budget(ALICE)
    assert least is not None and least.name == "per-user"
    # Every row of the current periods, as the metrics scrape reads them.
    assert {(s.name, s.scope_key) for s in await gateway.status_all()} >= {("per-user", "T1:alice")}


async def test_team_spend_and_set_budget_limit_go_through_the_gateway(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    assert gateway.has_ledger
    result = await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
    start, end = gateway.current_period("monthly")
    spend = await gateway.team_spend(start, end)  # right after the answer: its charge counts
    assert [(r.key, r.calls, r.cost_usd) for r in spend.by_user] == [("T1:alice", 1, result.cost_usd)]
    assert [(r.key, r.provider) for r in spend.by_model] == [("gpt-4o-mini", "openai")]

    await gateway.set_budget_limit("per-user", "T1:alice", Decimal("42.5"))
    limits = {s.name: s.limit for s in await gateway.budget_status(ALICE)}
    assert limits == {"per-user": Decimal("42.5"), "global": Decimal(100)}
    with pytest.raises(ConfigurationError, match="unknown budget 'nope'"):
        await gateway.set_budget_limit("nope", None, Decimal(1))


async def test_without_a_ledger_nothing_is_recorded_and_changes_are_refused(fake_env: dict[str, str]) -> None:
    async with Gateway(fast_config(), env=fake_env) as gateway:
        assert not gateway.has_ledger
        await gateway.ping_ledger()  # nothing to reach: no error
        assert await gateway.budget_status(ALICE) == []
        assert await gateway.tightest_budget(ALICE) is None
        assert await gateway.status_all() == []
        start, end = gateway.current_period("daily")
        with pytest.raises(ConfigurationError, match="no spend is recorded"):
            await gateway.team_spend(start, end)
        with pytest.raises(ConfigurationError, match="budgets cannot be changed"):
            await gateway.set_budget_limit("global", None, Decimal(1))


async def test_ping_ledger_answers_while_the_database_does(gateway: Gateway) -> None:
    await gateway.ping_ledger()  # raises if the database does not answer


def test_tightest_of_no_budgets_is_none() -> None:
    assert tightest([]) is None


class Gatekeeper:
    """An addon that refuses prompts containing "secret" and remembers what it let through."""

    name = "gatekeeper"

    def __init__(self) -> None:
        self.answered: list[str] = []

    async def before_call(self, ctx: CallContext) -> None:
        if "secret" in ctx.messages[-1].content:
            raise PermissionError("prompts about secrets are not allowed here")

    async def after_call(self, ctx: CallContext, result: ChatResult) -> None:
        self.answered.append(result.request_id)


async def test_the_gateways_calls_run_its_addons_and_a_veto_costs_nothing(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    """Addons given to the Gateway run around every call of the one pipeline (no session per call)."""
    ledger = await Ledger.open(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/a.db"), BUDGETS)
    gatekeeper = Gatekeeper()
    async with Gateway(fast_config(), ledger=ledger, env=fake_env, addons=[gatekeeper]) as gateway:
        ok = await gateway.generate(ALICE, "hello", model="gpt-4o-mini", max_tokens=20)
        with pytest.raises(AddonError, match="gatekeeper"):
            await gateway.generate(ALICE, "the secret plan", model="gpt-4o-mini", max_tokens=20)
        assert gatekeeper.answered == [ok.request_id]
        assert len(fake.requests_to("/v1/chat/completions")) == 1  # the veto reached no provider
        (status,) = [s for s in await gateway.budget_status(ALICE) if s.name == "global"]
        assert status.spent == ok.cost_usd and status.reserved == 0
