"""Budgets a team can trust, through signed Slack requests and MCP over HTTP, on SQLite and PostgreSQL:
keys that cannot silently miss, overrides set, shown with their source, unset and kept across
restarts, callers named, refusals counted apart, footers naming their budget (issue #15)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.core.types import Principal
from bot.slack.app import slack_http_app
from bot.slack.settings import SlackSettings
from tests.conftest import fast_config
from tests.fakes.loopback import serve_in_loop as serve
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.ledger.conftest import PG_DSN, SKIP_PG, drop_ledger_tables
from tests.mcp.conftest import TOKENS, http_client
from tests.mcp.test_tools_memory import error_text
from tests.slack.conftest import ADMIN, BOT_TOKEN, SECRET, SlackHarness
from tests.slack.test_commands import _texts
from tools.mcp_server import mcp_http_app

BUDGETS: list[dict[str, Any]] = [
    {"name": "company-monthly", "scope": "global", "limit_usd": "500", "period": "monthly"},
    {"name": "per-user-daily", "scope": "user", "limit_usd": "7", "period": "daily"},
    # A bare Slack user id: the ledger keys U1 as T1:U1, and this budget must still apply.
    {"name": "alice-cap", "scope": "user", "key": "U1", "limit_usd": "2", "period": "monthly"},
    {"name": "eng-channel", "scope": "channel", "key": "C1", "limit_usd": "0.50", "period": "monthly"},
    {"name": "per-client", "scope": "client", "limit_usd": "1", "period": "monthly"},
    {"name": "bob-client", "scope": "client", "key": "bob", "limit_usd": "0.000001", "period": "monthly"},
]
MCP = {"clients": {name: {"token": token} for name, token in TOKENS.items()}}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean ledger database: a SQLite file, or the PostgreSQL test database emptied."""
    if request.param == "postgres":
        if not PG_DSN:
            pytest.skip(SKIP_PG)
        await drop_ledger_tables(PG_DSN)
        return PG_DSN
    return f"sqlite+aiosqlite:///{tmp_path}/ledger.db"


@dataclass
class Faces:
    """The Slack app and the MCP app on loopback HTTP, over one gateway."""

    slack: SlackHarness
    mcp_url: str


Open = Callable[..., Awaitable[Faces]]


@pytest.fixture
async def open_faces(
    fake_env: dict[str, str], slack_api: FakeSlackApi, ledger_url: str
) -> AsyncIterator[Open]:
    """``await open_faces(budgets)``: a gateway on ``ledger_url`` behind both faces; call it again to
    restart (a new gateway, possibly with another config, on the same database)."""
    stacks: list[contextlib.AsyncExitStack] = []

    async def start(budgets: list[dict[str, Any]] = BUDGETS) -> Faces:
        if stacks:  # a restart: the previous process is gone first
            await stacks.pop().aclose()
        stack = contextlib.AsyncExitStack()
        stacks.append(stack)
        cfg = fast_config(budgets=budgets, mcp=MCP)
        ledger = await Ledger.open(cfg.database.model_copy(update={"url": ledger_url}), cfg.budgets)
        gateway = await stack.enter_async_context(Gateway(cfg, ledger=ledger, env=fake_env))
        await gateway.log_override_drift()  # what `bot serve` does at start-up
        settings = SlackSettings(
            bot_token=BOT_TOKEN, signing_secret=SECRET, api_url=slack_api.api_url,
            admin_users=frozenset({ADMIN}), update_interval=0.0,
        )  # fmt: skip
        app = slack_http_app(gateway, settings)
        url = await stack.enter_async_context(serve(app))
        mcp_url = await stack.enter_async_context(serve(mcp_http_app(gateway)))
        http = await stack.enter_async_context(httpx2.AsyncClient(timeout=10))
        return Faces(SlackHarness(url, app.state.slack_commands, slack_api, gateway, http), mcp_url)

    yield start
    for stack in stacks:
        await stack.aclose()


async def _say(slack: SlackHarness, text: str, user: str = ADMIN, **fields: str) -> str:
    reply = await slack.command("/budget", text, user_id=user, **fields)
    assert reply.status_code == 200
    body = reply.json()
    return str(body.get("text", "")) + "\n" + _texts(body.get("blocks", []))


async def _mine(slack: SlackHarness, user: str, channel: str = "C1") -> str:
    return await _say(slack, "", user=user, channel_id=channel)


async def test_wrong_keys_and_unknown_overrides_are_refused_with_their_fix(
    open_faces: Open, fake: FakeUpstream
) -> None:
    slack = (await open_faces()).slack
    cases = {
        "set nope 1": ["unknown budget 'nope'", "Known budgets: alice-cap, bob-client, company-monthly"],
        "set per-user-daily:<@UBOB|bob> 3": ["Slack mention", "write the id alone: 'UBOB'"],
        "set per-user-daily:#eng 3": ["is not a user key", "T0123ABCD:U0456EFGH"],
        "set per-client:mallory 3": ["no MCP client is named 'mallory'", "alice, bob"],
        "set eng-channel:C999 0.3": ["covers only channel C1, not 'C999'", "Write eng-channel alone"],
        "set company-monthly:T1 5": ["is global: it has no key", "Write company-monthly alone"],
        "set company-monthly 1e10": ["larger than any budget limit ($1,000,000,000.00 at most)"],
        "set company-monthly 0": ["must be above $0"],
        "set company-monthly lots": ["'lots' is not an amount of dollars"],
        "set company-monthly 0.0000000001": ["more decimals than the ledger counts"],
        "unset per-user-daily:UBOB": ["has no override for T1:UBOB", "Its overrides: none"],
        "set company-monthly": ["Give a budget and an amount.", "/budget set NAME[:KEY] AMOUNT"],
    }
    for command, needles in cases.items():
        text = await _say(slack, command)
        assert ":warning:" in text or "Usage" in text, (command, text)
        for needle in needles:
            assert needle in text, (command, text)
    assert await slack.gateway.budget_overrides() == []  # nothing was written


async def test_overrides_set_shown_with_their_source_unset_and_kept_across_restarts(
    open_faces: Open, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    faces = await open_faces()
    slack = faces.slack
    # A bare user id is a user of the admin's own team: UBOB's budget really is $3 now.
    done = await _say(slack, "set per-user-daily:UBOB 3")
    assert "per-user-daily (user T1:UBOB) is now $3.00 per period (config file: $7.00)" in done
    assert "no call from user T1:UBOB is recorded yet" in done
    bob = await _mine(slack, "UBOB")
    assert "$0.00 of $3.00 spent" in bob and "limit $3.00 set by <@UADMIN> via slack on" in bob
    assert "the config file says $7.00" in bob

    # The channel budget names its one key in config: no key means that key.
    assert "eng-channel (every channel) is now $0.30" in await _say(slack, "set eng-channel 0.3")
    assert "*eng-channel* (channel, monthly)\n$0.00 of $0.30 spent" in await _mine(slack, "U1")
    # Money as money: never 1E+9.
    assert "is now $1,000,000,000.00 per period" in await _say(slack, "set company-monthly 1e9")

    # MCP budget_status shows where the limit came from.
    async with http_client(faces.mcp_url, TOKENS["alice"]) as client:
        status = (await client.call_tool("budget_status", {})).structured_content
    assert status is not None
    company = next(b for b in status["budgets"] if b["name"] == "company-monthly")
    assert company["limit_usd"] == "1000000000" and company["config_limit_usd"] == "500"
    assert company["limit_source"].startswith("set by T1:UADMIN via slack on ")

    # A restart with the YAML limit changed to 600: the override still wins, and start-up says so.
    changed = [dict(b, limit_usd="600") if b["name"] == "company-monthly" else b for b in BUDGETS]
    with caplog.at_level(logging.WARNING, logger="bot.core.budget_admin"):
        slack = (await open_faces(changed)).slack
    drift = [r.getMessage() for r in caplog.records if "company-monthly" in r.getMessage()]
    assert drift and "$1,000,000,000.00" in drift[0] and "$600.00" in drift[0]
    assert "set by T1:UADMIN via slack" in drift[0] and "bot budget unset company-monthly" in drift[0]
    assert "$0.00 of $3.00 spent" in await _mine(slack, "UBOB")  # kept across the restart

    # Unset: back to the config file's figures, and the answer says what was removed.
    gone = await _say(slack, "unset company-monthly")
    assert "the override of $1,000,000,000.00 (set by T1:UADMIN via slack on" in gone
    assert "the limit is $600.00 per period." in gone
    assert "has no override for every key" in await _say(slack, "unset company-monthly")
    await _say(slack, "unset per-user-daily:T1:UBOB")
    assert "$0.00 of $7.00 spent" in await _mine(slack, "UBOB")
    assert [o.budget for o in await slack.gateway.budget_overrides()] == ["eng-channel"]


async def test_every_key_while_some_keep_their_own_is_said(open_faces: Open, fake: FakeUpstream) -> None:
    slack = (await open_faces()).slack
    await _say(slack, "set per-user-daily:UBOB 3")
    text = await _say(slack, "set per-user-daily 5")
    assert "per-user-daily (every user) is now $5.00" in text
    assert "these keys keep their own override, which wins over this one: T1:UBOB ($3.00)" in text


async def test_config_key_of_a_bare_user_id_applies_and_the_footer_names_its_budget(
    open_faces: Open, fake: FakeUpstream
) -> None:
    slack = (await open_faces()).slack
    assert "*alice-cap* (user, monthly)" in await _mine(slack, "U1")  # T1:U1 is U1's key
    assert "alice-cap" not in await _mine(slack, "U2")
    await slack.command("/generate", "hello", user_id="U1", channel_id="C1")
    await slack.settle()
    final = slack.api.ok_calls_to("chat.update")[-1].text
    # The channel's $0.50 is what limits the next call: the footer says whose budget it is.
    assert "left in budget eng-channel (channel C1)" in final and "your budget" not in final


async def test_team_spend_names_every_caller_and_counts_refusals_apart(
    open_faces: Open, fake: FakeUpstream
) -> None:
    faces = await open_faces()
    slack = faces.slack
    await slack.command("/generate", "from slack", user_id="U2", channel_id="C2")
    await slack.settle()
    async with http_client(faces.mcp_url, TOKENS["alice"]) as client:
        assert not (await client.call_tool("generate", {"prompt": "from mcp"})).is_error
    async with http_client(faces.mcp_url, TOKENS["bob"]) as client:
        refused = await client.call_tool("generate", {"prompt": "too dear for bob"})
    assert refused.is_error and "budget 'bob-client (client bob)' would be exceeded" in error_text(refused)
    await slack.gateway.generate(Principal.cli(), "from the command line")
    text = await _say(slack, "team")
    assert "<@U2>" in text and "MCP client *alice*" in text and "CLI user *local*" in text
    assert "MCP client *bob* $0.00 · 0 calls (1 refused)" in text
    assert "(none)" not in text


async def test_mcp_errors_speak_mcp_and_models_names_unknown_providers(
    open_faces: Open, fake: FakeUpstream
) -> None:
    faces = await open_faces()
    async with http_client(faces.mcp_url, TOKENS["alice"]) as client:
        unknown = await client.call_tool("generate", {"prompt": "hi", "model": "gpt-4o-mimi"})
        bad = await client.call_tool("generate", {"prompt": "hi", "max_tokens": 10**9})
        nope = await client.call_tool("list_models", {"provider": "nope"})
        nothing_close = await client.call_tool("generate", {"prompt": "hi", "model": "zzzz-9"})
    assert "Did you mean: gpt-4o-mini" in error_text(unknown)
    # The hint names this face's own command.
    assert "Run the `list_models` tool to list the models" in error_text(nothing_close)
    assert "bot models" not in error_text(nothing_close)
    assert error_text(bad) == (
        "Invalid argument for generate: 'max_tokens' must be a whole number from 1 to 200,000 "
        "(got 1000000000); or leave it out for the default."
    )
    assert "unknown provider 'nope'. Known providers: anthropic, openai." in error_text(nope)
    reply = await faces.slack.command("/models", "garbage")
    assert "unknown provider 'garbage'. Known providers: anthropic, openai." in reply.json()["text"]
