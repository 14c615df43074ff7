"""``BotIdentity``: the bot's ``auth.test`` answer, fetched once per token and shared.

Bolt's single-workspace authorization calls ``auth.test`` on every request until a first answer
has come back, so the burst of commands right after start-up made one call each (200 commands,
200 ``auth.test`` calls, each counting against Slack's rate limit). This authorizer fetches it once
per token: concurrent first callers wait on the same request, a success is kept for the life of
the process, and a failure is not kept (the next request asks again).
"""

from __future__ import annotations

import asyncio
from typing import Any

from slack_bolt.authorization import AuthorizeResult
from slack_bolt.authorization.async_authorize import AsyncAuthorize
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

__all__ = ["BotIdentity"]


class BotIdentity(AsyncAuthorize):
    """A Bolt ``authorize`` for one bot token, calling ``auth.test`` once for it.

    Give it to ``AsyncApp(authorize=...)`` with a client that has no token of its own (Bolt uses
    its own per-token authorization, uncached under concurrency, whenever the app's client has a
    token); every request's client then gets ``client.token`` from the result.
    """

    def __init__(self, client: AsyncWebClient) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if not client.token:
            raise ValueError("BotIdentity needs a client with the bot token (SLACK_BOT_TOKEN)")
        self._client = client
        self._answers: dict[str, asyncio.Future[AsyncSlackResponse]] = {}
        #: ``auth.test`` calls made (successful or not).
        self.calls = 0

    async def auth_test(self) -> AsyncSlackResponse:
        """The token's ``auth.test`` answer: fetched on first use, then shared and kept."""
        token = str(self._client.token)
        pending = self._answers.get(token)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(token))
            # Read a failure even if every waiter gave up, so it is not reported as never retrieved.
            pending.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._answers[token] = pending
        # Shielded: one caller giving up (its request cancelled) must not cancel the others' wait.
        return await asyncio.shield(pending)

    async def _fetch(self, token: str) -> AsyncSlackResponse:
        self.calls += 1
        try:
            return await self._client.auth_test()
        except BaseException:
            self._answers.pop(token, None)  # not kept: the next request tries again
            raise

    async def __call__(
        self,
        *,
        context: AsyncBoltContext,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None,
        actor_enterprise_id: str | None = None,
        actor_team_id: str | None = None,
        actor_user_id: str | None = None,
    ) -> AuthorizeResult:
        """What Bolt's single-workspace authorization would answer, from the shared ``auth.test``."""
        answer = await self.auth_test()
        return _result(answer, str(self._client.token), user_id)


def _result(answer: AsyncSlackResponse, token: str, request_user_id: str | None) -> AuthorizeResult:
    """The fields Bolt's ``AsyncSingleTeamAuthorization`` fills from ``auth.test`` for a bot token."""
    get: Any = answer.get
    return AuthorizeResult(
        enterprise_id=get("enterprise_id"),
        team_id=get("team_id"),
        bot_id=get("bot_id"),
        bot_user_id=get("user_id"),
        bot_token=token,
        user_id=request_user_id,
        bot_scopes=answer.headers.get("x-oauth-scopes"),
    )
