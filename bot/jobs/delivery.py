"""Alert delivery: claim outbox rows, post each to its budget's channel, record the outcome.

Exactly-once rests on the ledger's claim (``Ledger.outbox``): a row is leased to one caller before
it is sent, and only that caller can mark it delivered, so the periodic job, the immediate push of
``AlertPushObserver`` and other replicas never send the same row twice. A row is marked delivered
only when Slack answered ``ok: true``; any failure (Slack down, rate limited past the client's own
``Retry-After`` retries, ``not_in_channel``…) leaves it pending with ``next_attempt_at`` pushed
back exponentially, and the reason in ``last_error``, until ``jobs.alert_max_attempts``
attempts: then it is closed as delivered with ``last_error = "failed: …"`` (logged at ERROR, and
counted by ``budget_alert_deliveries{outcome="gave_up"}``), so no row is retried for ever.

An alert whose budget has no ``channel`` is closed as delivered with ``last_error = "skipped: no
channel"``: there is nowhere to send it, and keeping it pending would grow the outbox for ever;
it stays visible in the table.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.config import JobsConfig, Period
from bot.core.errors import LedgerUnavailable
from bot.core.ledger import Alert, Ledger, period_bounds
from bot.core.types import CallRecord
from bot.slack.formatting import progress_bar, usd

__all__ = ["SKIPPED_NO_CHANNEL", "AlertDelivery", "AlertPushObserver", "alert_blocks", "alert_text"]

log = logging.getLogger(__name__)

SKIPPED_NO_CHANNEL = "skipped: no channel"
#: How long a claim lasts: longer than one send can take (client timeout plus 429 retries), so a
#: slow send is never taken over; a crashed replica's claims are retried after it.
CLAIM_LEASE = timedelta(minutes=5)
#: Rows claimed per transaction.
CLAIM_BATCH = 20
#: The shortest retry delay: a failed row is never due again within the same run.
_MIN_RETRY = timedelta(seconds=1)
Block = dict[str, Any]


def _who(alert: Alert) -> str:
    return alert.budget if alert.scope == "global" else f"{alert.budget} ({alert.scope} {alert.scope_key})"


def _headline(alert: Alert) -> str:
    who = _who(alert)
    if alert.kind == "forecast":
        return f"Budget '{who}' is on track to pass its {alert.period} limit"
    if alert.kind == "reset":
        return f"Budget '{who}' has reset: a new {alert.period} period has started"
    if alert.kind == "exhausted":
        return f"Budget '{who}' is exhausted: it refuses calls now, as too little of its {alert.period} limit is left"
    if alert.kind == "overspent":
        return (
            f"Budget '{who}' is overspent: the provider billed more than the calls' holds, so its"
            f" {alert.period} spend passed the limit; calls are refused until it resets"
        )
    if alert.threshold >= 1.0:
        return f"Budget '{who}' is exhausted: calls are refused until it resets"
    return f"Budget '{who}' has reached {alert.threshold:.0%} of its {alert.period} limit"


def _resets_at(alert: Alert, tz: ZoneInfo) -> str:
    if alert.period_start is None or alert.period == "total":
        return "never"
    _, end = period_bounds(cast(Period, alert.period), alert.period_start, tz)
    return "never" if end is None else end.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


def alert_text(alert: Alert, tz: ZoneInfo) -> str:
    """The plain-text fallback (notifications, screen readers) of an alert message."""
    figures = f"{usd(alert.spent)} of {usd(alert.limit)} spent ({alert.fraction:.0%})"
    if alert.kind == "forecast" and alert.projected is not None:
        figures += f", projected {usd(alert.projected)}"
    return f"{_headline(alert)}: {figures}; resets {_resets_at(alert, tz)}."


def alert_blocks(alert: Alert, tz: ZoneInfo) -> list[Block]:
    """Block Kit for an alert: headline, figures, a progress bar and when the budget resets."""
    icon = {
        "forecast": ":chart_with_upwards_trend:",
        "reset": ":arrows_counterclockwise:",
        "overspent": ":rotating_light:",
        "exhausted": ":no_entry:",
    }.get(alert.kind, ":red_circle:" if alert.threshold >= 1.0 else ":warning:")
    start = "-" if alert.period_start is None else alert.period_start.astimezone(tz).strftime("%Y-%m-%d")
    fields = [
        f"*Spent*\n{usd(alert.spent)}",
        f"*Limit*\n{usd(alert.limit)}",
        f"*Used*\n{alert.fraction:.0%}",
        f"*Period*\n{alert.period} from {start}",
        f"*Resets*\n{_resets_at(alert, tz)}",
    ]
    if alert.kind == "forecast" and alert.projected is not None:
        fields.append(f"*Projected at period end*\n{usd(alert.projected)}")
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{_headline(alert)}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"`{progress_bar(alert.fraction)}`"}]},
    ]


class AlertDelivery:
    """Posts claimed alerts to Slack and records each outcome in the outbox."""

    def __init__(self, ledger: Ledger, slack: AsyncWebClient | None, jobs: JobsConfig) -> None:
        """``slack`` None: nothing is sent (alerts stay pending until a client is configured)."""
        self._ledger = ledger
        self._slack = slack
        self._jobs = jobs
        #: Told ``(kind, ok)`` after every attempt to send an alert (the server's metrics).
        self.on_attempt: Callable[[str, bool], None] | None = None
        #: Told ``kind`` when an alert is given up after ``jobs.alert_max_attempts`` (metrics).
        self.on_gave_up: Callable[[str], None] | None = None

    def _retry_delay(self, attempts: int, retry_after: float | None) -> timedelta:
        base = self._jobs.alert_retry_seconds * 2 ** min(attempts, 30)
        delay = min(base, self._jobs.alert_retry_max_seconds)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return max(timedelta(seconds=delay), _MIN_RETRY)

    async def deliver_due(self) -> int:
        """Deliver every alert that is due now, batch by batch; return how many Slack accepted."""
        if self._slack is None:
            return 0
        delivered = 0
        while True:
            owner = uuid.uuid4().hex
            batch = await self._ledger.outbox.claim(owner, lease=CLAIM_LEASE, limit=CLAIM_BATCH)
            if not batch:
                return delivered
            delivered += await self._send_all(batch, owner)

    async def deliver_ids(self, ids: Sequence[int]) -> int:
        """Deliver these alerts now if they are due and nobody else holds them (the immediate push)."""
        if self._slack is None or not ids:
            return 0
        owner = uuid.uuid4().hex
        batch = await self._ledger.outbox.claim(owner, lease=CLAIM_LEASE, limit=len(ids), ids=ids)
        return await self._send_all(batch, owner)

    async def _send_all(self, batch: Sequence[Alert], owner: str) -> int:
        # In order, one at a time: Slack allows about one message per second per channel anyway.
        done = 0
        for alert in batch:
            done += await self._send(alert, owner)
        return done

    async def _send(self, alert: Alert, owner: str) -> int:
        outbox = self._ledger.outbox
        if not alert.channel:
            await outbox.skipped(alert.id, owner, SKIPPED_NO_CHANNEL)
            return 0
        assert self._slack is not None
        tz = self._ledger.timezone
        retry_after: float | None = None
        try:
            response = await self._slack.chat_postMessage(
                channel=alert.channel,
                text=alert_text(alert, tz),
                blocks=alert_blocks(alert, tz),
                metadata={
                    "event_type": "budget_alert",
                    "event_payload": {"alert_id": alert.id, "kind": alert.kind},
                },
                unfurl_links=False,
            )
            ok = bool(response.get("ok"))
            error = "" if ok else str(response.get("error", "not ok"))
        except SlackApiError as exc:
            ok, error = False, str(exc.response.get("error", "slack_error"))
            header = exc.response.headers.get("Retry-After") if exc.response.headers else None
            retry_after = float(header) if header else None
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # Slack unreachable, timeout…: retried later, like any failure
            ok, error = False, f"{type(exc).__name__}: {exc}"
        if self.on_attempt is not None:
            self.on_attempt(alert.kind, ok)
        if ok:
            if not await outbox.delivered(alert.id, owner):
                log.warning("alert %s was sent after its claim expired", alert.id)
            return 1
        if alert.attempts + 1 >= self._jobs.alert_max_attempts:
            # Retrying for ever every half hour helps nobody: close it, loudly, reason kept.
            log.error(
                "alert %s to %s given up after %d attempts (%s)",
                alert.id,
                alert.channel,
                alert.attempts + 1,
                error,
            )
            await outbox.gave_up(alert.id, owner, error)
            if self.on_gave_up is not None:
                self.on_gave_up(alert.kind)
            return 0
        retry_at = self._ledger.now() + self._retry_delay(alert.attempts, retry_after)
        log.warning(
            "alert %s not delivered to %s (%s); retry at %s", alert.id, alert.channel, error, retry_at
        )
        await outbox.failed(alert.id, owner, error, retry_at)
        return 0


class AlertPushObserver:
    """A ``CallObserver`` that delivers the alerts a call created right away, in the background.

    The call is not held up by Slack: delivery runs as a task, through the same claim as the
    periodic job (which picks up anything this push could not send).
    """

    def __init__(self, delivery: AlertDelivery) -> None:
        """Push through ``delivery``."""
        self._delivery = delivery
        self._tasks: set[asyncio.Task[int]] = set()

    async def on_call(self, record: CallRecord, alerts: Sequence[Any]) -> None:
        """Start delivering the call's new alerts; never raises."""
        ids = [a.id for a in alerts if isinstance(a, Alert)]
        if not ids:
            return
        task = asyncio.create_task(self._push(ids), name=f"alert-push-{record.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, ids: list[int]) -> int:
        try:
            return await self._delivery.deliver_ids(ids)
        except LedgerUnavailable as exc:  # an outage, not a bug; the periodic job delivers them later
            log.warning("immediate alert push skipped: %s", exc.cause)
            return 0
        except Exception:  # the periodic job will deliver them
            log.exception("immediate alert push failed")
            return 0

    async def wait_idle(self) -> None:
        """Wait for the pushes in flight (tests; a clean shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
