"""Footprint of `bot serve`: time from start to a 200 from /readyz, and idle resident memory.

Runs the server as a user would (`python -m bot.cli serve`) in a scratch folder, three times each:
on the embedded defaults (no keys), and with both provider keys set against the fake upstream (so
the background warm-up loads both SDKs after start-up and checks the fake; readiness does not wait
for it). Also times how long after ready /readyz reports every provider "ok" (the warm-up); the
idle RSS is read ``settle_seconds`` after that, with the SDKs loaded. Prints the median of the runs.

    .venv/bin/python -m benchmarks.footprint
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.fakes.loopback import loopback_socket
from tests.fakes.upstream import FakeUpstream

__all__ = ["main", "measure"]


def _free_port() -> int:
    with loopback_socket() as sock:
        return int(sock.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure(env: dict[str, str], *, settle_seconds: float = 2.0) -> tuple[float, float, int]:
    """Start `bot serve` and return (seconds to a /readyz 200, seconds more until /readyz reports
    every provider "ok" — 0 without providers —, idle RSS in KiB ``settle_seconds`` after that)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/readyz"
    with tempfile.TemporaryDirectory() as folder:
        full_env = {"PATH": os.environ.get("PATH", ""), "HOME": folder, **env, "BOT_PORT": str(port)}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1"],
            cwd=folder,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=10) as reply:
                        if reply.status == 200:
                            break
                except OSError:  # not listening yet (URLError), or a 503 while not ready
                    pass
                if proc.poll() is not None or time.perf_counter() - started > 30:
                    raise RuntimeError("bot serve did not become ready")
                time.sleep(0.01)
            ready = time.perf_counter() - started
            while True:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    providers = json.load(reply)["providers"]
                if all(status == "ok" for status in providers.values()):
                    break
                if time.perf_counter() - started > 60:
                    raise RuntimeError(f"providers not ok: {providers}")
                time.sleep(0.01)
            warm = time.perf_counter() - started - ready
            time.sleep(settle_seconds)
            return ready, warm, _rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    """Print the median start-to-ready time, warm-up time and idle RSS for each configuration."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with FakeUpstream(api_key="bench") as fake:
        configs = {
            "defaults, no keys": {},
            "both keys (fake upstream)": {
                "OPENAI_API_KEY": "bench",
                "OPENAI_BASE_URL": fake.openai_base_url,
                "ANTHROPIC_API_KEY": "bench",
                "ANTHROPIC_BASE_URL": fake.anthropic_base_url,
            },
        }
        print(
            f"{'configuration':28} {'ready s':>8} {'providers ok +s':>16} {'idle RSS MB':>12}"
            f"   (median of {args.runs})"
        )
        for name, env in configs.items():
            runs = [measure(env) for _ in range(args.runs)]
            ready = statistics.median(r for r, _, _ in runs)
            warm = statistics.median(w for _, w, _ in runs)
            rss = statistics.median(m for _, _, m in runs) / 1024
            print(f"{name:28} {ready:8.2f} {warm:16.2f} {rss:12.1f}")


if __name__ == "__main__":
    main()
