"""LLMSession end to end against the fake upstream, through the official SDKs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from decimal import Decimal

import genai_prices
import pytest

from bot.core import (
    AddonError,
    BudgetExceededError,
    CallContext,
    ChatResult,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    TokenLimitError,
    ValidationError,
)
from bot.core.factory import SessionFactory
from bot.core.monitoring import Alert
from bot.core.tokens import count_text_tokens
from tests.fakes.upstream import FakeUpstream

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


async def test_openai_call_is_priced_from_reported_usage(factory: SessionFactory, fake: FakeUpstream) -> None:
    fake.cached_tokens = 4
    async with factory.create() as session:
        result = await session.chat("Say hello", model="gpt-4o-mini", max_tokens=50)
    body = fake.requests_to(CHAT)[0].json
    assert result.text == "Echo: Say hello"
    assert result.usage.input_tokens == fake.openai_prompt_tokens(body)
    assert result.usage.cache_read_tokens == 4
    assert result.usage.output_tokens == count_text_tokens("Echo: Say hello", "gpt-4o-mini")
    assert result.cost_usd == factory.pricer.cost("gpt-4o-mini", "openai", "openai", result.usage)
    assert result.cost_usd > 0 and not result.cost_estimated
    assert session.cost_usd == result.cost_usd
    assert session.request_count == 1
    assert session.tokens_used == result.usage.total_tokens


async def test_anthropic_stream_reports_text_and_cache_usage(
    factory: SessionFactory, fake: FakeUpstream
) -> None:
    fake.cached_tokens, fake.cache_write_tokens = 7, 3
    pieces: list[str] = []

    async def on_text(text: str) -> None:
        pieces.append(text)

    async with factory.create() as session:
        result = await session.chat(
            "Stream please", model="claude-haiku-4-5", system="Be brief", max_tokens=64, on_text=on_text
        )
    body = fake.requests_to(MESSAGES)[0].json
    assert body["system"] == "Be brief" and body["stream"] is True
    assert len(pieces) > 1 and "".join(pieces) == result.text == "Echo: Stream please"
    # Anthropic's input_tokens excludes cache reads and writes; ours includes them.
    assert result.usage.input_tokens == fake.anthropic_input_tokens(body) + 7 + 3
    assert (result.usage.cache_read_tokens, result.usage.cache_write_tokens) == (7, 3)
    assert result.cost_usd == factory.pricer.cost("claude-haiku-4-5", "anthropic", "anthropic", result.usage)


@pytest.mark.parametrize("streamed", [True, False])
async def test_anthropic_one_hour_cache_writes_are_priced_apart(
    factory: SessionFactory, fake: FakeUpstream, streamed: bool
) -> None:
    """The reply splits its cache writes by lifetime; the cost is genai-prices' own for that split."""
    fake.cache_write_tokens, fake.cache_write_1h_tokens = 2000, 1500

    async def on_text(text: str) -> None:
        pass

    async with factory.create() as session:
        result = await session.chat(
            "Cache me", model="claude-haiku-4-5", max_tokens=32, on_text=on_text if streamed else None
        )
    assert (result.usage.cache_write_tokens, result.usage.cache_write_1h_tokens) == (2000, 1500)
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            cache_write_tokens=2000,
            cache_write_1h_tokens=1500,
        ),
        "claude-haiku-4-5",
        provider_id="anthropic",
    ).total_price
    assert result.cost_usd == expected and not result.cost_estimated
    priced_as_5m = factory.pricer.cost(
        "claude-haiku-4-5", "anthropic", "anthropic", replace(result.usage, cache_write_1h_tokens=0)
    )
    assert result.cost_usd > priced_as_5m


async def test_refused_before_calling_when_worst_case_passes_budget(
    factory: SessionFactory, fake: FakeUpstream
) -> None:
    async with factory.create(budget_usd=Decimal("0.0001")) as session:
        with pytest.raises(BudgetExceededError) as info:
            await session.chat("hello", model="gpt-4o", max_tokens=4000)
    assert fake.requests_to(CHAT) == []
    assert session.cost_usd == 0 and session.costs.reserved == 0
    assert "budget 'session'" in str(info.value) and "max_tokens" in str(info.value)


async def test_dry_run_calls_nothing_and_charges_nothing(factory: SessionFactory, fake: FakeUpstream) -> None:
    async with factory.create(budget_usd=Decimal("1")) as session:
        result = await session.chat("count me", model="gpt-4o", max_tokens=100, dry_run=True)
    assert result.dry_run and result.text == ""
    assert result.usage.input_tokens == fake.openai_prompt_tokens(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "count me"}]}
    )
    assert result.cost_usd == factory.pricer.worst_case(
        "gpt-4o", "openai", "openai", result.usage.input_tokens, 100
    )
    assert fake.requests == [] and session.cost_usd == 0 and session.request_count == 0


async def test_batch_of_200_never_overspends_a_budget_for_20(
    factory: SessionFactory, fake: FakeUpstream
) -> None:
    fake.latency = 0.01  # calls overlap, as they would for real
    async with factory.create() as probe:
        one = (await probe.chat("x", model="gpt-4o-mini", max_tokens=20, dry_run=True)).cost_usd
    budget = one * 20
    async with factory.create(budget_usd=budget) as session:
        results = await session.batch_generate(
            ["x"] * 200, model="gpt-4o-mini", max_tokens=20, concurrency=200
        )
    ok = [r for r in results if isinstance(r, ChatResult)]
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    assert len(ok) + len(refused) == 200
    assert 20 <= len(ok) < 200
    assert session.cost_usd <= budget
    assert session.cost_usd == sum((r.cost_usd for r in ok), Decimal(0))
    assert len(fake.requests_to(CHAT)) == len(ok)
    assert session.costs.reserved == 0


async def test_alerts_fire_once_per_threshold(factory: SessionFactory) -> None:
    seen: list[Alert] = []
    async with factory.create(budget_usd=Decimal("0.0001"), alert_thresholds=[]) as session:
        session.set_alert(0.01, seen.append)
        session.set_alert(0.02)
        await session.chat("a", model="gpt-4o-mini", max_tokens=5)
        await session.chat("b", model="gpt-4o-mini", max_tokens=5)
    assert [a.threshold for a in seen] == [0.01, 0.02]
    assert session.alerts.triggered == [0.01, 0.02] and session.alerts.pending == []


async def test_addons_run_around_calls_and_can_veto(factory: SessionFactory, fake: FakeUpstream) -> None:
    calls: list[str] = []

    class Audit:
        name = "audit"

        async def before_call(self, ctx: CallContext) -> None:
            calls.append(f"before {ctx.model} {ctx.input_tokens}")

        async def after_call(self, ctx: CallContext, result: ChatResult) -> None:
            calls.append(f"after {result.text}")

    class Veto:
        name = "veto"

        async def before_call(self, ctx: CallContext) -> None:
            raise PermissionError("not on Sundays")

        async def after_call(self, ctx: CallContext, result: ChatResult) -> None:
            raise AssertionError("never reached")

    async with factory.create() as session:
        session.add_addon(Audit())
        await session.chat("hi", model="gpt-4o-mini", max_tokens=5)
        session.add_addon(Veto())
        with pytest.raises(AddonError, match=r"veto.*not on Sundays"):
            await session.chat("hi", model="gpt-4o-mini", max_tokens=5)
    assert calls[0].startswith("before gpt-4o-mini") and calls[1] == "after Echo: hi"
    assert len(fake.requests_to(CHAT)) == 1 and session.costs.reserved == 0


async def test_bad_input_is_refused_with_every_problem(factory: SessionFactory, fake: FakeUpstream) -> None:
    async with factory.create() as session:
        with pytest.raises(ValidationError) as info:
            await session.chat("   ", model="gpt-4o-mini", max_tokens=0, temperature=3)
        with pytest.raises(ValidationError, match="characters"):
            await session.chat("x" * 400_001, model="gpt-4o-mini")
        with pytest.raises(ModelNotFoundError) as unknown:
            await session.chat("hi", model="gpt-4o-mimi")
        with pytest.raises(TokenLimitError):
            await session.chat("a " * 140_000, model="gpt-4o", max_tokens=1000)
    assert len(info.value.errors) == 3
    assert "gpt-4o-mini" in unknown.value.suggestions
    assert fake.requests == []


async def test_session_must_be_entered(factory: SessionFactory) -> None:
    session = factory.create()
    with pytest.raises(ValidationError, match="not active"):
        await session.chat("hi", model="gpt-4o-mini")
    assert not session.is_active and session.duration == 0


async def test_missing_usage_is_charged_as_flagged_estimate(
    factory: SessionFactory, fake: FakeUpstream
) -> None:
    fake.inject("no_usage")
    async with factory.create() as session:
        result = await session.chat("no usage here", model="gpt-4o-mini", max_tokens=50)
    assert result.cost_estimated and result.cost_usd > 0
    assert result.usage.output_tokens == count_text_tokens(result.text, "gpt-4o-mini")


async def test_stream_cut_after_text_charges_what_was_used(
    factory: SessionFactory, fake: FakeUpstream
) -> None:
    fake.reply_text = "one two three four five six seven eight nine ten"
    fake.inject("drop_mid_stream", path=MESSAGES)

    async def sink(text: str) -> None:
        return None

    async with factory.create(budget_usd=Decimal("1")) as session:
        with pytest.raises(ProviderConnectionError):
            await session.chat("go", model="claude-haiku-4-5", max_tokens=100, on_text=sink)
    assert len(fake.requests_to(MESSAGES)) == 1  # text had reached the caller: no retry
    assert session.cost_usd > 0 and session.costs.reserved == 0


async def test_a_cancelled_call_is_charged_its_hold_never_nothing(
    factory: SessionFactory, fake: FakeUpstream
) -> None:
    """The provider may bill a call whose caller hung up; no usage arrives: the worst case, flagged."""
    fake.latency = 5
    async with factory.create(budget_usd=Decimal("1")) as session:
        task = asyncio.create_task(session.chat("slow", model="gpt-4o-mini", max_tokens=10))
        while session.costs.reserved == 0:  # noqa: ASYNC110 - the hold has no event to wait on
            await asyncio.sleep(0.005)
        held = session.costs.reserved
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert session.costs.reserved == 0 and session.cost_usd == held > 0


async def test_export_holds_figures_and_no_secrets(factory: SessionFactory) -> None:
    async with factory.create(budget_usd=Decimal("5")) as session:
        await session.chat("export me", model="gpt-4o-mini", max_tokens=10)
    data = json.loads(session.export_to_json())
    assert data["request_count"] == 1 and data["cost_usd"] == str(session.cost_usd)
    assert data["costs"]["budget"] == "5" and data["calls"][0]["text"] == "Echo: export me"
    assert "test-key" not in session.export_to_json()
    assert not data["is_active"] and data["duration_seconds"] >= 0


async def test_malformed_reply_is_charged_its_worst_case_flagged(
    factory: SessionFactory, fake: FakeUpstream
) -> None:
    fake.inject("malformed", path=CHAT)
    async with factory.create(budget_usd=Decimal("1")) as session:
        with pytest.raises(ProviderError, match="malformed"):
            await session.chat("hi", model="gpt-4o-mini", max_tokens=10)
    assert len(fake.requests_to(CHAT)) == 1  # never retried: the provider billed it already
    worst = factory.pricer.worst_case(
        "gpt-4o-mini", "openai", "openai", session.tokens.total.input_tokens, 10
    )
    assert session.cost_usd == worst and session.costs.reserved == 0
