"""``bot serve`` as the README runs it: a subprocess on a free port, pointed at the fakes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.fakes.slack_api import FakeSlackApi
from tests.mcp.conftest import TOKENS

BOT_TOKEN = "xoxb-serve-test-token"
SIGNING_SECRET = "serve-signing-secret"
#: A budget every call is charged to, so the ledger's totals can be checked after exit.
CONFIG_YAML = f"""
retry: {{max_retries: 0, initial_delay_seconds: 0.01, max_delay_seconds: 0.1}}
providers:
  openai: {{type: openai, timeout_seconds: 10}}
  anthropic: {{type: anthropic, timeout_seconds: 10}}
mcp:
  clients:
    alice: {{token: "{TOKENS["alice"]}"}}
budgets:
  - {{name: everything, scope: global, limit_usd: "10", period: monthly}}
  - {{name: watched, scope: global, limit_usd: "0.01", period: monthly, alert_thresholds: [0.0001],
      channel: "C-ALERTS"}}
"""


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running ``bot serve`` subprocess and what it printed."""

    proc: subprocess.Popen[str]
    port: int
    db_path: Path
    log_path: Path
    err_path: Path
    started_at: float
    ready_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        """Everything written so far to stdout (the structured log) and stderr."""
        return self.log_path.read_text() + self.err_path.read_text()

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def wait_ready(self, timeout: float = 20) -> None:
        """Poll /readyz until 200 (fails with the logs when the process dies or time runs out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"bot serve exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx2.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.ready_after = time.monotonic() - self.started_at
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"bot serve was not ready after {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def serve_env(tmp_path: Path, fake_env: dict[str, str], slack_api_url: str | None) -> dict[str, str]:
    """The environment of a fully configured server."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG_YAML)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "SLACK_", "OPENAI_", "ANTHROPIC_"))
    }
    env.update(fake_env)
    env.update(
        BOT_CONFIG=str(config),
        BOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/ledger.db",
        BOT_DATA_DIR=str(tmp_path / "data"),
        BOT_SHUTDOWN_GRACE="15",
        PYTHONUNBUFFERED="1",
    )
    if slack_api_url:
        env.update(
            SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=slack_api_url
        )
    return env


def start(tmp_path: Path, env: dict[str, str], *args: str, port: int | None = None) -> Served:
    """``python -m bot.cli serve --port PORT`` with ``env``, output captured to files."""
    port = port or free_port()
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=o, stderr=e, text=True)
    return Served(proc, port, tmp_path / "ledger.db", out, err, time.monotonic())


def run_to_exit(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bot serve`` expecting it to stop by itself (start-up errors)."""
    cmd = [sys.executable, "-m", "bot.cli", "serve", *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="session")
def slack_fake() -> Iterator[FakeSlackApi]:
    """One fake Slack Web API for these tests."""
    with FakeSlackApi(token=BOT_TOKEN) as server:
        yield server


@pytest.fixture
def served(tmp_path: Path, fake_env: dict[str, str], slack_fake: FakeSlackApi) -> Iterator[Served]:
    """A fully configured ``bot serve`` (MCP clients, Slack, a budget), ready; killed if still up."""
    slack_fake.reset()
    server = start(tmp_path, serve_env(tmp_path, fake_env, slack_fake.api_url))
    try:
        server.wait_ready()
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
