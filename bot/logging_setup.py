"""Structured logs for ``bot serve``: JSON off a terminal, plain on one, secrets always masked.

Every record carries ``request_id`` (set per HTTP request by the server through a context
variable; ``-`` outside a request). The redaction runs twice on purpose: a handler filter masks
the message and every ``extra`` field, and the formatter masks the final line, so a secret inside
a traceback or a value a filter did not know about is still caught.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from bot.core.redaction import Redactor

__all__ = [
    "MCP_SESSION_LOGGERS",
    "REFUSAL_SCOPE_KEY",
    "CallLogger",
    "JsonFormatter",
    "PlainFormatter",
    "RedactionFilter",
    "Redactor",
    "SessionIdFilter",
    "configure_logging",
    "hide_mcp_session_ids",
    "request_id_var",
    "secret_values",
]

#: The id of the HTTP request (or call) being handled in this context.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

#: ASGI scope key where a layer that refuses a request (body too large, bad signature, no token)
#: leaves why, so the server's one line for the request says it.
REFUSAL_SCOPE_KEY = "bot.refusal"

#: Environment variables whose values are secrets.
SECRET_ENV_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "BOT_DATABASE_URL",
    "BOT_METRICS_TOKEN",
)
#: Record attributes that are not extras (``color_message`` is uvicorn's ANSI copy of the message).
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",
}


#: The loggers of the MCP SDK's Streamable HTTP transport, which name session ids in their lines.
MCP_SESSION_LOGGERS = ("mcp.server.streamable_http_manager", "mcp.server.streamable_http")
#: An MCP session id as the SDK makes them (``uuid4().hex``).
_SESSION_ID = re.compile(r"\b[0-9a-f]{32}\b")


class SessionIdFilter(logging.Filter):
    """Logger filter: replaces MCP session ids with ``<session>``; never drops a line.

    A session id is all a request needs to use its session (with its owner's token), so none is
    ever written to the log, at any level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = str(record.msg)
        record.msg, record.args = _SESSION_ID.sub("<session>", message), None
        return True


def hide_mcp_session_ids() -> None:
    """Keep MCP session ids out of the log (idempotent).

    The SDK's transport logs every session created, ended, expired or unknown at INFO, with its
    id: those loggers now keep only WARNING and above, and every line they keep is masked.
    """
    for name in MCP_SESSION_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SessionIdFilter) for f in logger.filters):
            logger.addFilter(SessionIdFilter())
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


class RedactionFilter(logging.Filter):
    """Handler filter: adds ``request_id`` and masks secrets in the message and every extra."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; never drops it."""
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = str(record.msg)
        record.msg, record.args = self.redactor.text(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, self.redactor.data(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and k != "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras, exception."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (secrets masked again on the final text)."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_id_var.get()),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redactor.text(json.dumps(entry, default=str))


class PlainFormatter(logging.Formatter):
    """Human-readable lines for a terminal, extras appended as ``key=value``."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The formatted line (secrets masked again on the final text)."""
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return self.redactor.text(line)


def secret_values(env: Mapping[str, str], extra: Iterable[str] = ()) -> list[str]:
    """The secret values to mask: the standard secret variables plus ``extra`` (config tokens, keys)."""
    return [env[name] for name in SECRET_ENV_VARS if env.get(name)] + [s for s in extra if s]


def configure_logging(
    level: str = "INFO",
    *,
    json_format: bool | None = None,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> Redactor:
    """Replace the root handlers with one redacting handler on ``stream`` (stdout by default).

    ``json_format=None`` picks JSON when the stream is not a terminal (containers, log shippers).
    Returns the redactor, so other output (the start-up error line) can use the same masking.
    """
    stream = stream or sys.stdout
    redactor = Redactor(secrets)
    if json_format is None:
        json_format = not (hasattr(stream, "isatty") and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactionFilter(redactor))
    handler.setFormatter(JsonFormatter(redactor) if json_format else PlainFormatter(redactor))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # uvicorn's own loggers propagate to ours (the server passes log_config=None); its access log
    # is replaced by the server's request line, which carries the request id.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Client libraries log request URLs and headers at INFO/DEBUG, and the scheduler a line per job
    # run; keep them quiet unless debugging (our own jobs log what matters).
    noisy_loggers = (
        "httpx",
        "httpx2",
        "httpcore",
        "openai",
        "anthropic",
        "slack_bolt",
        "slack_sdk",
        "apscheduler",
    )
    for noisy in noisy_loggers:
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))
    return redactor


class CallLogger:
    """A ``CallObserver`` writing one structured line per call, whatever its outcome."""

    async def on_call(self, record: Any, alerts: Sequence[Any]) -> None:
        """Log the call with its own id; outside an HTTP request (MCP sessions) that id is the request id."""
        outer = request_id_var.get()
        logging.getLogger("bot.calls").info(
            "call %s: %s %s for %s",
            record.outcome,
            record.provider,
            record.model,
            record.principal.surface,
            extra={
                "request_id": outer if outer != "-" else record.request_id,
                "call_id": record.request_id,
                "surface": record.principal.surface,
                "model": record.model,
                "outcome": record.outcome,
                "input_tokens": record.usage.input_tokens,
                "output_tokens": record.usage.output_tokens,
                "cost_usd": str(record.cost_usd),
                "latency_ms": round(record.latency_ms, 1),
                "alerts": len(alerts),
            },
        )
