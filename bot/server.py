"""``bot serve``: one process, one port, every face, built from one composition root.

Routes: ``/slack/events`` (when ``SLACK_BOT_TOKEN`` and ``SLACK_SIGNING_SECRET`` are set), ``/mcp``
(always: personal tokens and ``mcp.clients``' tokens; 401 with how to get one otherwise), ``/healthz``, ``/readyz`` (``bot/readiness.py``, which also warms
and watches the providers in the background) and ``/metrics``. Shutdown on SIGTERM
or SIGINT drains: readiness and new requests answer 503 at once, calls in flight (HTTP requests
and Slack generations running after their ack) get up to the grace period to finish and settle
in the ledger, then services stop and the gateway closes. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.body_limit import BodyLimit
from bot.core.config import AppConfig
from bot.core.errors import BotError
from bot.core.gateway import Gateway
from bot.front_door import front_door
from bot.heap import freeze_when_ready
from bot.logging_setup import REFUSAL_SCOPE_KEY, CallLogger, configure_logging, request_id_var, secret_values
from bot.metrics import CONTENT_TYPE, Metrics
from bot.metrics_auth import MetricsAuth
from bot.readiness import Readiness
from bot.settings import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_GRACE,
    DEFAULT_SLACK_BODY_LIMIT,
    ServerSettings,
    apply_data_dir,
    bind_socket,
    config_secrets,
    slack_settings_from_env,
    startup_summary,
)
from bot.timeouts import BodyTimeout, connection_timeouts

__all__ = ["ServerState", "Service", "ServiceFactory", "build_app", "run"]

log = logging.getLogger("bot.server")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_ROUTES = ("/healthz", "/readyz", "/metrics", "/mcp", "/slack/events")
_QUIET = ("/healthz", "/readyz", "/metrics")


class Service(Protocol):
    """Something that runs beside the server (the report scheduler): started and stopped with it."""

    async def start(self) -> None:
        """Start (called in the app's lifespan, after the faces)."""

    async def stop(self) -> None:
        """Stop (called on shutdown, before the gateway closes)."""


#: Builds a service once the core exists: ``factory(gateway, config, slack_client_or_None)``.
ServiceFactory = Callable[[Gateway, AppConfig, Any], Service]


@dataclass
class ServerState:
    """What the routes and the drain share: readiness, draining flag, work in flight."""

    metrics: Metrics
    readiness: Readiness
    grace: float = DEFAULT_GRACE
    draining: bool = False
    in_flight: int = 0
    started: bool = False
    #: The one start-up line, logged once every face and service has started.
    announce: str = ""
    #: Freeze the start-up heap out of garbage collection once the SDKs are loaded (``bot serve``
    #: only: an app started inside a test process leaves that process's collector alone).
    freeze_heap: bool = False
    t0: float = field(default_factory=time.monotonic)
    idle_waiters: list[Callable[[], Any]] = field(default_factory=list)
    #: Called when the drain starts: request bodies still arriving are cut off (``bot.timeouts``).
    on_drain: list[Callable[[], None]] = field(default_factory=list)
    metrics_auth: MetricsAuth = field(default_factory=lambda: MetricsAuth(None))

    async def drain(self) -> None:
        """Stop taking work, then wait (up to ``grace``) for work in flight to finish."""
        self.draining = True
        self.metrics.draining.set(1)
        for cut in self.on_drain:
            cut()
        log.info(
            "shutting down: refusing new work, waiting for calls in flight",
            extra={"in_flight": self.in_flight},
        )
        try:
            async with asyncio.timeout(self.grace):
                # Two quiet rounds in a row: Bolt runs a listener after its ack was answered, so a
                # Slack generation can be spawned just after its HTTP request left the count.
                quiet = 0
                while quiet < 2:
                    for wait_idle in self.idle_waiters:
                        await wait_idle()
                    quiet = quiet + 1 if self.in_flight == 0 else 0
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("grace period over with work still in flight", extra={"in_flight": self.in_flight})


class _Guard:
    """Outer ASGI layer: request id, 503 while draining, in-flight count, metrics, one log line."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = path.rstrip("/") if path.rstrip("/") in _ROUTES else "other"
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        # Only requests that carry work count as in flight: an MCP GET is a long-lived SSE stream
        # that would hold every shutdown for the whole grace period.
        work = route not in _QUIET and scope["method"] not in ("GET", "HEAD", "OPTIONS")
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            if self.state.draining and route not in _QUIET:
                await JSONResponse(
                    {"error": "shutting down", "hint": "This replica is stopping; retry on another."},
                    status_code=503,
                    headers={"Retry-After": "1", "Connection": "close"},
                )(scope, receive, send_with_id)
                return
            if work:
                self.state.in_flight += 1
                self.state.metrics.in_flight.inc()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if work:
                    self.state.in_flight -= 1
                    self.state.metrics.in_flight.dec()
        finally:
            seconds = time.perf_counter() - started
            self.state.metrics.observe_http(route, scope["method"], status, seconds)
            level = logging.DEBUG if route in _QUIET else logging.INFO
            extra: dict[str, Any] = {"status": status, "duration_ms": round(seconds * 1000, 1)}
            if REFUSAL_SCOPE_KEY in scope:  # why a layer refused it (body too large, bad signature…)
                extra["refused"] = scope[REFUSAL_SCOPE_KEY]
            log.log(level, "%s %s %s", scope["method"], path, status, extra=extra)
            request_id_var.reset(token)


def build_app(
    gateway: Gateway,
    config: AppConfig,
    *,
    slack_settings: Any = None,
    services: Sequence[Service] = (),
    grace: float = DEFAULT_GRACE,
    slack_body_limit: int = DEFAULT_SLACK_BODY_LIMIT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    metrics_token: str | None = None,
) -> tuple[ASGIApp, ServerState]:
    """The whole server as one ASGI app, and the state its drain and routes share.

    ``slack_settings`` (a ``SlackSettings``) enables ``/slack/events``, plus Socket Mode when it has
    an app token; ``/mcp`` is always served (bearer tokens: ``config.mcp.clients`` and the
    ledger's personal tokens). ``services`` start after the faces and
    stop before the gateway closes. Request bodies are limited before any route sees them
    (``bot.body_limit``): ``slack_body_limit`` bytes for Slack, the MCP SDK's limit for ``/mcp``,
    next to nothing elsewhere; a body must arrive within ``body_timeout`` seconds
    (``bot.timeouts``). ``metrics_token`` puts ``/metrics`` behind a bearer token.
    """
    metrics = Metrics(gateway.status_all)
    gateway.add_observer(metrics)
    gateway.add_observer(CallLogger())
    state = ServerState(metrics, Readiness(gateway, metrics), grace=grace)
    state.metrics_auth = MetricsAuth(metrics_token)
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz, methods=["GET", "HEAD"]),
        Route("/readyz", _readyz, methods=["GET", "HEAD"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/", front_door(gateway, config, slack_settings), methods=["GET", "HEAD"]),
    ]
    lifespans: list[Callable[[], contextlib.AbstractAsyncContextManager[Any]]] = []
    body_limits: dict[str, int] = {}
    if slack_settings is not None:
        from bot.slack.app import slack_http_app

        slack_app = slack_http_app(gateway, slack_settings, grace=grace)
        routes += slack_app.routes
        body_limits["/slack/events"] = slack_body_limit
        state.idle_waiters.append(slack_app.state.slack_commands.wait_idle)
        if slack_settings.app_token:
            lifespans.append(lambda: _socket_mode(gateway, slack_settings, state))
    # Always mounted, even with no client configured: a person's personal token needs no config,
    # and a caller without a token is told how to get one (401) instead of a bare 404.
    from tools.mcp_server import MCP_BODY_LIMIT, mcp_http_app

    mcp_app = mcp_http_app(gateway, config.mcp)
    routes += mcp_app.routes
    body_limits["/mcp"] = MCP_BODY_LIMIT
    lifespans.append(mcp_app.state.mcp_sessions.run)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for enter in lifespans:
                await stack.enter_async_context(enter())
            for service in services:
                await service.start()
                stack.push_async_callback(service.stop)  # stopped in reverse order
            state.started = True
            # Loads the providers' SDKs and checks them in the background, so neither readiness
            # nor the first call waits for that; stopped first on the way out.
            state.readiness.providers.start()
            stack.push_async_callback(state.readiness.providers.stop)
            if state.freeze_heap:  # then the start-up heap leaves garbage collection (bot/heap.py)
                freeze = asyncio.get_running_loop().create_task(
                    freeze_when_ready(state.readiness.providers.warmed)
                )
                stack.callback(freeze.cancel)
            if state.announce:
                log.info(state.announce, extra={"startup_ms": round((time.monotonic() - state.t0) * 1000)})
            await gateway.log_override_drift()  # an override never wins over the config silently
            yield
            log.info("stopping services and closing the faces")

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = state
    timed = BodyTimeout(BodyLimit(app, body_limits), body_timeout, metrics.client_timed_out)
    state.on_drain.append(timed.cut_all)
    return _Guard(timed, state), state


@contextlib.asynccontextmanager
async def _socket_mode(gateway: Gateway, settings: Any, state: ServerState) -> AsyncIterator[None]:
    """Run Slack Socket Mode beside the HTTP endpoint; a failure to connect is logged, not fatal."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    from bot.slack.app import build_bolt_app

    bolt, commands = build_bolt_app(gateway, settings)
    state.idle_waiters.append(commands.wait_idle)
    handler = AsyncSocketModeHandler(bolt, settings.app_token)
    try:
        await handler.connect_async()  # type: ignore[no-untyped-call]
    except Exception as exc:
        log.error("Slack Socket Mode could not connect: %s", exc)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await handler.close_async()  # type: ignore[no-untyped-call]


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readyz(request: Request) -> Response:
    state = _state(request)
    ready, body = await state.readiness.check(started=state.started, draining=state.draining)
    return JSONResponse(body, status_code=200 if ready else 503)


async def _metrics(request: Request) -> Response:
    state = _state(request)
    refusal = state.metrics_auth.refusal(request)
    return refusal or Response(await state.metrics.render(), media_type=CONTENT_TYPE)


class _Server(uvicorn.Server):
    """uvicorn, but the first signal drains instead of stopping at once.

    uvicorn re-raises the signals it captured once ``serve()`` returns, which would turn a clean
    shutdown into death by SIGTERM (exit code -15); this handler does not record them.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until drained (remembers the loop the signal handler must wake)."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain then exit; second: exit now."""
        if self._drain_task is not None or self._loop is None:
            self.should_exit = self.force_exit = True
            return
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        async def drain_then_exit() -> None:
            await self.state.drain()
            self.should_exit = True

        self._drain_task = asyncio.get_running_loop().create_task(drain_then_exit())


async def run(
    *, host: str | None = None, port: str | int | None = None, services: Sequence[ServiceFactory] = ()
) -> int:
    """Start ``bot serve``, serve until SIGTERM/SIGINT, drain, and return the exit code.

    Every invalid setting is reported as one line on stderr with exit code 2, before anything
    starts. ``services`` are factories called as ``factory(gateway, config, slack_client)``.
    """
    import os

    from bot.app import load_config, open_core

    t0 = time.monotonic()
    redact = configure_logging("INFO", secrets=secret_values(os.environ)).text
    try:
        settings = ServerSettings.from_env(host=host, port=port)
        config = load_config()
        redact = configure_logging(
            config.logging.level,
            json_format=config.logging.json_format,
            secrets=secret_values(os.environ, config_secrets(config)),
        ).text
        settings.ensure_data_dir()
        config = apply_data_dir(config, settings.data_dir, os.environ)
        from bot.core.ledger.database import normalise_url

        normalise_url(config.database.url)
        slack = slack_settings_from_env()
        sock = bind_socket(settings.host, settings.port)
    except BotError as err:
        print(redact(f"error: {err}"), file=sys.stderr)
        return 2
    try:
        try:
            gateway = await open_core(config)
        except BotError as err:
            print(redact(f"error: {err}"), file=sys.stderr)
            return 2
        except Exception as exc:
            print(redact(f"error: cannot open the ledger at {config.database.url}: {exc}"), file=sys.stderr)
            return 2
        try:
            from bot.slack.app import web_client

            client = web_client(slack) if slack is not None else None
            built = [factory(gateway, config, client) for factory in services]
            app, state = build_app(
                gateway,
                config,
                slack_settings=slack,
                services=built,
                grace=settings.shutdown_grace,
                slack_body_limit=settings.max_slack_body,
                body_timeout=settings.body_timeout,
                metrics_token=settings.metrics_token,
            )
            for service in built:  # services that deliver alerts report each attempt to /metrics
                observe = getattr(service, "observe_deliveries", None)
                if observe is not None:
                    observe(state.metrics.alert_delivered, state.metrics.alert_gave_up)
            timeouts = connection_timeouts(
                settings.header_timeout, settings.idle_timeout, state.metrics.client_timed_out
            )
            uv_config = uvicorn.Config(
                app, lifespan="on", log_config=None, access_log=False, timeout_graceful_shutdown=5, **timeouts
            )
            server = _Server(uv_config, state)
            state.t0 = t0
            state.announce = startup_summary(settings, config, gateway, slack)
            state.freeze_heap = True
            await server.serve(sockets=[sock])
            if not state.started:
                print("error: the server failed to start (see the log above)", file=sys.stderr)
                return 1
        finally:
            await gateway.close()  # flushes and closes the ledger after every call settled
        log.info("stopped cleanly")
        return 0
    finally:
        sock.close()
