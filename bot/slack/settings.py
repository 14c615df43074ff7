"""``SlackSettings``: what the Slack face needs, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.connect import public_url as public_url_from_env
from bot.core.errors import ConfigurationError

__all__ = ["DEFAULT_API_URL", "SlackSettings"]

DEFAULT_API_URL = "https://slack.com/api/"


def _ids(raw: str | None) -> frozenset[str]:
    return frozenset(part.strip() for part in (raw or "").split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class SlackSettings:
    """Tokens, the Web API base URL, admins and optional allow-lists of the Slack app.

    ``allowed_users`` / ``allowed_channels`` are ``None`` when not configured (everyone allowed).
    """

    bot_token: str
    signing_secret: str
    app_token: str | None = None
    api_url: str = DEFAULT_API_URL
    admin_users: frozenset[str] = field(default_factory=frozenset)
    allowed_users: frozenset[str] | None = None
    allowed_channels: frozenset[str] | None = None
    #: Seconds between two ``chat.update`` calls while a model streams (Slack allows about 1/s).
    update_interval: float = 1.0
    #: Characters per message: well under the ~4,000 where Slack starts answering ``msg_too_long``.
    message_limit: int = 3500
    #: The URL people reach the gateway at (``BOT_PUBLIC_URL``), for the ``claude mcp add`` line of
    #: ``/mcp-token``; None: the host the Slack request was sent to.
    public_url: str | None = None

    def __post_init__(self) -> None:
        # slack_sdk concatenates base_url and the method name, so the trailing slash matters.
        if not self.api_url.endswith("/"):
            object.__setattr__(self, "api_url", self.api_url + "/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlackSettings:
        """Read ``SLACK_*`` variables; a missing bot token or signing secret is a ConfigurationError."""
        env = os.environ if env is None else env
        missing = [name for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET") if not env.get(name)]
        if missing:
            raise ConfigurationError(
                f"{' and '.join(missing)} not set",
                source="environment",
                hint="Copy the bot token (xoxb-…) and signing secret from your Slack app's settings.",
            )
        users = env.get("SLACK_ALLOWED_USERS")
        channels = env.get("SLACK_ALLOWED_CHANNELS")
        return cls(
            bot_token=env["SLACK_BOT_TOKEN"],
            signing_secret=env["SLACK_SIGNING_SECRET"],
            app_token=env.get("SLACK_APP_TOKEN") or None,
            api_url=env.get("SLACK_API_URL") or DEFAULT_API_URL,
            admin_users=_ids(env.get("SLACK_ADMIN_USERS")),
            allowed_users=_ids(users) if users and users.strip() else None,
            allowed_channels=_ids(channels) if channels and channels.strip() else None,
            public_url=public_url_from_env(env),
        )

    def refusal(self, user_id: str, channel_id: str) -> str | None:
        """Why this user or channel may not use the bot, or None when it may."""
        if self.allowed_users is not None and user_id not in self.allowed_users:
            return "You are not on this bot's list of allowed users. Ask a Slack admin to add you."
        if self.allowed_channels is not None and channel_id not in self.allowed_channels:
            return "This bot is not enabled in this channel. Use it in an allowed channel, or ask an admin."
        return None
