"""The ``generate`` tool: a prompt or a conversation, confirmed when expensive, long answers linked.

* **Conversations.** ``prompt`` (one user message) or ``messages`` (user/assistant turns), never
  both; the core counts and reserves every turn.
* **Confirmation.** When the call's worst case (a dry run of the same call: nothing is charged)
  is above ``mcp.confirm_above_usd`` (the client's own or the global one), the user is asked
  through MCP elicitation, with the figure and what is left. The SDK's ``Resolve`` carries the
  question either way the protocol allows: a server-to-client ``elicitation/create`` mid-call
  (2025-11-25 and earlier) or an ``input_required`` result the client answers by retrying
  (2026-07-28, stateless). A client without elicitation gets an error naming the figure and
  ``confirm: true``. Declined or cancelled: nothing is called and nothing is charged.
* **Long answers.** An answer longer than ``mcp.inline_answer_chars`` comes back cut to that,
  with a resource link to the whole of it (``tools.mcp_answers``), since assistants drop what is
  over their cap.
"""

# No `from __future__ import annotations`: the SDK evaluates the tool's annotations, and
# `Resolve(confirmation)` names a closure it could not find by name.

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp_types import CallToolResult, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from bot.core.config import McpConfig
from bot.core.errors import USER_ERRORS
from bot.core.face_words import in_words_of
from bot.core.gateway import Gateway
from bot.core.types import Message, Principal
from tools.mcp_answers import AnswerStore, answer_uri
from tools.mcp_identity import require_principal
from tools.mcp_results import Budgets, GenerateResult, generate_result

__all__ = ["PROGRESS_INTERVAL", "CostConfirmation", "Turn", "progress_callback", "register_generate"]

#: Seconds between two progress notifications: enough to show life, few enough not to flood.
PROGRESS_INTERVAL = 0.25

GENERATE_DESCRIPTION = """Generate text with an LLM, charged to your budgets.

Give either prompt (one message) or messages (the conversation so far, user and assistant turns,
ending with the user's); the whole conversation is counted and charged. Before calling the model
the gateway reserves the worst-case cost (every prompt token plus max_tokens of output); if any
budget could be exceeded the call is refused and costs nothing. An expensive call may need the
user's confirmation first (or confirm=true when your client cannot ask). The result holds the
text, the exact cost in USD, token usage and what is left of your tightest budget; a long answer
comes back in part, with full_text_uri to read all of it (resources/read). Use dry_run=true to
learn the token count and worst-case cost without calling. Leave model empty for the configured
default; call list_models for valid names and prices."""


class Turn(BaseModel):
    """One turn of a conversation."""

    role: Literal["user", "assistant"] = Field(description="Who said it.")
    content: str = Field(min_length=1, max_length=400_000, description="What was said.")


class CostConfirmation(BaseModel):
    """What the user is asked before an expensive call."""

    run: bool = Field(description="Run the call and be charged up to the figure shown.")


Prompt = Annotated[
    str | None,
    Field(min_length=1, max_length=400_000, description="The user prompt (or give messages instead)."),
]
Messages = Annotated[
    list[Turn] | None,
    Field(
        min_length=1,
        max_length=1_000,
        description="The conversation, oldest first, ending with the user's turn (instead of prompt).",
    ),
]
ModelName = Annotated[
    str | None, Field(min_length=1, max_length=200, description="Model name; omit for the default.")
]
System = Annotated[str | None, Field(max_length=100_000, description="Optional system prompt.")]
MaxTokens = Annotated[
    int | None, Field(ge=1, le=200_000, description="Most output tokens; omit for the configured default.")
]
Temperature = Annotated[float | None, Field(ge=0, le=2, description="Sampling temperature, 0 to 2.")]
DryRun = Annotated[bool, Field(description="Only count tokens and price the worst case; call nothing.")]
Confirm = Annotated[
    bool,
    Field(description="Run even when the worst case needs confirmation (for clients that cannot ask)."),
]


def _conversation(prompt: str | None, messages: Sequence[Turn] | None) -> str | list[Message]:
    if (prompt is None) == (messages is None):
        raise ToolError(
            "Give either 'prompt' (one message) or 'messages' (the conversation so far), not "
            + ("both." if prompt is not None else "neither.")
        )
    if messages is None:
        assert prompt is not None
        return prompt
    return [Message(turn.role, turn.content) for turn in messages]


def _wants_progress(ctx: Context[Any, Any]) -> bool:
    try:
        meta = ctx.request_context.meta
    except ValueError:  # called outside a request (direct call in tests)
        return False
    return bool(meta) and meta.get("progress_token") is not None  # type: ignore[union-attr]


def progress_callback(
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


def _can_elicit(ctx: Context[Any, Any]) -> bool:
    # The same rule as the SDK's own gate: a bare `elicitation: {}` means form support.
    caps = ctx.client_capabilities
    asking = caps.elicitation if caps is not None else None
    return asking is not None and (asking.form is not None or asking.url is None)


def _linked(result: GenerateResult, store: AnswerStore, principal: Principal, inline: int) -> CallToolResult:
    """The result as sent: a long text cut to ``inline`` characters, the whole of it linked."""
    link: list[ResourceLink] = []
    whole = result.text
    if len(whole) > inline:
        uri = answer_uri(store.put(principal, whole))
        result = result.model_copy(
            update={"text": result.text[:inline], "text_truncated": True, "full_text_uri": uri}
        )
        link.append(
            ResourceLink(
                type="resource_link",
                uri=uri,
                name="answer",
                title=f"The whole answer ({result.full_text_chars:,} characters)",
                description="Read with resources/read: the text above is only its first part.",
                mime_type="text/plain",
                size=len(whole.encode()),
            )
        )
    structured = result.model_dump(mode="json")
    return CallToolResult(
        content=[TextContent(type="text", text=result.model_dump_json()), *link],
        structured_content=structured,
    )


def register_generate(server: MCPServer, gateway: Gateway, config: McpConfig, store: AnswerStore) -> None:
    """Add ``generate`` to ``server``: calls charged to the current principal (``tools.mcp_identity``)."""

    async def confirmation(
        ctx: Context[Any, Any],
        prompt: str | None,
        messages: list[Turn] | None,
        model: str | None,
        system: str | None,
        max_tokens: int | None,
        dry_run: bool,
        confirm: bool,
    ) -> Elicit[CostConfirmation] | CostConfirmation:
        # Runs before the tool body (and again on each 2026-07-28 retry round): it prices the
        # very call the body will make, so the figure asked about is the figure reserved.
        conversation = _conversation(prompt, messages)
        if dry_run or confirm:
            return CostConfirmation(run=True)
        principal = require_principal()
        if config.confirmation_threshold(principal.client_id) is None:
            return CostConfirmation(run=True)  # nothing to confirm: no second pricing of the call
        try:
            worst = await gateway.generate(
                principal, conversation, model=model, system=system, max_tokens=max_tokens, dry_run=True
            )
            threshold = config.needs_confirmation(principal.client_id, worst.cost_usd)
            if threshold is None:
                return CostConfirmation(run=True)
            left = await gateway.tightest_budget(principal)
        except USER_ERRORS as err:
            raise ToolError(in_words_of(err, "mcp")) from err
        figure = (
            f"This call to {worst.model} may cost up to ${worst.cost_usd} (worst case: "
            f"{worst.usage.input_tokens:,} prompt tokens and all {max_tokens or gateway.config.session.max_tokens:,} "
            f"output tokens), above the ${threshold} that needs confirmation"
        )
        budget = (
            f"Your budget '{left.name}' has ${left.remaining} left."
            if left is not None
            else "No budget limits it."
        )
        if not _can_elicit(ctx):
            raise ToolError(
                f"{figure}, and your MCP client cannot ask you (it has no elicitation). {budget} "
                "Nothing was charged. To run it, call generate again with the same arguments and "
                "confirm: true; or lower max_tokens, or pick a cheaper model (list_models)."
            )
        return Elicit(f"{figure}. {budget} Run it?", CostConfirmation)

    @server.tool(
        title="Generate text (charged to your budget)",
        description=GENERATE_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
        ),
    )
    async def generate(
        ctx: Context[Any, Any],
        confirmed: Annotated[ElicitationResult[CostConfirmation], Resolve(confirmation)],
        prompt: Prompt = None,
        messages: Messages = None,
        model: ModelName = None,
        system: System = None,
        max_tokens: MaxTokens = None,
        temperature: Temperature = None,
        dry_run: DryRun = False,
        confirm: Confirm = False,
    ) -> Annotated[CallToolResult, GenerateResult]:
        if not (isinstance(confirmed, AcceptedElicitation) and confirmed.data.run):
            raise ToolError("You did not confirm the call, so it was not made and nothing was charged.")
        principal = require_principal()
        on_text = progress_callback(ctx) if _wants_progress(ctx) and not dry_run else None
        try:
            result = await gateway.generate(
                principal,
                _conversation(prompt, messages),
                model=model,
                system=system,
                max_tokens=max_tokens,
                temperature=temperature,
                dry_run=dry_run,
                on_text=on_text,
            )
            budgets = Budgets(await gateway.budget_status(principal))
        except USER_ERRORS as err:
            raise ToolError(in_words_of(err, "mcp")) from err
        return _linked(generate_result(result, budgets), store, principal, config.inline_answer_chars)
