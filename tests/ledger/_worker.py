"""A separate OS process for the ledger's multi-process tests (run with ``python -m tests.ledger._worker``).

``contend``: open the ledger, print ``ready``, wait for a line on stdin (so two workers start
together), run reserve -> settle calls concurrently (recording refusals at $0), print a JSON
summary. ``loop``: take one hold that is never settled (a call in flight), then reserve -> settle
forever, printing ``settled N`` after each call, until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.errors import BudgetExceededError
from bot.core.ledger import Ledger
from bot.core.types import CallRecord, Principal, Usage

USERS = [Principal(surface="slack", team_id="T1", user_id=f"u{i}") for i in range(4)]
HOLD = Decimal("0.01")


def call_record(rid: str, who: Principal, cost: Decimal, outcome: str) -> CallRecord:
    """A call row as the session core would write it."""
    return CallRecord(
        request_id=rid,
        principal=who,
        provider="openai",
        model="gpt-test",
        outcome=outcome,  # type: ignore[arg-type]
        usage=Usage(input_tokens=50, output_tokens=10),
        cost_usd=cost,
    )


async def one_call(ledger: Ledger, rid: str, who: Principal, rng: random.Random) -> bool:
    """Reserve $0.01, settle at $0.01 or a bit less; on refusal record a $0 refused row."""
    try:
        hold = await ledger.reserve(who, HOLD, request_id=rid, model="gpt-test", provider="openai")
    except BudgetExceededError:
        await ledger.record(call_record(rid, who, Decimal(0), "refused"))
        return False
    try:
        await asyncio.sleep(0)  # let the other calls in, as a real provider call would
        cost = HOLD - Decimal(rng.randrange(0, 1000)) / Decimal(10**6)
        await ledger.settle(hold, call_record(rid, who, cost, "ok"))
    except BaseException:
        await ledger.release(hold)
        raise
    return True


async def run_calls(
    ledger: Ledger, prefix: str, ops: int, concurrency: int, seed: int = 0
) -> dict[str, list[str]]:
    """Run ``ops`` calls with at most ``concurrency`` at once; return the ok and refused request ids."""
    rng = random.Random(seed)
    gate = asyncio.Semaphore(concurrency)
    outcome: dict[str, list[str]] = {"ok": [], "refused": []}

    async def guarded(i: int) -> None:
        rid = f"{prefix}-{i}"
        async with gate:
            ok = await one_call(ledger, rid, USERS[i % len(USERS)], rng)
        outcome["ok" if ok else "refused"].append(rid)

    await asyncio.gather(*(guarded(i) for i in range(ops)))
    return outcome


async def contend(ledger: Ledger, args: argparse.Namespace) -> None:
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    print(json.dumps(await run_calls(ledger, args.prefix, args.ops, args.concurrency, args.seed)), flush=True)


async def loop(ledger: Ledger, args: argparse.Namespace) -> None:
    await ledger.reserve(
        USERS[0], Decimal("1"), request_id=f"{args.prefix}-in-flight", model="gpt-test", provider="openai"
    )
    settled = 0
    rng = random.Random(args.seed)

    async def worker(w: int) -> None:
        nonlocal settled
        i = 0
        while True:
            i += 1
            rid = f"{args.prefix}-{w}-{i}"
            hold = await ledger.reserve(
                USERS[w], Decimal("0.40"), request_id=rid, model="gpt-test", provider="openai"
            )
            await asyncio.sleep(0.001)
            cost = Decimal(rng.randrange(1000, 3000)) / Decimal(10**6)
            await ledger.settle(hold, call_record(rid, USERS[w], cost, "ok"))
            settled += 1
            print(f"settled {settled}", flush=True)

    await asyncio.gather(*(worker(w) for w in range(4)))


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["contend", "loop"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--budgets", required=True, help="JSON list of BudgetConfig dicts")
    parser.add_argument("--prefix", default="w")
    parser.add_argument("--ops", type=int, default=250)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--ttl", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    budgets = [BudgetConfig(**b) for b in json.loads(args.budgets)]
    # The test's driver: SQLite's writer on the loop (normal) or in its thread (full).
    full = os.environ.get("BOT_TEST_SQLITE_SYNCHRONOUS") == "full"
    synchronous: Literal["normal", "full"] = "full" if full else "normal"
    config = DatabaseConfig(url=args.url, reservation_ttl_seconds=args.ttl, sqlite_synchronous=synchronous)
    async with await Ledger.open(config, budgets) as ledger:
        await (contend if args.mode == "contend" else loop)(ledger, args)


if __name__ == "__main__":
    asyncio.run(main())
