"""Run every benchmark, each as its own subprocess, and say where the results went.

    .venv/bin/python benchmarks/run_all.py [--out DIR] [--quick]

Runs ``ledger_bench`` (one process, then two), ``mcp_bench``, ``core_overhead`` (upstream latency 0 ms and 200 ms, with a
pyinstrument profile at 0 ms) ``slack_ack`` (0 ms and 200 ms) and ``footprint``. Each benchmark's output goes to
``DIR/<name>.txt`` (and JSON reports to ``DIR/<name>.json`` where the benchmark writes one);
``DIR`` defaults to a new ``bot-benchmarks-*`` directory under the system temp directory.
Benchmarks that measure medians over 3 runs do so themselves (``--repeat 3``).
``--quick`` shrinks every run to a smoke test (the figures are then meaningless).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plan(out: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """(name, argv) of every benchmark run, in order."""
    py = sys.executable
    core = [py, "benchmarks/core_overhead.py"]
    slack = [py, "benchmarks/slack_ack.py"]
    if quick:
        small = ["--requests", "10", "--throughput-requests", "50", "--stream-requests", "5", "--repeat", "1"]
        return [
            ("ledger_bench", [py, "benchmarks/ledger_bench.py", "--ops", "50", "--repeat", "1"]),
            ("ledger_bench_2proc", [py, "benchmarks/ledger_bench.py", "--ops", "50", "--repeat", "1", "--processes", "2"]),
            ("mcp_bench", [py, "-m", "benchmarks.mcp_bench", "--calls", "16"]),
            ("core_overhead_0ms", [*core, "--latency-ms", "0", *small, "--json", str(out / "core_overhead_0ms.json")]),
            ("slack_ack_0ms", [*slack, "--rounds", "1", "--repeat", "1", "--json", str(out / "slack_ack_0ms.json")]),
            ("footprint", [py, "-m", "benchmarks.footprint", "--runs", "1"]),
        ]  # fmt: skip
    return [
        ("ledger_bench", [py, "benchmarks/ledger_bench.py", "--ops", "1000", "--concurrency", "50"]),
        ("ledger_bench_2proc", [
            py, "benchmarks/ledger_bench.py", "--ops", "1000", "--concurrency", "25", "--processes", "2",
        ]),
        ("mcp_bench", [py, "-m", "benchmarks.mcp_bench"]),
        ("core_overhead_0ms", [
            *core, "--latency-ms", "0", "--json", str(out / "core_overhead_0ms.json"),
            "--profile", str(out / "core_overhead_profile.txt"),
        ]),
        ("core_overhead_200ms", [
            *core, "--latency-ms", "200", "--requests", "60", "--stream-requests", "30",
            "--json", str(out / "core_overhead_200ms.json"),
        ]),
        ("slack_ack_0ms", [*slack, "--latency-ms", "0", "--json", str(out / "slack_ack_0ms.json")]),
        ("slack_ack_200ms", [*slack, "--latency-ms", "200", "--json", str(out / "slack_ack_200ms.json")]),
        ("footprint", [py, "-m", "benchmarks.footprint"]),
    ]  # fmt: skip


def main() -> int:
    """Run the plan; returns the number of benchmarks that failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, help="directory for the results (default: a new temp dir)")
    parser.add_argument("--quick", action="store_true", help="tiny runs, to check that everything works")
    parser.add_argument("--only", nargs="*", help="run only these benchmark names")
    args = parser.parse_args()
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="bot-benchmarks-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"results go to {out}", flush=True)
    failed = 0
    for name, argv in plan(out, args.quick):
        if args.only and name not in args.only:
            continue
        log = out / f"{name}.txt"
        started = time.monotonic()
        with log.open("w", encoding="utf-8") as sink:
            code = subprocess.call(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name:<22} {status:<18} {time.monotonic() - started:6.1f} s  -> {log}", flush=True)
        failed += code != 0
    print(f"done: {failed} failed; results in {out}")
    return failed


if __name__ == "__main__":
    sys.exit(min(main(), 1))
