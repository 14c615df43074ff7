"""Benchmark: what our core adds to a chat call, side by side with the bare official OpenAI SDK.

The same ``gpt-4o-mini`` call (``max_tokens`` 32) goes to the fake upstream on loopback
(``tests/fakes/upstream.py`` in a process of its own, ``tests/fakes/upstream_process.py``;
``--latency-ms`` of simulated upstream latency) two
ways in the same run: directly with ``openai.AsyncOpenAI``, and through ``Gateway.generate`` with a
SQLite ledger and two budgets (token count, worst-case price, reserve, call, price, settle, alerts).

Figures (each a difference, ratio or percentile measured side by side):

* concurrency 1, paired and interleaved: added latency p50 / p99 (ours minus direct, per
  percentile and as percentiles of the paired differences), until the answer; the ledger write
  that follows our answer (``bot.core.pending``) is let finish, untimed, before the next call;
* concurrency 50: our throughput / direct throughput (our ledger writes included);
* streaming: time to first token through the core minus direct (p50).

The whole measurement runs ``--repeat`` times and each figure's median is reported.
``--profile FILE`` also profiles ``--profile-calls`` core calls at concurrency 1 with pyinstrument.

    .venv/bin/python benchmarks/core_overhead.py --latency-ms 0
    .venv/bin/python benchmarks/core_overhead.py --latency-ms 200 --requests 60 --stream-requests 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.core.config import AppConfig, BudgetConfig, DatabaseConfig
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.core.types import Principal
from bot.heap import freeze_startup_heap
from tests.fakes.upstream import FakeUpstream
from tests.fakes.upstream_process import FakeUpstreamProcess

KEY = "bench-key"
MODEL = "gpt-4o-mini"
PROMPT = "Summarise the benefits of budget guards in one sentence."
MAX_TOKENS = 32
USER = Principal(surface="slack", team_id="T1", user_id="U1", channel_id="C1")
TARGETS = {"added_p50_ms": 1.0, "added_p99_ms": 3.0, "throughput_ratio": 0.8, "ttft_added_p50_ms": 2.0}

Call = Callable[[], Awaitable[Any]]


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by the nearest-rank method."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Bench:
    """The fake upstream, a bare SDK client and a gateway with a SQLite ledger, all pointing at it."""

    def __init__(self, fake: FakeUpstream | FakeUpstreamProcess, gateway: Gateway) -> None:
        self.fake = fake
        self.gateway = gateway
        self.client = openai.AsyncOpenAI(
            api_key=KEY, base_url=fake.openai_base_url, timeout=60, max_retries=0
        )

    async def direct(self) -> None:
        """One call with the bare SDK, as an application without our core would make it."""
        response = await self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_completion_tokens=MAX_TOKENS
        )
        assert response.choices[0].message.content

    async def direct_post(self) -> None:
        """The same call with the bare SDK's ``post``, as our provider sends it (no body transform).

        Only for the diagnostic ``throughput_ratio_same_sdk_path``: it shows what our own code
        costs next to the SDK path the core uses (see ``OpenAIProvider._post``).
        """
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_completion_tokens": MAX_TOKENS,
        }
        response = await self.client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            body=body,
            options={"security": {"bearer_auth": True}},
        )
        assert response.choices[0].message.content

    async def core(self) -> None:
        """The same call through the gateway (budgets, ledger, pricing)."""
        result = await self.gateway.generate(USER, PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        assert result.text and result.cost_usd > 0

    async def direct_ttft(self) -> float:
        """Seconds to the first content chunk of a direct stream (read to the end)."""
        start = time.perf_counter()
        first: float | None = None
        stream = await self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_completion_tokens=MAX_TOKENS,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
        assert first is not None
        return first - start

    async def core_ttft(self) -> float:
        """Seconds to the first ``on_text`` of a stream through the gateway."""
        start = time.perf_counter()
        first: list[float] = []

        async def on_text(_: str) -> None:
            if not first:
                first.append(time.perf_counter())

        await self.gateway.generate(USER, PROMPT, model=MODEL, max_tokens=MAX_TOKENS, on_text=on_text)
        return first[0] - start

    async def settled(self) -> None:
        """Wait for our ledger writes still in flight (they run after each answer).

        Called between timed calls, untimed: otherwise the write that follows one of our answers
        would run inside the next timed call, on either side. Throughput runs include it.
        """
        await self.gateway.sessions.pending.flush()

    async def close(self) -> None:
        """Close the SDK client (the gateway is closed by its owner)."""
        await self.client.close()


async def timed(call: Call) -> float:
    """Seconds ``call`` took."""
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def throughput(call: Call, total: int, concurrency: int, *, then: Call | None = None) -> float:
    """Calls per second for ``total`` calls with ``concurrency`` in flight, ``then`` included."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if then is not None:
        await then()  # our ledger writes still in flight are part of our work
    return total / (time.perf_counter() - start)


async def measure_latency(bench: Bench, args: argparse.Namespace) -> dict[str, float]:
    """The concurrency-1 figures (added latency, time to first token), side by side."""
    direct: list[float] = []
    core: list[float] = []
    for i in range(args.requests):  # interleaved, alternating who goes first
        pair = (bench.direct, bench.core) if i % 2 == 0 else (bench.core, bench.direct)
        first = await timed(pair[0])
        await bench.settled()
        second = await timed(pair[1])
        await bench.settled()
        d, c = (first, second) if i % 2 == 0 else (second, first)
        direct.append(d * 1000)
        core.append(c * 1000)
    diffs = [c - d for c, d in zip(core, direct, strict=True)]
    ttft_direct: list[float] = []
    ttft_core: list[float] = []
    for i in range(args.stream_requests):
        if i % 2 == 0:
            ttft_direct.append(await bench.direct_ttft() * 1000)
            ttft_core.append(await bench.core_ttft() * 1000)
        else:
            ttft_core.append(await bench.core_ttft() * 1000)
            ttft_direct.append(await bench.direct_ttft() * 1000)
        await bench.settled()
    return {
        "direct_p50_ms": percentile(direct, 0.5),
        "direct_p99_ms": percentile(direct, 0.99),
        "core_p50_ms": percentile(core, 0.5),
        "core_p99_ms": percentile(core, 0.99),
        "added_p50_ms": percentile(core, 0.5) - percentile(direct, 0.5),
        "added_p99_ms": percentile(core, 0.99) - percentile(direct, 0.99),
        "paired_diff_p50_ms": percentile(diffs, 0.5),
        "paired_diff_p99_ms": percentile(diffs, 0.99),
        "ttft_direct_p50_ms": percentile(ttft_direct, 0.5),
        "ttft_core_p50_ms": percentile(ttft_core, 0.5),
        "ttft_added_p50_ms": percentile(ttft_core, 0.5) - percentile(ttft_direct, 0.5),
    }


async def measure_throughput(bench: Bench, args: argparse.Namespace) -> dict[str, float]:
    """Throughput at ``--concurrency`` in flight, in the order direct, core, post, post, core, direct
    (no side always runs on a warmer machine).

    ``throughput_ratio`` (the target) is core / direct ``create``. ``post`` is the bare SDK's
    ``post``, the path our provider uses: ``throughput_ratio_same_sdk_path`` = core / post is
    what our own code costs with the SDK's share the same on both sides.
    """
    calls = {"direct": bench.direct, "core": bench.core, "post": bench.direct_post}
    rates: dict[str, list[float]] = {side: [] for side in calls}
    for side in ("direct", "core", "post", "post", "core", "direct"):
        rates[side].append(
            await throughput(calls[side], args.throughput_requests, args.concurrency, then=bench.settled)
        )
    direct_rate, core_rate, post_rate = (statistics.mean(rates[side]) for side in ("direct", "core", "post"))
    return {
        "direct_rps": direct_rate,
        "core_rps": core_rate,
        "sdk_post_rps": post_rate,
        "throughput_ratio": core_rate / direct_rate,
        "throughput_ratio_same_sdk_path": core_rate / post_rate,
    }


def verdicts(figures: dict[str, float]) -> dict[str, bool]:
    """Whether each target is met (ratios must reach the target, added times stay below it)."""
    return {
        name: figures[name] >= target if name == "throughput_ratio" else figures[name] <= target
        for name, target in TARGETS.items()
    }


async def profile(bench: Bench, calls: int, path: Path) -> str:
    """Profile ``calls`` sequential core calls with pyinstrument; write the text report to ``path``."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002, async_mode="enabled")
    with profiler:
        for _ in range(calls):
            await bench.core()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    await asyncio.to_thread(path.write_text, text, encoding="utf-8")
    return text


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns (and prints) the median figures and the target verdicts."""
    # The fake runs in its own process, as a real upstream would: in ours its thread shares the
    # GIL with the code measured (see FakeUpstreamProcess); --fake-in-thread keeps the old way.
    fake_server = FakeUpstream(api_key=KEY) if args.fake_in_thread else FakeUpstreamProcess(api_key=KEY)
    with tempfile.TemporaryDirectory() as tmp, fake_server as fake:
        budgets = [
            BudgetConfig(name="global", scope="global", limit_usd=Decimal(10**6), period="monthly"),
            BudgetConfig(name="per-user", scope="user", limit_usd=Decimal(10**5), period="daily"),
        ]
        database = DatabaseConfig.model_validate(
            {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db", "sqlite_synchronous": args.synchronous}
        )
        ledger = await Ledger.open(database, budgets)
        config = AppConfig.from_dict({"budgets": [b.model_dump() for b in budgets]})
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.openai_base_url}
        async with Gateway(config, ledger=ledger, env=env) as gateway:
            bench = Bench(fake, gateway)
            for _ in range(10):  # warm-up: connections, tiktoken, SQLite, imports
                await bench.direct()
                await bench.direct_post()
                await bench.core()
            if not args.gc_unfrozen:
                freeze_startup_heap()  # as `bot serve` does once its SDKs are loaded (bot/heap.py)
            fake.latency = args.latency_ms / 1000
            # Every latency run before any throughput run: 50 calls in flight leave 50 pooled
            # connections in each client, and httpcore checks every idle one on each request
            # (~20 µs each), which would then weigh on whichever side kept more of them alive.
            runs = [await measure_latency(bench, args) for _ in range(args.repeat)]
            for n, run in enumerate(runs):
                run.update(await measure_throughput(bench, args))
                print(f"run {n + 1}/{args.repeat}: {json.dumps(run, default=round)}", file=sys.stderr)
            report: dict[str, Any] = {
                "latency_ms": args.latency_ms,
                "repeat": args.repeat,
                "requests": args.requests,
                "concurrency": args.concurrency,
                "throughput_requests": args.throughput_requests,
                "sqlite_synchronous": args.synchronous,
                "fake_upstream": "thread" if args.fake_in_thread else "process",
                "startup_heap_frozen": not args.gc_unfrozen,
                "stream_requests": args.stream_requests,
                "median": {k: statistics.median(r[k] for r in runs) for k in runs[0]},
                "runs": runs,
            }
            report["targets"] = TARGETS
            report["met"] = verdicts(report["median"])
            if args.profile:
                fake.latency = 0.0
                text = await profile(bench, args.profile_calls, Path(args.profile))
                report["profile"] = str(args.profile)
                print(text, file=sys.stderr)
            await bench.close()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulated upstream latency")
    parser.add_argument("--requests", type=int, default=200, help="paired calls at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--throughput-requests", type=int, default=1500, help="calls per throughput run")
    parser.add_argument(
        "--synchronous",
        choices=["normal", "full"],
        default="normal",
        help="the SQLite ledger's database.sqlite_synchronous (normal is the default)",
    )
    parser.add_argument("--stream-requests", type=int, default=100, help="paired streamed calls")
    parser.add_argument("--repeat", type=int, default=3, help="full measurements; medians are reported")
    parser.add_argument("--profile", help="write a pyinstrument text profile of core calls here")
    parser.add_argument("--profile-calls", type=int, default=300)
    parser.add_argument("--json", help="also write the report as JSON here")
    parser.add_argument(
        "--gc-unfrozen",
        action="store_true",
        help="leave the start-up heap in garbage collection and CPython's thresholds as they are (bot serve freezes it and raises generation 0's, bot/heap.py)",
    )
    parser.add_argument(
        "--fake-in-thread",
        action="store_true",
        help="run the fake upstream in a thread of this process (the first passes' method)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args()
    result = asyncio.run(main(options))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if options.json:
        Path(options.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
