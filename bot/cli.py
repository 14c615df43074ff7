"""The ``bot`` command line: a thin face over the core (``bot generate``, ``models``, ``budget``, ``mcp``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from bot.cli_budget import add_parsers as add_budget_parsers
from bot.cli_budget import run_budget, run_calls
from bot.cli_tokens import add_parser as add_tokens_parser
from bot.cli_tokens import add_person_flags, person_from
from bot.cli_tokens import run as run_tokens
from bot.core.errors import (
    USER_ERRORS,
    LedgerUnavailable,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
)
from bot.core.money_text import usd

__all__ = ["main"]

#: Exit codes: 2 for anything the user can fix (bad input, config, model, key, budget), 1 when a
#: provider failed at run time.
EXIT_USAGE = 2
EXIT_PROVIDER = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bot", description="A budget-guarded LLM gateway for teams.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text from a prompt, within budget")
    gen.add_argument("prompt", help="the prompt ('-' reads it from standard input)")
    gen.add_argument("--model", "-m", help="model name (default: session.default_model)")
    gen.add_argument("--system", help="a system prompt")
    gen.add_argument("--max-tokens", type=int, help="most output tokens (default: session.max_tokens)")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--dry-run", action="store_true", help="estimate tokens and worst-case cost only")
    gen.add_argument("--json", action="store_true", help="print the result as JSON")
    add_person_flags(gen, "charge this person's per-user budgets instead of the CLI user 'local'")

    models = sub.add_parser("models", help="list the models you can use, with prices per million tokens")
    models.add_argument("--provider", help="only this provider")
    models.add_argument("--json", action="store_true")

    add_budget_parsers(sub)

    mcp = sub.add_parser("mcp", help="serve the MCP tools (stdio by default, or Streamable HTTP)")
    mcp.add_argument(
        "--http", action="store_true", help="serve Streamable HTTP at /mcp (personal or mcp.clients tokens)"
    )
    mcp.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: 127.0.0.1)")
    mcp.add_argument("--port", type=int, default=8765, help="HTTP port (default: 8765)")

    slack = sub.add_parser("slack", help="serve the Slack commands (HTTP at /slack/events, or Socket Mode)")
    slack.add_argument("--host", default="0.0.0.0", help="HTTP bind address (default: 0.0.0.0)")
    slack.add_argument("--port", type=int, default=3000, help="HTTP port (default: 3000)")

    report = sub.add_parser("report", help="the spend report of the last complete day or week")
    report.add_argument(
        "--period", choices=["day", "week", "today"], default="day",
        help="day (yesterday, the default), week (last week) or today (so far)",
    )  # fmt: skip
    report.add_argument(
        "--post", action="store_true", help="post it to jobs.report_channels (needs SLACK_BOT_TOKEN)"
    )
    report.add_argument("--json", action="store_true", help="print the figures as JSON")

    add_tokens_parser(sub)

    serve = sub.add_parser(
        "serve", help="serve everything on one port: Slack, MCP over HTTP, health, metrics"
    )
    serve.add_argument("--host", help="bind address (default: BOT_HOST, else 0.0.0.0)")
    serve.add_argument("--port", help="port (default: BOT_PORT, else 8080)")
    return parser


def _money(value: Decimal | None) -> str:
    return "-" if value is None else usd(value)


async def _generate(args: argparse.Namespace) -> int:
    from bot.app import build_core
    from bot.core.types import Principal

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    streamed = not args.json and not args.dry_run

    async def echo(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    user, team = person_from(args)
    async with build_core() as core:
        session = core.sessions.create(principal=Principal.cli(user or "local", team))
        async with session:
            result = await session.chat(
                prompt,
                model=args.model,
                system=args.system,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                dry_run=args.dry_run,
                on_text=echo if streamed else None,
            )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif result.dry_run:
        print(
            f"dry run: {result.usage.input_tokens} input tokens, worst-case cost {_money(result.cost_usd)} "
            f"with {result.model}; nothing was called or charged"
        )
    else:
        note = " (estimated: the provider reported no usage)" if result.cost_estimated else ""
        print(
            f"\n-- {result.model}: {result.usage.input_tokens} in / {result.usage.output_tokens} out tokens, "
            f"{_money(result.cost_usd)}{note}",
            file=sys.stderr,
        )
    return 0


async def _models(args: argparse.Namespace) -> int:
    from bot.app import build_core

    async with build_core(with_ledger=False) as core:
        rows = await core.list_models(args.provider)
    if args.json:
        print(json.dumps([{**info.to_dict(), "key_configured": has_key} for info, has_key in rows], indent=2))
        return 0
    print(f"{'model':40} {'provider':12} {'in/MTok':>9} {'out/MTok':>9} {'cached':>8} {'context':>8}  key")
    for info, has_key in rows:
        print(
            f"{info.name:40} {info.provider:12} {_money(info.input_per_mtok):>9} {_money(info.output_per_mtok):>9} "
            f"{_money(info.cache_read_per_mtok):>8} {info.context_window or '-':>8}  {'yes' if has_key else 'no'}"
        )
    return 0


async def _mcp(args: argparse.Namespace) -> int:
    from bot.app import build_core
    from tools.mcp_server import run_http, run_stdio

    async with build_core() as core:
        if args.http:
            await run_http(core, host=args.host, port=args.port)
        else:
            await run_stdio(core)
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from bot.jobs import JobRunner
    from bot.server import run

    # The scheduler (alert delivery, forecasts, reports) runs inside the one server process.
    return await run(host=args.host, port=args.port, services=[JobRunner])


async def _report(args: argparse.Namespace) -> int:
    from bot.jobs.command import run_report

    return await run_report(args.period, post=args.post, as_json=args.json, out=sys.stdout)


async def _slack(args: argparse.Namespace) -> int:
    from bot.app import build_core
    from bot.settings import shutdown_grace_from_env, slack_body_limit_from_env
    from bot.slack.app import run_slack_http, run_slack_socket
    from bot.slack.settings import SlackSettings

    settings = SlackSettings.from_env()  # fails with a clear message before anything starts
    grace = shutdown_grace_from_env()  # the same BOT_SHUTDOWN_GRACE as `bot serve`
    body_limit = slack_body_limit_from_env()  # and the same BOT_MAX_SLACK_BODY_BYTES
    async with build_core() as core:
        if settings.app_token:
            await run_slack_socket(core, settings, grace=grace)
        else:
            await run_slack_http(core, settings, args.host, args.port, grace=grace, body_limit=body_limit)
    return 0


#: Commands that read or write the ledger: each says on stderr which one (one ledger per deployment).
_LEDGER_COMMANDS = frozenset({"generate", "budget", "calls", "report", "tokens"})


def _say_ledger() -> None:
    from bot.app import load_config
    from bot.settings import ledger_description

    print(f"ledger: {ledger_description(load_config())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bot`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    level = os.environ.get("BOT_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "WARNING",
        format="%(levelname)s %(name)s: %(message)s",
    )
    handlers: dict[str, Any] = {
        "generate": _generate,
        "models": _models,
        "budget": run_budget,
        "calls": run_calls,
        "mcp": _mcp,
        "slack": _slack,
        "report": _report,
        "serve": _serve,
        "tokens": run_tokens,
    }
    try:
        code = int(asyncio.run(handlers[args.command](args)))
        if args.command in _LEDGER_COMMANDS and code == 0:
            _say_ledger()  # after the answer: an error stays one line
        return code
    except USER_ERRORS as err:
        print(_masked(f"error: {err}"), file=sys.stderr)
        # A passing outage (provider or ledger) exits 1: nothing the user typed was wrong.
        transient = (ProviderConnectionError, RateLimitError, LedgerUnavailable)
        runtime = type(err) is ProviderError or isinstance(err, transient)
        return EXIT_PROVIDER if runtime else EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `bot models | head` closed our stdout: not an error
        return 0
    except Exception as exc:  # the promise is one clear line, never a traceback
        logging.getLogger(__name__).debug("unexpected failure", exc_info=True)
        print(
            _masked(f"error: unexpected {type(exc).__name__}: {exc} (re-run with BOT_LOG_LEVEL=DEBUG)"),
            file=sys.stderr,
        )
        return EXIT_PROVIDER


def _masked(line: str) -> str:
    """``line`` with secrets masked: key shapes, and the values of the secret environment variables.

    A ``ProviderError`` is masked already (bot.core.redaction); this also covers any other text.
    """
    from bot.core.redaction import redact
    from bot.logging_setup import secret_values

    return redact(line, secret_values(os.environ))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
