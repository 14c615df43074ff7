"""Start-up of ``bot serve``: embedded defaults, and one clear line with exit code 2 for bad settings."""

from __future__ import annotations

import os
from pathlib import Path

import httpx2
import pytest

from tests.serve.conftest import run_to_exit, start


def bare_env(**extra: str) -> dict[str, str]:
    """The environment without any bot, provider or Slack setting."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "SLACK_", "OPENAI_", "ANTHROPIC_"))
    }
    env.update(extra)
    return env


def test_starts_on_embedded_defaults_and_says_what_is_off(tmp_path: Path) -> None:
    server = start(tmp_path, bare_env(PYTHONUNBUFFERED="1"))
    try:
        server.wait_ready()
        ready = httpx2.get(f"{server.url}/readyz", timeout=5).json()
        metrics = httpx2.get(f"{server.url}/metrics", timeout=5)
        mcp = httpx2.post(f"{server.url}/mcp", json={}, timeout=5)
        wrong = httpx2.post(
            f"{server.url}/mcp", json={}, headers={"Authorization": "Bearer gwp_nope"}, timeout=5
        )
        slack = httpx2.post(f"{server.url}/slack/events", content="x", timeout=5)
    finally:
        code = server.stop()
    assert code == 0, server.logs()
    assert ready["checks"] == {"database": "ok"}  # no provider key: nothing to reach
    assert metrics.status_code == 200 and "llm_calls" in metrics.text
    # /mcp is always there: with no client configured it is never anonymous, and says how to get a token.
    for refused in (mcp, wrong):
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert "/mcp-token" in refused.json()["hint"] and "bot tokens create --user" in refused.json()["hint"]
    assert slack.status_code == 404
    assert (tmp_path / "data" / "bot.db").exists()  # SQLite under the default data folder
    (line,) = [entry for entry in server.log_lines() if entry["message"].startswith("bot serve listening")]
    assert "MCP over HTTP on (/mcp: personal tokens from /mcp-token" in line["message"]
    assert "no config clients" in line["message"]
    assert "Slack off (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET" in line["message"]


def _bad_yaml(tmp: Path) -> dict[str, str]:
    (tmp / "bad.yaml").write_text("budgets: [unclosed\n")
    return {"BOT_CONFIG": str(tmp / "bad.yaml")}


def _file_as_data_dir(tmp: Path) -> dict[str, str]:
    (tmp / "a-file").write_text("")
    return {"BOT_DATA_DIR": str(tmp / "a-file" / "data")}


@pytest.mark.parametrize(
    ("make_env", "args", "expected"),
    [
        (_bad_yaml, (), "invalid YAML at line"),
        (
            lambda tmp: {"BOT_PORT": "abc"},
            (),
            "BOT_PORT must be a port number between 1 and 65535, got 'abc'",
        ),
        (lambda tmp: {}, ("--port", "70000"), "--port must be a port number"),
        (
            lambda tmp: {"BOT_DATABASE_URL": "mysql://user:hunter2secret@db/x"},
            (),
            "unsupported database 'mysql'",
        ),
        (lambda tmp: {"BOT_DATABASE_URL": "not a url"}, (), "cannot parse database url"),
        (_file_as_data_dir, (), "is not writable"),
        (lambda tmp: {"SLACK_BOT_TOKEN": "xoxb-only-half-configured"}, (), "SLACK_SIGNING_SECRET not set"),
        (lambda tmp: {"BOT_SHUTDOWN_GRACE": "soon"}, (), "BOT_SHUTDOWN_GRACE must be"),
    ],
    ids=["yaml", "port-env", "port-flag", "db-kind", "db-url", "data-dir", "slack-half", "grace"],
)
def test_bad_settings_fail_fast_with_one_line_and_exit_2(
    tmp_path: Path, make_env: object, args: tuple[str, ...], expected: str
) -> None:
    env = bare_env(**make_env(tmp_path))  # type: ignore[operator]
    done = run_to_exit(tmp_path, env, *args)
    assert done.returncode == 2, done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "hunter2secret" not in done.stderr + done.stdout
