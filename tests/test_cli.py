"""The ``bot`` command as a user runs it: a real subprocess talking to the fake upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream

BOT = [sys.executable, "-m", "bot.cli"]


def run(
    args: list[str], env: dict[str, str], tmp_path: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/bot.db",
        **env,
    }
    return subprocess.run(
        [*BOT, *args], env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=60, input=stdin
    )


def test_generate_streams_text_and_reports_cost(
    fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path
) -> None:
    done = run(
        ["generate", "Hello there", "--model", "gpt-4o-mini", "--max-tokens", "30"], fake_env, tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Echo: Hello there")
    assert "gpt-4o-mini:" in done.stderr and "$" in done.stderr


def test_generate_json_and_stdin(fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path) -> None:
    done = run(
        ["generate", "-", "--model", "claude-haiku-4-5", "--json"], fake_env, tmp_path, stdin="from stdin"
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["text"] == "Echo: from stdin" and Decimal(data["cost_usd"]) > 0
    assert data["usage"]["input_tokens"] > 0 and data["provider"] == "anthropic"


def test_dry_run_calls_nothing(fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path) -> None:
    done = run(["generate", "estimate me", "--model", "gpt-4o", "--dry-run"], fake_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dry run:" in done.stdout and "nothing was called or charged" in done.stdout
    assert fake.requests == []


@pytest.mark.parametrize(
    ("args", "env_drop", "needle"),
    [
        (
            ["generate", "hi", "--model", "gpt-4o-mimi"],
            None,
            "unknown model 'gpt-4o-mimi' Did you mean: gpt-4o-mini",
        ),
        (["generate", "hi", "--model", "gpt-4o-mini"], "OPENAI_API_KEY", "Set OPENAI_API_KEY"),
        (["generate", "   ", "--model", "gpt-4o-mini"], None, "the prompt is empty"),
        (["generate", "hi", "--max-tokens", "0"], None, "max_tokens must be between"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(
    fake_env: dict[str, str], tmp_path: Path, args: list[str], env_drop: str | None, needle: str
) -> None:
    env = {k: v for k, v in fake_env.items() if k != env_drop}
    done = run(args, env, tmp_path)
    assert done.returncode == 2
    assert needle in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_bad_config_file_exit_2(fake_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("session:\n  max_tokens: lots\n")
    done = run(["generate", "hi"], {**fake_env, "BOT_CONFIG": str(tmp_path / "c.yaml")}, tmp_path)
    assert done.returncode == 2 and "session.max_tokens" in done.stderr and "Traceback" not in done.stderr


def test_provider_outage_exit_1(fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path) -> None:
    fake.inject("server_error", times=10)
    config = tmp_path / "c.yaml"
    config.write_text("retry: {max_retries: 1, initial_delay_seconds: 0.01}\n")
    done = run(
        ["generate", "hi", "--model", "gpt-4o-mini"], {**fake_env, "BOT_CONFIG": str(config)}, tmp_path
    )
    assert done.returncode == 1 and "HTTP 500" in done.stderr and "Traceback" not in done.stderr


def test_models_lists_prices(tmp_path: Path) -> None:
    done = run(["models", "--json"], {}, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["gpt-4o-mini"]["input_per_mtok"] == "0.15" and rows["gpt-4o-mini"]["key_configured"] is False
    assert rows["claude-haiku-4-5"]["provider"] == "anthropic"


def test_budget_shows_what_is_left_after_a_call(
    fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "budgets:\n"
        "  - {name: me-daily, scope: user, limit_usd: 2, period: daily}\n"
        "  - {name: everyone, scope: global, limit_usd: 100, period: monthly}\n"
    )
    env = {**fake_env, "BOT_CONFIG": str(config)}
    assert run(["generate", "hi", "--model", "gpt-4o-mini"], env, tmp_path).returncode == 0
    done = run(["budget", "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert Decimal(rows["me-daily"]["spent"]) > 0 and rows["me-daily"]["scope_key"] == "local"
    assert Decimal(rows["everyone"]["spent"]) == Decimal(rows["me-daily"]["spent"])
    text = run(["budget"], env, tmp_path)
    assert "me-daily" in text.stdout and "left" in text.stdout


def test_every_command_uses_the_ledger_bot_data_dir_names_from_any_folder(
    fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path
) -> None:
    """``bot serve`` keeps the ledger under ``BOT_DATA_DIR``; ``bot generate`` and ``bot budget``
    run from other folders read and write that same ledger, and leave no stray ``data/`` behind."""
    config = tmp_path / "c.yaml"
    config.write_text("budgets:\n  - {name: everyone, scope: global, limit_usd: 100, period: monthly}\n")
    data = tmp_path / "shared-data"
    # No database URL (run() sets one per folder by default): the data folder decides.
    env = {**fake_env, "BOT_CONFIG": str(config), "BOT_DATA_DIR": str(data), "BOT_DATABASE_URL": ""}
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    assert run(["generate", "hi", "--model", "gpt-4o-mini"], env, here).returncode == 0
    done = run(["budget", "--json"], env, there)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert Decimal(row["spent"]) > 0
    # ...and says which ledger it used.
    assert f"ledger: sqlite {(data / 'bot.db').resolve()}" in done.stderr.splitlines()
    assert (data / "bot.db").exists()
    assert not (here / "data").exists() and not (there / "data").exists()


def test_slack_without_settings_says_what_to_set(tmp_path: Path) -> None:
    done = run(["slack"], {}, tmp_path)
    assert done.returncode == 2 and "SLACK_BOT_TOKEN" in done.stderr and "Traceback" not in done.stderr
