"""``bot mcp`` as an assistant launches it: a real subprocess speaking MCP on stdin/stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from mcp import StdioServerParameters
from mcp.client import Client

from tests.fakes.upstream import FakeUpstream

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
    assert tools == {"generate", "budget_status", "list_models"}
    assert gen.structured_content is not None and gen.structured_content["text"] == "Echo: From stdio"
    cost = Decimal(gen.structured_content["cost_usd"])
    assert cost > 0
    assert gen.structured_content["remaining_budget_usd"] == str(Decimal("0.05") - cost)
    assert status.structured_content is not None and status.structured_content["client"] == "desk"
    budgets = {b["name"]: b for b in status.structured_content["budgets"]}
    assert set(budgets) == {"desk-monthly", "everyone"}
    assert all(Decimal(b["spent_usd"]) == cost for b in budgets.values())
    assert refused.is_error and "budget 'desk-monthly" in refused.content[0].text  # type: ignore[union-attr]


def test_http_mode_without_clients_refuses_to_start(fake_env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "mcp", "--http", "--port", "0"],
        env=bot_env(fake_env, tmp_path, config="{}\n"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "mcp.clients" in done.stderr and "Traceback" not in done.stderr
