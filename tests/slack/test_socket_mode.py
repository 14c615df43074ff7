"""Socket Mode end to end: ``run_slack_socket`` against a fake Socket Mode WebSocket and Web API.

The fake speaks Slack's protocol: ``apps.connections.open`` with the app-level token returns a
``ws://`` URL, the server greets with ``hello`` and pushes ``slash_commands`` envelopes, and the
client acks each one with its ``envelope_id`` (the slash command's response in the ack payload).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bot.core.errors import ConfigurationError
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.slack.app import run_slack_socket
from bot.slack.settings import SlackSettings
from tests.conftest import fast_config
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.slack_socket import FakeSocketMode
from tests.fakes.upstream import FakeUpstream
from tests.slack.conftest import BOT_TOKEN, PER_USER, SECRET, TEAM

APP_TOKEN = "xapp-1-A1-test"
CHAT = "/v1/chat/completions"


def command(api: FakeSlackApi, name: str, text: str, n: int) -> dict[str, str]:
    """A slash command's payload as Socket Mode carries it."""
    return {
        "token": "legacy", "team_id": TEAM, "team_domain": "fake", "channel_id": "C1",
        "channel_name": "general", "user_id": "U1", "user_name": "alice", "command": name,
        "text": text, "api_app_id": "A1", "response_url": api.response_url(f"sock{n}"),
        "trigger_id": f"trigger.sock.{n}",
    }  # fmt: skip


@pytest.fixture
def socket_mode(slack_api: FakeSlackApi) -> Iterator[FakeSocketMode]:
    """The fake Socket Mode endpoint, reachable through the fake Web API's apps.connections.open."""
    with FakeSocketMode(app_token=APP_TOKEN) as server:
        slack_api.enable_socket_mode(server.app_token, server.issue_url)
        yield server


@pytest.fixture
async def gateway(fake_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Gateway]:
    cfg = fast_config(budgets=[PER_USER])
    db = cfg.database.model_copy(update={"url": f"sqlite+aiosqlite:///{tmp_path}/ledger.db"})
    ledger = await Ledger.open(db, cfg.budgets)
    async with Gateway(cfg, ledger=ledger, env=fake_env) as gw:
        yield gw


def settings(api: FakeSlackApi, app_token: str | None = APP_TOKEN) -> SlackSettings:
    return SlackSettings(
        bot_token=BOT_TOKEN, signing_secret=SECRET, app_token=app_token, api_url=api.api_url,
        update_interval=0.0,
    )  # fmt: skip


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``check()`` (``within`` seconds at most) until it is true."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - the fakes' state changes in their own threads
            await asyncio.sleep(0.01)


async def test_socket_mode_generate_and_budget(
    gateway: Gateway, slack_api: FakeSlackApi, socket_mode: FakeSocketMode, fake: FakeUpstream
) -> None:
    before = asyncio.all_tasks()
    task = asyncio.create_task(run_slack_socket(gateway, settings(slack_api)))
    try:
        await socket_mode.wait_connected()
        opened = slack_api.ok_calls_to("apps.connections.open")
        assert len(opened) == 1 and opened[0].headers["authorization"] == f"Bearer {APP_TOKEN}"

        start = time.monotonic()
        gen_id = await socket_mode.push(
            "slash_commands", command(slack_api, "/generate", "--model gpt-4o-mini hello", 1)
        )
        ack = await socket_mode.wait_ack(gen_id, within=3)
        assert ack.time - start < 3.0
        assert ack.payload is not None and ack.payload.get("response_type") == "ephemeral"
        assert "Working on it" in str(ack.payload.get("text"))

        def answered() -> bool:
            updates = slack_api.ok_calls_to("chat.update")
            return bool(updates) and "left in your budget" in updates[-1].text

        await until(answered)
        posts = slack_api.ok_calls_to("chat.postMessage")
        assert len(posts) == 1 and posts[0].body["channel"] == "C1"
        assert all(c.headers["authorization"] == f"Bearer {BOT_TOKEN}" for c in posts)
        final = slack_api.ok_calls_to("chat.update")[-1].text
        assert "Echo: hello" in final
        assert "`gpt-4o-mini`" in final and "out tokens" in final and "$" in final
        assert len(fake.requests_to(CHAT)) == 1

        budget_id = await socket_mode.push("slash_commands", command(slack_api, "/budget", "", 2))
        budget = await socket_mode.wait_ack(budget_id, within=3)
        assert budget.payload is not None and budget.payload.get("response_type") == "ephemeral"
        assert "*per-user*" in str(budget.payload.get("blocks")) and "of $5.00 spent" in str(
            budget.payload.get("blocks")
        )
        assert [a.envelope_id for a in socket_mode.acks] == [gen_id, budget_id]
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

    await asyncio.sleep(0.05)  # let cancelled helpers finish unwinding
    leaked = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leaked == [], f"Socket Mode left tasks running: {leaked}"
    await until(lambda: socket_mode.connections == 1 and socket_mode.open_connections == 0, within=5)


async def test_socket_mode_without_app_token_is_a_configuration_error(
    gateway: Gateway, slack_api: FakeSlackApi
) -> None:
    with pytest.raises(ConfigurationError, match="SLACK_APP_TOKEN"):
        await run_slack_socket(gateway, settings(slack_api, app_token=None))
