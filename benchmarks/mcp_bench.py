"""MCP tool calls per second over Streamable HTTP, against the fake upstream.

Run: ``.venv/bin/python -m benchmarks.mcp_bench [--calls 300] [--concurrency 8]``

Server (uvicorn + the MCP app + a SQLite ledger) and clients share one process and one event
loop, so the numbers are a floor for the server alone; the fake upstream runs in its own thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from bot.core.config import AppConfig
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from tests.fakes.loopback import loopback_socket
from tests.fakes.upstream import FakeUpstream
from tools.mcp_server import mcp_http_app

TOKEN = "bench-token-0123456789"


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(
    url: str, tool: str, args: dict[str, Any], calls: int, concurrency: int
) -> tuple[float, list[float]]:
    """``calls`` calls of ``tool`` spread over ``concurrency`` MCP sessions; (calls/s, latencies)."""
    latencies: list[float] = []

    async def worker(n: int) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            create_mcp_http_client(headers=headers) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            await client.call_tool(tool, args)  # warm-up: session, first-call imports
            for _ in range(n):
                start = time.perf_counter()
                result = await client.call_tool(tool, args)
                latencies.append(time.perf_counter() - start)
                if result.is_error:
                    raise RuntimeError(f"{tool} failed: {result.content}")

    per_worker = [calls // concurrency + (1 if i < calls % concurrency else 0) for i in range(concurrency)]
    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in per_worker))
    return calls / (time.perf_counter() - start), latencies


async def main(calls: int, concurrency: int) -> None:
    """Serve the MCP app on loopback and time ``budget_status`` and ``generate`` calls."""
    with FakeUpstream(api_key="bench") as fake, tempfile.TemporaryDirectory() as tmp:
        config = AppConfig.from_dict(
            {
                "mcp": {"clients": {"bench": {"token": TOKEN}}},
                "budgets": [
                    {"name": "per-client", "scope": "client", "limit_usd": "1000", "period": "monthly"}
                ],
                "database": {"url": f"sqlite+aiosqlite:///{tmp}/bench.db"},
            }
        )
        env = {"OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": fake.openai_base_url}
        ledger = await Ledger.open(config.database, config.budgets)
        async with Gateway(config, ledger=ledger, env=env) as gateway:
            sock = loopback_socket()  # IPPROTO_TCP: asyncio turns Nagle off only then
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            server = uvicorn.Server(uvicorn.Config(mcp_http_app(gateway), lifespan="on", log_level="warning"))
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                if task.done():  # failed to start: surface its error instead of spinning
                    task.result()
                await asyncio.sleep(0.01)
            cases: list[tuple[str, dict[str, Any]]] = [
                ("budget_status", {}),
                ("generate", {"prompt": "Benchmark me", "model": "gpt-4o-mini", "max_tokens": 32}),
            ]
            print(f"{calls} calls per tool, {concurrency} concurrent MCP sessions, SQLite ledger")
            print(f"{'tool':15} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            run: Callable[..., Awaitable[tuple[float, list[float]]]] = _run
            for tool, args in cases:
                rate, lat = await run(url, tool, args, calls, concurrency)
                p50, p99 = statistics.median(lat) * 1000, _percentile(lat, 0.99) * 1000
                print(f"{tool:15} {rate:8.1f} {p50:8.1f} {p99:8.1f}")
            server.should_exit = True
            await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    opts = parser.parse_args()
    # Before any import configures it: every upstream and MCP request would be logged at INFO.
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(opts.calls, opts.concurrency))
