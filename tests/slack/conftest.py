"""Slack fixtures: the fake Slack Web API, and the Slack app served over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest

from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.slack.app import slack_http_app
from bot.slack.commands import SlackCommands
from bot.slack.settings import SlackSettings
from tests.conftest import fast_config
from tests.fakes.loopback import serve_in_loop as serve
from tests.fakes.slack_api import FakeSlackApi

SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-token"
TEAM = "T1"
ADMIN = "UADMIN"
#: Every Slack user gets $5 a month.
PER_USER = {"name": "per-user", "scope": "user", "key": None, "limit_usd": "5", "period": "monthly"}

_ids = itertools.count(1)


def sign(body: str, ts: str, secret: str = SECRET) -> str:
    """Slack's v0 request signature (what ``SignatureVerifier`` checks)."""
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"


@pytest.fixture(scope="session")
def slack_server() -> Iterator[FakeSlackApi]:
    """One fake Slack Web API for the whole run."""
    with FakeSlackApi(token=BOT_TOKEN) as server:
        yield server


@pytest.fixture
def slack_api(slack_server: FakeSlackApi) -> Iterator[FakeSlackApi]:
    """The fake Slack API, clean for this test."""
    slack_server.reset()
    yield slack_server
    slack_server.reset()


@dataclass
class SlackHarness:
    """The Slack app on loopback HTTP, its handlers, the fake Slack API and the gateway behind them."""

    url: str
    commands: SlackCommands
    api: FakeSlackApi
    gateway: Gateway
    http: httpx2.AsyncClient

    def form(self, command: str, text: str, **fields: str) -> dict[str, str]:
        """A slash-command payload with a fresh trigger_id and response_url."""
        n = next(_ids)
        form = {
            "token": "legacy", "team_id": TEAM, "team_domain": "fake", "channel_id": "C1",
            "channel_name": "general", "user_id": "U1", "user_name": "alice", "command": command,
            "text": text, "api_app_id": "A1", "response_url": self.api.response_url(f"r{n}"),
            "trigger_id": f"trigger.{n}",
        }  # fmt: skip
        form.update(fields)
        return form

    async def post(
        self,
        form: dict[str, str],
        *,
        ts: str | None = None,
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
    ) -> httpx2.Response:
        """POST ``form`` to /slack/events, signed with ``secret`` at ``ts`` (now by default)."""
        body = urlencode(form)
        ts = ts or str(int(time.time()))
        all_headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(body, ts, secret),
            **(headers or {}),
        }
        return await self.http.post(f"{self.url}/slack/events", content=body, headers=all_headers)

    def event_body(self, event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
        """An Events API envelope around ``event`` (fresh ``event_id`` unless given)."""
        return {
            "token": "legacy", "team_id": TEAM, "api_app_id": "A1", "type": "event_callback",
            "event_id": event_id or f"Ev{next(_ids):08d}", "event_time": int(time.time()),
            "event": {"team": TEAM, **event},
        }  # fmt: skip

    async def post_event(
        self, envelope: dict[str, Any], *, headers: dict[str, str] | None = None
    ) -> httpx2.Response:
        """POST an Events API ``envelope`` as JSON to /slack/events, signed now."""
        body = json.dumps(envelope)
        ts = str(int(time.time()))
        all_headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(body, ts),
            **(headers or {}),
        }
        return await self.http.post(f"{self.url}/slack/events", content=body, headers=all_headers)

    async def received(self, count: int) -> None:
        """Wait (30 s at most, a guard against a hang) until ``count`` events were looked at."""
        events = self.commands.events
        assert events is not None
        async with asyncio.timeout(30):
            # A counter the app bumps from Bolt's listener task; nothing to wait on but it.
            while events.received < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def command(self, command: str, text: str, **fields: str) -> httpx2.Response:
        """Send one signed slash command."""
        return await self.post(self.form(command, text, **fields))

    async def settle(self, started: int = 1) -> None:
        """Wait (30 s at most) until ``started`` generations began and every one of them finished.

        A guard against a hang, not a speed check: the longest answer here streams for ~8 s on
        this machine alone, longer under a loaded CI run.
        """
        async with asyncio.timeout(30):
            while self.commands.started < started or self.commands.tasks:
                await self.commands.wait_idle()
                await asyncio.sleep(0.01)


MakeSlack = Callable[..., Awaitable[SlackHarness]]


@pytest.fixture
async def make_slack(
    fake_env: dict[str, str], slack_api: FakeSlackApi, tmp_path: Path
) -> AsyncIterator[MakeSlack]:
    """Build and serve the Slack app on a gateway with a SQLite ledger and the given budgets."""
    stack = contextlib.AsyncExitStack()

    async def make(
        budgets: list[dict[str, Any]] | None = None,
        config: dict[str, Any] | None = None,
        *,
        ledger_name: str | None = None,
        **settings: Any,
    ) -> SlackHarness:
        """``ledger_name``: share one SQLite ledger file between harnesses (replicas)."""
        cfg = fast_config(budgets=[PER_USER] if budgets is None else budgets, **(config or {}))
        name = ledger_name or f"ledger{next(_ids)}"
        db = cfg.database.model_copy(update={"url": f"sqlite+aiosqlite:///{tmp_path}/{name}.db"})
        ledger = await Ledger.open(db, cfg.budgets)
        gateway = await stack.enter_async_context(Gateway(cfg, ledger=ledger, env=fake_env))
        base = SlackSettings(
            bot_token=BOT_TOKEN, signing_secret=SECRET, api_url=slack_api.api_url,
            admin_users=frozenset({ADMIN}), update_interval=0.0,
        )  # fmt: skip
        app = slack_http_app(gateway, replace(base, **settings))
        url = await stack.enter_async_context(serve(app))
        http = await stack.enter_async_context(httpx2.AsyncClient(timeout=10))
        return SlackHarness(url, app.state.slack_commands, slack_api, gateway, http)

    async with stack:
        yield make
