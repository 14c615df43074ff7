"""``CallPipeline``: the one way a call is made, for every face and every library session.

The flow of one call: validate → resolve the model → count input tokens → price the worst case →
reserve it on every persistent budget (and a library session's own budget), all or nothing →
call the provider → price the usage it reported → answer, while the settle (ledger row, alerts,
observers) is written at once or runs right after (``bot.core.accounting``,
``bot.core.pending``); on any failure or cancellation the hold is released before the error is
raised. A refused call costs nothing and is recorded as refused.

One pipeline is built per process (``SessionFactory``); a call through the ``Gateway`` builds
nothing else. ``LLMSession`` runs its calls through the same pipeline with its own figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from bot.core.accounting import Accountant, CallContext, CallObserver, LedgerPort, SessionFigures
from bot.core.config import SessionDefaults
from bot.core.errors import AddonError, ProviderError, TokenLimitError, ValidationError
from bot.core.margins import InputMargins
from bot.core.pending import PendingWrites
from bot.core.providers import ChatRequest, OnText, Provider, ProviderRouter
from bot.core.types import CallRecord, ChatResult, Message, Principal, Usage, new_request_id

__all__ = ["Addon", "CallPipeline"]

log = logging.getLogger(__name__)


class Addon(Protocol):
    """A hook around every call; ``before_call`` may veto a call by raising."""

    name: str

    async def before_call(self, ctx: CallContext) -> None:
        """Run before the money is held; raising refuses the call (``AddonError``)."""

    async def after_call(self, ctx: CallContext, result: ChatResult) -> None:
        """Run after a successful call; a failure is logged, never raised."""


def _unreadable(ctx: CallContext) -> ProviderError:
    """A 200 with neither content nor usage: an error to the user, billed as unreadable."""
    err = ProviderError(
        f"{ctx.provider} answered {ctx.model} with neither text nor usage",
        provider=ctx.provider,
        hint="Try again; the call was charged its worst case (estimated), as the provider may have billed it.",
    )
    err.billed_unknown = True  # charged its hold, flagged estimated (Accountant.charge_failure)
    return err


class CallPipeline:
    """Validates, prices, holds, calls, charges and records one call at a time, for anyone."""

    def __init__(
        self,
        router: ProviderRouter,
        defaults: SessionDefaults,
        ledger: LedgerPort | None,
        observers: Sequence[CallObserver],
        pending: PendingWrites,
    ) -> None:
        """``observers`` is the live list (observers added later hear later calls); ``pending``
        tracks the ledger writes that finish after their answer."""
        self.defaults = defaults
        self.pending = pending
        self._router = router
        self._accounts = Accountant(ledger, observers, pending)
        self._margins = InputMargins()

    async def run(
        self,
        principal: Principal,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        dry_run: bool = False,
        on_text: OnText | None = None,
        request_id: str | None = None,
        addons: Sequence[Addon] = (),
        figures: SessionFigures | None = None,
    ) -> ChatResult:
        """Make one call for ``principal`` within every budget that applies (see the module doc).

        ``request_id`` is an idempotency key: a face that may receive the same request twice
        (Slack retries it) passes one derived from the request, and the ledger refuses a second
        call with it (``DuplicateRequestError``), whichever replica it reaches. ``figures``: a
        library session's own budget and counts, held and charged beside the ledger's.
        """
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
        hold_input = self._margins.to_hold(provider.provider_name, model, counted)
        worst = provider.estimate_cost(model, hold_input, max_tokens)
        caller_key = request_id is not None
        request_id = request_id or new_request_id()
        if dry_run:
            return ChatResult(
                "", model, provider.provider_name, Usage(input_tokens=counted.tokens), worst, 0.0, request_id,
                cost_estimated=True, dry_run=True,
            )  # fmt: skip
        ctx = CallContext(
            request_id, principal, model, provider.provider_name, messages, max_tokens, counted.tokens, worst
        )
        if addons:
            await self._run_hooks(addons, "before_call", ctx)
        hold = await self._accounts.reserve(ctx, figures, claim_request_id=caller_key)
        request = ChatRequest(messages, upstream, max_tokens, temperature, on_text)
        result = await self._call(provider, request, ctx, hold, counted.exact, figures)
        if addons:
            await self._run_hooks(addons, "after_call", ctx, result)
        return result

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

    @staticmethod
    async def _run_hooks(addons: Sequence[Addon], hook: str, ctx: CallContext, *args: Any) -> None:
        for addon in addons:
            try:
                await getattr(addon, hook)(ctx, *args)
            except Exception as exc:
                if hook == "before_call":
                    raise AddonError(getattr(addon, "name", type(addon).__name__), exc) from exc
                log.exception("addon after_call failed", extra={"addon": getattr(addon, "name", "?")})

    async def _call(
        self,
        provider: Provider,
        request: ChatRequest,
        ctx: CallContext,
        hold: Any,
        exact_input: bool,
        figures: SessionFigures | None,
    ) -> ChatResult:
        started = time.perf_counter()
        # A long stream or a slow provider must not outlive its hold: it is renewed meanwhile.
        renewal = self._accounts.keep_alive(hold)
        try:
            reply = await provider.chat(request)
            if not reply.text and reply.usage is None:
                raise _unreadable(ctx)
        except BaseException as exc:
            if renewal is not None:
                renewal.cancel()
            latency = (time.perf_counter() - started) * 1000
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
            partial = exc.partial if isinstance(exc, ProviderError) else None
            # Shielded: a cancelled task must still give its money back and leave its record.
            await asyncio.shield(
                self._accounts.charge_failure(provider, ctx, hold, exc, outcome, partial, latency, figures)
            )
            raise
        if renewal is not None:
            renewal.cancel()
        latency = (time.perf_counter() - started) * 1000
        usage, estimated = self._accounts.usage_of(provider, reply, ctx, exact_input)
        cost = provider.calculate_cost(ctx.model, usage)
        if not estimated:
            self._margins.observe(ctx.provider, ctx.model, ctx.input_tokens, usage.input_tokens)
        record = CallRecord(
            ctx.request_id, ctx.principal, ctx.provider, ctx.model, "ok", usage, cost, latency, estimated
        )
        # The provider has billed this call: the write runs on even if the caller hangs up now.
        self._accounts.settle(hold, ctx, record, figures)
        return ChatResult(
            reply.text, ctx.model, ctx.provider, usage, cost, latency, ctx.request_id, reply.finish_reason,
            cost_estimated=estimated,
        )  # fmt: skip
