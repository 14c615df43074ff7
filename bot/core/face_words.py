"""An error in the words of the face that shows it: its hint names that face's own command.

The core writes its hints in the command line's words (``bot models``), since ``str(err)`` is
what the CLI prints; a Slack user reads ``/models`` there instead, an MCP client the
``list_models`` tool. Every face shows a user error through ``in_words_of``.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["COMMANDS", "Face", "in_words_of"]

Face = Literal["cli", "slack", "mcp"]

#: What each face calls the same action; the ``cli`` phrase is the one the core's hints use.
COMMANDS: dict[str, dict[Face, str]] = {
    "models": {"cli": "`bot models`", "slack": "`/models`", "mcp": "the `list_models` tool"},
    "budget": {"cli": "`bot budget`", "slack": "`/budget`", "mcp": "the `budget_status` tool"},
    "budget unset": {"cli": "`bot budget unset", "slack": "`/budget unset", "mcp": "`bot budget unset"},
    "budget set": {"cli": "`bot budget set", "slack": "`/budget set", "mcp": "`bot budget set"},
}


def in_words_of(err: BaseException | str, face: Face) -> str:
    """``str(err)`` with each command the core names replaced by ``face``'s own."""
    text = str(err)
    if face == "cli":
        return text
    for words in COMMANDS.values():
        text = text.replace(words["cli"], words[face])
    return text
