"""Config loading: YAML with ${VAR}, env overrides, and errors naming file, field and fix."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from bot.core.config import AppConfig
from bot.core.errors import ConfigurationError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "config.yaml.example"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_from_file_interpolates_variables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
providers:
  openai: {type: openai, api_key: "${MY_KEY}"}
  ollama: {type: openai_compatible, base_url: "${OLLAMA_URL:-http://localhost:11434/v1}", models: [llama3.2]}
models:
  llama3.2: {provider: ollama, input_per_mtok: 0, output_per_mtok: 0}
budgets:
  - {name: team, scope: team, key: T1, limit_usd: "25.50", period: weekly, channel: "#spend"}
""",
    )
    config = AppConfig.from_file(path, env={"MY_KEY": "sk-secret"})
    assert config.providers["openai"].api_key is not None
    assert config.providers["openai"].api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(config)
    assert config.providers["ollama"].base_url == "http://localhost:11434/v1"
    assert config.budgets[0].limit_usd == Decimal("25.50") and config.budgets[0].period == "weekly"


def test_missing_variable_names_file_line_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  openai:\n    type: openai\n    api_key: ${NOPE}\n")
    with pytest.raises(ConfigurationError) as info:
        AppConfig.from_file(path, env={})
    message = str(info.value)
    assert (
        str(path) in message
        and "NOPE" in message
        and "providers.openai.api_key" in message
        and "${NOPE:-default}" in message
    )


def test_invalid_fields_are_all_named(tmp_path: Path) -> None:
    path = write(
        tmp_path, "session:\n  max_tokens: -5\n  colour: blue\nbudgets:\n  - {name: x, limit_usd: 0}\n"
    )
    with pytest.raises(ConfigurationError) as info:
        AppConfig.from_file(path, env={})
    message = str(info.value)
    assert "session.max_tokens" in message and "session.colour: unknown setting" in message
    assert "budgets.0.limit_usd" in message and "config.yaml.example" in message


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"models": {"m": {"provider": "nowhere"}}}, "provider 'nowhere'"),
        ({"budgets": [{"name": "a", "limit_usd": 1}, {"name": "a", "limit_usd": 2}]}, "repeated: a"),
        ({"database": {"timezone": "Mars/Olympus"}}, "unknown time zone"),
        ({"session": {"alert_thresholds": [1.5]}}, "must be in (0, 1]"),
        ({"providers": {"x": {"type": "bogus"}}}, "providers.x.type"),
    ],
)
def test_cross_checks(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=None) as info:
        AppConfig.from_dict(data)
    assert needle in str(info.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="invalid YAML at line"):
        AppConfig.from_file(write(tmp_path, "a: [1, 2\n"), env={})
    with pytest.raises(ConfigurationError, match="file not found"):
        AppConfig.from_file(tmp_path / "missing.yaml", env={})


def test_from_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "session: {default_model: gpt-4o}\n")
    env = {"BOT_CONFIG": str(path), "BOT_MAX_TOKENS": "77", "BOT_DATABASE_URL": "sqlite+aiosqlite:///x.db"}
    config = AppConfig.from_env(env)
    assert config.session.default_model == "gpt-4o" and config.session.max_tokens == 77
    assert config.database.url == "sqlite+aiosqlite:///x.db"
    with pytest.raises(ConfigurationError, match=r"environment.*session.max_tokens"):
        AppConfig.from_env({"BOT_MAX_TOKENS": "many"})


def test_sqlite_durability_defaults_to_normal_and_can_be_full() -> None:
    assert AppConfig.from_env({}).database.sqlite_synchronous == "normal"
    assert AppConfig.from_env({"BOT_SQLITE_SYNCHRONOUS": "full"}).database.sqlite_synchronous == "full"
    with pytest.raises(ConfigurationError, match=r"database.sqlite_synchronous.*'normal' or 'full'"):
        AppConfig.from_env({"BOT_SQLITE_SYNCHRONOUS": "fast"})


def test_the_shipped_example_is_valid() -> None:
    config = AppConfig.from_file(EXAMPLE, env={})
    assert config.budgets and config.providers
