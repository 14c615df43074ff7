"""``bot mcp`` as an assistant launches it: a real subprocess speaking MCP on stdin/stdout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx2
from mcp import StdioServerParameters
from mcp.client import Client
from mcp_types import ElicitRequestParams, ElicitResult

from tests.fakes.upstream import FakeUpstream
from tests.serve.conftest import free_port

CONFIG = """\
budgets:
  - {name: desk-monthly, scope: client, key: desk, limit_usd: 0.05, period: monthly}
  - {name: everyone, scope: global, limit_usd: 50, period: total}
mcp:
  stdio_client: desk
"""


def bot_env(fake_env: dict[str, str], tmp_path: Path, config: str = CONFIG) -> dict[str, str]:
    (tmp_path / "config.yaml").write_text(config)
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "BOT_CONFIG": str(tmp_path / "config.yaml"),
        "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/bot.db",
        **fake_env,
    }


async def test_stdio_server_runs_the_tools(
    fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path
) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "bot.cli", "mcp"], env=bot_env(fake_env, tmp_path), cwd=tmp_path
    )
    async with Client(params, read_timeout_seconds=30) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        gen = await client.call_tool(
            "generate", {"prompt": "From stdio", "model": "gpt-4o-mini", "max_tokens": 30}
        )
        status = await client.call_tool("budget_status", {})
        refused = await client.call_tool("generate", {"prompt": "x", "model": "gpt-4o", "max_tokens": 16_000})
    assert tools == {"generate", "budget_status", "list_models", "my_usage"}
    assert gen.structured_content is not None and gen.structured_content["text"] == "Echo: From stdio"
    cost = Decimal(gen.structured_content["cost_usd"])
    assert cost > 0
    assert gen.structured_content["remaining_budget_usd"] == str(Decimal("0.05") - cost)
    assert status.structured_content is not None and status.structured_content["client"] == "desk"
    budgets = {b["name"]: b for b in status.structured_content["budgets"]}
    assert set(budgets) == {"desk-monthly", "everyone"}
    assert all(Decimal(b["spent_usd"]) == cost for b in budgets.values())
    assert refused.is_error and "budget 'desk-monthly" in refused.content[0].text  # type: ignore[union-attr]


def test_http_mode_without_clients_serves_only_401s_with_how_to_get_a_token(
    fake_env: dict[str, str], tmp_path: Path
) -> None:
    # No config client: personal tokens (in the ledger) still work, and nobody gets in without one.
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "mcp", "--http", "--port", str(port)],
        env=bot_env(fake_env, tmp_path, config="{}\n"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reply = None
        for _ in range(600):  # a guard against a hang: the server usually answers within a second
            assert proc.poll() is None, proc.communicate()
            try:
                reply = httpx2.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=2)
                break
            except httpx2.TransportError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert reply is not None and reply.status_code == 401
    assert "/mcp-token" in reply.json()["hint"] and "Traceback" not in stderr


async def test_stdio_conversation_confirmation_long_answer_and_usage(
    fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path
) -> None:
    config = CONFIG + "  confirm_above_usd: 0.005\n  inline_answer_chars: 1000\n"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bot.cli", "mcp"],
        env=bot_env(fake_env, tmp_path, config),
        cwd=tmp_path,
    )
    asked: list[str] = []

    async def elicit(context: object, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="decline")

    fake.reply_text = "".join(f"line {i}.\n" for i in range(300))
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "More"},
    ]
    async with Client(params, read_timeout_seconds=30, elicitation_callback=elicit) as client:
        gen = await client.call_tool(
            "generate", {"messages": turns, "model": "gpt-4o-mini", "max_tokens": 4000}
        )
        declined = await client.call_tool("generate", {"prompt": "x", "model": "gpt-4o", "max_tokens": 4000})
        assert gen.structured_content is not None, gen
        whole = await client.read_resource(gen.structured_content["full_text_uri"])
        usage = await client.call_tool("my_usage", {})
    assert len(fake.requests_to("/v1/chat/completions")[0].json["messages"]) == 3
    assert gen.structured_content["text_truncated"] is True
    assert whole.contents[0].text == fake.reply_text  # type: ignore[union-attr]
    assert declined.is_error and len(asked) == 1 and "$0.005" in asked[0]
    assert usage.structured_content is not None
    assert (usage.structured_content["caller"], usage.structured_content["call_count"]) == ("desk", 1)
    assert usage.structured_content["spent_usd"] == gen.structured_content["cost_usd"]
