"""Properties of config loading: any dict or YAML text either loads or raises ``ConfigurationError``."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core.config import AppConfig
from bot.core.errors import ConfigurationError

SETTINGS = settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

#: Keys the config knows at some level, so generated dicts reach deep validation, not only "extra".
KEYS = [
    "providers", "models", "session", "logging", "cache", "retry", "budgets", "database", "mcp",
    "jobs", "openai", "anthropic", "type", "base_url", "api_key", "timeout_seconds", "provider",
    "input_per_mtok", "output_per_mtok", "upstream_name", "default_model", "max_tokens",
    "budget_usd", "alert_thresholds", "max_retries", "initial_delay_seconds", "max_delay_seconds",
    "multiplier", "name", "scope", "key", "limit_usd", "period", "url", "timezone", "level",
    "enabled", "ttl_seconds", "max_entries", "context_window", "temperature", "max_prompt_chars",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["openai", "anthropic", "daily", "user", "global", "0.5", "-1", "${HOME}", "UTC"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=10))
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)
configs = st.dictionaries(st.sampled_from(KEYS[:10]), values, max_size=6)


def _loads_or_configuration_error(load: Any) -> None:
    try:
        config = load()
    except ConfigurationError as err:
        assert str(err) and "Traceback" not in str(err)
    else:
        assert isinstance(config, AppConfig)


@SETTINGS
@given(configs)
def test_from_dict_raises_only_configuration_error(data: dict[str, Any]) -> None:
    """Whatever the dict, ``from_dict`` returns a config or raises ``ConfigurationError``."""
    _loads_or_configuration_error(lambda: AppConfig.from_dict(data))


yaml_texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=string.printable + "{}[]:-$é\u2028\ufeff", max_size=300),
    configs.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
)
envs = st.dictionaries(st.sampled_from(["HOME", "KEY", "X"]), st.text(max_size=10), max_size=3)


@SETTINGS
@given(yaml_texts, envs)
def test_from_file_raises_only_configuration_error(text: str, env: dict[str, str]) -> None:
    """Whatever the file holds, ``from_file`` returns a config or raises ``ConfigurationError``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _loads_or_configuration_error(lambda: AppConfig.from_file(path, env))
