"""The MCP tools: ``generate``, ``budget_status`` and ``list_models`` over the core's ``Gateway``.

The tools never take the caller's identity from their arguments: a server middleware puts the
caller's ``Principal`` (the stdio client; over HTTP, the config client or the person behind the
personal token the bearer token named) in a context variable for the duration of each request,
and every tool charges that principal alone.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from bot.core.config import McpConfig
from bot.core.errors import USER_ERRORS
from bot.core.face_words import in_words_of
from bot.core.gateway import Gateway, tightest
from bot.core.ledger import BudgetStatus
from bot.core.types import ChatResult, Principal
from tools.mcp_errors import plain_argument_errors

__all__ = [
    "CLIENT_SCOPE_KEY",
    "PRINCIPAL_SCOPE_KEY",
    "BudgetEntry",
    "BudgetStatusResult",
    "GenerateResult",
    "ModelEntry",
    "ModelListResult",
    "TokenUsage",
    "build_mcp_server",
    "current_client",
    "current_principal",
]

#: ASGI scope key under which the HTTP auth middleware stores the authenticated client name.
CLIENT_SCOPE_KEY = "bot.mcp_client"
#: ASGI scope key under which it stores the ``Principal`` the request is charged to (for a
#: personal token: the person plus the token's name as the client).
PRINCIPAL_SCOPE_KEY = "bot.mcp_principal"

#: Seconds between two progress notifications: enough to show life, few enough not to flood.
PROGRESS_INTERVAL = 0.25

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("bot_mcp_caller", default=None)

INSTRUCTIONS = (
    "A budget-guarded LLM gateway. `generate` runs a prompt on a model (OpenAI, Anthropic or a "
    "configured compatible server) and charges your budgets; check `budget_status` before long "
    "calls and `list_models` for names and prices. Refused calls cost nothing."
)


def current_principal() -> Principal | None:
    """Whom the request being served is charged to, or None outside an authenticated request."""
    return _caller.get()


def current_client() -> str | None:
    """The client name of the request being served, or None outside an authenticated request."""
    caller = _caller.get()
    return None if caller is None else caller.client_id


# -- structured results ------------------------------------------------------------------------


class TokenUsage(BaseModel):
    """Tokens of one call, as the provider reported them."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int


class GenerateResult(BaseModel):
    """The outcome of ``generate``: the text itself plus what it cost and what is left."""

    text: str = Field(description="The generated text (empty for a dry run).")
    model: str
    provider: str
    usage: TokenUsage
    cost_usd: str = Field(description="Exact cost in USD as a decimal string (worst case for a dry run).")
    cost_estimated: bool = Field(
        description="True when the provider reported no usage and the cost is our estimate."
    )
    dry_run: bool
    finish_reason: str | None
    request_id: str
    remaining_budget_usd: str | None = Field(
        description="Smallest amount left across your budgets after this call; null when no budget applies."
    )
    tightest_budget: str | None = Field(description="The budget that has the least left, if any.")


class BudgetEntry(BaseModel):
    """Where one budget stands for the caller in its current period (money as exact decimal strings)."""

    name: str
    scope: str
    scope_key: str
    period: str
    limit_usd: str
    spent_usd: str
    reserved_usd: str = Field(description="Held for calls in flight.")
    remaining_usd: str
    fraction_used: float
    resets_at: str | None = Field(description="ISO 8601 time the period ends; null for `total` budgets.")
    projected_spend_usd: str | None
    config_limit_usd: str | None = Field(description="The config file's limit (limit_usd without override).")
    limit_source: str | None = Field(description="Who set limit_usd, when, via which face (null: config).")


class BudgetStatusResult(BaseModel):
    """Every budget that applies to the caller."""

    client: str = Field(description="The client name your token (or the stdio connection) maps to.")
    budgets: list[BudgetEntry]
    remaining_budget_usd: str | None = Field(description="Smallest amount left; null when no budget applies.")


class ModelEntry(BaseModel):
    """One model you can call, with its prices per million tokens (exact decimal strings)."""

    name: str
    provider: str
    input_per_mtok_usd: str | None
    output_per_mtok_usd: str | None
    cached_input_per_mtok_usd: str | None
    context_window: int | None
    max_output_tokens: int | None
    key_configured: bool = Field(description="False means calls to this model will fail until a key is set.")


class ModelListResult(BaseModel):
    """The models ``generate`` accepts."""

    models: list[ModelEntry]


# -- helpers -------------------------------------------------------------------------------------


def _money(value: Any) -> str | None:
    return None if value is None else str(value)


def _budget_entry(status: BudgetStatus) -> BudgetEntry:
    return BudgetEntry(
        name=status.name,
        scope=status.scope,
        scope_key=status.scope_key,
        period=status.period,
        limit_usd=str(status.limit),
        spent_usd=str(status.spent),
        reserved_usd=str(status.reserved),
        remaining_usd=str(status.remaining),
        fraction_used=status.fraction_used,
        resets_at=None if status.resets_at is None else status.resets_at.isoformat(),
        projected_spend_usd=_money(status.projected_spend),
        config_limit_usd=_money(status.config_limit),
        limit_source=None if status.override is None else status.override.source,
    )


class _Budgets:
    """The caller's budgets as the tools answer them, and the one with the least left."""

    def __init__(self, statuses: list[BudgetStatus]) -> None:
        self.entries = [_budget_entry(s) for s in statuses]
        self.tightest = tightest(statuses)

    @property
    def remaining_usd(self) -> str | None:
        """The tightest budget's money left, or None when no budget applies."""
        return None if self.tightest is None else str(self.tightest.remaining)


def _principal() -> Principal:
    principal = current_principal()
    if principal is None:  # fail closed: never guess who is paying
        raise ToolError("This request is not authenticated. Send 'Authorization: Bearer <token>'.")
    return principal


async def _budgets(gateway: Gateway, principal: Principal) -> _Budgets:
    return _Budgets(await gateway.budget_status(principal))


def _wants_progress(ctx: Context[Any, Any]) -> bool:
    try:
        meta = ctx.request_context.meta
    except ValueError:  # called outside a request (direct call in tests)
        return False
    return bool(meta) and meta.get("progress_token") is not None  # type: ignore[union-attr]


def _progress_callback(
    ctx: Context[Any, Any], clock: Callable[[], float] = time.monotonic
) -> Callable[[str], Awaitable[None]]:
    """An ``on_text`` that reports characters received, at most every ``PROGRESS_INTERVAL``."""
    received = 0
    last = 0.0

    async def on_text(text: str) -> None:
        nonlocal received, last
        received += len(text)
        now = clock()
        if now - last >= PROGRESS_INTERVAL:
            last = now
            await ctx.report_progress(received, None, f"{received} characters generated")

    return on_text


def _generate_result(result: ChatResult, budgets: _Budgets) -> GenerateResult:
    return GenerateResult(
        text=result.text,
        model=result.model,
        provider=result.provider,
        usage=TokenUsage(**result.usage.to_dict()),
        cost_usd=str(result.cost_usd),
        cost_estimated=result.cost_estimated,
        dry_run=result.dry_run,
        finish_reason=result.finish_reason,
        request_id=result.request_id,
        remaining_budget_usd=budgets.remaining_usd,
        tightest_budget=budgets.tightest.name if budgets.tightest else None,
    )


# -- the server ----------------------------------------------------------------------------------

GENERATE_DESCRIPTION = """Generate text with an LLM, charged to your budgets.

Before calling the model the gateway reserves the worst-case cost (every prompt token plus
max_tokens of output); if any budget could be exceeded the call is refused and costs nothing.
The result holds the generated text, the exact cost in USD, token usage and what is left of your
tightest budget. Use dry_run=true to learn the token count and worst-case cost without calling.
Leave model empty for the configured default; call list_models for valid names and prices."""

BUDGET_DESCRIPTION = """Show every budget that applies to you: limit, spent, reserved (calls in
flight), remaining and when it resets, all in USD as exact decimal strings. Read-only and free."""

MODELS_DESCRIPTION = """List the models generate accepts, with prices in USD per million input,
output and cached-input tokens, the context window, and whether the provider has an API key
configured. Read-only and free."""

Prompt = Annotated[str, Field(min_length=1, max_length=400_000, description="The user prompt.")]
ModelName = Annotated[
    str | None, Field(min_length=1, max_length=200, description="Model name; omit for the default.")
]
System = Annotated[str | None, Field(max_length=100_000, description="Optional system prompt.")]
MaxTokens = Annotated[
    int | None, Field(ge=1, le=200_000, description="Most output tokens; omit for the configured default.")
]
Temperature = Annotated[float | None, Field(ge=0, le=2, description="Sampling temperature, 0 to 2.")]
DryRun = Annotated[bool, Field(description="Only count tokens and price the worst case; call nothing.")]
ProviderName = Annotated[
    str | None, Field(min_length=1, max_length=100, description="Only models of this provider.")
]


def build_mcp_server(gateway: Gateway, config: McpConfig, *, http: bool = False) -> MCPServer:
    """The MCP server with the three tools and the ``budget://me`` resource.

    With ``http`` False (stdio) every request is ``config.stdio_client``; with ``http`` True the
    client is the one the auth middleware of ``tools.mcp_server`` stored in the ASGI scope, and a
    request without one is refused.
    """
    server: MCPServer = MCPServer(
        "llm-gateway", title="Budget-guarded LLM gateway", instructions=INSTRUCTIONS
    )

    async def identify(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        # Middleware wraps the handler in the same task, so the context variable is seen by the
        # tool and the resource alike (a static resource cannot receive a Context).
        caller: Principal | None
        if http:
            request = ctx.request
            scope = getattr(request, "scope", None) or {}
            caller = scope.get(PRINCIPAL_SCOPE_KEY)
        else:
            caller = Principal(surface="mcp", client_id=config.stdio_client)
        token = _caller.set(caller)
        try:
            return await call_next(ctx)
        finally:
            _caller.reset(token)

    server.middleware.append(identify)
    server.middleware.append(plain_argument_errors(server))  # one sentence per bad argument

    @server.tool(
        title="Generate text (charged to your budget)",
        description=GENERATE_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
        ),
    )
    async def generate(
        prompt: Prompt,
        ctx: Context[Any, Any],
        model: ModelName = None,
        system: System = None,
        max_tokens: MaxTokens = None,
        temperature: Temperature = None,
        dry_run: DryRun = False,
    ) -> GenerateResult:
        principal = _principal()
        on_text = _progress_callback(ctx) if _wants_progress(ctx) and not dry_run else None
        try:
            result = await gateway.generate(
                principal,
                prompt,
                model=model,
                system=system,
                max_tokens=max_tokens,
                temperature=temperature,
                dry_run=dry_run,
                on_text=on_text,
            )
            budgets = await _budgets(gateway, principal)
        except USER_ERRORS as err:
            raise ToolError(in_words_of(err, "mcp")) from err
        return _generate_result(result, budgets)

    @server.tool(
        title="Budget status",
        description=BUDGET_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def budget_status() -> BudgetStatusResult:
        principal = _principal()
        try:
            budgets = await _budgets(gateway, principal)
        except USER_ERRORS as err:
            raise ToolError(in_words_of(err, "mcp")) from err
        return BudgetStatusResult(
            client=principal.client_id or "",
            budgets=budgets.entries,
            remaining_budget_usd=budgets.remaining_usd,
        )

    @server.tool(
        title="List models and prices",
        description=MODELS_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def list_models(provider: ProviderName = None) -> ModelListResult:
        _principal()  # the price list is not secret, but HTTP callers must still authenticate
        try:
            rows = await gateway.list_models(provider)
        except USER_ERRORS as err:
            raise ToolError(in_words_of(err, "mcp")) from err
        return ModelListResult(
            models=[
                ModelEntry(
                    name=info.name,
                    provider=info.provider,
                    input_per_mtok_usd=_money(info.input_per_mtok),
                    output_per_mtok_usd=_money(info.output_per_mtok),
                    cached_input_per_mtok_usd=_money(info.cache_read_per_mtok),
                    context_window=info.context_window,
                    max_output_tokens=info.max_output_tokens,
                    key_configured=has_key,
                )
                for info, has_key in rows
            ]
        )

    @server.resource(
        "budget://me",
        name="my-budgets",
        title="My budgets",
        description="Every budget that applies to you, as JSON (same as the budget_status tool).",
        mime_type="application/json",
    )
    async def my_budgets() -> str:
        principal = current_principal()
        if principal is None:
            raise ResourceError("This request is not authenticated. Send 'Authorization: Bearer <token>'.")
        try:
            budgets = await _budgets(gateway, principal)
        except USER_ERRORS as err:
            raise ResourceError(in_words_of(err, "mcp")) from err
        result = BudgetStatusResult(
            client=principal.client_id or "",
            budgets=budgets.entries,
            remaining_budget_usd=budgets.remaining_usd,
        )
        return result.model_dump_json(indent=2)

    return server
