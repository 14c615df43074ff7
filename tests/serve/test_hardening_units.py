"""The rules behind the hardened edges, checked directly: settings, the outage rule, log masking."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from bot.core.errors import LEDGER_UNAVAILABLE, USER_ERRORS, BotError, ConfigurationError, LedgerUnavailable
from bot.core.ledger.outage import translated, unavailable
from bot.logging_setup import SessionIdFilter
from bot.settings import ServerSettings


def test_timeouts_and_the_metrics_token_come_from_the_environment() -> None:
    defaults = ServerSettings.from_env({})
    assert (defaults.header_timeout, defaults.body_timeout, defaults.idle_timeout) == (10, 30, 5)
    assert defaults.metrics_token is None
    env = {"BOT_HEADER_TIMEOUT": "1.5", "BOT_BODY_TIMEOUT": "2", "BOT_IDLE_TIMEOUT": "0.5"}
    token = "t" * 16
    given = ServerSettings.from_env({**env, "BOT_METRICS_TOKEN": token})
    assert (given.header_timeout, given.body_timeout, given.idle_timeout) == (1.5, 2, 0.5)
    assert given.metrics_token == token and token not in repr(given)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "3601", "nan"])
def test_a_bad_timeout_is_one_clear_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="BOT_BODY_TIMEOUT must be a number of seconds"):
        ServerSettings.from_env({"BOT_BODY_TIMEOUT": value})


def _sqlite_error(code: int, text: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode = code  # what sqlite3 sets on the errors it raises
    return error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError("connect timed out"),
        _sqlite_error(sqlite3.SQLITE_CANTOPEN, "unable to open database file"),
        _sqlite_error(sqlite3.SQLITE_BUSY, "database is locked"),
        OperationalError("SELECT 1", {}, _sqlite_error(sqlite3.SQLITE_READONLY, "readonly database")),
        OperationalError(
            "SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True
        ),
    ],
    ids=["refused", "timeout", "cantopen", "busy", "wrapped-readonly", "invalidated"],
)
def test_failures_to_reach_the_database_are_the_ledger_unavailable(error: Exception) -> None:
    outage = unavailable(error)
    assert outage is not None and outage.cause
    with pytest.raises(LedgerUnavailable) as raised, translated():
        raise error
    assert raised.value.__cause__ is error
    assert str(raised.value).startswith(LEDGER_UNAVAILABLE + ".")


@pytest.mark.parametrize(
    "error",
    [
        _sqlite_error(sqlite3.SQLITE_IOERR, "disk I/O error"),  # passing: the ledger's writes retry it
        _sqlite_error(sqlite3.SQLITE_CONSTRAINT, "UNIQUE constraint failed"),
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        ValueError("a bug"),
    ],
    ids=["ioerr", "constraint", "integrity", "bug"],
)
def test_other_database_errors_are_left_as_they_are(error: Exception) -> None:
    assert unavailable(error) is None
    with pytest.raises(type(error)), translated():
        raise error


def test_the_outage_is_shown_like_a_bot_error_but_is_not_one() -> None:
    outage = LedgerUnavailable("ConnectionRefusedError: refused")
    # Inside the core a BotError means "refused, do not retry"; an outage is retried and journaled.
    assert not isinstance(outage, BotError) and isinstance(outage, USER_ERRORS)
    assert outage.to_dict()["code"] == "ledger_unavailable" and "refused" not in str(outage)


def test_session_ids_are_masked_in_the_sdks_log_lines() -> None:
    record = logging.LogRecord(
        "mcp.server.streamable_http_manager", logging.WARNING, "", 0,
        "Rejecting request for session %s: credential does not match", ("0123456789abcdef" * 2,), None,
    )  # fmt: skip
    assert SessionIdFilter().filter(record)
    assert record.getMessage() == "Rejecting request for session <session>: credential does not match"
