"""The Slack face: slash commands ``/generate``, ``/budget`` and ``/models`` over the core's ``Gateway``."""

from bot.slack.settings import SlackSettings

__all__ = ["SlackSettings"]
