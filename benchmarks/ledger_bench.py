"""Benchmark: ledger reserve + settle operations per second under contention.

Every operation reserves $0.01 against three budgets (one global row that every operation
contends for, one per-user row of 10 users, one per-model row) and settles at $0.008, with
``--concurrency`` operations in flight at once. SQLite always runs (a temporary file); PostgreSQL
runs when a DSN is given with ``--postgres`` or ``BOT_BENCH_POSTGRES_DSN`` /
``BOT_TEST_POSTGRES_DSN``, in a temporary database created and dropped by the benchmark.

    .venv/bin/python benchmarks/ledger_bench.py --ops 1000 --concurrency 50 \\
        --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test

``--processes 2`` splits the operations over two OS processes on the same database, started
together (``--concurrency`` is then per process); the checks run on the combined result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.ledger import Ledger
from bot.core.ledger.drivers import postgres
from bot.core.types import CallRecord, Principal, Usage

HOLD = Decimal("0.01")
COST = Decimal("0.008")
BUDGETS = [
    BudgetConfig(name="global", limit_usd=Decimal(1_000_000), period="monthly"),
    BudgetConfig(name="per-user", scope="user", limit_usd=Decimal(10_000), period="daily"),
    BudgetConfig(name="per-model", scope="model", limit_usd=Decimal(100_000), period="monthly"),
]
USERS = [Principal(surface="slack", team_id="T1", user_id=f"u{i}") for i in range(10)]
#: Operations each worker process runs before the common start.
WORKER_WARM_OPS = 5


@dataclass
class Result:
    """One benchmark run: its settings, duration and per-operation latencies."""

    backend: str
    ops: int
    concurrency: int
    seconds: float
    latencies_ms: list[float]

    @property
    def ops_per_second(self) -> float:
        """Operations completed per second."""
        return self.ops / self.seconds

    def pct(self, p: float) -> float:
        """The ``p``-th percentile of the latencies, in ms."""
        return statistics.quantiles(self.latencies_ms, n=100)[int(p) - 1]


async def one_op(ledger: Ledger, i: int, prefix: str) -> float:
    """One reserve + settle; returns its latency in ms."""
    who = USERS[i % len(USERS)]
    rid = f"{prefix}-{i}"
    started = time.perf_counter()
    hold = await ledger.reserve(who, HOLD, request_id=rid, model="gpt-bench", provider="openai")
    record = CallRecord(rid, who, "openai", "gpt-bench", "ok", Usage(500, 100), COST)
    await ledger.settle(hold, record)
    return (time.perf_counter() - started) * 1000


async def run(backend: str, url: str, ops: int, concurrency: int, synchronous: str = "normal") -> Result:
    """Run ``ops`` operations, ``concurrency`` at a time, on a fresh ledger at ``url``."""
    config = DatabaseConfig.model_validate({"url": url, "sqlite_synchronous": synchronous})
    async with await Ledger.open(config, BUDGETS) as ledger:
        for i in range(20):  # warm up: period rows, pool, statement caches
            await one_op(ledger, i, "warm")
        gate = asyncio.Semaphore(concurrency)

        async def guarded(i: int) -> float:
            async with gate:
                return await one_op(ledger, i, "op")

        started = time.perf_counter()
        latencies = await asyncio.gather(*(guarded(i) for i in range(ops)))
        seconds = time.perf_counter() - started
        # Sanity: every settle charged exactly once, nothing left reserved.
        status = {s.name: s for s in await ledger.status_all()}
        expected = COST * (ops + 20)
        assert status["global"].spent == expected, (status["global"].spent, expected)
        assert all(s.reserved == 0 for s in status.values())
    return Result(backend, ops, concurrency, seconds, list(latencies))


async def run_worker(
    url: str, ops: int, concurrency: int, synchronous: str, prefix: str, start_at: float
) -> None:
    """One of several processes: warm up, wait for ``start_at`` (wall clock), run, print JSON."""
    config = DatabaseConfig.model_validate({"url": url, "sqlite_synchronous": synchronous})
    async with await Ledger.open(config, BUDGETS) as ledger:
        for i in range(WORKER_WARM_OPS):
            await one_op(ledger, i, f"{prefix}-warm")
        await asyncio.sleep(max(0.0, start_at - time.time()))
        gate = asyncio.Semaphore(concurrency)

        async def guarded(i: int) -> float:
            async with gate:
                return await one_op(ledger, i, prefix)

        started = time.time()
        latencies = await asyncio.gather(*(guarded(i) for i in range(ops)))
        ended = time.time()
    print(json.dumps({"started": started, "ended": ended, "latencies": latencies}))


async def run_processes(
    backend: str, url: str, ops: int, concurrency: int, synchronous: str, processes: int
) -> Result:
    """``ops`` operations split over ``processes`` OS processes on one database, started together."""
    config = DatabaseConfig.model_validate({"url": url, "sqlite_synchronous": synchronous})
    async with await Ledger.open(config, BUDGETS) as ledger:  # migrations, before the workers race
        await one_op(ledger, 0, "init")
    start_at = time.time() + 4.0  # time for every worker to import, open and warm up
    share = ops // processes
    common = ["--ops", str(share), "--concurrency", str(concurrency), "--synchronous", synchronous]
    workers = []
    for k in range(processes):
        argv = [__file__, "--worker", url, *common, "--prefix", f"p{k}", "--start-at", str(start_at)]
        workers.append(
            await asyncio.create_subprocess_exec(sys.executable, *argv, stdout=asyncio.subprocess.PIPE)
        )
    reports = []
    for worker in workers:
        out, _ = await worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(f"a worker process failed with exit code {worker.returncode}")
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    if max(r["started"] for r in reports) > start_at + 0.5:
        raise RuntimeError("a worker was still warming up at the common start; raise the delay")
    seconds = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    async with await Ledger.open(config, BUDGETS) as ledger:
        status = {s.name: s for s in await ledger.status_all()}
        expected = COST * (1 + processes * (share + WORKER_WARM_OPS))
        assert status["global"].spent == expected, (status["global"].spent, expected)
        assert all(s.reserved == 0 for s in status.values())
    latencies = [ms for r in reports for ms in r["latencies"]]
    return Result(f"{backend} ×{processes} processes", share * processes, concurrency, seconds, latencies)


@asynccontextmanager
async def scratch_postgres(dsn: str) -> AsyncIterator[str]:
    """Create a throw-away database next to ``dsn``'s and yield its URL; drop it afterwards."""
    url = make_url(dsn).set(drivername="postgresql+asyncpg")
    name = f"ledger_bench_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def print_table(results: list[Result]) -> None:
    """Print one row per run."""
    header = ("backend", "ops", "concurrency", "seconds", "ops/s", "p50 ms", "p95 ms", "p99 ms")
    rows = [
        (r.backend, str(r.ops), str(r.concurrency), f"{r.seconds:.2f}", f"{r.ops_per_second:.0f}",
         f"{r.pct(50):.1f}", f"{r.pct(95):.1f}", f"{r.pct(99):.1f}")
        for r in results
    ]  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


async def main() -> None:
    """Parse arguments and run the benchmark on each backend."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=1000, help="reserve+settle operations per backend")
    parser.add_argument("--concurrency", type=int, default=50, help="operations in flight at once")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend; the median run is shown")
    parser.add_argument(
        "--synchronous",
        choices=["normal", "full"],
        default="normal",
        help="SQLite's database.sqlite_synchronous (normal: the default, see bot/core/ledger/wal_sync.py)",
    )
    parser.add_argument(
        "--pg-write-gate",
        type=int,
        default=postgres.PG_CONCURRENT_WRITES,
        help="write transactions in flight per process on PostgreSQL (to measure the gate's effect)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BOT_BENCH_POSTGRES_DSN") or os.environ.get("BOT_TEST_POSTGRES_DSN"),
        help="PostgreSQL DSN (a scratch database is created beside it); omitted: SQLite only",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="OS processes sharing the database (the ops are split)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run as one of --processes
    parser.add_argument("--prefix", default="op", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    postgres.PG_CONCURRENT_WRITES = args.pg_write_gate
    if args.worker:
        await run_worker(
            args.worker, args.ops, args.concurrency, args.synchronous, args.prefix, args.start_at
        )
        return

    async def one_run(backend: str, url: str) -> Result:
        if args.processes > 1:
            return await run_processes(
                backend, url, args.ops, args.concurrency, args.synchronous, args.processes
            )
        return await run(backend, url, args.ops, args.concurrency, args.synchronous)

    results = []
    runs = []
    for _ in range(args.repeat):  # a fresh database per run, so every run starts equal
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(await one_run("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db"))
    results.append(median(runs))
    if args.postgres:
        runs = []
        try:
            for _ in range(args.repeat):
                async with scratch_postgres(args.postgres) as url:
                    runs.append(await one_run("postgresql", url))
            results.append(median(runs))
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
    print(
        f"reserve+settle, {args.ops} ops, concurrency {args.concurrency} per process, "
        f"{args.processes} process(es), 3 budget rows per op, "
        f"SQLite synchronous={args.synchronous}, "
        f"median of {args.repeat} runs, PostgreSQL write gate {args.pg_write_gate}"
    )
    print_table(results)


def median(runs: list[Result]) -> Result:
    """The run with the median throughput (the machine may be shared: one run can be unlucky)."""
    return sorted(runs, key=lambda r: r.ops_per_second)[len(runs) // 2]


if __name__ == "__main__":
    asyncio.run(main())
