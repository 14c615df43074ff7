"""Long answers kept server-side, so an assistant can read all of one its client would cut off.

Assistants cap what a tool may return (Claude Code at about 25,000 tokens) and silently drop the
rest. ``generate`` returns the first part of a long answer inline and keeps the whole text here,
read back with ``resources/read gateway://answers/<id>``. The store is in this process's memory,
bounded per caller by characters and by age (the oldest go first), and an answer is found only
under the principal that paid for it: another caller asking for the same id is told it does not
exist, exactly as for an expired one, so an id reveals nothing.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bot.core.types import Principal

__all__ = ["ANSWER_URI_PREFIX", "AnswerStore", "answer_uri"]

#: Scheme and path of the resource URIs of kept answers.
ANSWER_URI_PREFIX = "gateway://answers/"

#: Who may read an answer: the same principal as the one charged (a person through another
#: token, or another client, is someone else).
_Owner = tuple[str, str | None, str | None, str | None]


def _owner(principal: Principal) -> _Owner:
    return (principal.surface, principal.team_id, principal.user_id, principal.client_id)


def answer_uri(answer_id: str) -> str:
    """The ``resources/read`` URI of a kept answer."""
    return f"{ANSWER_URI_PREFIX}{answer_id}"


@dataclass(frozen=True, slots=True)
class _Kept:
    text: str
    expires_at: float


class AnswerStore:
    """Answers by owner and id, at most ``max_chars`` per owner, each for ``ttl_seconds``."""

    def __init__(
        self, *, ttl_seconds: float, max_chars: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``clock`` is monotonic seconds (a test may pass its own)."""
        self.ttl_seconds = ttl_seconds
        self.max_chars = max_chars
        self._clock = clock
        self._kept: dict[_Owner, OrderedDict[str, _Kept]] = {}
        # Tools run on one event loop, but stdio and HTTP could share a store: keep it simple and safe.
        self._lock = threading.Lock()

    def put(self, principal: Principal, text: str) -> str:
        """Keep ``text`` for ``principal``; returns its id (unguessable: 128 random bits).

        A text longer than ``max_chars`` is kept cut to it: the store never exceeds its bound.
        """
        answer_id = secrets.token_urlsafe(16)
        now = self._clock()
        with self._lock:
            mine = self._kept.setdefault(_owner(principal), OrderedDict())
            self._expire(mine, now)
            mine[answer_id] = _Kept(text[: self.max_chars], now + self.ttl_seconds)
            while sum(len(k.text) for k in mine.values()) > self.max_chars:
                mine.popitem(last=False)  # the oldest first
        return answer_id

    def get(self, principal: Principal, answer_id: str) -> str | None:
        """The answer ``principal`` paid for under ``answer_id``, or None (unknown, expired, another's)."""
        with self._lock:
            mine = self._kept.get(_owner(principal))
            if mine is None:
                return None
            self._expire(mine, self._clock())
            kept = mine.get(answer_id)
            return None if kept is None else kept.text

    @staticmethod
    def _expire(mine: OrderedDict[str, _Kept], now: float) -> None:
        for answer_id in [i for i, k in mine.items() if k.expires_at <= now]:
            del mine[answer_id]
