"""Compare this checkout with an earlier commit, runs interleaved, on a machine whose speed drifts.

Why: on these shared 2-vCPU machines the same code runs up to 2x faster or slower a few seconds
apart, so a benchmark run now against one run of the old code earlier says nothing. This checks
``REV`` out in a temporary git worktree, then runs the same benchmark alternately on it and on
this checkout (``PYTHONPATH`` picks which code is imported; the venv is this one), and prints
every figure and the median of each side.

    .venv/bin/python benchmarks/interleave.py --base 86e2ae3 --rounds 8 ledger -- --ops 1000 --concurrency 50
    .venv/bin/python benchmarks/interleave.py --base 86e2ae3 --rounds 3 core -- --latency-ms 0

``ledger`` compares SQLite's ops/s from ``ledger_bench.py``; ``core`` compares the added p50 and
the throughput ratios from ``core_overhead.py``. A run that fails is reported and left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
_CORE_FIGURES = ("added_p50_ms", "throughput_ratio", "throughput_ratio_same_sdk_path")


def _find(data: object, key: str) -> float | None:
    """The first value of ``key`` anywhere in a JSON document."""
    if isinstance(data, dict):
        for name, value in data.items():
            if name == key and isinstance(value, int | float):
                return float(value)
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _run(tree: Path, bench: str, extra: list[str]) -> dict[str, float] | None:
    script = "ledger_bench.py" if bench == "ledger" else "core_overhead.py"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *extra],
        cwd=tree, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        print(f"  (a run failed in {tree.name}: {done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    if bench == "ledger":
        row = re.search(r"^\| sqlite\s*\|[^|]*\|[^|]*\|[^|]*\|\s*(\d+)", done.stdout, re.MULTILINE)
        return None if row is None else {"sqlite_ops_per_s": float(row.group(1))}
    report = json.loads(done.stdout[done.stdout.index("{") :])
    return {k: v for k in _CORE_FIGURES if (v := _find(report, k)) is not None}


def main() -> None:
    """Parse the arguments, run the rounds, print the figures and the medians."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=6, help="pairs of runs")
    parser.add_argument("bench", choices=["ledger", "core"])
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: the benchmark's own arguments")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    figures: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(base), args.base], cwd=HERE, check=True
        )
        try:
            for n in range(args.rounds):
                for side, tree in (("base", base), ("this", HERE)):
                    result = _run(tree, args.bench, extra)
                    print(f"round {n + 1} {side}: {result}")
                    for key, value in (result or {}).items():
                        figures[side].setdefault(key, []).append(value)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=HERE, check=False)
    for key in figures["this"]:
        ours, theirs = figures["this"][key], figures["base"].get(key, [])
        if ours and theirs:
            print(
                f"{key}: this {statistics.median(ours):.3f} (of {len(ours)}), "
                f"{args.base} {statistics.median(theirs):.3f} (of {len(theirs)})"
            )


if __name__ == "__main__":
    main()
