"""Jobs fixtures: a fake Slack Web API, a ledger per backend with a hand-moved clock, and runners."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.config import AppConfig
from bot.core.gateway import Gateway
from bot.core.ledger import Alert, Ledger
from bot.core.types import Principal
from bot.jobs import JobRunner
from tests.conftest import fast_config
from tests.fakes.slack_api import FakeSlackApi
from tests.ledger.conftest import FakeClock, record

BOT_TOKEN = "xoxb-jobs-token"
#: Wednesday 2026-11-18 12:00 UTC: mid-week, mid-month.
T0 = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
ALERTS = "CALERTS"

_ids = itertools.count(1)


@pytest.fixture(scope="session")
def jobs_slack_server() -> Iterator[FakeSlackApi]:
    """One fake Slack Web API for the jobs tests."""
    with FakeSlackApi(token=BOT_TOKEN) as server:
        yield server


@pytest.fixture
def slack_api(jobs_slack_server: FakeSlackApi) -> Iterator[FakeSlackApi]:
    """The fake Slack API, clean for this test."""
    jobs_slack_server.reset()
    yield jobs_slack_server
    jobs_slack_server.reset()


@pytest.fixture
def clock() -> FakeClock:
    """The clock of every ledger and runner of a test, starting at ``T0``."""
    return FakeClock(T0)


@dataclass
class JobsEnv:
    """One "replica": its config, ledger, gateway, Slack client and job runner."""

    config: AppConfig
    ledger: Ledger
    gateway: Gateway
    runner: JobRunner
    api: FakeSlackApi

    async def charge(self, cost: str | Decimal, principal: Principal | None = None, **kw: Any) -> list[Alert]:
        """Settle one call of ``cost`` dollars (made now) and return the alerts it created."""
        rid = f"call-{next(_ids)}"
        who = principal or Principal(surface="slack", team_id="T1", user_id="alice", channel_id="C1")
        hold = await self.ledger.reserve(
            who, Decimal(0), request_id=rid, model=kw.get("model", "gpt-test"), provider="openai"
        )
        rec = record(hold, cost, principal=who, created_at=self.ledger.now(), **kw)
        return await self.ledger.settle(hold, rec)

    def posted(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Bodies of the chat.postMessage calls Slack accepted (to ``channel`` if given)."""
        return [
            c.body
            for c in self.api.ok_calls_to("chat.postMessage")
            if channel is None or c.body.get("channel") == channel
        ]


MakeEnv = Callable[..., Awaitable[JobsEnv]]


def budget(name: str, limit: str, **kw: Any) -> dict[str, Any]:
    """A budget dict for the config (daily, alerting ``ALERTS`` unless told otherwise)."""
    return {"name": name, "limit_usd": limit, "period": kw.pop("period", "daily"), "channel": ALERTS, **kw}


@pytest.fixture
async def make_env(
    db_url: str, slack_api: FakeSlackApi, fake_env: dict[str, str], clock: FakeClock
) -> AsyncIterator[MakeEnv]:
    """Build replicas sharing ``db_url`` and ``clock``: ``await make_env(budgets, jobs={...})``."""
    made: list[JobsEnv] = []

    async def make(
        budgets: list[dict[str, Any]],
        *,
        jobs: dict[str, Any] | None = None,
        timezone: str = "UTC",
        slack: bool = True,
    ) -> JobsEnv:
        config = fast_config(
            budgets=budgets,
            # Forecasts off unless a test turns them on: they would add alerts to every other test.
            jobs={
                "alert_retry_seconds": 30,
                "alert_retry_max_seconds": 600,
                "forecast_alerts": False,
                **(jobs or {}),
            },
            database={"url": db_url, "timezone": timezone},
        )
        ledger = await Ledger.open(config.database, config.budgets, clock=clock)
        gateway = Gateway(config, ledger=ledger, env=fake_env)
        client = AsyncWebClient(
            token=BOT_TOKEN,
            base_url=slack_api.api_url,
            retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
        )
        env = JobsEnv(
            config,
            ledger,
            gateway,
            JobRunner(gateway, config, client if slack else None, clock=clock),
            slack_api,
        )
        made.append(env)
        return env

    yield make
    for env in made:
        await env.runner.stop()
        await env.gateway.close()
