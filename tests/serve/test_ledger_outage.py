"""The budget ledger's database goes away: every face says so, no call is made, nothing crashes.

Before: MCP answered "Error executing tool generate", Slack "failed unexpectedly
(ConnectionRefusedError)", the CLI "unexpected ConnectionRefusedError". It failed closed (no
upstream call), which it still does: the fake upstream counts every request it gets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx2
import pytest
from sqlalchemy.engine import make_url

from bot.core.errors import LEDGER_UNAVAILABLE
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.ledger.conftest import PG_DSN, SKIP_PG
from tests.mcp.conftest import TOKENS, http_client
from tests.serve.conftest import Served, serve_env, start
from tests.serve.tcp_proxy import TcpProxy
from tests.serve.test_body_limits import assert_clean_log
from tests.serve.test_secrets import slash
from tests.serve.test_serve import metric

CHAT = "/v1/chat/completions"


def chat_calls(fake: FakeUpstream) -> int:
    """Requests that would have cost money (the readiness probe lists models, which is free)."""
    return len(fake.requests_to(CHAT))


def cli_generate(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``bot generate hi`` with ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "generate", "--model", "gpt-4o-mini", "hi"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_one_clear_line(done: subprocess.CompletedProcess[str]) -> None:
    """Exit 1 (an outage, not a usage error) with the outage's sentence and no traceback."""
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: {LEDGER_UNAVAILABLE}."), done.stderr
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr


def test_the_cli_says_the_ledger_is_unreachable_when_its_sqlite_file_cannot_be_opened(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    env = serve_env(tmp_path, fake_env, None)
    (tmp_path / "a-folder").mkdir()  # SQLite cannot open a folder as its database
    env["BOT_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/a-folder"
    assert_one_clear_line(cli_generate(tmp_path, env))
    assert chat_calls(fake) == 0


@pytest.mark.postgres
@pytest.mark.skipif(not PG_DSN, reason=SKIP_PG)
def test_the_cli_says_the_ledger_is_unreachable_when_postgres_refuses(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    assert PG_DSN is not None
    env = serve_env(tmp_path, fake_env, None)
    with TcpProxy("127.0.0.1", 9) as closed:  # a port that refuses once the proxy is gone
        port = closed.port
    env["BOT_DATABASE_URL"] = make_url(PG_DSN).set(host="127.0.0.1", port=port).render_as_string(False)
    assert_one_clear_line(cli_generate(tmp_path, env))
    assert chat_calls(fake) == 0


async def _admin(statement: str) -> None:
    assert PG_DSN is not None
    conn = await asyncpg.connect(PG_DSN.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def own_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own (the DSN, with its password)."""
    assert PG_DSN is not None
    name = f"bot_outage_{os.getpid()}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_DSN).set(database=name).render_as_string(False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.postgres
@pytest.mark.skipif(not PG_DSN, reason=SKIP_PG)
async def test_every_face_of_bot_serve_names_a_database_outage_and_calls_nothing(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream, slack_fake: FakeSlackApi, own_database: str
) -> None:
    slack_fake.reset()
    target = make_url(own_database)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        env = serve_env(tmp_path, fake_env, slack_fake.api_url)
        env["BOT_DATABASE_URL"] = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        served: Served = start(tmp_path, env)
        try:
            served.wait_ready()
            async with http_client(served.url, TOKENS["alice"]) as client:
                ok = await client.call_tool("generate", {"prompt": "hi", "model": "gpt-4o-mini"})
                assert not ok.is_error, ok
                calls_before = chat_calls(fake)
                proxy.cut()  # the database host goes away
                refused = await client.call_tool("generate", {"prompt": "hi", "model": "gpt-4o-mini"})
                status = await client.call_tool("budget_status", {})
            async with httpx2.AsyncClient(timeout=30) as http:
                ack = await slash(http, served.url, slack_fake, 1, "--model gpt-4o-mini hi")
                assert ack.status_code == 200
                for _ in range(400):
                    if slack_fake.responses():
                        break
                    await asyncio.sleep(0.05)
                ready = await http.get(f"{served.url}/readyz")
                metrics = (await http.get(f"{served.url}/metrics")).text
                assert chat_calls(fake) == calls_before  # failed closed: nothing was called
                proxy.restore()  # the database is back: so is the gateway, without a restart
                for _ in range(100):
                    if (await http.get(f"{served.url}/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail("still not ready once the database was back")
            async with http_client(served.url, TOKENS["alice"]) as client:
                again = await client.call_tool("generate", {"prompt": "hi", "model": "gpt-4o-mini"})
                assert not again.is_error, again
        finally:
            served.stop()

    for result in (refused, status):
        text = json.dumps([c.model_dump() for c in result.content])
        # The SDK puts "Error executing tool <name>: " before every tool error; then the reason.
        assert result.is_error and f": {LEDGER_UNAVAILABLE}." in text, text
    replies = slack_fake.responses()
    assert len(replies) == 1 and LEDGER_UNAVAILABLE in replies[0].text, replies
    assert "unexpectedly" not in replies[0].text
    assert ready.status_code == 503
    why = ready.json()["not_ready"]["database"]
    assert why.startswith("error: the budget ledger is unreachable ("), why
    assert metric(metrics, "llm_ledger_up") == 0
    assert_clean_log(served)
