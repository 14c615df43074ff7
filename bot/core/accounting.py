"""Accounting of one call: hold the worst case, then charge what was billed, and write it down.

Every rule about money between "the call may start" and "the record is written" lives here, once:
the session budget (``CostTracker``) and the persistent ledger are held together; a refusal is
recorded at $0; a failure releases its hold; a broken stream is charged what was used; and every
record reaches the ledger (which retries a passing database failure) and then the observers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Protocol

from bot.core.errors import BotError, ProviderError
from bot.core.monitoring import CostTracker, TokenMonitor
from bot.core.pending import PendingWrites
from bot.core.providers import Provider, ProviderReply
from bot.core.tokens import conservative_text_tokens
from bot.core.types import CallRecord, Message, Principal, Usage

__all__ = [
    "Accountant",
    "CallContext",
    "CallObserver",
    "HoldRenewal",
    "LedgerPort",
    "SessionFigures",
    "plausible_usage",
]

log = logging.getLogger(__name__)


def _record_for_log(record: CallRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "principal": record.principal.label,
        "provider": record.provider,
        "model": record.model,
        "outcome": record.outcome,
        "usage": record.usage.to_dict(),
        "cost_usd": str(record.cost_usd),
        "cost_estimated": record.cost_estimated,
        "created_at": record.created_at.isoformat(),
    }


class Settlement(Protocol):
    """A ledger write under way (``bot.core.ledger.Settlement``): ``future`` gives its alerts."""

    future: asyncio.Future[Any]

    def __await__(self) -> Any:
        """Wait for the write; return the alerts it created."""


#: Output beyond ``max_tokens`` a provider may still report (framing, rounding) before we call
#: its usage impossible.
_OUTPUT_SLACK = 16


def plausible_usage(usage: Usage, max_tokens: int) -> bool:
    """Whether a reported usage could be a real bill for a call capped at ``max_tokens``."""
    counts = (
        usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
        usage.reasoning_tokens, usage.cache_write_1h_tokens,
    )  # fmt: skip
    return (
        min(counts) >= 0
        and usage.cache_read_tokens + usage.cache_write_tokens <= usage.input_tokens
        and usage.cache_write_1h_tokens <= usage.cache_write_tokens
        and usage.output_tokens <= 2 * max_tokens + _OUTPUT_SLACK
    )


def _log_lost(record: CallRecord, exc: BaseException | None = None) -> None:
    """Last resort when the ledger could not write a record after its retries: the full record
    (no secrets in it) in the log, to be replayed by hand."""
    log.critical(
        "ledger write failed; call record follows",
        extra={"record": _record_for_log(record)},
        exc_info=exc if exc is not None else True,
    )


class LedgerPort(Protocol):
    """What a session needs from the persistent ledger (``bot.core.ledger.Ledger``)."""

    async def reserve(
        self,
        principal: Principal,
        amount: Decimal,
        *,
        request_id: str,
        model: str,
        provider: str,
        input_tokens: int = 0,
    ) -> Any:
        """Hold ``amount`` on every applicable budget, or raise ``BudgetExceededError``."""

    def settle(self, hold: Any, record: CallRecord) -> Settlement:
        """Charge the real cost in place of the hold and write the record (at once or soon)."""

    def release(self, hold: Any, record: CallRecord | None = None) -> Settlement:
        """Free the hold (charging a failed call's billed cost, if any) and write the record."""

    async def record(self, record: CallRecord) -> None:
        """Write a record that had no hold (a refusal)."""

    async def claim_request(self, request_id: str) -> None:
        """Claim an idempotency key, or raise ``DuplicateRequestError``."""

    @property
    def hold_renewal_seconds(self) -> float:
        """How often a running call renews its hold."""

    async def renew(self, hold: Any) -> bool:
        """Keep a running call's hold alive; False if it is gone."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """What an addon sees of a call about to be made."""

    request_id: str
    principal: Principal
    model: str
    provider: str
    messages: Sequence[Message]
    max_tokens: int
    input_tokens: int
    worst_case_usd: Decimal


class CallObserver(Protocol):
    """Told about every call once its record is written: ok, refused, error or cancelled.

    ``alerts`` are the ledger alerts the call created (thresholds it crossed), so a face can push
    them at once; metrics count records. Observers must not raise (failures are logged).
    """

    async def on_call(self, record: CallRecord, alerts: Sequence[Any]) -> None:
        """Hear about one call's record and the ledger alerts it created."""


@dataclass(frozen=True, slots=True)
class SessionFigures:
    """A library session's own budget and token counts (``LLMSession``), kept beside the ledger's.

    Calls made for a face through the ``Gateway`` have none: their budgets are the ledger's.
    """

    costs: CostTracker
    tokens: TokenMonitor

    def hold(self, amount: Decimal) -> None:
        """Hold ``amount`` on the session budget, or raise ``BudgetExceededError``."""
        self.costs.reserve(amount)

    def release(self, amount: Decimal) -> None:
        """Give a hold back."""
        self.costs.release(amount)

    def charge(self, held: Decimal, cost: Decimal, model: str, usage: Usage) -> None:
        """Charge ``cost`` in place of the hold of ``held``, and count the call's tokens."""
        self.costs.settle(held, cost, model)
        self.tokens.record(model, usage)


class HoldRenewal:
    """Keeps one running call's hold alive: renews it every ``interval`` seconds until cancelled.

    A timer, not a task, until the first renewal is due: most calls end long before.
    """

    __slots__ = ("_handle", "_hold", "_interval", "_ledger", "_task")

    def __init__(self, ledger: LedgerPort, hold: Any, interval: float) -> None:
        """Schedule the first renewal ``interval`` seconds from now."""
        self._ledger, self._hold, self._interval = ledger, hold, interval
        self._task: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(interval, self._due)

    def _due(self) -> None:
        self._handle = None
        self._task = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        try:
            alive = await self._ledger.renew(self._hold)
        except Exception:  # the next renewal tries again; the hold lives until its expiry anyway
            log.warning("renewing a running call's hold failed", exc_info=True)
            alive = True
        if alive and self._task is not None:
            self._handle = asyncio.get_running_loop().call_later(self._interval, self._due)

    def cancel(self) -> None:
        """The call ended: no more renewals (one under way finishes harmlessly)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._task = None


class Accountant:
    """Holds, charges and records every call: one per process, shared by every face and session."""

    def __init__(
        self, ledger: LedgerPort | None, observers: Sequence[CallObserver], pending: PendingWrites
    ) -> None:
        """``observers`` is the live list (observers added later hear later calls)."""
        self._ledger = ledger
        self._observers = observers
        self._pending = pending

    async def reserve(
        self, ctx: CallContext, figures: SessionFigures | None, *, claim_request_id: bool = False
    ) -> Any:
        """Hold the worst case on the session budget and the ledger; refusals are recorded at $0.

        ``claim_request_id``: the id came from the caller as an idempotency key; claim it first,
        so a second copy of the request (``DuplicateRequestError``) touches no budget at all.
        """
        if claim_request_id and self._ledger is not None:
            await self._ledger.claim_request(ctx.request_id)
        if figures is not None:
            try:
                figures.hold(ctx.worst_case_usd)
            except BotError as err:
                await self.record_refusal(ctx, err)
                raise
        if self._ledger is None:
            return None
        try:
            return await self._ledger.reserve(
                ctx.principal,
                ctx.worst_case_usd,
                request_id=ctx.request_id,
                model=ctx.model,
                provider=ctx.provider,
                input_tokens=ctx.input_tokens,
            )
        except BaseException as err:
            if figures is not None:
                figures.release(ctx.worst_case_usd)
            if isinstance(err, BotError):
                await self.record_refusal(ctx, err)
            raise

    def keep_alive(self, hold: Any) -> HoldRenewal | None:
        """Renew ``hold`` while its call runs (None without a ledger or a hold)."""
        if self._ledger is None or hold is None:
            return None
        return HoldRenewal(self._ledger, hold, self._ledger.hold_renewal_seconds)

    async def record_refusal(self, ctx: CallContext, err: BotError) -> None:
        """Record a refused call at $0 (in the ledger, and for the observers)."""
        record = CallRecord(
            ctx.request_id, ctx.principal, ctx.provider, ctx.model, "refused", error_code=err.code
        )
        await self._commit(record, None, settle=False)

    async def _commit(self, record: CallRecord, hold: Any, *, settle: bool) -> None:
        """Write ``record`` to the ledger (releasing ``hold``), then tell the observers."""
        alerts: Sequence[Any] = ()
        if self._ledger is not None:
            try:
                if record.outcome == "refused":
                    await self._ledger.record(record)
                else:
                    alerts = await self._ledger.release(hold, record)
            except Exception:
                _log_lost(record)
                raise
        await self._tell_observers(record, alerts)

    async def _tell_observers(self, record: CallRecord, alerts: Sequence[Any]) -> None:
        for observer in self._observers:
            try:
                await observer.on_call(record, list(alerts))
            except Exception:  # an observer (metrics, alert push) must never fail a call
                log.exception("call observer failed", extra={"observer": type(observer).__name__})

    @staticmethod
    def usage_of(
        provider: Provider,
        reply: ProviderReply,
        ctx: CallContext,
        exact_input: bool,
        *,
        complete: bool = True,
    ) -> tuple[Usage, bool]:
        """The usage the provider billed; without one, a conservative estimate flagged as such.

        A ``complete`` reply's usage is the bill. An interrupted one's usage is only what arrived
        before the cut (Anthropic's message_start: real input, a placeholder output), so its output
        is estimated from the text that did reach us, and the result is flagged.
        """
        usage = reply.usage
        if usage is not None and not plausible_usage(usage, ctx.max_tokens):
            # Valid JSON, impossible bill (negative counts, output far past max_tokens): priced,
            # it would fail the ledger write or charge nonsense. Treated as missing, flagged.
            log.warning(
                "provider reported impossible usage; charging a conservative estimate",
                extra={"provider": ctx.provider, "model": ctx.model, "request_id": ctx.request_id,
                       "usage": usage.to_dict()},
            )  # fmt: skip
            usage = None
        if complete and usage is not None and (usage.input_tokens or usage.output_tokens):
            return usage, False
        if reply.text and complete:
            log.warning(
                "provider returned text but no usage; charging a conservative estimate",
                extra={"provider": ctx.provider, "model": ctx.model, "request_id": ctx.request_id},
            )
        exact = exact_input and provider.provider_type == "openai"
        output = conservative_text_tokens(reply.text, ctx.model, exact_tokenizer=exact)
        if usage is not None and usage.input_tokens:
            # The input part was reported (cache reads and writes included): keep it exactly.
            return replace(usage, output_tokens=max(output, usage.output_tokens), reasoning_tokens=0), True
        return Usage(input_tokens=ctx.input_tokens, output_tokens=output), True

    def settle(self, hold: Any, ctx: CallContext, record: CallRecord, figures: SessionFigures | None) -> None:
        """Charge the real cost in place of the hold; write the record and tell the observers.

        The session's own figures change at once; the ledger write and the observers finish
        after the answer, tracked by ``pending`` (see ``bot.core.pending``).
        """
        if figures is not None:
            figures.charge(ctx.worst_case_usd, record.cost_usd, ctx.model, record.usage)
        if self._ledger is None:
            if self._observers:
                self._pending.start(self._tell_observers(record, ()))
            return
        # Written at once when it can be (SQLite, calls in flight), else in a task of the ledger:
        # either way the answer does not wait, and a caller hanging up cannot stop it.
        written = self._ledger.settle(hold, record).future
        self._pending.track(written)
        written.add_done_callback(functools.partial(self._settled, record))

    def _settled(self, record: CallRecord, written: asyncio.Future[Any]) -> None:
        """The settle is committed (or failed after its retries): tell the observers."""
        if written.cancelled() or written.exception() is not None:
            _log_lost(record, written.exception() if not written.cancelled() else None)
        elif self._observers:
            self._pending.start(self._tell_observers(record, written.result()))

    async def charge_failure(
        self,
        provider: Provider,
        ctx: CallContext,
        hold: Any,
        exc: BaseException,
        outcome: Any,
        partial: ProviderReply | None,
        latency: float,
        figures: SessionFigures | None,
    ) -> None:
        """Give back the hold of a failed call, or charge what a broken call was billed.

        A call cancelled while its request was with the provider (the caller hung up, an MCP
        client sent ``notifications/cancelled``) may have been billed in full, and no usage
        ever arrives: it is charged its hold, flagged estimated, never $0.
        """
        code = exc.code if isinstance(exc, BotError) else type(exc).__name__
        billed_unknown = isinstance(exc, asyncio.CancelledError) or (
            isinstance(exc, ProviderError) and exc.billed_unknown
        )
        if billed_unknown and partial is None:
            # Billed, amount unknown: charge the hold itself, the most the call could have cost.
            usage = Usage(input_tokens=ctx.input_tokens, output_tokens=ctx.max_tokens)
            if figures is not None:
                figures.charge(ctx.worst_case_usd, ctx.worst_case_usd, ctx.model, usage)
            record = CallRecord(
                ctx.request_id, ctx.principal, ctx.provider, ctx.model, outcome, usage, ctx.worst_case_usd,
                latency, True, code,
            )  # fmt: skip
        elif partial is not None:
            # A stream cut after the provider produced text was billed: charge what was used.
            usage, estimated = self.usage_of(provider, partial, ctx, exact_input=True, complete=False)
            cost = provider.calculate_cost(ctx.model, usage)
            if figures is not None:
                figures.charge(ctx.worst_case_usd, cost, ctx.model, usage)
            record = CallRecord(
                ctx.request_id, ctx.principal, ctx.provider, ctx.model, outcome, usage, cost, latency,
                estimated, code,
            )  # fmt: skip
        else:
            if figures is not None:
                figures.release(ctx.worst_case_usd)
            record = CallRecord(
                ctx.request_id,
                ctx.principal,
                ctx.provider,
                ctx.model,
                outcome,
                latency_ms=latency,
                error_code=code,
            )
        await self._commit(record, hold, settle=False)
