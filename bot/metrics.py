"""Prometheus metrics for ``bot serve``, on a registry of their own (never the global one).

``Metrics`` is a ``CallObserver``: registered with ``gateway.add_observer`` it counts every call
(ok, refused, error, cancelled) by model, provider, surface and outcome, with its tokens, cost and
latency. Budget gauges are refreshed from ``gateway.status_all()`` when ``/metrics`` is scraped,
so they are never stale and cost nothing between scrapes. ``alert_delivered`` is for whatever
delivers budget alerts (the scheduler) to report each attempt; ``provider_checked`` for the
background provider check (``bot/readiness.py``) to report each result; ``llm_ledger_up`` is
set by every readiness check and every scrape (whose budget read is itself a ledger check).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bot.core.ledger import BudgetStatus
from bot.core.ledger.outage import unavailable
from bot.core.types import CallRecord

__all__ = ["CONTENT_TYPE", "BudgetSource", "Metrics"]

#: Reads every budget of the current periods, e.g. ``Gateway.status_all``.
BudgetSource = Callable[[], Awaitable[Sequence[BudgetStatus]]]

CONTENT_TYPE = CONTENT_TYPE_LATEST
log = logging.getLogger(__name__)

_CALL_LABELS = ("model", "provider", "surface", "outcome")
#: Model calls take from a few hundred milliseconds to minutes.
_CALL_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
#: HTTP requests: health checks take microseconds, a streamed MCP call as long as the model.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric of one server; ``render()`` gives the Prometheus text exposition.

    ``budgets`` feeds the budget gauges at each scrape; without it they stay empty.
    """

    def __init__(self, budgets: BudgetSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._budgets = budgets
        r = self.registry
        self.calls = Counter("llm_calls", "Model calls by outcome.", _CALL_LABELS, registry=r)
        self.tokens = Counter(
            "llm_tokens", "Tokens of model calls, by kind.", (*_CALL_LABELS, "kind"), registry=r
        )
        self.cost = Counter(
            "llm_cost_usd", "Money charged for model calls, in USD.", _CALL_LABELS, registry=r
        )
        self.call_latency = Histogram(
            "llm_call_latency_seconds",
            "Latency of model calls as the gateway measured it.",
            ("model", "provider", "surface", "outcome"),
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests served, by route and status.",
            ("route", "method", "status"),
            registry=r,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "Time to serve an HTTP request.",
            ("route",),
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight", "Work-carrying HTTP requests being served.", registry=r
        )
        self.client_timeouts = Counter(
            "http_client_timeouts",
            "Connections or requests closed because the client was too slow, by phase (header, body).",
            ("phase",),
            registry=r,
        )
        self.draining = Gauge("server_draining", "1 while the server is shutting down.", registry=r)
        self.alerts = Counter(
            "budget_alert_deliveries", "Budget alert delivery attempts.", ("kind", "outcome"), registry=r
        )
        self.provider_up = Gauge(
            "llm_provider_up",
            "1 when the provider's last reachability check succeeded, else 0 (absent before the first).",
            ("provider",),
            registry=r,
        )
        self.ledger_up = Gauge(
            "llm_ledger_up",
            "1 when the budget ledger's database answered its last check (each /readyz and each "
            "scrape of /metrics), else 0: every call is refused while it is 0.",
            registry=r,
        )
        self.budget_fraction = Gauge(
            "budget_fraction_used",
            "Spent plus reserved over the limit, per budget and scope key, in the current period.",
            ("budget", "scope", "scope_key", "period"),
            registry=r,
        )
        self.budget_spent = Gauge(
            "budget_spent_usd",
            "Money spent in the current period.",
            ("budget", "scope", "scope_key", "period"),
            registry=r,
        )
        self.budget_limit = Gauge(
            "budget_limit_usd", "The budget's limit.", ("budget", "scope", "scope_key", "period"), registry=r
        )

    # -- CallObserver --------------------------------------------------------------------------

    async def on_call(self, record: CallRecord, alerts: Sequence[Any]) -> None:
        """Count one call (any outcome): requests, tokens, cost and latency."""
        labels = {
            "model": record.model or "unknown",
            "provider": record.provider or "unknown",
            "surface": record.principal.surface,
            "outcome": record.outcome,
        }
        self.calls.labels(**labels).inc()
        usage = record.usage
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ):
            if count:
                self.tokens.labels(**labels, kind=kind).inc(count)
        if record.cost_usd:
            self.cost.labels(**labels).inc(float(record.cost_usd))
        self.call_latency.labels(**labels).observe(max(record.latency_ms, 0.0) / 1000)

    # -- other producers -----------------------------------------------------------------------

    def alert_gave_up(self, kind: str) -> None:
        """Count one alert closed as failed after its last delivery attempt."""
        self.alerts.labels(kind=kind, outcome="gave_up").inc()

    def alert_delivered(self, kind: str, ok: bool) -> None:
        """Count one alert delivery attempt (``kind`` e.g. ``threshold``, ``report``)."""
        self.alerts.labels(kind=kind, outcome="ok" if ok else "failed").inc()

    def provider_checked(self, provider: str, up: bool) -> None:
        """Record the result of one reachability check of ``provider`` (its configured name)."""
        self.provider_up.labels(provider=provider).set(1 if up else 0)

    def client_timed_out(self, phase: str) -> None:
        """Count one slow client cut off (``phase``: ``header`` or ``body``, see ``bot.timeouts``)."""
        self.client_timeouts.labels(phase=phase).inc()

    def ledger_checked(self, up: bool) -> None:
        """Record whether the ledger's database answered a check just made."""
        self.ledger_up.set(1 if up else 0)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request; ``route`` must come from a fixed set (it is a label)."""
        self.http_requests.labels(route=route, method=method, status=str(status)).inc()
        self.http_latency.labels(route=route).observe(seconds)

    # -- exposition ----------------------------------------------------------------------------

    async def refresh_budgets(self) -> None:
        """Reload the budget gauges from the budget source (called at scrape time)."""
        if self._budgets is None:
            return
        try:
            statuses = await self._budgets()
        except Exception as exc:
            # A scrape must still answer when the database hiccups; readiness reports the cause.
            self.ledger_checked(False)
            outage = unavailable(exc)
            if outage is not None:  # an outage, not a bug: one line, no traceback
                log.warning("could not read budgets for /metrics: %s", outage.cause)
            else:
                log.warning("could not read budgets for /metrics", exc_info=True)
            return
        self.ledger_checked(True)
        for gauge in (self.budget_fraction, self.budget_spent, self.budget_limit):
            gauge.clear()  # budgets removed from config, or a new period, must not linger
        for s in statuses:
            labels = {"budget": s.name, "scope": s.scope, "scope_key": s.scope_key, "period": s.period}
            self.budget_fraction.labels(**labels).set(s.fraction_used)
            self.budget_spent.labels(**labels).set(float(s.spent))
            self.budget_limit.labels(**labels).set(float(s.limit))

    async def render(self) -> bytes:
        """The Prometheus text exposition, budgets refreshed first."""
        await self.refresh_budgets()
        return generate_latest(self.registry)
