"""People, not surfaces: one person's Slack, MCP and CLI calls land on one per-user budget.

``bot serve`` runs as a subprocess on SQLite and on PostgreSQL. A Slack user gets a personal
token with a signed ``/mcp-token``, connects a real MCP client with the ``claude mcp add`` line it
was given, and their ``/generate``, their MCP calls and ``bot generate --user`` (another process)
all charge the same ``per-user`` budget, until each face is refused at its limit. A config
client's token still works and charges only its client's budget; a revoked token gets 401.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest

from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.ledger.conftest import PG_DSN, SKIP_PG, drop_ledger_tables
from tests.mcp.conftest import TOKENS, http_client
from tests.serve.conftest import SIGNING_SECRET, Served, serve_env, start
from tests.serve.test_serve import wait_for
from tests.slack.conftest import sign

#: The per-user limit, small enough for one long call to spend most of it.
LIMIT = Decimal("0.005")
#: Every call holds this many output tokens (the Slack face has no --max-tokens).
MAX_TOKENS = 2000
CONFIG_YAML = f"""
retry: {{max_retries: 0, initial_delay_seconds: 0.01, max_delay_seconds: 0.1}}
providers:
  openai: {{type: openai, timeout_seconds: 10}}
session: {{max_tokens: {MAX_TOKENS}}}
mcp:
  clients:
    alice: {{token: "{TOKENS["alice"]}"}}
budgets:
  - {{name: per-user, scope: user, limit_usd: "{LIMIT}", period: monthly}}
  - {{name: per-client, scope: client, limit_usd: "1", period: monthly}}
"""
CLAUDE_LINE = re.compile(
    r'claude mcp add --transport http llm-gateway (\S+)/mcp --header "Authorization: Bearer (gwp_[\w-]+)"'
)
#: What each face says when the per-user budget refuses (its label may name the key).
REFUSED = re.compile(r"budget 'per-user\b[^']*' would be exceeded")
_ids = itertools.count(1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def people_server(
    request: pytest.FixtureRequest, tmp_path: Path, fake_env: dict[str, str], slack_fake: FakeSlackApi
) -> Iterator[tuple[Served, dict[str, str]]]:
    """``bot serve`` with Slack, one config client and a per-user budget, and its environment."""
    env = serve_env(tmp_path, fake_env, slack_fake.api_url)
    (tmp_path / "config.yaml").write_text(CONFIG_YAML)
    if request.param == "postgres":
        if not PG_DSN:
            pytest.skip(SKIP_PG)
        asyncio.run(drop_ledger_tables(PG_DSN))
        env["BOT_DATABASE_URL"] = PG_DSN
    slack_fake.reset()
    server = start(tmp_path, env)
    try:
        server.wait_ready()
        yield server, env
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


async def slack_command(
    http: httpx2.AsyncClient, url: str, api: FakeSlackApi, command: str, text: str, user: str = "U1"
) -> tuple[httpx2.Response, str]:
    """A correctly signed slash command from ``user`` of team T1; returns the answer and its response id."""
    n = next(_ids)
    rid = f"p{n}"
    form = {
        "token": "legacy", "team_id": "T1", "team_domain": "fake", "channel_id": "C1",
        "channel_name": "general", "user_id": user, "user_name": user.lower(), "command": command,
        "text": text, "api_app_id": "A1", "response_url": api.response_url(rid), "trigger_id": f"people.{n}",
    }  # fmt: skip
    body = urlencode(form)
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sign(body, ts, SIGNING_SECRET),
    }
    return await http.post(f"{url}/slack/events", content=body, headers=headers), rid


def bot_generate(env: dict[str, str], cwd: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    """``bot generate --user U1 --team T1`` as its own process, on the server's ledger."""
    cmd = [sys.executable, "-m", "bot.cli", "generate", prompt, "--user", "U1", "--team", "T1", "--json"]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def per_user(status: dict[str, Any]) -> dict[str, Any]:
    """The per-user entry of a ``budget_status`` result."""
    entries: list[dict[str, Any]] = [b for b in status["budgets"] if b["name"] == "per-user"]
    (entry,) = entries
    return entry


async def test_one_persons_spend_across_slack_mcp_and_cli_lands_on_one_budget(
    people_server: tuple[Served, dict[str, str]], fake: FakeUpstream, slack_fake: FakeSlackApi, tmp_path: Path
) -> None:
    served, env = people_server
    async with httpx2.AsyncClient(timeout=30) as http:
        # A Slack user asks for a token: it is in the ephemeral ack, with the ready claude line.
        ack, rid = await slack_command(http, served.url, slack_fake, "/mcp-token", "new laptop")
        body = ack.json()
        assert ack.status_code == 200 and body["response_type"] == "ephemeral"
        match = CLAUDE_LINE.search(body["text"])
        assert match is not None, body["text"]
        base, secret = match.groups()
        assert base == served.url and f"```{secret}```" in body["text"]

        # Slack's /generate charges the person's budget.
        await slack_command(http, served.url, slack_fake, "/generate", "--model gpt-4o-mini via slack")
        await wait_for(lambda: any("Echo: via slack" in c.text for c in slack_fake.calls))

        async with http_client(base, secret) as me:
            seen = (await me.call_tool("budget_status", {})).structured_content
            assert seen is not None
            after_slack = Decimal(per_user(seen)["spent_usd"])
            assert per_user(seen)["scope_key"] == "T1:U1" and after_slack > 0  # Slack's spend, seen over MCP

            mcp = (await me.call_tool("generate", {"prompt": "via mcp"})).structured_content
            assert mcp is not None and mcp["text"] == "Echo: via mcp"
            cli = bot_generate(env, tmp_path, "via cli")
            assert cli.returncode == 0, cli.stderr
            cli_cost = Decimal(json.loads(cli.stdout)["cost_usd"])

            seen = (await me.call_tool("budget_status", {})).structured_content
            assert seen is not None and seen["client"] == "laptop"
            assert Decimal(per_user(seen)["spent_usd"]) == after_slack + Decimal(mcp["cost_usd"]) + cli_cost
            (client,) = [b for b in seen["budgets"] if b["name"] == "per-client"]
            assert client["scope_key"] == "laptop" and Decimal(client["spent_usd"]) == Decimal(
                mcp["cost_usd"]
            )

            # One long call spends most of what is left: afterwards no call's hold fits.
            models = (await me.call_tool("list_models", {"provider": "openai"})).structured_content
            assert models is not None
            (mini,) = [m for m in models["models"] if m["name"] == "gpt-4o-mini"]
            p_in, p_out = (
                Decimal(mini["input_per_mtok_usd"]) / 10**6,
                Decimal(mini["output_per_mtok_usd"]) / 10**6,
            )
            hold = MAX_TOKENS * p_out  # at least what every later call holds
            left = Decimal(per_user(seen)["remaining_usd"])
            words = int((left - Decimal("1.5") * hold) / p_in)  # leaves ~hold/2, give or take 4,000 tokens
            big = await me.call_tool("generate", {"prompt": "word " * words})
            assert not big.is_error, big.content
            seen = (await me.call_tool("budget_status", {})).structured_content
            assert seen is not None and Decimal(per_user(seen)["remaining_usd"]) < hold

            # Now every face refuses this person, before calling any model.
            calls_before = len(fake.requests_to("/v1/chat/completions"))
            refused = await me.call_tool("generate", {"prompt": "one more"})
            assert refused.is_error and REFUSED.search(str(refused.content))
        _, rid = await slack_command(http, served.url, slack_fake, "/generate", "one more")
        await wait_for(lambda: any(REFUSED.search(c.text) for c in slack_fake.responses(rid)))
        cli = bot_generate(env, tmp_path, "one more")
        assert cli.returncode == 2 and REFUSED.search(cli.stderr), cli.stderr
        assert "Traceback" not in cli.stderr
        assert len(fake.requests_to("/v1/chat/completions")) == calls_before

        # A config client's token still works, charged to its client, not to anyone's per-user budget.
        async with http_client(served.url, TOKENS["alice"]) as alice:
            ok = (await alice.call_tool("generate", {"prompt": "shared"})).structured_content
            assert ok is not None and ok["text"] == "Echo: shared"
            status = (await alice.call_tool("budget_status", {})).structured_content
        assert status is not None and [(b["name"], b["scope_key"]) for b in status["budgets"]] == [
            ("per-client", "alice")
        ]

        # The person lists and revokes their token; it gets 401 at once, with how to get another.
        listed, _ = await slack_command(http, served.url, slack_fake, "/mcp-token", "list")
        assert "laptop" in listed.json()["text"] and secret not in listed.json()["text"]
        (token_id,) = re.findall(r"`([0-9a-f]{16})` \*laptop\*", listed.json()["text"])
        other, _ = await slack_command(
            http, served.url, slack_fake, "/mcp-token", f"revoke {token_id}", user="U2"
        )
        assert "no active token of yours" in other.json()["text"]  # not someone else's
        gone, _ = await slack_command(http, served.url, slack_fake, "/mcp-token", f"revoke {token_id}")
        assert "Revoked `laptop`" in gone.json()["text"]
        after = await http.post(
            f"{served.url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {secret}", "Accept": "application/json, text/event-stream"},
        )
        assert after.status_code == 401 and "/mcp-token" in after.json()["hint"]

    # The token went only into the ack: never through the Web API or a response URL, never logged.
    assert all(secret not in json.dumps(c.body) for c in slack_fake.calls)
    assert served.stop() == 0
    logs = served.logs()
    assert secret not in logs and TOKENS["alice"] not in logs and "gwp_" not in logs
    assert "Traceback" not in logs
    refusals = [line for line in served.log_lines() if line.get("refused")]
    assert any(line["refused"] == "unknown or revoked personal token" for line in refusals)
