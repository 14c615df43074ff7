"""Accounting of one call: hold the worst case, then charge what was billed, and write it down.

Every rule about money between "the call may start" and "the record is written" lives here, once:
the session budget (``CostTracker``) and the persistent ledger are held together; a refusal is
recorded at $0; a failure releases its hold; a broken stream is charged what was used; and every
record reaches the ledger (retried on a passing database failure) and then the observers.
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

__all__ = ["Accountant", "CallContext", "CallObserver", "LedgerPort"]

log = logging.getLogger(__name__)

#: Tries at writing one record before giving up (a locked SQLite file, a PostgreSQL failover).
_LEDGER_ATTEMPTS = 3


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


class LedgerPort(Protocol):
    """What a session needs from the persistent ledger (``bot.core.ledger.Ledger``)."""

    async def reserve(
        self, principal: Principal, amount: Decimal, *, request_id: str, model: str, provider: str
    ) -> Any:
        """Hold ``amount`` on every applicable budget, or raise ``BudgetExceededError``."""

    async def settle(self, hold: Any, record: CallRecord) -> Any:
        """Charge the real cost in place of the hold and write the record; return new alerts."""

    async def release(self, hold: Any, record: CallRecord | None = None) -> Any:
        """Free the hold (charging a failed call's billed cost, if any) and write the record."""

    async def record(self, record: CallRecord) -> None:
        """Write a record that had no hold (a refusal)."""

    async def claim_request(self, request_id: str) -> None:
        """Claim an idempotency key, or raise ``DuplicateRequestError``."""

    def settle_now(self, hold: Any, record: CallRecord) -> tuple[Sequence[int], asyncio.Future[None]] | None:
        """``settle`` written at once if that needs no waiting: the new alerts' ids and the future
        of the commit (failed: nothing was written); None: use ``settle``."""

    async def alerts_by_id(self, ids: Sequence[int]) -> Sequence[Any]:
        """The alerts ``settle_now`` created."""


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


class Accountant:
    """Holds, charges and records the calls of one session."""

    def __init__(
        self,
        costs: CostTracker,
        tokens: TokenMonitor,
        ledger: LedgerPort | None,
        observers: Sequence[CallObserver],
        pending: PendingWrites,
    ) -> None:
        self.costs = costs
        self.tokens = tokens
        self._ledger = ledger
        self._observers = observers
        self._pending = pending

    async def reserve(self, ctx: CallContext, *, claim_request_id: bool = False) -> Any:
        """Hold the worst case on the session budget and the ledger; refusals are recorded at $0.

        ``claim_request_id``: the id came from the caller as an idempotency key; claim it first,
        so a second copy of the request (``DuplicateRequestError``) touches no budget at all.
        """
        if claim_request_id and self._ledger is not None:
            await self._ledger.claim_request(ctx.request_id)
        try:
            self.costs.reserve(ctx.worst_case_usd)
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
            )
        except BaseException as err:
            self.costs.release(ctx.worst_case_usd)
            if isinstance(err, BotError):
                await self.record_refusal(ctx, err)
            raise

    async def record_refusal(self, ctx: CallContext, err: BotError) -> None:
        """Record a refused call at $0 (in the ledger, and for the observers)."""
        record = CallRecord(
            ctx.request_id, ctx.principal, ctx.provider, ctx.model, "refused", error_code=err.code
        )
        await self._commit(record, None, settle=False)

    async def _commit(self, record: CallRecord, hold: Any, *, settle: bool) -> None:
        """Write ``record`` to the ledger (settling or releasing ``hold``), then tell the observers."""
        alerts: Sequence[Any] = ()
        if self._ledger is not None:
            alerts = await self._write_with_retries(record, hold, settle=settle)
        await self._tell_observers(record, alerts)

    async def _tell_observers_of(self, record: CallRecord, alert_ids: Sequence[int]) -> None:
        """Tell the observers about a record ``settle_now`` wrote, with the alerts it created."""
        alerts = await self._ledger.alerts_by_id(alert_ids) if alert_ids and self._ledger else ()
        await self._tell_observers(record, alerts)

    async def _tell_observers(self, record: CallRecord, alerts: Sequence[Any]) -> None:
        for observer in self._observers:
            try:
                await observer.on_call(record, list(alerts))
            except Exception:  # an observer (metrics, alert push) must never fail a call
                log.exception("call observer failed", extra={"observer": type(observer).__name__})

    async def _write_with_retries(self, record: CallRecord, hold: Any, *, settle: bool) -> Sequence[Any]:
        """Write to the ledger, retrying a passing database failure: a record is never dropped quietly."""
        assert self._ledger is not None
        for attempt in range(_LEDGER_ATTEMPTS):
            try:
                if record.outcome == "refused":
                    await self._ledger.record(record)
                    return ()
                if settle:
                    return await self._ledger.settle(hold, record) or ()
                return await self._ledger.release(hold, record) or ()
            except (BotError, ValueError, TypeError):
                raise  # our own refusal or a programming error: retrying cannot help
            except Exception:
                if attempt + 1 == _LEDGER_ATTEMPTS:
                    # Last resort: the full record (no secrets in it) in the log, to be replayed.
                    log.critical(
                        "ledger write failed; call record follows",
                        extra={"record": _record_for_log(record)},
                        exc_info=True,
                    )
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        return ()  # pragma: no cover - the loop returns or raises

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

    def settle(self, hold: Any, ctx: CallContext, record: CallRecord) -> None:
        """Charge the real cost in place of the hold; write the record and tell the observers.

        The session's own figures change at once; the ledger write and the observers run in a
        task of ``pending`` that the answer does not wait for (see ``bot.core.pending``), which a
        caller hanging up cannot interrupt either.
        """
        self.costs.settle(ctx.worst_case_usd, record.cost_usd, ctx.model)
        self.tokens.record(ctx.model, record.usage)
        # Most often (SQLite, calls in flight) the write can be made right here, in this loop
        # turn: no task at all until its commit, and then only if someone listens.
        written = None if self._ledger is None else self._ledger.settle_now(hold, record)
        if written is None:
            self._pending.start(self._commit(record, hold, settle=True))
            return
        alert_ids, committed = written
        self._pending.track(committed)
        committed.add_done_callback(functools.partial(self._settled_now, record, hold, alert_ids))

    def _settled_now(
        self, record: CallRecord, hold: Any, alert_ids: Sequence[int], committed: asyncio.Future[None]
    ) -> None:
        """``settle_now``'s commit is done: tell the observers, or write it again if it failed."""
        if committed.cancelled() or committed.exception() is not None:
            # Nothing was written (the shared transaction was lost): the ordinary way, with its
            # retries. A settle is idempotent per request, so this can never charge twice.
            self._pending.start(self._commit(record, hold, settle=True))
        elif self._observers:
            self._pending.start(self._tell_observers_of(record, alert_ids))

    async def charge_failure(
        self,
        provider: Provider,
        ctx: CallContext,
        hold: Any,
        exc: BaseException,
        outcome: Any,
        partial: ProviderReply | None,
        latency: float,
    ) -> None:
        """Give back the hold of a failed call, or charge what a broken call was billed."""
        code = exc.code if isinstance(exc, BotError) else type(exc).__name__
        if isinstance(exc, ProviderError) and exc.billed_unknown and partial is None:
            # Billed, amount unknown: charge the hold itself, the most the call could have cost.
            usage = Usage(input_tokens=ctx.input_tokens, output_tokens=ctx.max_tokens)
            self.costs.settle(ctx.worst_case_usd, ctx.worst_case_usd, ctx.model)
            self.tokens.record(ctx.model, usage)
            record = CallRecord(
                ctx.request_id, ctx.principal, ctx.provider, ctx.model, outcome, usage, ctx.worst_case_usd,
                latency, True, code,
            )  # fmt: skip
        elif partial is not None:
            # A stream cut after the provider produced text was billed: charge what was used.
            usage, estimated = self.usage_of(provider, partial, ctx, exact_input=True, complete=False)
            cost = provider.calculate_cost(ctx.model, usage)
            self.costs.settle(ctx.worst_case_usd, cost, ctx.model)
            self.tokens.record(ctx.model, usage)
            record = CallRecord(
                ctx.request_id, ctx.principal, ctx.provider, ctx.model, outcome, usage, cost, latency,
                estimated, code,
            )  # fmt: skip
        else:
            self.costs.release(ctx.worst_case_usd)
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
