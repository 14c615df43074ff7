"""``SessionFactory``: builds providers once and hands out sessions with the config's defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from bot.core.config import AppConfig
from bot.core.pending import PendingWrites
from bot.core.pipeline import Addon, CallPipeline
from bot.core.pricing import Pricer
from bot.core.providers import Provider, ProviderRouter
from bot.core.session import CallObserver, LedgerPort, LLMSession
from bot.core.types import ModelInfo, Principal

__all__ = ["SessionFactory"]


class SessionFactory:
    """One per process: caches provider clients (and their connection pools) across sessions."""

    def __init__(
        self,
        config: AppConfig | None = None,
        *,
        ledger: LedgerPort | None = None,
        env: Mapping[str, str] | None = None,
        addons: Sequence[Addon] = (),
        observers: Sequence[CallObserver] = (),
    ) -> None:
        self.config = config or AppConfig()
        self.pricer = Pricer(self.config.models)
        self.router = ProviderRouter(self.config, pricer=self.pricer, env=env)
        self.ledger = ledger
        self._addons = list(addons)
        #: Told about every call of every session (metrics, immediate alert delivery).
        self.observers: list[CallObserver] = list(observers)
        self.pending = PendingWrites()
        """Ledger writes of every call still finishing after their answer (``flush`` waits)."""
        self.pipeline = CallPipeline(self.router, self.config.session, ledger, self.observers, self.pending)
        """The one way a call is made, shared by the ``Gateway`` and every session."""

    @property
    def addons(self) -> list[Addon]:
        """The addons run around every call of the ``Gateway`` and of every session made here."""
        return self._addons

    def create(
        self,
        *,
        principal: Principal | None = None,
        budget_usd: Decimal | None = None,
        dry_run: bool = False,
        alert_thresholds: Sequence[float] | None = None,
    ) -> LLMSession:
        """A new session with the config's defaults and default alert thresholds."""
        defaults = self.config.session
        if alert_thresholds is not None:
            defaults = defaults.model_copy(update={"alert_thresholds": sorted(set(alert_thresholds))})
        return LLMSession(
            self.router,
            defaults=defaults,
            principal=principal,
            budget_usd=budget_usd,
            ledger=self.ledger,
            dry_run=dry_run,
            addons=self._addons,
            observers=self.observers,
            pending=self.pending,
            pipeline=self.pipeline,
        )

    def provider(self, name: str) -> Provider:
        """The cached provider called ``name``."""
        return self.router.providers[name]

    def list_providers(self) -> list[dict[str, Any]]:
        """Each configured provider: name, type, whether a key is set, base URL (never the key)."""
        return [
            {"name": p.provider_name, "type": p.provider_type, "has_key": p.has_key, "base_url": p.base_url}
            for p in self.router.providers.values()
        ]

    async def list_models(self, provider: str | None = None) -> list[tuple[ModelInfo, bool]]:
        """Every usable model (priced ones only) with whether its provider has a key."""
        out = []
        for p in self.router.providers.values():
            if provider is not None and p.provider_name != provider:
                continue
            out += [(info, p.has_key) for info in await p.list_models() if info.priced]
        return out

    async def close(self) -> None:
        """Finish the ledger writes in flight, then close every provider client."""
        await self.pending.flush()
        await self.router.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
