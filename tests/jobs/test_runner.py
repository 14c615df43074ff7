"""The scheduler: jobs registered at start, run in the loop, failures logged, never fatal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from bot.core.errors import ConfigurationError
from bot.core.gateway import Gateway
from bot.jobs import JobRunner
from tests.conftest import fast_config

from .conftest import ALERTS, MakeEnv, budget


async def eventually(check: Callable[[], bool]) -> None:
    """Wait (5 s at most) until ``check()`` is true: the scheduler runs on its own time."""
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110 - polling state that no event announces
            await asyncio.sleep(0.01)


async def test_start_schedules_the_jobs_and_delivers_pending_alerts(make_env: MakeEnv) -> None:
    env = await make_env(
        [budget("team", "10")], jobs={"alert_interval_seconds": 0.05, "report_channels": ["CR"]}
    )
    await env.charge("6")
    await env.runner.start()
    await env.runner.start()  # idempotent
    assert env.runner.running and env.runner.job_ids() == ["alerts", "report-day", "report-week"]
    assert env.gateway.sessions.observers.count(env.runner.observer) == 1
    await eventually(lambda: len(env.posted(ALERTS)) == 1)
    await env.charge("3")  # 90%: the next run finds it
    await eventually(lambda: len(env.posted(ALERTS)) == 2)
    await env.runner.stop()
    assert not env.runner.running and env.runner.job_ids() == []
    assert len(env.posted(ALERTS)) == 2
    assert env.runner.observer not in env.gateway.sessions.observers  # stopped: no more pushes


async def test_no_report_jobs_without_channels(make_env: MakeEnv) -> None:
    env = await make_env([], jobs={"weekly_report_cron": None})
    await env.runner.start()
    assert env.runner.job_ids() == ["alerts"]


async def test_a_failing_job_is_logged_and_the_next_run_happens(
    make_env: MakeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env([], jobs={"alert_interval_seconds": 0.02})
    runs = 0

    async def broken() -> int:
        nonlocal runs
        runs += 1
        raise RuntimeError("database down")

    env.runner.deliver_alerts_once = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="bot.jobs.runner"):
        await env.runner.start()
        await eventually(lambda: runs >= 3)
    assert "alert delivery job failed" in caplog.text and env.runner.running


async def test_runner_needs_a_ledger() -> None:
    config = fast_config()
    async with Gateway(config, env={}) as gateway:
        with pytest.raises(ConfigurationError, match="ledger"):
            JobRunner(gateway, config, None)
