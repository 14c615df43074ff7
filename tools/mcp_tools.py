"""The MCP server: its tools and resources over the core's ``Gateway``, for the current caller.

``generate`` is in ``tools.mcp_generate``, ``my_usage`` in ``tools.mcp_usage``, the results in
``tools.mcp_results``; here are the cheap read-only ones and the server that holds them all. The
tools never take the caller's identity from their arguments: a server middleware makes the
request's ``Principal`` current (``tools.mcp_identity``), and every tool charges it alone.
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from bot.core.config import McpConfig
from bot.core.errors import USER_ERRORS
from bot.core.face_words import in_words_of
from bot.core.gateway import Gateway
from bot.core.types import Principal
from tools.mcp_answers import ANSWER_URI_PREFIX, AnswerStore
from tools.mcp_errors import plain_argument_errors
from tools.mcp_generate import register_generate
from tools.mcp_identity import (
    CLIENT_SCOPE_KEY,
    NOT_AUTHENTICATED,
    PRINCIPAL_SCOPE_KEY,
    acting_as,
    current_client,
    current_principal,
    require_principal,
)
from tools.mcp_results import (
    BudgetEntry,
    Budgets,
    BudgetStatusResult,
    GenerateResult,
    ModelEntry,
    ModelListResult,
    TokenUsage,
    money,
)
from tools.mcp_usage import register_usage

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

INSTRUCTIONS = (
    "A budget-guarded LLM gateway. `generate` runs a prompt or a conversation on a model (OpenAI, "
    "Anthropic or a configured compatible server) and charges your budgets; check `budget_status` "
    "before long calls, `list_models` for names and prices, and `my_usage` for what you spent. "
    "Refused or declined calls cost nothing. A long answer comes with a link to read all of it."
)

BUDGET_DESCRIPTION = """Show every budget that applies to you: limit, spent, reserved (calls in
flight), remaining and when it resets, all in USD as exact decimal strings. Read-only and free."""

MODELS_DESCRIPTION = """List the models generate accepts, with prices in USD per million input,
output and cached-input tokens, the context window, and whether the provider has an API key
configured. Read-only and free."""

ProviderName = Annotated[
    str | None, Field(min_length=1, max_length=100, description="Only models of this provider.")
]


def build_mcp_server(gateway: Gateway, config: McpConfig, *, http: bool = False) -> MCPServer:
    """The MCP server: ``generate``, ``budget_status``, ``list_models`` and ``my_usage``, the
    ``budget://me`` and ``usage://me`` resources and the long answers (``gateway://answers/{id}``).

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
        with acting_as(caller):
            return await call_next(ctx)

    server.middleware.append(identify)
    server.middleware.append(plain_argument_errors(server))  # one sentence per bad argument
    answers = AnswerStore(ttl_seconds=config.answer_ttl_seconds, max_chars=config.answer_store_chars)
    register_generate(server, gateway, config, answers)
    register_usage(server, gateway)

    @server.tool(
        title="Budget status",
        description=BUDGET_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def budget_status() -> BudgetStatusResult:
        principal = require_principal()
        try:
            budgets = Budgets(await gateway.budget_status(principal))
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
        require_principal()  # the price list is not secret, but HTTP callers must still authenticate
        try:
            rows = await gateway.list_models(provider)
        except USER_ERRORS as err:
            raise ToolError(in_words_of(err, "mcp")) from err
        return ModelListResult(
            models=[
                ModelEntry(
                    name=info.name,
                    provider=info.provider,
                    input_per_mtok_usd=money(info.input_per_mtok),
                    output_per_mtok_usd=money(info.output_per_mtok),
                    cached_input_per_mtok_usd=money(info.cache_read_per_mtok),
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
            raise ResourceError(NOT_AUTHENTICATED)
        try:
            budgets = Budgets(await gateway.budget_status(principal))
        except USER_ERRORS as err:
            raise ResourceError(in_words_of(err, "mcp")) from err
        result = BudgetStatusResult(
            client=principal.client_id or "",
            budgets=budgets.entries,
            remaining_budget_usd=budgets.remaining_usd,
        )
        return result.model_dump_json(indent=2)

    @server.resource(
        ANSWER_URI_PREFIX + "{answer_id}",
        name="answer",
        title="A long answer of generate",
        description="The whole text of a generate answer too long to return inline (its full_text_uri).",
        mime_type="text/plain",
    )
    async def answer(answer_id: str) -> str:
        principal = current_principal()
        if principal is None:
            raise ResourceError(NOT_AUTHENTICATED)
        text = answers.get(principal, answer_id)
        if text is None:  # another caller's is "not found" too: an id reveals nothing
            raise ResourceError(
                f"No answer {answer_id} is kept for you: answers are kept "
                f"{config.answer_ttl_seconds:g} s, and only for the caller that paid for them."
            )
        return text

    return server
