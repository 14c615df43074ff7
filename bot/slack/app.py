"""Build the Bolt app and serve it: ``POST /slack/events`` over HTTP, or Socket Mode.

Every request's signature (signing secret, 5-minute window) is checked on the raw body before
Bolt parses anything (``bot.slack.verify``), so a forged, stale or malformed request gets 400 or
401, costs nothing and logs no traceback; Bolt then verifies it again before any listener runs.
The bot's identity (``auth.test``) is fetched once per token (``bot.slack.identity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import uvicorn
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.body_limit import BodyLimit
from bot.core.gateway import Gateway
from bot.logging_setup import REFUSAL_SCOPE_KEY
from bot.settings import DEFAULT_GRACE, DEFAULT_SLACK_BODY_LIMIT
from bot.slack.commands import SlackCommands
from bot.slack.events import SlackEvents
from bot.slack.identity import BotIdentity
from bot.slack.settings import SlackSettings
from bot.slack.tokens import COMMAND as TOKEN_COMMAND
from bot.slack.tokens import McpTokenCommand
from bot.slack.verify import SignatureCheck, payload_refusal

__all__ = ["build_bolt_app", "run_slack_http", "run_slack_socket", "slack_http_app", "web_client"]

log = logging.getLogger(__name__)


def web_client(settings: SlackSettings, *, with_token: bool = True) -> AsyncWebClient:
    """The Web API client: the configured base URL, and 429s retried after ``Retry-After``.

    ``with_token=False`` builds the Bolt app's own client, whose requests get the token from
    ``BotIdentity`` instead.
    """
    return AsyncWebClient(
        token=settings.bot_token if with_token else None,
        base_url=settings.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
    )


def build_bolt_app(gateway: Gateway, settings: SlackSettings) -> tuple[AsyncApp, SlackCommands]:
    """The Bolt app with the slash commands and the events (mentions, DMs) registered, and the
    handlers object behind them (``commands.events``: the event handlers)."""
    client = web_client(settings)
    app = AsyncApp(
        client=web_client(settings, with_token=False),
        authorize=BotIdentity(client),
        signing_secret=settings.signing_secret,
    )
    commands = SlackCommands(gateway, settings, client)
    app.command("/generate")(commands.generate)
    app.command("/budget")(commands.budget)
    app.command("/models")(commands.models)
    app.command(TOKEN_COMMAND)(McpTokenCommand(commands))
    # Mentions and DMs; their answers run as ``commands``' background tasks, so shutdown waits
    # for them too.
    events = SlackEvents(commands)
    app.event("app_mention")(events.app_mention)
    app.event("message")(events.message)
    commands.events = events
    return app, commands


async def _finish_generations(commands: SlackCommands, grace: float) -> None:
    """Wait up to ``grace`` seconds for generations in flight, so answers being posted are not cut off."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await commands.wait_idle()


def slack_http_app(gateway: Gateway, settings: SlackSettings, *, grace: float = DEFAULT_GRACE) -> Starlette:
    """A Starlette app serving ``POST /slack/events``; ``app.state.slack_commands`` holds the handlers.

    On shutdown its lifespan gives generations in flight up to ``grace`` seconds
    (``BOT_SHUTDOWN_GRACE``); inside ``bot serve`` the server's own drain does that instead.
    """
    bolt, commands = build_bolt_app(gateway, settings)
    handler = AsyncSlackRequestHandler(bolt)
    signature = SignatureCheck(settings.signing_secret)

    async def events(request: Request) -> Response:
        body = await request.body()  # at most the route's body limit (bot.body_limit)
        refusal = signature.refusal(request.headers, body) or payload_refusal(
            body, request.headers.get("content-type")
        )
        if refusal is not None:
            request.scope[REFUSAL_SCOPE_KEY] = refusal.message
            return refusal.response()
        return await handler.handle(request)  # Starlette keeps the body: it is not read twice

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await _finish_generations(commands, grace)

    app = Starlette(routes=[Route("/slack/events", events, methods=["POST"])], lifespan=lifespan)
    app.state.slack_commands = commands
    return app


async def run_slack_http(
    gateway: Gateway,
    settings: SlackSettings,
    host: str,
    port: int,
    *,
    grace: float = DEFAULT_GRACE,
    body_limit: int = DEFAULT_SLACK_BODY_LIMIT,
) -> None:
    """Serve the Slack endpoint with uvicorn until stopped (the integrator's ``bot slack``).

    Bodies above ``body_limit`` bytes are answered 413 unread, as in ``bot serve``.
    """
    app = BodyLimit(slack_http_app(gateway, settings, grace=grace), {"/slack/events": body_limit})
    config = uvicorn.Config(app, host=host, port=port, lifespan="on")
    await uvicorn.Server(config).serve()


async def run_slack_socket(
    gateway: Gateway, settings: SlackSettings, *, grace: float = DEFAULT_GRACE
) -> None:
    """Connect over Socket Mode with ``SLACK_APP_TOKEN`` (no public URL needed) until stopped.

    Once stopped, generations in flight get up to ``grace`` seconds to post their answers.
    """
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    if not settings.app_token:
        from bot.core.errors import ConfigurationError

        raise ConfigurationError(
            "SLACK_APP_TOKEN not set", source="environment", hint="Create an app-level token (xapp-…)."
        )
    bolt, commands = build_bolt_app(gateway, settings)
    handler = AsyncSocketModeHandler(bolt, settings.app_token)
    try:
        await handler.start_async()  # type: ignore[no-untyped-call]
    finally:
        # Stopping (cancellation) must close the WebSocket, its aiohttp session and the client's
        # receive/monitor/process tasks, or they linger and keep reconnecting. Then, as over HTTP,
        # let generations in flight post their answers.
        await handler.close_async()  # type: ignore[no-untyped-call]
        await _finish_generations(commands, grace)
