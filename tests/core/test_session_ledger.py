"""Sessions charging the persistent ledger: the session budget and the ledger's budgets together."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.core import (
    BudgetExceededError,
    CallRecord,
    ChatResult,
    DuplicateRequestError,
    Principal,
    ProviderError,
)
from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.factory import SessionFactory
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger, transactions
from tests.conftest import fast_config
from tests.fakes.upstream import FakeUpstream

CHAT = "/v1/chat/completions"
ALICE = Principal(surface="slack", team_id="T1", user_id="alice", channel_id="C1")


async def one_call_cost(fake_env: dict[str, str]) -> Decimal:
    async with Gateway(fast_config(), env=fake_env) as gateway:
        result = await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20, dry_run=True)
    return result.cost_usd


@pytest.fixture
async def gateway(tmp_path: Path, fake_env: dict[str, str]) -> AsyncIterator[Gateway]:
    limit = await one_call_cost(fake_env) * 20
    budgets = [
        BudgetConfig(name="user-daily", scope="user", limit_usd=limit, period="daily"),
        BudgetConfig(name="global", scope="global", limit_usd=Decimal(100), period="monthly"),
    ]
    ledger = await Ledger.open(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/ledger.db"), budgets)
    async with Gateway(
        fast_config(budgets=[b.model_dump() for b in budgets]), ledger=ledger, env=fake_env
    ) as gw:
        yield gw


async def test_200_concurrent_calls_never_pass_a_ledger_budget_for_20(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    fake.latency = 0.01

    async def call() -> ChatResult | BudgetExceededError:
        try:
            return await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
        except BudgetExceededError as err:
            return err

    results = await asyncio.gather(*(call() for _ in range(200)))
    ok = [r for r in results if isinstance(r, ChatResult)]
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    assert ok and refused and len(ok) + len(refused) == 200
    assert gateway.ledger is not None
    totals = await gateway.ledger.totals()
    status = {s.name: s for s in await gateway.budget_status(ALICE)}
    user = status["user-daily"]
    assert user.spent <= user.limit
    assert user.spent == sum((r.cost_usd for r in ok), Decimal(0))
    assert user.reserved == 0
    assert len(fake.requests_to(CHAT)) == len(ok)
    assert totals.by_outcome["ok"].calls == len(ok)
    assert totals.by_outcome["refused"].calls == len(refused)
    assert "user-daily" in str(refused[0]) and "resets at" in str(refused[0])


async def test_failed_call_is_recorded_and_costs_nothing(gateway: Gateway, fake: FakeUpstream) -> None:
    fake.inject("server_error", times=5, path=CHAT)
    with pytest.raises(Exception, match="HTTP 500"):
        await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
    assert gateway.ledger is not None
    totals = await gateway.ledger.totals()
    assert totals.by_outcome["error"].calls == 1
    status = {s.name: s for s in await gateway.budget_status(ALICE)}
    assert status["global"].spent == 0 and status["global"].reserved == 0


async def test_a_cancelled_call_is_charged_its_hold_in_the_ledger(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    """Cancelled after its request reached the provider: billed, amount unknown, so the hold."""
    fake.latency = 5
    task = asyncio.create_task(gateway.generate(ALICE, "slow", model="gpt-4o-mini", max_tokens=20))
    while not fake.requests_to(CHAT):  # noqa: ASYNC110 - the fake offers no event to wait on
        await asyncio.sleep(0.01)
    held = {s.name: s.reserved for s in await gateway.budget_status(ALICE)}["global"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    status = {s.name: s for s in await gateway.budget_status(ALICE)}
    assert status["global"].reserved == 0 and status["global"].spent == held > 0
    assert gateway.ledger is not None
    cancelled = (await gateway.ledger.totals()).by_outcome["cancelled"]
    assert cancelled.calls == 1 and cancelled.cost_usd == held


async def test_observers_see_every_outcome_and_the_alerts_a_call_created(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    seen: list[tuple[str, int]] = []

    class Recorder:
        async def on_call(self, record: CallRecord, alerts: Sequence[Any]) -> None:
            seen.append((record.outcome, len(alerts)))

    class Broken:
        async def on_call(self, record: CallRecord, alerts: Sequence[Any]) -> None:
            raise RuntimeError("observer bug")

    cost = await one_call_cost(fake_env)
    budgets = [
        BudgetConfig(name="tiny", scope="global", limit_usd=cost * 3, period="daily", alert_thresholds=[0.01])
    ]
    ledger = await Ledger.open(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/o.db"), budgets)
    async with Gateway(fast_config(), ledger=ledger, env=fake_env, observers=[Broken()]) as gateway:
        gateway.add_observer(Recorder())
        await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
        fake.inject("server_error", times=5, path=CHAT)
        with pytest.raises(ProviderError):
            await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
        with pytest.raises(BudgetExceededError):
            await gateway.generate(ALICE, "x", model="gpt-4o", max_tokens=50_000)
    # Each observer hears of a call once its record is written; the ok call's settle finishes
    # after its answer, so on a loaded machine it may be heard after the two calls that followed.
    assert sorted(seen) == sorted([("ok", 1), ("error", 0), ("refused", 0)])


class FlakyWriter:
    """The ledger's real database writer, whose first ``failures`` settles fail as a database
    failing over would (a passing ``OperationalError``); every other transaction goes through."""

    def __init__(self, writer: Any, failures: int) -> None:
        self._writer = writer
        self.failures = failures
        self.gate, self.hold_first = writer.gate, writer.hold_first

    async def run(self, make_tx: Any, *, durable: bool = True) -> Any:
        if self.failures and getattr(make_tx, "func", None) is transactions.settle:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return await self._writer.run(make_tx, durable=durable)

    def write_now(self, make_tx: Any) -> None:
        return None  # every settle takes the path whose failures this writer simulates

    async def settled(self) -> None:
        await self._writer.settled()

    async def close(self) -> None:
        await self._writer.close()


@pytest.mark.parametrize(("failures", "kept"), [(2, True), (3, False)])
async def test_a_passing_ledger_failure_does_not_lose_the_record(
    tmp_path: Path,
    fake_env: dict[str, str],
    fake: FakeUpstream,
    failures: int,
    kept: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = await Ledger.open(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/f.db"), [])
    ledger._db.writer = FlakyWriter(ledger._db.writer, failures)
    async with (
        SessionFactory(fast_config(), ledger=ledger, env=fake_env) as factory,
        factory.create() as session,
    ):
        # The answer never waits for the ledger write (bot.core.pending); the write is retried.
        result = await session.chat("x", model="gpt-4o-mini", max_tokens=20)
        assert result.text
        await factory.pending.flush()
        if kept:
            assert (await ledger.totals()).cost_usd == result.cost_usd
        else:
            # Given up: the paid answer was still delivered, and the record waits in the journal.
            assert (await ledger.totals()).total.calls == 0
            assert ledger.journal is not None and ledger.journal.pending()
            assert not [r for r in caplog.records if r.getMessage().startswith("ledger write failed")]
    await ledger.close()
    if not kept:
        # ...and the next start writes it: nothing was lost.
        ledger = await Ledger.open(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/f.db"), [])
        totals = await ledger.totals()
        assert (totals.total.calls, totals.cost_usd) == (1, result.cost_usd)
        await ledger.close()


async def test_a_request_id_runs_once_across_replicas(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    """Two gateways on one database (two replicas) get the same retried request: one call runs."""
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    budgets = [BudgetConfig(name="global", scope="global", limit_usd=Decimal(100), period="monthly")]
    replicas = [
        Gateway(fast_config(), ledger=await Ledger.open(DatabaseConfig(url=url), budgets), env=fake_env)
    ]
    replicas.append(
        Gateway(fast_config(), ledger=await Ledger.open(DatabaseConfig(url=url), budgets), env=fake_env)
    )
    fake.latency = 0.05

    async def attempt(gateway: Gateway) -> ChatResult | DuplicateRequestError:
        try:
            return await gateway.generate(
                ALICE, "x", model="gpt-4o-mini", max_tokens=20, request_id="slack-abc"
            )
        except DuplicateRequestError as err:
            return err

    first, second = await asyncio.gather(*(attempt(g) for g in replicas))
    late = await attempt(replicas[0])  # a retry after the first copy finished
    outcomes = sorted(type(r).__name__ for r in (first, second, late))
    assert outcomes == ["ChatResult", "DuplicateRequestError", "DuplicateRequestError"]
    assert len(fake.requests_to(CHAT)) == 1
    assert replicas[0].ledger is not None
    totals = await replicas[0].ledger.totals()
    assert totals.calls == 1 and totals.by_outcome["ok"].calls == 1
    for gateway in replicas:
        await gateway.close()


async def test_the_answer_does_not_wait_for_its_ledger_write_but_budget_reads_do(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    """The settle runs after the answer (bot.core.pending); a budget read right after sees it."""
    result = await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
    assert len(gateway.sessions.pending) == 1  # answered; the write is still to run
    (status,) = [s for s in await gateway.budget_status(ALICE) if s.scope == "global"]
    assert status.spent == result.cost_usd and status.reserved == 0
    assert len(gateway.sessions.pending) == 0


async def test_closing_the_gateway_finishes_the_writes_in_flight(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/close.db"
    gateway = Gateway(fast_config(), ledger=await Ledger.open(DatabaseConfig(url=url), []), env=fake_env)
    results = [await gateway.generate(ALICE, f"q{i}", model="gpt-4o-mini", max_tokens=20) for i in range(5)]
    assert len(gateway.sessions.pending) == 1  # the last call's write has not run yet
    await gateway.close()  # what `bot serve` does after draining on SIGTERM
    reopened = await Ledger.open(DatabaseConfig(url=url), [])
    try:
        totals = await reopened.totals()
        assert totals.calls == 5 and totals.cost_usd == sum(r.cost_usd for r in results)
    finally:
        await reopened.close()


async def test_a_call_longer_than_its_holds_lifetime_keeps_its_hold(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    """Holds expire after 2 s; a call takes 4 s. Its hold is renewed while it runs, so a second
    call that would overspend is still refused after 3 s, and the budget is never passed."""
    probe = Gateway(fast_config(), env=fake_env)
    worst = (await probe.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20, dry_run=True)).cost_usd
    await probe.close()
    budgets = [BudgetConfig(name="global", scope="global", limit_usd=worst * 3 / 2, period="daily")]
    config = DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/renew.db", reservation_ttl_seconds=2)
    ledger = await Ledger.open(config, budgets)
    async with Gateway(fast_config(), ledger=ledger, env=fake_env) as gateway:
        fake.latency = 4  # under the provider's 5 s timeout
        slow = asyncio.create_task(gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20))
        await asyncio.sleep(3)  # past the first hold's expiry: only its renewals keep it
        with pytest.raises(BudgetExceededError):
            await gateway.generate(ALICE, "y", model="gpt-4o-mini", max_tokens=20)
        result = await slow
        (status,) = await gateway.budget_status(ALICE)
        assert status.spent == result.cost_usd <= status.limit and status.reserved == 0
    assert len(fake.requests_to(CHAT)) == 1


async def test_a_reply_with_neither_text_nor_usage_is_an_error_charged_as_unreadable(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    """A well-formed 200 without choices or usage: never a silent success with empty text."""
    worst = (await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20, dry_run=True)).cost_usd
    fake.inject("empty_reply", path=CHAT)
    with pytest.raises(ProviderError, match="neither text nor usage"):
        await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
    (status,) = [s for s in await gateway.budget_status(ALICE) if s.name == "global"]
    assert status.spent == worst and status.reserved == 0  # billed, amount unknown: the hold
    assert gateway.ledger is not None
    errors = (await gateway.ledger.totals()).by_outcome["error"]
    assert errors.calls == 1 and errors.cost_usd == worst


@pytest.mark.parametrize(
    "patch",
    [
        {"completion_tokens": -5},
        {"prompt_tokens": -1},
        {"completion_tokens": 1_000_000},
        {"prompt_tokens_details": {"cached_tokens": 999_999, "audio_tokens": 0}},
    ],
)
async def test_impossible_usage_is_charged_an_estimate_and_the_row_is_kept(
    gateway: Gateway, fake: FakeUpstream, patch: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    """Valid by the published schema, impossible as a bill: charged conservatively, flagged, logged."""
    fake.usage_patch = patch
    result = await gateway.generate(ALICE, "x", model="gpt-4o-mini", max_tokens=20)
    assert result.cost_estimated and result.cost_usd > 0 and result.usage.output_tokens <= 20
    (status,) = [s for s in await gateway.budget_status(ALICE) if s.name == "global"]
    assert status.spent == result.cost_usd and status.reserved == 0
    assert gateway.ledger is not None
    assert (await gateway.ledger.totals()).by_outcome["ok"].calls == 1  # the row is kept
    warned = [r for r in caplog.records if "impossible usage" in r.getMessage()]
    assert len(warned) == 1 and not any(r.exc_info for r in caplog.records)
