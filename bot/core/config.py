"""Configuration: pydantic models, loaded from YAML (with ``${VAR}`` interpolation), env or a dict.

Every loading error becomes one ``ConfigurationError`` naming the file, the field and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from bot.core.errors import ConfigurationError

__all__ = [
    "AppConfig",
    "BudgetConfig",
    "CacheConfig",
    "DatabaseConfig",
    "JobsConfig",
    "LoggingConfig",
    "McpClientConfig",
    "McpConfig",
    "ModelConfig",
    "ProviderConfig",
    "RetryConfig",
    "SessionDefaults",
]

ProviderType = Literal["openai", "anthropic", "openai_compatible"]
ScopeKind = Literal["global", "surface", "team", "user", "channel", "client", "model", "provider"]
Period = Literal["total", "daily", "weekly", "monthly"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_thresholds(values: list[float]) -> list[float]:
    for v in values:
        if not 0 < v <= 1:
            raise ValueError(f"threshold {v} must be in (0, 1], e.g. 0.8 for 80%")
    return sorted(set(values))


class ModelConfig(_Strict):
    """A model callers may use; prices here override ``genai-prices`` (needed for self-hosted models)."""

    provider: str
    #: The name sent upstream when it differs from the name callers use.
    upstream_name: str | None = None
    input_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)


class ProviderConfig(_Strict):
    """How to reach one provider. Keys default to the SDKs' standard environment variables."""

    type: ProviderType
    api_key: SecretStr | None = None
    base_url: str | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    #: Models this endpoint serves (an OpenAI-compatible server has no price list of its own).
    models: list[str] = Field(default_factory=list)
    enabled: bool = True


class SessionDefaults(_Strict):
    """Defaults every session gets unless the caller says otherwise."""

    default_model: str = "gpt-4o-mini"
    max_tokens: int = Field(default=1024, gt=0, le=200_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    budget_usd: Decimal | None = Field(default=None, ge=0)
    alert_thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])
    max_concurrency: int = Field(default=8, gt=0, le=1000)
    #: Prompts longer than this are refused before any token is counted.
    max_prompt_chars: int = Field(default=400_000, gt=0)

    @field_validator("alert_thresholds")
    @classmethod
    def _valid_thresholds(cls, v: list[float]) -> list[float]:
        return _check_thresholds(v)


class LoggingConfig(_Strict):
    """Log level and format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool | None = None


class CacheConfig(_Strict):
    """Caches of remote look-ups (Anthropic token counts)."""

    enabled: bool = True
    ttl_seconds: int = Field(default=300, ge=0)
    max_entries: int = Field(default=1024, ge=0)


class RetryConfig(_Strict):
    """Retry policy for provider calls: exponential backoff that honours ``Retry-After``."""

    max_retries: int = Field(default=2, ge=0, le=10)
    initial_delay_seconds: float = Field(default=0.5, ge=0)
    max_delay_seconds: float = Field(default=20.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)


class BudgetConfig(_Strict):
    """A spending budget: which calls it covers, how much, and over what period."""

    name: str = Field(min_length=1, max_length=100)
    scope: ScopeKind = "global"
    #: The scope key this budget covers; ``None`` means "each key of this scope separately"
    #: (``scope: user`` with no key gives every user their own budget of this size).
    key: str | None = None
    #: At most ``bot.core.amounts.MAX_LIMIT_USD`` (a billion dollars: more is a typo).
    limit_usd: Decimal = Field(gt=0, le=Decimal(1_000_000_000))
    period: Period = "monthly"
    alert_thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])
    #: Slack channel that hears about this budget's alerts.
    channel: str | None = None

    @field_validator("alert_thresholds")
    @classmethod
    def _valid_thresholds(cls, v: list[float]) -> list[float]:
        return _check_thresholds(v)


class DatabaseConfig(_Strict):
    """Where the ledger lives and how it counts periods."""

    url: str = "sqlite+aiosqlite:///data/bot.db"
    timezone: str = "UTC"
    reservation_ttl_seconds: int = Field(default=600, gt=0)
    #: How long an idempotency key (a Slack retry's) is kept before housekeeping prunes it.
    request_key_retention_hours: int = Field(default=72, gt=0, le=24 * 365)
    #: SQLite only. "normal": a commit is in the WAL file when it returns, so it survives the
    #: process dying at once; a background fsync of the WAL puts it on disk within
    #: ``sqlite_sync_interval_ms``, the most a power loss or kernel crash can take. "full": every
    #: commit waits for its fsync (docs/benchmarks.md has the cost; two writes per call).
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    sqlite_sync_interval_ms: int = Field(default=100, gt=0, le=60_000)
    #: Where a call's record goes when the database cannot take it after every retry, until the
    #: next start (or housekeeping) writes it (``bot.core.ledger.journal``). Default: beside a
    #: SQLite file (``bot.db.unrecorded.jsonl``); for PostgreSQL, ``bot`` puts it in the data folder.
    journal_path: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{v}'; use an IANA name such as 'Europe/Paris'") from None
        return v


class McpClientConfig(_Strict):
    """A named MCP client (an assistant, a team's Claude Code…) and its bearer token."""

    token: SecretStr = Field(min_length=16)
    #: This client's own ``mcp.confirm_above_usd`` (None: the global one applies).
    confirm_above_usd: Decimal | None = Field(default=None, ge=0)


class McpConfig(_Strict):
    """The MCP face: bearer tokens for HTTP clients, and the hosts the HTTP endpoint answers to."""

    #: Client name -> token. Over HTTP a request must carry ``Authorization: Bearer <token>``;
    #: the name becomes the principal's ``client_id`` (so ``scope: client`` budgets apply).
    clients: dict[str, McpClientConfig] = Field(default_factory=dict)
    #: The client name used for stdio (a local desktop client, trusted by the OS user).
    stdio_client: str = "local"
    #: Extra Host header values (``host`` or ``host:port``) allowed besides localhost.
    allowed_hosts: list[str] = Field(default_factory=list)
    #: Extra Origin header values allowed besides localhost.
    allowed_origins: list[str] = Field(default_factory=list)
    #: HTTP sessions one client may have open at once; its next one is refused (429) until it
    #: closes one or one expires, while other clients are still served.
    max_sessions_per_client: int = Field(default=32, ge=1, le=10_000)
    #: Seconds an HTTP session may sit idle (no request in flight, no open stream) before it is
    #: closed; the client then opens a new one (its next request is answered 404, as MCP says).
    session_idle_seconds: float = Field(default=300.0, gt=0, le=86_400)
    #: A ``generate`` whose worst-case cost is above this many USD is run only once the user
    #: confirms it (MCP elicitation), or, for a client that cannot ask, once it is called again
    #: with ``confirm: true``. None: never ask. A client's own value (``clients.X``) wins.
    confirm_above_usd: Decimal | None = Field(default=None, ge=0)
    #: Characters of an answer ``generate`` returns inline: assistants cut long tool output (Claude
    #: Code at about 25,000 tokens), so the whole of a longer one is a resource link to read.
    inline_answer_chars: int = Field(default=20_000, ge=1_000, le=1_000_000)
    #: How long a long answer stays readable, and how many characters of them one caller keeps
    #: (the oldest go first): they live in the server's memory.
    answer_ttl_seconds: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    answer_store_chars: int = Field(default=4_000_000, ge=10_000, le=200_000_000)

    def confirmation_threshold(self, client: str | None) -> Decimal | None:
        """The amount above which ``client``'s calls are confirmed (its own, else the global one);
        None: never."""
        own = self.clients.get(client) if client else None
        return own.confirm_above_usd if own and own.confirm_above_usd is not None else self.confirm_above_usd

    def needs_confirmation(self, client: str | None, worst_case: Decimal) -> Decimal | None:
        """The threshold ``worst_case`` (USD) is above for ``client``, or None when no confirmation is due."""
        threshold = self.confirmation_threshold(client)
        return threshold if threshold is not None and worst_case > threshold else None


class JobsConfig(_Strict):
    """Scheduled jobs: alert delivery to budget channels and spend reports (zone: ``database.timezone``)."""

    #: Seconds between two runs of the alert-delivery job (alerts are also pushed as calls cross).
    alert_interval_seconds: float = Field(default=60.0, gt=0)
    #: First retry delay of a failed alert delivery; doubles per attempt up to the maximum.
    alert_retry_seconds: float = Field(default=30.0, ge=0)
    alert_retry_max_seconds: float = Field(default=1800.0, ge=0)
    #: Delivery attempts of one alert before it is closed as failed (kept, with the last error).
    alert_max_attempts: int = Field(default=12, ge=1, le=1000)
    #: Crontab expressions (minute hour day month weekday) of the daily and weekly reports.
    daily_report_cron: str | None = "0 9 * * *"
    weekly_report_cron: str | None = "0 9 * * 1"
    #: Channels the reports are posted to (none: no report is posted).
    report_channels: list[str] = Field(default_factory=list)
    #: Alert when spend is projected to pass a budget's limit by the end of its period.
    forecast_alerts: bool = True
    #: Share of the period that must have elapsed before a projection is trusted.
    forecast_min_elapsed: float = Field(default=0.1, ge=0, le=1)

    @field_validator("daily_report_cron", "weekly_report_cron")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

        try:
            CronTrigger.from_crontab(v)
        except ValueError as exc:
            raise ValueError(f"invalid crontab '{v}': {exc}") from None
        return v


class SlackConfig(_Strict):
    """The Slack face's conversation settings (tokens and allow-lists come from ``SLACK_*``)."""

    #: Earlier messages of a thread sent with a new question at most; older ones are left out,
    #: and the answer says so.
    max_context_turns: int = Field(default=40, ge=0, le=1000)
    #: Input tokens a thread's context may fill at most (below the model's own window, which
    #: also applies); the oldest messages are left out until it fits.
    max_context_tokens: int = Field(default=16_000, gt=0)


def _default_providers() -> dict[str, ProviderConfig]:
    return {"openai": ProviderConfig(type="openai"), "anthropic": ProviderConfig(type="anthropic")}


class AppConfig(_Strict):
    """The whole configuration of the core."""

    providers: dict[str, ProviderConfig] = Field(default_factory=_default_providers)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    session: SessionDefaults = Field(default_factory=SessionDefaults)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    mcp: McpConfig = Field(default_factory=McpConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)

    @model_validator(mode="after")
    def _cross_check(self) -> AppConfig:
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise ValueError(
                    f"model '{name}' names provider '{model.provider}', which is not configured "
                    f"(known: {', '.join(sorted(self.providers))})"
                )
        names = [b.name for b in self.budgets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"budget names must be unique; repeated: {', '.join(dupes)}")
        self._check_budget_keys()
        return self

    def _check_budget_keys(self) -> None:
        # A key the ledger can never see (a channel's name, a user without the form the ledger
        # keys users by) would leave its budget silently unapplied: refuse it at start-up.
        from bot.core.budget_keys import config_key_problem

        clients = {*self.mcp.clients, self.mcp.stdio_client}
        for i, budget in enumerate(self.budgets):
            problem = config_key_problem(budget.scope, budget.key, clients=clients, providers=self.providers)
            if problem is not None:
                raise ValueError(f"budgets.{i}.key (budget '{budget.name}', scope {budget.scope}): {problem}")

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> AppConfig:
        """Build from a plain dict; errors name ``source`` and the offending field."""
        try:
            return cls.model_validate(dict(data))
        except pydantic.ValidationError as exc:
            raise _config_error(exc, source) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> AppConfig:
        """Load YAML, replacing ``${VAR}`` and ``${VAR:-default}`` from the environment."""
        file = Path(path)
        try:
            raw = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigurationError(
                "file not found", source=str(file), hint="Check the path, or copy config/config.yaml.example."
            ) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read file: {exc.strerror}", source=str(file)) from None
        try:
            data = yaml.safe_load(raw) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigurationError(
                f"invalid YAML{where}", source=str(file), hint="Fix the YAML syntax."
            ) from None
        if not isinstance(data, dict):
            raise ConfigurationError("the top level must be a mapping", source=str(file))
        # Interpolating parsed values (not the raw text) leaves comments alone and keeps a value
        # containing YAML syntax from changing the document's structure.
        data = _interpolate_tree(data, os.environ if env is None else env, source=str(file), path="")
        return cls.from_dict(data, source=str(file))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppConfig:
        """Load ``BOT_CONFIG`` (a YAML file) if set, then apply ``BOT_*`` overrides."""
        env = os.environ if env is None else env
        config = cls.from_file(env["BOT_CONFIG"], env) if env.get("BOT_CONFIG") else cls()
        data = config.model_dump(mode="python", exclude_unset=False)
        overrides = {
            "BOT_DEFAULT_MODEL": ("session", "default_model"),
            "BOT_MAX_TOKENS": ("session", "max_tokens"),
            "BOT_SESSION_BUDGET_USD": ("session", "budget_usd"),
            "BOT_DATABASE_URL": ("database", "url"),
            "BOT_TIMEZONE": ("database", "timezone"),
            "BOT_SQLITE_SYNCHRONOUS": ("database", "sqlite_synchronous"),
            "BOT_LOG_LEVEL": ("logging", "level"),
        }
        for var, (section, key) in overrides.items():
            if env.get(var):
                data[section][key] = env[var]
        return cls.from_dict(data, source="environment")


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    text: str, env: Mapping[str, str], *, source: str = "config", field: str | None = None
) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; a missing variable without default is an error."""

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigurationError(
            f"environment variable {name} is not set",
            source=source,
            field=field,
            hint=f"Export {name}, or write ${{{name}:-default}} to give a default.",
        )

    return _VAR.sub(sub, text)


def _interpolate_tree(value: Any, env: Mapping[str, str], *, source: str, path: str) -> Any:
    if isinstance(value, str):
        return interpolate(value, env, source=source, field=path or None)
    if isinstance(value, dict):
        return {
            k: _interpolate_tree(v, env, source=source, path=f"{path}.{k}" if path else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate_tree(v, env, source=source, path=f"{path}.{i}") for i, v in enumerate(value)]
    return value


def _config_error(exc: pydantic.ValidationError, source: str) -> ConfigurationError:
    problems = []
    first_field = None
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        first_field = first_field or field
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting; check its spelling against config/config.yaml.example"
        # A cross-field check names its own fields in its message.
        problems.append(f"{field}: {msg}" if field else msg)
    return ConfigurationError(
        "; ".join(problems),
        source=source,
        hint="See config/config.yaml.example for every setting with a comment.",
    )
