"""``LLMSession``: every call made through the gateway goes through here.

The flow of one call: validate → resolve the model → count input tokens → price the worst case →
reserve it on the session budget and on every persistent budget (all or nothing) → call the
provider → price the usage it reported → answer, while the settle (ledger row, alerts,
observers) is written at once or runs right after in its own task (``bot.core.accounting``,
``bot.core.pending``); on any failure or
cancellation the hold is released before the error is raised. A refused call costs nothing and
is recorded as refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol, Self

from bot.core.accounting import Accountant, CallContext, CallObserver, LedgerPort
from bot.core.config import SessionDefaults
from bot.core.errors import AddonError, BotError, ProviderError, TokenLimitError, ValidationError
from bot.core.monitoring import AlertCallback, AlertManager, CostTracker, TokenMonitor
from bot.core.pending import PendingWrites
from bot.core.providers import ChatRequest, OnText, Provider, ProviderRouter
from bot.core.types import CallRecord, ChatResult, Message, Principal, Usage, new_request_id

__all__ = ["Addon", "CallContext", "CallObserver", "LLMSession", "LedgerPort"]

log = logging.getLogger(__name__)


class Addon(Protocol):
    """A hook around every call; ``before_call`` may veto a call by raising."""

    name: str

    async def before_call(self, ctx: CallContext) -> None:
        """Run before the money is held; raising refuses the call (``AddonError``)."""

    async def after_call(self, ctx: CallContext, result: ChatResult) -> None:
        """Run after a successful call; a failure is logged, never raised."""


class LLMSession:
    """A budgeted conversation with the providers; use as ``async with``."""

    def __init__(
        self,
        router: ProviderRouter,
        *,
        defaults: SessionDefaults | None = None,
        principal: Principal | None = None,
        budget_usd: Decimal | None = None,
        ledger: LedgerPort | None = None,
        dry_run: bool = False,
        addons: Sequence[Addon] = (),
        observers: Sequence[CallObserver] = (),
        pending: PendingWrites | None = None,
    ) -> None:
        """``pending``: where ledger writes finishing after their answer are tracked; a session
        given none tracks its own and waits for them when it ends."""
        self.defaults = defaults or SessionDefaults()
        self.principal = principal or Principal.cli()
        self._session_id: str | None = None
        self.dry_run = dry_run
        self._router = router
        self._addons = list(addons)
        self.costs = CostTracker(self.defaults.budget_usd if budget_usd is None else budget_usd)
        self.tokens = TokenMonitor()
        self._own_pending = pending is None
        self.pending = PendingWrites() if pending is None else pending
        self._accounts = Accountant(self.costs, self.tokens, ledger, list(observers), self.pending)
        self.alerts = AlertManager(list(self.defaults.alert_thresholds))
        self._calls: list[ChatResult] = []
        self._started: float | None = None
        self._ended: float | None = None
        self._started_at: datetime | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """A unique id for this session (made on first use: most sessions never need one)."""
        if self._session_id is None:
            self._session_id = new_request_id()
        return self._session_id

    async def __aenter__(self) -> Self:
        self._started, self._started_at, self._ended = time.monotonic(), datetime.now(UTC), None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._ended = time.monotonic()
        if self._own_pending:
            await self.pending.flush()

    @property
    def is_active(self) -> bool:
        """True inside ``async with``."""
        return self._started is not None and self._ended is None

    @property
    def duration(self) -> float:
        """Seconds since the session started (until it ended)."""
        if self._started is None:
            return 0.0
        return (self._ended or time.monotonic()) - self._started

    # -- figures ---------------------------------------------------------------------------------

    @property
    def cost_usd(self) -> Decimal:
        """Money charged by this session."""
        return self.costs.spent

    @property
    def tokens_used(self) -> int:
        """Input plus output tokens of every call."""
        return self.tokens.total.total_tokens

    @property
    def budget_remaining(self) -> Decimal | None:
        """What is left of the session budget (None without one)."""
        return self.costs.remaining

    @property
    def request_count(self) -> int:
        """Calls made (dry runs excluded)."""
        return len([c for c in self._calls if not c.dry_run])

    def set_alert(self, threshold: float, callback: AlertCallback | None = None) -> None:
        """Call ``callback`` once when spend reaches ``threshold`` (a fraction of the budget)."""
        self.alerts.add(threshold, callback)

    def add_addon(self, addon: Addon) -> None:
        """Run ``addon`` around every later call."""
        self._addons.append(addon)

    # -- calls -----------------------------------------------------------------------------------

    async def chat(
        self,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        dry_run: bool | None = None,
        on_text: OnText | None = None,
        request_id: str | None = None,
    ) -> ChatResult:
        """Make one call within budget; see the module docstring for the flow.

        ``request_id`` is an idempotency key: a face that may receive the same request twice
        (Slack retries it) passes one derived from the request, and the ledger refuses a second
        call with it (``DuplicateRequestError``), whichever replica it reaches.
        """
        if not self.is_active:
            raise ValidationError(["the session is not active"], hint="Use it inside `async with session:`.")
        model = model or self.defaults.default_model
        max_tokens = self.defaults.max_tokens if max_tokens is None else max_tokens
        temperature = self.defaults.temperature if temperature is None else temperature
        messages = self._messages(prompt, system)
        self._validate(messages, max_tokens, temperature)
        provider = self._router.resolve(model)
        info = await provider.get_model_info(model)
        upstream = provider.upstream_model(model)
        counted = await provider.count_tokens(messages, model)
        if info.context_window and counted.tokens + max_tokens > info.context_window:
            raise TokenLimitError(
                model,
                provider=provider.provider_name,
                tokens=counted.tokens + max_tokens,
                limit=info.context_window,
            )
        worst = provider.estimate_cost(model, counted.tokens, max_tokens)
        caller_key = request_id is not None
        request_id = request_id or new_request_id()
        if self.dry_run if dry_run is None else dry_run:
            result = ChatResult(
                "", model, provider.provider_name, Usage(input_tokens=counted.tokens), worst, 0.0, request_id,
                cost_estimated=True, dry_run=True,
            )  # fmt: skip
            self._calls.append(result)
            return result
        ctx = CallContext(
            request_id,
            self.principal,
            model,
            provider.provider_name,
            messages,
            max_tokens,
            counted.tokens,
            worst,
        )
        if self._addons:
            await self._run_hooks("before_call", ctx)
        hold = await self._accounts.reserve(ctx, claim_request_id=caller_key)
        request = ChatRequest(messages, upstream, max_tokens, temperature, on_text)
        result = await self._call(provider, request, ctx, hold, exact_input=counted.exact)
        await self.alerts.check(self.costs.spent, self.costs.budget)
        if self._addons:
            await self._run_hooks("after_call", ctx, result)
        return result

    async def batch_generate(
        self, prompts: Sequence[str], *, concurrency: int | None = None, **kwargs: Any
    ) -> list[ChatResult | BotError]:
        """Run many prompts with at most ``concurrency`` in flight; each result or its error, in order.

        Every call reserves its worst case before it starts, so no interleaving can overspend.
        """
        limit = asyncio.Semaphore(concurrency or self.defaults.max_concurrency)

        async def one(prompt: str) -> ChatResult | BotError:
            async with limit:
                try:
                    return await self.chat(prompt, **kwargs)
                except BotError as err:
                    return err

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    # -- the steps -------------------------------------------------------------------------------

    def _messages(self, prompt: str | Sequence[Message], system: str | None) -> list[Message]:
        messages = [Message("user", prompt)] if isinstance(prompt, str) else list(prompt)
        if system:
            messages.insert(0, Message("system", system))
        return messages

    def _validate(self, messages: Sequence[Message], max_tokens: int, temperature: float | None) -> None:
        problems = []
        if not any(m.role == "user" and m.content.strip() for m in messages):
            problems.append("the prompt is empty: write what you want the model to do")
        size = sum(len(m.content) for m in messages)
        if size > self.defaults.max_prompt_chars:
            problems.append(
                f"the prompt is {size} characters, more than the limit of {self.defaults.max_prompt_chars}"
            )
        if not 0 < max_tokens <= 200_000:
            problems.append(f"max_tokens must be between 1 and 200000, got {max_tokens}")
        if temperature is not None and not 0 <= temperature <= 2:
            problems.append(f"temperature must be between 0 and 2, got {temperature}")
        if problems:
            raise ValidationError(problems)

    async def _run_hooks(self, hook: str, ctx: CallContext, *args: Any) -> None:
        for addon in self._addons:
            try:
                await getattr(addon, hook)(ctx, *args)
            except Exception as exc:
                if hook == "before_call":
                    raise AddonError(getattr(addon, "name", type(addon).__name__), exc) from exc
                log.exception("addon after_call failed", extra={"addon": getattr(addon, "name", "?")})

    async def _call(
        self, provider: Provider, request: ChatRequest, ctx: CallContext, hold: Any, *, exact_input: bool
    ) -> ChatResult:
        started = time.perf_counter()
        try:
            reply = await provider.chat(request)
        except BaseException as exc:
            latency = (time.perf_counter() - started) * 1000
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
            partial = exc.partial if isinstance(exc, ProviderError) else None
            # Shielded: a cancelled task must still give its money back and leave its record.
            await asyncio.shield(
                self._accounts.charge_failure(provider, ctx, hold, exc, outcome, partial, latency)
            )
            raise
        latency = (time.perf_counter() - started) * 1000
        usage, estimated = self._accounts.usage_of(provider, reply, ctx, exact_input)
        cost = provider.calculate_cost(ctx.model, usage)
        record = CallRecord(
            ctx.request_id, self.principal, ctx.provider, ctx.model, "ok", usage, cost, latency, estimated
        )
        # The provider has billed this call: the write runs on even if the caller hangs up now.
        self._accounts.settle(hold, ctx, record)
        result = ChatResult(
            reply.text, ctx.model, ctx.provider, usage, cost, latency, ctx.request_id, reply.finish_reason,
            cost_estimated=estimated,
        )  # fmt: skip
        self._calls.append(result)
        return result

    # -- export ----------------------------------------------------------------------------------

    def export_to_dict(self) -> dict[str, Any]:
        """Everything about the session as JSON-friendly data (no secrets, money as strings)."""
        stats = self.tokens.stats()
        return {
            "session_id": self.session_id,
            "principal": self.principal.label,
            "started_at": self._started_at.isoformat() if self._started_at else None,
            "duration_seconds": round(self.duration, 3),
            "is_active": self.is_active,
            "request_count": self.request_count,
            "tokens_used": self.tokens_used,
            "usage": self.tokens.total.to_dict(),
            "token_stats": {
                "min": stats.minimum,
                "max": stats.maximum,
                "mean": stats.mean,
                "median": stats.median,
            },
            "cost_usd": str(self.cost_usd),
            "costs": self.costs.breakdown(),
            "alerts": {"triggered": self.alerts.triggered, "pending": self.alerts.pending},
            "calls": [c.to_dict() for c in self._calls],
        }

    def export_to_json(self, *, indent: int | None = 2) -> str:
        """``export_to_dict()`` as a JSON string."""
        return json.dumps(self.export_to_dict(), indent=indent)
