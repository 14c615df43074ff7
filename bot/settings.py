"""``ServerSettings``: where ``bot serve`` listens and keeps its data, read from the environment.

``BOT_HOST`` defaults to ``0.0.0.0`` because the server is meant to run in a container, where
binding to loopback would make it unreachable; on a laptop pass ``--host 127.0.0.1`` (or set
``BOT_HOST``) to keep it private. Every invalid value is a ``ConfigurationError`` naming the
variable and the fix, which the command line prints as one line with exit code 2.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.core.config import AppConfig, DatabaseConfig
from bot.core.errors import ConfigurationError

if TYPE_CHECKING:
    from bot.core.gateway import Gateway

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_GRACE",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_PORT",
    "DEFAULT_SLACK_BODY_LIMIT",
    "ServerSettings",
    "apply_data_dir",
    "bind_socket",
    "config_secrets",
    "data_dir_from_env",
    "ledger_description",
    "metrics_token_from_env",
    "shutdown_grace_from_env",
    "slack_body_limit_from_env",
    "slack_settings_from_env",
    "startup_summary",
]

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = "./data"
#: Seconds a shutdown waits for calls in flight (``BOT_SHUTDOWN_GRACE``), for every server.
DEFAULT_GRACE = 30.0
#: Bytes a request body to ``/slack/events`` may have (``BOT_MAX_SLACK_BODY_BYTES``): Slack's
#: payloads are a few KB (a slash command's text is at most ~4,000 characters).
DEFAULT_SLACK_BODY_LIMIT = 64 * 1024
_SLACK_BODY_RANGE = (1024, 16 * 1024 * 1024)
#: Seconds a client has to send a complete request head (``BOT_HEADER_TIMEOUT``), counted from
#: the connection's opening or the request's first byte; a silent connection is closed after it.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds a client has to send a whole request body once its head is in (``BOT_BODY_TIMEOUT``):
#: the largest body (4 MiB to /mcp) at about 140 KB/s.
DEFAULT_BODY_TIMEOUT = 30.0
#: Seconds a kept-alive connection may sit idle between two requests (``BOT_IDLE_TIMEOUT``).
DEFAULT_IDLE_TIMEOUT = 5.0
#: Shortest ``BOT_METRICS_TOKEN`` accepted (as for MCP tokens).
MIN_METRICS_TOKEN = 16


def _port(raw: str, source: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigurationError(
            f"{source} must be a port number between 1 and 65535, got '{raw}'",
            source="environment" if source.startswith("BOT_") else "command line",
            hint="Use e.g. BOT_PORT=8080 or --port 8080.",
        )
    return port


def _grace(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ConfigurationError(
            f"BOT_SHUTDOWN_GRACE must be a number of seconds between 0 and 3600, got '{raw}'",
            source="environment",
        )
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A timeout in seconds from ``env[name]`` (more than 0, at most an hour), else ``default``."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ConfigurationError(
            f"{name} must be a number of seconds above 0 and at most 3600, got '{raw}'",
            source="environment",
            hint=f"Leave it unset for {default:g} s.",
        )
    return value


def metrics_token_from_env(env: Mapping[str, str]) -> str | None:
    """``BOT_METRICS_TOKEN`` (16+ characters), or None when ``/metrics`` stays open."""
    token = (env.get("BOT_METRICS_TOKEN") or "").strip()
    if token and len(token) < MIN_METRICS_TOKEN:
        raise ConfigurationError(
            f"BOT_METRICS_TOKEN must have at least {MIN_METRICS_TOKEN} characters",
            source="environment",
            hint="Use a long random value, e.g. `openssl rand -hex 24`, or leave it unset.",
        )
    return token or None


def slack_body_limit_from_env(env: Mapping[str, str] | None = None) -> int:
    """``BOT_MAX_SLACK_BODY_BYTES``, ``DEFAULT_SLACK_BODY_LIMIT`` when unset; ``ConfigurationError`` if invalid."""
    env = os.environ if env is None else env
    raw = env.get("BOT_MAX_SLACK_BODY_BYTES")
    if not raw:
        return DEFAULT_SLACK_BODY_LIMIT
    low, high = _SLACK_BODY_RANGE
    value = int(raw) if raw.strip().isdigit() else -1
    if not low <= value <= high:
        raise ConfigurationError(
            f"BOT_MAX_SLACK_BODY_BYTES must be a number of bytes between {low} and {high}, got '{raw}'",
            source="environment",
            hint=f"Leave it unset for {DEFAULT_SLACK_BODY_LIMIT} bytes, plenty for Slack's payloads.",
        )
    return value


def shutdown_grace_from_env(env: Mapping[str, str] | None = None) -> float:
    """``BOT_SHUTDOWN_GRACE`` in seconds, ``DEFAULT_GRACE`` when unset; ``ConfigurationError`` if invalid.

    ``bot serve`` reads it with the rest of ``ServerSettings``; ``bot slack`` reads it alone.
    """
    env = os.environ if env is None else env
    return _grace(env["BOT_SHUTDOWN_GRACE"]) if env.get("BOT_SHUTDOWN_GRACE") else DEFAULT_GRACE


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Bind address, port, data folder and shutdown grace period of ``bot serve``."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    #: Seconds a shutdown waits for calls in flight before closing anyway.
    shutdown_grace: float = DEFAULT_GRACE
    #: Bytes a request body to ``/slack/events`` may have; larger ones are answered 413 unread.
    max_slack_body: int = DEFAULT_SLACK_BODY_LIMIT
    #: Seconds for a request head, for its body, and between two requests (``bot.timeouts``).
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: The bearer token ``/metrics`` asks for (None: it answers anyone). Never in a repr.
    metrics_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, host: str | None = None, port: str | int | None = None
    ) -> ServerSettings:
        """Read ``BOT_HOST``, ``BOT_PORT``, ``BOT_DATA_DIR``, ``BOT_SHUTDOWN_GRACE``,
        ``BOT_MAX_SLACK_BODY_BYTES``, ``BOT_HEADER_TIMEOUT``, ``BOT_BODY_TIMEOUT``,
        ``BOT_IDLE_TIMEOUT`` and ``BOT_METRICS_TOKEN``.

        The ``--host`` and ``--port`` flags win over the environment.
        """
        env = os.environ if env is None else env
        if port is not None:
            number = _port(str(port), "--port")
        else:
            number = _port(env["BOT_PORT"], "BOT_PORT") if env.get("BOT_PORT") else DEFAULT_PORT
        host = host or env.get("BOT_HOST") or DEFAULT_HOST
        data_dir = data_dir_from_env(env)
        return cls(
            host=host,
            port=number,
            data_dir=data_dir,
            shutdown_grace=shutdown_grace_from_env(env),
            max_slack_body=slack_body_limit_from_env(env),
            header_timeout=_seconds(env, "BOT_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT),
            body_timeout=_seconds(env, "BOT_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT),
            idle_timeout=_seconds(env, "BOT_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT),
            metrics_token=metrics_token_from_env(env),
        )

    def ensure_data_dir(self) -> Path:
        """Create the data folder if needed and prove it is writable (fail now, not at first call)."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.data_dir, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise ConfigurationError(
                f"the data folder {self.data_dir} is not writable ({exc.strerror or exc})",
                source="environment",
                field="BOT_DATA_DIR",
                hint="Point BOT_DATA_DIR at a folder this user can write, or fix its permissions.",
            ) from None
        return self.data_dir


def data_dir_from_env(env: Mapping[str, str]) -> Path:
    """The data folder ``BOT_DATA_DIR`` names (default ``./data``), for every command alike."""
    return Path(env.get("BOT_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


def ledger_description(config: AppConfig) -> str:
    """Which ledger a command uses, without secrets: ``sqlite /path/bot.db`` or
    ``postgresql host/database``."""
    from bot.core.ledger.database import normalise_url

    url, backend = normalise_url(config.database.url)
    return f"sqlite {url.database}" if backend == "sqlite" else f"postgresql {url.host}/{url.database}"


def apply_data_dir(config: AppConfig, data_dir: Path, env: Mapping[str, str]) -> AppConfig:
    """Put the default SQLite ledger under the data folder unless a database URL was chosen.

    The core's embedded default is relative to the working directory; every command (``serve``,
    ``generate``, ``budget``, ``report``, ``mcp``, ``slack``) keeps the ledger where
    ``BOT_DATA_DIR`` says (``/data`` in the container, a mounted volume), so they all read and
    write the one ledger of the deployment, whatever folder they run in.
    """
    if env.get("BOT_DATABASE_URL") or config.database.url != DatabaseConfig().url:
        if config.database.journal_path is not None or config.database.url.startswith("sqlite"):
            return config  # a SQLite ledger keeps its journal beside its file
        # PostgreSQL: records it cannot take wait in this replica's data folder.
        journal = str((data_dir / "ledger.unrecorded.jsonl").resolve())
        database = config.database.model_copy(update={"journal_path": journal})
        return config.model_copy(update={"database": database})
    path = (data_dir / "bot.db").resolve()
    database = config.database.model_copy(update={"url": f"sqlite+aiosqlite:///{path}"})
    return config.model_copy(update={"database": database})


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a taken port is a clear start-up error (exit 2)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            source="environment",
            hint="Choose another port with --port or BOT_PORT, or stop what is using it.",
        ) from None
    sock.set_inheritable(True)
    return sock


def slack_settings_from_env() -> Any:
    """``SlackSettings`` when either Slack secret is set (both are then required), else None."""
    if not (os.environ.get("SLACK_BOT_TOKEN") or os.environ.get("SLACK_SIGNING_SECRET")):
        return None
    from bot.slack.settings import SlackSettings

    return SlackSettings.from_env()  # one of the two alone is an error, named in its message


def startup_summary(settings: ServerSettings, config: AppConfig, gateway: Gateway, slack: Any) -> str:
    """The one start-up line: what is on, and how to turn on what is off."""
    db = ledger_description(config)
    keyed = [p.provider_name for p in gateway.sessions.router.providers.values() if p.has_key]
    metrics = "/metrics behind BOT_METRICS_TOKEN" if settings.metrics_token else "/metrics open"
    parts = [
        f"bot serve listening on http://{settings.host}:{settings.port}",
        f"/healthz /readyz on, {metrics}",
    ]
    if slack is None:
        parts.append("Slack off (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET for /slack/events)")
    elif slack.app_token:
        parts.append("Slack on (/slack/events and Socket Mode)")
    else:
        parts.append("Slack on (/slack/events; set SLACK_APP_TOKEN for Socket Mode)")
    clients = f"{len(config.mcp.clients)} config clients" if config.mcp.clients else "no config clients"
    parts.append(
        f"MCP over HTTP on (/mcp: personal tokens from /mcp-token in Slack or `bot tokens create`, {clients})"
    )
    parts.append(f"ledger {db}")
    parts.append(
        f"providers with keys: {', '.join(keyed)}"
        if keyed
        else "no provider keys (set OPENAI_API_KEY or ANTHROPIC_API_KEY)"
    )
    return "; ".join(parts)


def config_secrets(config: AppConfig) -> list[str]:
    """Secret values found in the config (MCP tokens, provider keys), for log redaction."""
    tokens = [c.token.get_secret_value() for c in config.mcp.clients.values()]
    keys = [p.api_key.get_secret_value() for p in config.providers.values() if p.api_key]
    return tokens + keys
