"""Calls in flight when ``bot serve`` is SIGKILLed: billed upstream, so never lost (case 2).

Before: 50 calls in flight, 50 requests at the upstream, 0 call rows; their holds expired and
were released at $0. Now each hold carries its call, and once it expires (a live call renews
its hold, a dead one cannot) the restarted server writes it down as ``interrupted``, charged
its hold, flagged estimated. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.ledger import Ledger
from tests.fakes.upstream import FakeUpstream
from tests.ledger.conftest import fetch
from tests.mcp.conftest import TOKENS, http_client

from .conftest import serve_env, start

CHAT = "/v1/chat/completions"
IN_FLIGHT = 10
TTL = 3
CONFIG_YAML = f"""
retry: {{max_retries: 0, initial_delay_seconds: 0.01, max_delay_seconds: 0.1}}
providers:
  openai: {{type: openai, timeout_seconds: 120}}
database: {{reservation_ttl_seconds: {TTL}}}
mcp:
  clients:
    alice: {{token: "{TOKENS["alice"]}"}}
budgets:
  - {{name: everything, scope: global, limit_usd: "10", period: monthly}}
"""


async def test_calls_in_flight_at_a_sigkill_become_interrupted_calls_charged_their_holds(
    tmp_path: Path, fake: FakeUpstream, fake_env: dict[str, str], db_url: str
) -> None:
    env = serve_env(tmp_path, fake_env, None)
    (tmp_path / "config.yaml").write_text(CONFIG_YAML)
    env["BOT_DATABASE_URL"] = db_url
    fake.latency = 60  # the upstream is working on every call when the server dies
    server = start(tmp_path, env)
    server.wait_ready()

    async def generate(i: int) -> None:
        async with http_client(server.url, TOKENS["alice"]) as client:
            await client.call_tool(
                "generate", {"prompt": f"call {i}", "model": "gpt-4o-mini", "max_tokens": 50}
            )

    calls = [asyncio.create_task(generate(i)) for i in range(IN_FLIGHT)]
    try:
        deadline = time.monotonic() + 30
        while len(fake.requests_to(CHAT)) < IN_FLIGHT:
            assert time.monotonic() < deadline, server.logs()
            await asyncio.sleep(0.05)
        server.proc.kill()
        server.proc.wait(10)
    finally:
        for call in calls:
            call.cancel()
        for call in calls:
            with contextlib.suppress(BaseException):
                await call
    fake.latency = 0

    budgets = [BudgetConfig(name="everything", limit_usd=Decimal(10))]
    ledger = await Ledger.open(DatabaseConfig(url=db_url, reservation_ttl_seconds=TTL), budgets)
    try:
        held = await fetch(ledger, "SELECT request_id, amount_nano_usd FROM holds ORDER BY request_id")
        assert len(held) == IN_FLIGHT and await fetch(ledger, "SELECT * FROM calls") == []
    finally:
        await ledger.close()

    # Past the holds' expiry, the restarted server writes the dead calls down.
    await asyncio.sleep(TTL + 0.5)
    again = start(tmp_path, env)
    again.wait_ready()
    assert again.stop() == 0

    ledger = await Ledger.open(DatabaseConfig(url=db_url, reservation_ttl_seconds=TTL), budgets)
    try:
        rows = await fetch(
            ledger,
            "SELECT request_id, cost_nano_usd, outcome, cost_estimated, surface, client_id, model, input_tokens"
            " FROM calls ORDER BY request_id",
        )
        assert [(r[0], r[1]) for r in rows] == [tuple(h) for h in held]
        assert all(r[2:7] == ("interrupted", True, "mcp", "alice", "gpt-4o-mini") for r in rows)
        assert all(r[7] > 0 for r in rows)  # the counted input, kept with the hold
        assert await fetch(ledger, "SELECT * FROM holds") == []
        totals = await ledger.totals()
        assert totals.by_outcome["interrupted"].calls == IN_FLIGHT
        (status,) = await ledger.status_all()
        assert status.spent == totals.cost_usd == sum(Decimal(h[1]) for h in held) / 10**9
        assert status.reserved == 0
    finally:
        await ledger.close()

    # The command line reads the same figures.
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot.cli", "budget", "--json"], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert str(status.spent) in json.dumps(json.loads(shown.stdout))
