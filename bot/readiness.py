"""Readiness of ``bot serve``, and the background watch that warms and checks the providers.

``/readyz`` gates only on what this replica controls: it has started, it is not draining, and its
ledger's database answers. Providers (OpenAI, Anthropic…) are shared by every replica: failing
readiness while one is down would take every replica out of the load balancer at once, and users
would get connection errors instead of the gateway's own "provider unreachable" answer. So each
provider with a key is watched in the background instead, and reported — in the ``/readyz`` body
and as the ``llm_provider_up`` gauge — without gating anything.

The watch starts once the server is up. For each provider in turn it imports the SDK in a worker
thread (``anthropic`` takes over a second to import: on the event loop that would stall every
request, and left for later it would stall the first call), then checks that the provider answers,
again every ``PROVIDER_CHECK_TTL`` seconds (``RETRY_FAILED`` seconds after a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from bot.core.gateway import Gateway
from bot.core.ledger.outage import unavailable
from bot.core.providers import Provider
from bot.metrics import Metrics

__all__ = [
    "CHECKING",
    "PROVIDER_CHECK_TTL",
    "RETRY_FAILED",
    "ProviderWatch",
    "Readiness",
    "database_status",
]

log = logging.getLogger("bot.readiness")

#: Seconds between reachability checks of a provider that answered.
PROVIDER_CHECK_TTL = 30.0
#: Seconds before a provider that did not answer is checked again.
RETRY_FAILED = 5.0
#: A provider's status until its first check has finished (its SDK may still be loading).
CHECKING = "checking"
_CHECK_TIMEOUT = 5.0


async def database_status(gateway: Gateway, *, within: float = _CHECK_TIMEOUT) -> str:
    """``"ok"`` when the gateway's ledger answers a query ``within`` seconds, else ``"error: …"``.

    A database that cannot be reached (``bot.core.ledger.outage``) reads ``"error: the budget
    ledger is unreachable (<the driver's error>)"``. A gateway without a ledger has no database
    to wait for, so it is ``"ok"``.
    """
    try:
        async with asyncio.timeout(within):
            await gateway.ping_ledger()
    except TimeoutError:
        return f"error: the budget ledger is unreachable (no answer within {within:g} s)"
    except Exception as exc:
        outage = unavailable(exc)
        if outage is not None:
            return f"error: the budget ledger is unreachable ({outage.cause})"[:300]
        # SQLAlchemy appends the SQL and a link on further lines: the first says what went wrong.
        first_line = (str(exc).splitlines() or [""])[0]
        return f"error: {type(exc).__name__}: {first_line}"[:300]
    return "ok"


class ProviderWatch:
    """Warms each provider's SDK off the event loop, then keeps its reachability status fresh.

    ``status`` maps each provider's name to ``"checking"``, ``"ok"``, ``"unreachable: …"`` or,
    when its SDK cannot be loaded, ``"error: …"``; every result also sets ``llm_provider_up``.
    Nothing here raises or logs a traceback: a failure is the provider's status.
    """

    def __init__(
        self,
        providers: Sequence[Provider],
        metrics: Metrics,
        *,
        ttl: float = PROVIDER_CHECK_TTL,
        retry: float = RETRY_FAILED,
        timeout: float = _CHECK_TIMEOUT,
    ) -> None:
        self.providers = list(providers)
        self.metrics = metrics
        self.ttl, self.retry, self.timeout = ttl, retry, timeout
        self._status = {p.provider_name: CHECKING for p in self.providers}
        self._up: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()
        self.warmed = asyncio.Event()
        """Set once every provider's SDK import has been tried (at once when there are none)."""

    @property
    def status(self) -> dict[str, str]:
        """A snapshot of every watched provider's status, by name."""
        return dict(self._status)

    def start(self) -> None:
        """Start the watch as a background task (once; nothing to do without providers)."""
        if not self.providers:
            self.warmed.set()
        elif self._task is None:
            self._t0 = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self.run(), name="provider-watch")

    async def stop(self) -> None:
        """Cancel the watch. An SDK import already running in its thread finishes on its own."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Warm each provider in turn, then check each one every ``ttl`` seconds, until cancelled."""
        async with asyncio.TaskGroup() as checks:
            # One import at a time: the SDKs share dependencies (httpx, pydantic), and a provider
            # whose SDK is loaded gets its first check while the next one loads.
            for provider in self.providers:
                if await self.warm_up(provider):
                    checks.create_task(self._keep_checking(provider))
            self.warmed.set()

    async def warm_up(self, provider: Provider) -> bool:
        """Import ``provider``'s SDK in a worker thread; False (and status ``error: …``) if it fails."""
        try:
            await asyncio.to_thread(provider.warm_up)
        except Exception as exc:
            status = f"error: cannot load the SDK: {type(exc).__name__}: {exc}"[:300]
            log.warning("provider %s: %s", provider.provider_name, status)
            self._record(provider, status)
            return False
        return True

    async def check(self, provider: Provider) -> str:
        """Check now that ``provider`` answers (it lists its models); record and return the status."""
        try:
            async with asyncio.timeout(self.timeout):
                await provider.validate_connection()
        except TimeoutError:
            status = f"unreachable: no answer within {self.timeout:g} s"
        except Exception as exc:
            status = f"unreachable: {exc}"[:300]
        else:
            status = "ok"
        self._record(provider, status)
        return status

    async def _keep_checking(self, provider: Provider) -> None:
        while True:
            status = await self.check(provider)
            await asyncio.sleep(self.ttl if status == "ok" else self.retry)

    def _record(self, provider: Provider, status: str) -> None:
        name = provider.provider_name
        up = status == "ok"
        self._status[name] = status
        self.metrics.provider_checked(name, up)
        was = self._up.get(name)
        self._up[name] = up
        if up and was is not True:  # log changes only: a check every 30 s must not fill the log
            seconds = round(time.monotonic() - self._t0, 2)
            log.info("provider %s reachable", name, extra={"provider": name, "since_start_s": seconds})
        elif not up and was is not False and status.startswith("unreachable"):
            log.warning("provider %s %s", name, status, extra={"provider": name})


class Readiness:
    """What ``/readyz`` answers: ready when started, not draining and the database answers.

    Each check also sets ``llm_ledger_up``.

    ``providers`` is the background watch of every provider with a key; its statuses are
    reported alongside, never gating (see the module's docstring for why).
    """

    def __init__(self, gateway: Gateway, metrics: Metrics) -> None:
        self.gateway = gateway
        self.metrics = metrics
        keyed = [p for p in gateway.sessions.router.providers.values() if p.has_key]
        self.providers = ProviderWatch(keyed, metrics)

    async def check(self, *, started: bool, draining: bool) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)``: the body names every check, what is not ready, and the providers."""
        checks = {"database": await database_status(self.gateway)}
        self.metrics.ledger_checked(checks["database"] == "ok")
        if draining:
            checks["server"] = "shutting down"
        elif not started:
            checks["server"] = "starting"
        failing = {name: why for name, why in checks.items() if why != "ok"}
        body: dict[str, Any] = {"status": "not ready" if failing else "ready", "checks": checks}
        if failing:
            body["not_ready"] = failing
        body["providers"] = self.providers.status
        return not failing, body
