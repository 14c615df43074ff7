"""The fault matrix: each upstream fault, for OpenAI and Anthropic, streaming and not, end to end.

Every case goes through ``Gateway.generate`` with a SQLite ``Ledger`` and a budget, and checks the
five things a fault must never get wrong: the error the user sees, the retries (counted at the fake),
the reservation (released), the ledger row (outcome, error code) and the money (exactly what the
provider billed: nothing for a failed call, the known or conservatively estimated usage otherwise).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.errors import BotError, ProviderConnectionError, ProviderError, RateLimitError
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.core.types import ChatResult, Principal, Usage
from tests.conftest import fast_config
from tests.fakes.upstream import FakeUpstream, FaultKind

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
ALICE = Principal(surface="slack", team_id="T1", user_id="alice", channel_id="C1")
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
PATHS = {"openai": CHAT, "anthropic": MESSAGES}
LIMIT = Decimal(100)
ZERO = Decimal(0)
#: Provider timeout for the ``slow`` cases (the fake waits SLOW_DELAY before answering).
SHORT_TIMEOUT, SLOW_DELAY = 0.8, 2.5
MAX_RETRIES = 2


@dataclass(frozen=True)
class Row:
    """The one ``calls`` row a case leaves in the ledger."""

    outcome: str
    error_code: str | None
    cost_usd: Decimal
    cost_estimated: bool
    input_tokens: int
    output_tokens: int


@dataclass
class Harness:
    """A gateway on a fresh SQLite ledger, the fake upstream, and helpers to read the outcome."""

    gateway: Gateway
    fake: FakeUpstream
    db_path: Path
    streamed: list[str]

    async def call(self, provider: str, *, stream: bool) -> ChatResult:
        """One call of ``provider``'s test model for Alice (streamed when ``stream``).

        Returns once the call's ledger write has finished too (it runs after the answer), so
        that ``rows`` can read the file directly.
        """
        on_text: Callable[[str], Awaitable[None]] | None = None
        if stream:

            async def on_text(text: str) -> None:
                self.streamed.append(text)

        try:
            return await self.gateway.generate(
                ALICE, "Tell me about faults", model=MODELS[provider], max_tokens=40, on_text=on_text
            )
        finally:
            await self.gateway.sessions.pending.flush()

    def attempts(self, provider: str) -> int:
        """Requests the fake received on ``provider``'s chat path."""
        return len(self.fake.requests_to(PATHS[provider]))

    def rows(self) -> list[Row]:
        """Every ``calls`` row, oldest first."""
        with sqlite3.connect(self.db_path) as db:
            raw = db.execute(
                "SELECT outcome, error_code, cost_nano_usd, cost_estimated, input_tokens, output_tokens"
                " FROM calls ORDER BY id"
            ).fetchall()
        return [Row(o, c, Decimal(n) / 10**9, bool(e), i, t) for o, c, n, e, i, t in raw]

    async def budget(self) -> tuple[Decimal, Decimal]:
        """(spent, reserved) of the global budget."""
        (status,) = await self.gateway.budget_status(ALICE)
        return status.spent, status.reserved

    def price(self, provider: str, row: Row) -> Decimal:
        """What ``row``'s usage costs at ``provider``'s prices."""
        usage = Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens)
        return self.gateway.sessions.provider(provider).calculate_cost(MODELS[provider], usage)

    def billed_input(self, provider: str) -> int:
        """Input tokens the fake bills for the last chat request."""
        body = self.fake.requests_to(PATHS[provider])[-1].json
        if provider == "openai":
            return self.fake.openai_prompt_tokens(body)
        return self.fake.anthropic_input_tokens(body)


@pytest.fixture
async def make(
    tmp_path: Path, fake: FakeUpstream, fake_env: dict[str, str]
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """Build a harness; ``provider_timeout`` sets both providers' timeout."""
    gateways: list[Gateway] = []

    async def build(provider_timeout: float = 5.0) -> Harness:
        budgets = [BudgetConfig(name="global", scope="global", limit_usd=LIMIT, period="monthly")]
        db_path = tmp_path / f"ledger{len(gateways)}.db"
        ledger = await Ledger.open(DatabaseConfig(url=f"sqlite+aiosqlite:///{db_path}"), budgets)
        config = fast_config(
            budgets=[b.model_dump() for b in budgets],
            providers={
                "openai": {"type": "openai", "timeout_seconds": provider_timeout},
                "anthropic": {"type": "anthropic", "timeout_seconds": provider_timeout},
            },
        )
        gateway = Gateway(config, ledger=ledger, env=fake_env)
        gateways.append(gateway)
        return Harness(gateway, fake, db_path, [])

    yield build
    for gateway in gateways:
        await gateway.close()


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: a fault, how to inject it, and what the user must be told."""

    kind: FaultKind
    error: type[BotError]
    code: str
    says: str
    """Text the message must contain, ``{p}`` standing for the provider's name."""
    retry_after: float | None = None


FAILURES: dict[str, Fault] = {
    "429+retry-after": Fault("rate_limit", RateLimitError, "rate_limited", "{p} is rate limiting", 0.01),
    "429": Fault("rate_limit", RateLimitError, "rate_limited", "{p} is rate limiting"),
    "500": Fault("server_error", ProviderError, "provider", "{p} failed with HTTP 500"),
    "503": Fault("unavailable", ProviderError, "provider", "{p} failed with HTTP 503"),
    "529": Fault("overloaded", RateLimitError, "rate_limited", "{p} is overloaded"),
    "timeout": Fault("slow", ProviderConnectionError, "connection", "{p} did not answer in time"),
    "dropped": Fault(
        "drop",
        ProviderConnectionError,
        "connection",
        "could not reach {p}: the connection failed or was dropped",
    ),
}

PROVIDERS = ["openai", "anthropic"]
MODES = [pytest.param(False, id="plain"), pytest.param(True, id="stream")]

#: Both providers: an Anthropic stream cut after text must charge its real input (from
#: message_start) plus an estimate of the streamed output, flagged, never message_start's placeholder.
PARTIAL_PROVIDERS = ["openai", "anthropic"]


def _inject(h: Harness, provider: str, fault: Fault, times: int) -> None:
    h.fake.inject(
        fault.kind, times=times, retry_after=fault.retry_after, path=PATHS[provider], delay=SLOW_DELAY
    )


def _assert_user_error(err: BaseException, fault: Fault, provider: str) -> None:
    assert type(err) is fault.error
    assert isinstance(err, BotError) and err.code == fault.code
    text = str(err)
    assert fault.says.format(p=provider) in text
    assert "Traceback" not in text and 'File "' not in text


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", list(FAILURES))
async def test_persistent_fault_is_retried_then_reported_and_costs_nothing(
    make: Callable[..., Awaitable[Harness]], name: str, provider: str, stream: bool
) -> None:
    fault = FAILURES[name]
    h = await make(SHORT_TIMEOUT if fault.kind == "slow" else 5.0)
    _inject(h, provider, fault, times=10)
    with pytest.raises(BotError) as caught:
        await h.call(provider, stream=stream)
    _assert_user_error(caught.value, fault, provider)
    assert h.attempts(provider) == MAX_RETRIES + 1
    assert caught.value.context.get("attempts") == MAX_RETRIES + 1
    assert h.streamed == []
    assert await h.budget() == (ZERO, ZERO)
    (row,) = h.rows()
    assert (row.outcome, row.error_code, row.cost_usd, row.cost_estimated) == (
        "error",
        fault.code,
        ZERO,
        False,
    )
    assert h.gateway.ledger is not None
    totals = await h.gateway.ledger.totals()
    assert totals.by_outcome["error"].calls == 1 and totals.cost_usd == 0


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", list(FAILURES))
async def test_transient_fault_succeeds_on_the_second_attempt(
    make: Callable[..., Awaitable[Harness]], name: str, provider: str, stream: bool
) -> None:
    fault = FAILURES[name]
    h = await make(SHORT_TIMEOUT if fault.kind == "slow" else 5.0)
    _inject(h, provider, fault, times=1)
    result = await h.call(provider, stream=stream)
    assert h.attempts(provider) == 2
    assert result.text.startswith("Echo: ") and not result.cost_estimated
    assert result.usage.input_tokens == h.billed_input(provider)
    if stream:
        assert "".join(h.streamed) == result.text
    (row,) = h.rows()
    assert (row.outcome, row.error_code, row.cost_estimated) == ("ok", None, False)
    assert row.cost_usd == result.cost_usd == h.price(provider, row) > 0
    assert await h.budget() == (result.cost_usd, ZERO)


@pytest.mark.parametrize("provider", PARTIAL_PROVIDERS)
async def test_stream_cut_after_text_is_not_retried_and_charged_what_was_used(
    make: Callable[..., Awaitable[Harness]], provider: str
) -> None:
    h = await make()
    h.fake.inject("drop_mid_stream", times=10, path=PATHS[provider])
    with pytest.raises(ProviderConnectionError) as caught:
        await h.call(provider, stream=True)
    assert f"could not reach {provider}" in str(caught.value) and "Traceback" not in str(caught.value)
    assert h.attempts(provider) == 1  # text reached the caller: a retry would repeat it
    assert h.streamed
    (row,) = h.rows()
    assert (row.outcome, row.error_code) == ("error", "connection")
    # Input as billed: Anthropic reports it in message_start; for OpenAI our exact count is the bill.
    assert row.input_tokens == h.billed_input(provider)
    assert row.output_tokens > 0 and row.cost_estimated  # output known only as text: estimated
    assert row.cost_usd == h.price(provider, row) > 0
    assert await h.budget() == (row.cost_usd, ZERO)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_plain_200_cut_mid_body_is_not_retried_and_charged_the_worst_case(
    make: Callable[..., Awaitable[Harness]], provider: str
) -> None:
    """The provider answered 200 and did the work, then the body broke off: it billed the call.
    Retrying would be billed again (three attempts, three bills, $0 recorded, before): one
    attempt, charged its hold, flagged estimated."""
    h = await make()
    dry = await h.gateway.generate(
        ALICE, "Tell me about faults", model=MODELS[provider], max_tokens=40, dry_run=True
    )
    h.fake.inject("drop_mid_stream", times=10, path=PATHS[provider])
    with pytest.raises(ProviderError, match=f"{provider}'s reply was cut off") as caught:
        await h.call(provider, stream=False)
    assert "charged at its worst case" in (caught.value.hint or "")
    assert h.attempts(provider) == 1
    (row,) = h.rows()
    assert (row.outcome, row.error_code, row.cost_usd, row.cost_estimated) == (
        "error", "provider", dry.cost_usd, True,
    )  # fmt: skip
    assert dry.cost_usd > 0
    assert await h.budget() == (dry.cost_usd, ZERO)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_200_is_not_retried_and_charged_the_worst_case(
    make: Callable[..., Awaitable[Harness]], provider: str
) -> None:
    h = await make()
    dry = await h.gateway.generate(
        ALICE, "Tell me about faults", model=MODELS[provider], max_tokens=40, dry_run=True
    )
    h.fake.inject("malformed", times=10, path=PATHS[provider])
    with pytest.raises(ProviderError) as caught:
        await h.call(provider, stream=False)
    assert type(caught.value) is ProviderError
    assert f"{provider} sent a malformed response" in str(caught.value)
    assert "Traceback" not in str(caught.value)
    assert h.attempts(provider) == 1
    (row,) = h.rows()
    assert (row.outcome, row.error_code, row.cost_estimated) == ("error", "provider", True)
    assert row.cost_usd == dry.cost_usd > 0  # the hold itself: the most the call could cost
    assert row.output_tokens == 40
    assert await h.budget() == (row.cost_usd, ZERO)


@pytest.mark.parametrize("provider", PARTIAL_PROVIDERS)
async def test_malformed_stream_frame_after_text_charges_the_text_estimated(
    make: Callable[..., Awaitable[Harness]], provider: str
) -> None:
    h = await make()
    h.fake.inject("malformed", times=10, path=PATHS[provider])
    with pytest.raises(ProviderError) as caught:
        await h.call(provider, stream=True)
    assert f"{provider} sent a malformed response" in str(caught.value)
    assert h.attempts(provider) == 1 and h.streamed
    (row,) = h.rows()
    assert (row.outcome, row.error_code, row.cost_estimated) == ("error", "provider", True)
    assert row.input_tokens == h.billed_input(provider) and row.output_tokens > 0
    assert row.cost_usd == h.price(provider, row) > 0
    assert await h.budget() == (row.cost_usd, ZERO)


@pytest.mark.parametrize(
    ("provider", "stream"),
    [
        pytest.param("openai", False, id="openai-plain"),
        pytest.param("openai", True, id="openai-stream"),
        pytest.param("anthropic", False, id="anthropic-plain"),
        pytest.param("anthropic", True, id="anthropic-stream"),
    ],
)
async def test_missing_usage_is_charged_a_conservative_estimate(
    make: Callable[..., Awaitable[Harness]], provider: str, stream: bool
) -> None:
    h = await make()
    reference = await h.call(provider, stream=stream)  # the same call with usage reported
    h.fake.inject("no_usage", times=1, path=PATHS[provider])
    result = await h.call(provider, stream=stream)
    assert h.attempts(provider) == 2
    assert result.text == reference.text and result.cost_estimated
    assert result.usage.input_tokens >= reference.usage.input_tokens
    assert result.usage.output_tokens >= reference.usage.output_tokens
    assert result.cost_usd >= reference.cost_usd > 0  # never $0, never below the real bill
    _ok, estimated = h.rows()
    assert (estimated.outcome, estimated.cost_estimated, estimated.cost_usd) == ("ok", True, result.cost_usd)
    assert await h.budget() == (reference.cost_usd + result.cost_usd, ZERO)


@pytest.mark.parametrize("status", ["rate_limit", "overloaded"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_retry_waits_as_long_as_retry_after_says(
    make: Callable[..., Awaitable[Harness]], provider: str, status: FaultKind
) -> None:
    h = await make()
    h.fake.inject(status, times=1, retry_after=0.3, path=PATHS[provider])
    result = await h.call(provider, stream=False)
    first, second = h.fake.requests_to(PATHS[provider])
    assert second.time - first.time >= 0.29  # fast_config's own backoff would be ~0.01 s
    assert result.text and await h.budget() == (result.cost_usd, ZERO)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limit_error_tells_the_user_when_to_retry(
    make: Callable[..., Awaitable[Harness]], provider: str
) -> None:
    h = await make()
    h.fake.inject("rate_limit", times=10, retry_after=0.02, path=PATHS[provider])
    with pytest.raises(RateLimitError) as caught:
        await h.call(provider, stream=False)
    assert "Retry in 0.02 s." in str(caught.value)
