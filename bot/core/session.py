"""``LLMSession``: a budgeted conversation with the providers, the library API of the core.

A session has its own budget (``CostTracker``), token counts (``TokenMonitor``) and alerts
(``AlertManager``) on top of the persistent ledger's, and runs every call through the process's
one ``CallPipeline`` (``bot.core.pipeline``), as the faces do through the ``Gateway``.
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
from typing import Any, Self

from bot.core.accounting import CallContext, CallObserver, LedgerPort, SessionFigures
from bot.core.config import SessionDefaults
from bot.core.errors import BotError, ValidationError
from bot.core.monitoring import AlertCallback, AlertManager, CostTracker, TokenMonitor
from bot.core.pending import PendingWrites
from bot.core.pipeline import Addon, CallPipeline
from bot.core.providers import OnText, ProviderRouter
from bot.core.types import ChatResult, Message, Principal, new_request_id

__all__ = ["Addon", "CallContext", "CallObserver", "LLMSession", "LedgerPort"]

log = logging.getLogger(__name__)


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
        pipeline: CallPipeline | None = None,
    ) -> None:
        """``pipeline``: the process's (``SessionFactory``'s); a session given none builds its own
        from ``router``, ``ledger`` and ``observers``. ``pending``: where ledger writes finishing
        after their answer are tracked; a session given neither tracks its own and waits for
        them when it ends."""
        self.defaults = defaults or SessionDefaults()
        self.principal = principal or Principal.cli()
        self._session_id: str | None = None
        self.dry_run = dry_run
        self._addons = list(addons)
        self.costs = CostTracker(self.defaults.budget_usd if budget_usd is None else budget_usd)
        self.tokens = TokenMonitor()
        self._figures = SessionFigures(self.costs, self.tokens)
        # A session that builds its own pipeline and tracks its own writes waits for them at exit.
        self._own_pending = pipeline is None and pending is None
        if pipeline is None:
            own = PendingWrites() if pending is None else pending
            pipeline = CallPipeline(router, self.defaults, ledger, list(observers), own)
        self._pipeline = pipeline
        self.pending = pipeline.pending
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
        """Make one call within budget (``CallPipeline.run``) and count it in this session.

        ``request_id`` is an idempotency key: a face that may receive the same request twice
        (Slack retries it) passes one derived from the request, and the ledger refuses a second
        call with it (``DuplicateRequestError``), whichever replica it reaches.
        """
        if not self.is_active:
            raise ValidationError(["the session is not active"], hint="Use it inside `async with session:`.")
        result = await self._pipeline.run(
            self.principal,
            prompt,
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            dry_run=self.dry_run if dry_run is None else dry_run,
            on_text=on_text,
            request_id=request_id,
            addons=self._addons,
            figures=self._figures,
        )
        self._calls.append(result)
        if not result.dry_run:
            await self.alerts.check(self.costs.spent, self.costs.budget)
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
