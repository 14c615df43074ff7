"""The slash commands: translate Slack payloads to ``Gateway`` calls and results back. No logic of their own.

``/generate`` is acknowledged at once (the ack is the HTTP answer) and runs in a background task
this object holds a reference to; ``/budget`` and ``/models`` answer in the ack itself, as they only
read the local ledger and config.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.errors import USER_ERRORS, DuplicateRequestError, LedgerUnavailable
from bot.core.face_words import in_words_of
from bot.core.gateway import Gateway
from bot.core.types import ChatResult, Principal
from bot.slack.blocks import budget_blocks, models_blocks, team_blocks
from bot.slack.dedupe import RetryDeduper, command_key, request_id_for
from bot.slack.delivery import AnswerStream, Delivery
from bot.slack.formatting import asked, footer
from bot.slack.settings import SlackSettings

if TYPE_CHECKING:  # events.py imports this module
    from bot.slack.events import SlackEvents

__all__ = ["GENERATE_USAGE", "SlackCommands", "invocation_key", "parse_generate", "principal_of"]

log = logging.getLogger(__name__)

GENERATE_USAGE = "Usage: `/generate [--model MODEL] your prompt`"
BUDGET_SET_USAGE = "Usage: `/budget set NAME[:KEY] AMOUNT` (e.g. `/budget set per-user:U2 25`)"
BUDGET_UNSET_USAGE = "Usage: `/budget unset NAME[:KEY]` (e.g. `/budget unset per-user:U2`)"
BUDGET_USAGE = (
    "Usage: `/budget`, `/budget team`, `/budget set NAME[:KEY] AMOUNT` or `/budget unset NAME[:KEY]`."
)


def principal_of(command: dict[str, Any]) -> Principal:
    """The principal a slash command is charged to."""
    return Principal(
        surface="slack",
        team_id=command.get("team_id") or None,
        user_id=command.get("user_id") or None,
        channel_id=command.get("channel_id") or None,
    )


def invocation_key(command: dict[str, Any], request: AsyncBoltRequest | None) -> str:
    """``command_key`` of this command, from the signed request when it has no ids of its own."""
    if request is None:
        return command_key(command)
    timestamp = (request.headers.get("x-slack-request-timestamp") or [""])[0]
    return command_key(command, timestamp=timestamp, raw_body=request.raw_body)


def parse_generate(text: str) -> tuple[str | None, str]:
    """``[--model M | --model=M] PROMPT`` → (model, prompt); the prompt keeps its own spacing."""
    rest = text.strip()
    model: str | None = None
    if rest.startswith("--model="):
        head, _, rest = rest.partition(" ")
        model = head.removeprefix("--model=")
    elif rest.startswith("--model ") or rest == "--model":
        _, _, rest = rest.partition(" ")
        model, _, rest = rest.strip().partition(" ")
    return (model or None), rest.strip()


class SlackCommands:
    """Handlers for ``/generate``, ``/budget`` and ``/models``, bound to one gateway and Web API client."""

    def __init__(self, gateway: Gateway, settings: SlackSettings, client: AsyncWebClient) -> None:
        self.gateway = gateway
        self.settings = settings
        self.client = client
        self.deduper = RetryDeduper()
        #: Background generations; holding them stops the event loop from garbage-collecting them.
        self.tasks: set[asyncio.Task[None]] = set()
        #: How many generations were started (tests wait on it).
        self.started = 0
        #: The mention and DM handlers sharing these tasks (``bot.slack.events``), once registered.
        self.events: SlackEvents | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a background generation: held, counted, and waited for on shutdown."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.started += 1

    async def wait_idle(self) -> None:
        """Wait until every background generation has finished."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _gate(self, ack: AsyncAck, command: dict[str, Any], key: str) -> bool:
        """Ack-and-stop for retries and for users or channels outside the allow-lists."""
        if not self.deduper.first_time(key):
            log.info("ignoring a retry of %s %s", command.get("command"), key)
            await ack()
            return False
        refusal = self.settings.refusal(command.get("user_id", ""), command.get("channel_id", ""))
        if refusal is not None:
            await ack(text=refusal, response_type="ephemeral")
            return False
        return True

    # -- /generate -----------------------------------------------------------------------------
    async def generate(
        self, ack: AsyncAck, command: dict[str, Any], request: AsyncBoltRequest | None = None
    ) -> None:
        """``/generate [--model M] PROMPT``: ack now, answer in the channel when the model is done."""
        key = invocation_key(command, request)
        if not await self._gate(ack, command, key):
            return
        model, prompt = parse_generate(command.get("text", ""))
        if not prompt:
            await ack(text=f"Your prompt is empty. {GENERATE_USAGE}", response_type="ephemeral")
            return
        await ack(text="Working on it…", response_type="ephemeral")
        self.spawn(self._run_generation(command, model, prompt, key))

    async def _run_generation(
        self, command: dict[str, Any], model: str | None, prompt: str, key: str
    ) -> None:
        principal = principal_of(command)
        out = Delivery(self.client, command)
        stream = AnswerStream(
            out,
            interval=self.settings.update_interval,
            limit=self.settings.message_limit,
            header=asked(command.get("user_id", ""), prompt),
        )
        try:
            result = await self.gateway.generate(
                principal, prompt, model=model, on_text=stream.on_text, request_id=request_id_for(key)
            )
        except DuplicateRequestError:  # a retry that reached this replica: the first copy answers
            log.info("ignoring a retry of %s already run elsewhere", key)
            return
        except USER_ERRORS as err:
            await stream.abandon("stopped: the reason was sent to you")
            # In place of the "Working on it…" ack, so the user is not left with both.
            await out.ephemeral(f":warning: {in_words_of(err, 'slack')}", replace_original=True)
            return
        except Exception as exc:  # a bug or an unexpected failure: tell the user, keep the trace
            log.exception("generation failed for %s", principal.label)
            await stream.abandon("stopped by an internal error")
            await out.ephemeral(
                f":warning: the request failed unexpectedly ({type(exc).__name__}). Try again.",
                replace_original=True,
            )
            return
        if not stream.text and result.text:  # a provider that did not stream
            stream.text = result.text
        await stream.finish(await self.footer_for(principal, result))

    async def footer_for(self, principal: Principal, result: ChatResult) -> str:
        """The footer under ``result``'s answer: model, tokens, cost and the tightest budget's rest."""
        try:
            tightest = await self.gateway.tightest_budget(principal)
        except LedgerUnavailable:  # the answer stands; the footer goes without its figure
            tightest = None
        except Exception:  # the answer matters more than the footer's last figure
            log.exception("budget status failed after a call for %s", principal.label)
            tightest = None
        return footer(result, tightest)

    # -- /budget -------------------------------------------------------------------------------
    async def budget(
        self, ack: AsyncAck, command: dict[str, Any], request: AsyncBoltRequest | None = None
    ) -> None:
        """``/budget`` (yours), ``/budget team``, ``/budget set NAME[:KEY] AMOUNT`` and
        ``/budget unset NAME[:KEY]`` (admins)."""
        if not await self._gate(ack, command, invocation_key(command, request)):
            return
        words = command.get("text", "").split()
        sub = words[0].lower() if words else ""
        if sub in ("team", "set", "unset") and command.get("user_id") not in self.settings.admin_users:
            await ack(text=f"`/budget {sub}` is for admins only.", response_type="ephemeral")
            return
        try:
            if sub == "team":
                await self._budget_team(ack)
            elif sub in ("set", "unset"):
                await self._budget_change(ack, command, sub, words[1:])
            elif sub:
                await ack(text=BUDGET_USAGE, response_type="ephemeral")
            else:
                statuses = await self.gateway.budget_status(principal_of(command))
                blocks = budget_blocks(statuses)
                await ack(text="Your budgets", blocks=blocks, response_type="ephemeral")
        except USER_ERRORS as err:
            await ack(text=f":warning: {in_words_of(err, 'slack')}", response_type="ephemeral")

    async def _budget_team(self, ack: AsyncAck) -> None:
        if not self.gateway.has_ledger:
            await ack(text="No ledger is configured, so no spend is recorded.", response_type="ephemeral")
            return
        start, end = self.gateway.current_period("monthly")  # in the ledger's time zone
        spend = await self.gateway.team_spend(start, end)
        zone = ZoneInfo(self.gateway.config.database.timezone)
        blocks = team_blocks(spend.by_user, spend.by_model, start.astimezone(zone).strftime("%B %Y"))
        await ack(text="Team spend this month", blocks=blocks, response_type="ephemeral")

    async def _budget_change(self, ack: AsyncAck, command: dict[str, Any], sub: str, args: list[str]) -> None:
        """``set NAME[:KEY] AMOUNT`` / ``unset NAME[:KEY]``: the gateway checks the budget, the key
        (a bare ``U2`` is a user of the admin's team) and the amount, and says what it did."""
        if not self.gateway.has_ledger:
            await ack(
                text="No ledger is configured, so budgets cannot be changed.", response_type="ephemeral"
            )
            return
        wanted = 2 if sub == "set" else 1
        if len(args) != wanted:
            usage = BUDGET_SET_USAGE if sub == "set" else BUDGET_UNSET_USAGE
            what = "Give a budget and an amount." if sub == "set" else "Give just the budget."
            await ack(text=f"{what} {usage}", response_type="ephemeral")
            return
        name, key = self.gateway.budget_target(args[0])
        team = command.get("team_id") or None
        if sub == "set":
            by = principal_of(command).scope_keys().get("user")
            change = await self.gateway.set_budget_limit(name, key, args[1], by=by, via="slack", team=team)
        else:
            change = await self.gateway.unset_budget_limit(name, key, team=team)
        text = in_words_of(change.summary(removed=sub == "unset"), "slack")
        await ack(text=f":white_check_mark: {text}", response_type="ephemeral")

    # -- /models -------------------------------------------------------------------------------
    async def models(
        self, ack: AsyncAck, command: dict[str, Any], request: AsyncBoltRequest | None = None
    ) -> None:
        """``/models [PROVIDER]``: models and prices, providers with a key first."""
        if not await self._gate(ack, command, invocation_key(command, request)):
            return
        provider = command.get("text", "").strip() or None
        try:
            models = await self.gateway.list_models(provider)
        except USER_ERRORS as err:
            await ack(text=f":warning: {in_words_of(err, 'slack')}", response_type="ephemeral")
            return
        await ack(text="Models and prices", blocks=models_blocks(models), response_type="ephemeral")
