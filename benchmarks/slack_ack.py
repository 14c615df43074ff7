"""Benchmark: how fast the Slack app acknowledges a burst of ``/generate`` slash commands.

The Slack HTTP app (``bot.slack.app.slack_http_app``) runs under uvicorn on loopback, built as in
``tests/slack/conftest.py``: a gateway with a SQLite ledger and a per-user budget, the fake Slack
Web API (``tests/fakes/slack_api.py``) and the fake upstream (``--latency-ms`` of model latency),
both in their own threads. Each round posts ``--burst`` (50) correctly signed ``/generate``
requests at once over real HTTP, from 50 users, and times each until its HTTP response (the ack,
which Slack needs within 3 s); the round then waits for the generations it started to finish.
Server and client share one process and one event loop, so the figures include the client's work.

    .venv/bin/python benchmarks/slack_ack.py --latency-ms 0
    .venv/bin/python benchmarks/slack_ack.py --latency-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import uvicorn
from starlette.types import ASGIApp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core_overhead import percentile  # this directory, first on sys.path

from bot.core.config import AppConfig
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.slack.app import slack_http_app
from bot.slack.settings import SlackSettings
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.slack.conftest import BOT_TOKEN, SECRET, TEAM, sign

KEY = "bench-key"
TARGET_P99_MS = 3000.0  # Slack's ack deadline


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """``app`` under uvicorn on a free loopback port in this loop (a TCP socket, as uvicorn binds)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


def form(api: FakeSlackApi, n: int) -> str:
    """A ``/generate`` slash-command body from user ``U{n}``."""
    return urlencode(
        {
            "token": "legacy", "team_id": TEAM, "team_domain": "bench", "channel_id": "C1",
            "channel_name": "general", "user_id": f"U{n % 50}", "user_name": f"user{n}",
            "command": "/generate", "text": f"Say hello to user {n}", "api_app_id": "A1",
            "response_url": api.response_url(f"r{n}"), "trigger_id": f"trigger.{n}",
        }
    )  # fmt: skip


async def post(http: httpx2.AsyncClient, url: str, body: str) -> float:
    """POST one signed command; milliseconds until the ack (asserted 200)."""
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sign(body, ts),
    }
    start = time.perf_counter()
    resp = await http.post(f"{url}/slack/events", content=body, headers=headers)
    elapsed = (time.perf_counter() - start) * 1000
    if resp.status_code != 200:
        raise RuntimeError(f"ack failed: HTTP {resp.status_code} {resp.text[:200]}")
    return elapsed


async def run_once(args: argparse.Namespace, upstream: FakeUpstream, api: FakeSlackApi) -> dict[str, float]:
    """One measurement on a fresh ledger: ``--rounds`` bursts after a warm-up burst."""
    per_user = {"name": "per-user", "scope": "user", "limit_usd": "5", "period": "monthly"}
    config = AppConfig.from_dict({"budgets": [per_user]})
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.openai_base_url}
    counter = 0
    upstream.reset()
    upstream.latency = args.latency_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        db = config.database.model_copy(update={"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"})
        ledger = await Ledger.open(db, config.budgets)
        async with Gateway(config, ledger=ledger, env=env) as gateway:
            settings = SlackSettings(
                bot_token=BOT_TOKEN, signing_secret=SECRET, api_url=api.api_url, update_interval=1.0
            )
            app = slack_http_app(gateway, settings)
            commands = app.state.slack_commands
            async with serve(app) as url, httpx2.AsyncClient(timeout=30) as http:
                samples: list[float] = []
                ack_seconds = done_seconds = 0.0
                for round_no in range(args.rounds + 1):
                    bodies = [form(api, counter + i) for i in range(args.burst)]
                    counter += args.burst
                    started = time.perf_counter()
                    acks = await asyncio.gather(*(post(http, url, b) for b in bodies))
                    acked = time.perf_counter()
                    await commands.wait_idle()
                    if round_no:  # round 0 warms up connections, imports and the ledger
                        samples.extend(acks)
                        ack_seconds += acked - started
                        done_seconds += time.perf_counter() - started
                api.reset()
    made = len(upstream.requests_to("/v1/chat/completions"))
    if made != args.burst * (args.rounds + 1):
        raise RuntimeError(f"expected {args.burst * (args.rounds + 1)} model calls, the upstream saw {made}")
    return {
        "ack_p50_ms": percentile(samples, 0.5),
        "ack_p99_ms": percentile(samples, 0.99),
        "ack_max_ms": max(samples),
        # Rates over the measured bursts: acks answered, and commands whose answer was delivered
        # (streamed to the fake Slack API and finished) per second.
        "acks_per_second": len(samples) / ack_seconds,
        "commands_per_second": len(samples) / done_seconds,
        "samples": float(len(samples)),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``--repeat`` measurements; report each figure's median."""
    with FakeUpstream(api_key=KEY) as upstream, FakeSlackApi(token=BOT_TOKEN) as api:
        runs = []
        for n in range(args.repeat):
            runs.append(await run_once(args, upstream, api))
            print(f"run {n + 1}/{args.repeat}: {json.dumps(runs[-1], default=round)}", file=sys.stderr)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "latency_ms": args.latency_ms,
        "burst": args.burst,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "median": median,
        "target_p99_ms": TARGET_P99_MS,
        "met": median["ack_p99_ms"] <= TARGET_P99_MS,
        "runs": runs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulated model latency")
    parser.add_argument("--burst", type=int, default=50, help="concurrent /generate requests per round")
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds (after one warm-up)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements; medians are reported")
    parser.add_argument("--json", help="also write the report as JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args()
    result = asyncio.run(main(options))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if options.json:
        Path(options.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
