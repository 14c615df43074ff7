"""``JobRunner``: the scheduler of alert delivery and spend reports inside the server process.

``start()`` runs an APScheduler ``AsyncIOScheduler`` in the running loop with the alert job (every
``jobs.alert_interval_seconds``: queue reset and forecast alerts, then deliver everything due) and
the report cron jobs (``jobs.daily_report_cron``/``weekly_report_cron`` in ``database.timezone``),
and registers ``AlertPushObserver`` on the gateway so a call that crosses a threshold is announced
at once. Every job body is wrapped: a failure is logged and the job runs again at its next slot
(reports are retried a few times within the slot), never taking the scheduler or the server down.

Several replicas may run the same schedule on one database: alerts are claimed row by row, and a
report slot is claimed in ``job_runs`` by the first replica that reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.config import AppConfig
from bot.core.errors import ConfigurationError, LedgerUnavailable
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.jobs.delivery import AlertDelivery, AlertPushObserver
from bot.jobs.reports import Report, ReportPeriod, build_report

__all__ = ["JobRunner"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class JobRunner:
    """Scheduled alert delivery and spend reports for one gateway."""

    #: Seconds to wait before each retry of a failed report post (the slot is given up after).
    report_retry_delays: Sequence[float] = (30.0, 120.0)

    def __init__(
        self, gateway: Gateway, config: AppConfig, slack: AsyncWebClient | None, *, clock: Clock | None = None
    ) -> None:
        """``slack`` None: alerts stay pending and reports are only built, never posted."""
        if gateway.ledger is None:
            raise ConfigurationError("scheduled jobs need the ledger", hint="Open the gateway with a ledger.")
        self._ledger: Ledger = gateway.ledger
        self._gateway = gateway
        self._config = config
        self._slack = slack
        self._clock: Clock = clock or self._ledger.now
        self.delivery = AlertDelivery(self._ledger, slack, config.jobs)
        self.observer = AlertPushObserver(self.delivery)
        self._scheduler: AsyncIOScheduler | None = None
        self._owner = uuid.uuid4().hex
        self._observing = False
        # Job bodies run as our own tasks: APScheduler cancels its job futures at shutdown, and a
        # job cancelled mid-transaction would be cut off rather than finish its write.
        self._running: set[asyncio.Task[None]] = set()

    # -- life cycle ----------------------------------------------------------------------------

    def observe_deliveries(
        self, callback: Callable[[str, bool], None], gave_up: Callable[[str], None] | None = None
    ) -> None:
        """Tell ``callback(kind, ok)`` about every alert delivery attempt, and ``gave_up(kind)``
        about every alert closed as failed (for metrics)."""
        self.delivery.on_attempt = callback
        self.delivery.on_gave_up = gave_up

    async def start(self) -> None:
        """Register the alert push and start the scheduler in the running event loop."""
        if self._scheduler is not None:
            return
        jobs = self._config.jobs
        tz = self._config.database.timezone
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=tz)
        scheduler.add_job(
            self._shielded,
            IntervalTrigger(seconds=jobs.alert_interval_seconds, timezone=tz),
            args=[self._alert_job],
            id="alerts",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(scheduler.timezone),  # deliver what is pending at start-up
        )
        for period, cron in (("day", jobs.daily_report_cron), ("week", jobs.weekly_report_cron)):
            if cron and jobs.report_channels:
                scheduler.add_job(
                    self._shielded,
                    CronTrigger.from_crontab(cron, timezone=tz),
                    args=[self._report_job, period],
                    id=f"report-{period}",
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=3600,
                )
        if not self._observing:
            self._gateway.add_observer(self.observer)
            self._observing = True
        scheduler.start()
        self._scheduler = scheduler

    async def stop(self, grace: float = 10.0) -> None:
        """Stop scheduling; let running jobs and alert pushes finish (``grace`` seconds, then cancel)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._observing:  # no new pushes once stopped; those under way finish below
            self._gateway.remove_observer(self.observer)
            self._observing = False
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=grace)
            for task in late:  # e.g. a report waiting to retry
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.observer.wait_idle()

    async def _shielded(self, job: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        task = asyncio.create_task(job(*args))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        await asyncio.shield(task)

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._scheduler is not None

    def job_ids(self) -> list[str]:
        """Ids of the scheduled jobs (``alerts``, ``report-day``, ``report-week``)."""
        return [] if self._scheduler is None else sorted(job.id for job in self._scheduler.get_jobs())

    # -- the jobs ------------------------------------------------------------------------------

    async def deliver_alerts_once(self) -> int:
        """Queue reset and forecast alerts, then deliver every due alert; return how many were sent."""
        await self._ledger.outbox.queue_resets()
        if self._config.jobs.forecast_alerts:
            statuses = await self._ledger.status_all()
            await self._ledger.outbox.queue_forecasts(statuses, self._config.jobs.forecast_min_elapsed)
        return await self.delivery.deliver_due()

    async def _alert_job(self) -> None:
        try:
            swept, pruned = await self._ledger.housekeeping()
            if swept or pruned:
                log.info(
                    "ledger housekeeping: %d expired holds written down as interrupted calls,"
                    " %d old request keys pruned",
                    swept,
                    pruned,
                )
            sent = await self.deliver_alerts_once()
            if sent:
                log.info("delivered %d budget alerts", sent)
        except LedgerUnavailable as exc:  # an outage, not a bug: one line, /readyz says the rest
            log.warning("alert delivery job skipped: %s", exc.cause)
        except Exception:  # the next interval retries; the scheduler must keep running
            log.exception("alert delivery job failed")

    async def build_report(self, period: ReportPeriod) -> Report:
        """The report of the last complete day or week (nothing is posted)."""
        return await build_report(self._ledger, period, self._clock())

    async def post_report(self, period: ReportPeriod, channels: Sequence[str] | None = None) -> Report:
        """Build the report and post it (message plus chart) to ``channels`` (default: config).

        Raises when there is no Slack client or no channel, or when Slack refuses a post.
        """
        channels = list(self._config.jobs.report_channels if channels is None else channels)
        if self._slack is None:
            raise ConfigurationError("posting a report needs Slack", hint="Set SLACK_BOT_TOKEN.")
        if not channels:
            raise ConfigurationError(
                "no report channel",
                field="jobs.report_channels",
                hint="List channel ids under jobs.report_channels.",
            )
        report = await self.build_report(period)
        png = report.chart_png()
        for channel in channels:
            await self._slack.chat_postMessage(
                channel=channel, text=report.text(), blocks=report.blocks(), unfurl_links=False
            )
            # Slack's external-upload flow: getUploadURLExternal, POST the bytes, completeUploadExternal.
            await self._slack.files_upload_v2(
                channel=channel,
                file=png,
                filename=f"spend-{report.period}-{report.start.date().isoformat()}.png",
                title=f"Spend per day ({report.timezone})",
                alt_txt="Bar chart of spend per day",
            )
        return report

    async def _report_job(self, period: ReportPeriod) -> None:
        """Post one report slot once across replicas; retried a few times, then given up."""
        try:
            report = await self.build_report(period)
            run_key = f"{period}:{report.start.isoformat()}"
            for attempt, delay in enumerate((0.0, *self.report_retry_delays)):
                if delay:
                    await asyncio.sleep(delay)
                if not await self._ledger.outbox.claim_run("report", run_key, self._owner):
                    return  # another replica posts (or posted) this one
                try:
                    await self.post_report(period)
                except Exception:
                    log.exception("posting the %s report failed (attempt %d)", period, attempt + 1)
                    await self._ledger.outbox.release_run("report", run_key)
                    continue
                await self._ledger.outbox.finish_run("report", run_key)
                return
        except LedgerUnavailable as exc:  # an outage, not a bug: one line, /readyz says the rest
            log.warning("the %s report job skipped: %s", period, exc.cause)
        except Exception:
            log.exception("the %s report job failed", period)
