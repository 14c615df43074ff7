"""``bot report``: the daily or weekly spend report on demand, printed or posted to Slack."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TextIO

from bot.core.errors import ConfigurationError
from bot.jobs.reports import ReportPeriod

__all__ = ["run_report"]


async def run_report(
    period: ReportPeriod, *, post: bool, as_json: bool, out: TextIO, env: Mapping[str, str] | None = None
) -> int:
    """Build the report of the last complete ``period``; print it (text or JSON), and post it if asked.

    Posting needs ``SLACK_BOT_TOKEN`` (and ``SLACK_API_URL`` to reach another Web API) and
    ``jobs.report_channels``; the signing secret is not needed, nothing is served.
    """
    from bot.app import build_core, load_config
    from bot.jobs.runner import JobRunner

    env = os.environ if env is None else env
    config = load_config(env)
    slack = None
    if post:
        token = env.get("SLACK_BOT_TOKEN")
        if not token:
            raise ConfigurationError(
                "SLACK_BOT_TOKEN not set", source="environment", hint="--post needs the bot token (xoxb-…)."
            )
        if not config.jobs.report_channels:
            raise ConfigurationError(
                "no report channel",
                field="jobs.report_channels",
                hint="List channel ids under jobs.report_channels.",
            )
        from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
        from slack_sdk.web.async_client import AsyncWebClient

        from bot.slack.settings import DEFAULT_API_URL

        slack = AsyncWebClient(
            token=token,
            base_url=env.get("SLACK_API_URL") or DEFAULT_API_URL,
            retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
        )
    async with build_core(config) as core:
        runner = JobRunner(core, config, slack)
        report = await (runner.post_report(period) if post else runner.build_report(period))
    if as_json:
        data = report.to_dict()
        if post:
            data["posted_to"] = list(config.jobs.report_channels)
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(report.text() + "\n")
        if post:
            out.write(f"posted to {', '.join(config.jobs.report_channels)}\n")
    return 0
