"""Remember which slash commands already started, so Slack's retries never run one twice.

Slack resends a request it believes failed (header ``X-Slack-Retry-Num``) with the same body, so
the same ``trigger_id``; Bolt does not de-duplicate. The memory is per process: with several
replicas behind a load balancer a retry could reach another one (see the report / design notes).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RetryDeduper", "command_key"]


def command_key(command: Mapping[str, Any]) -> str:
    """Identity of one invocation: team plus ``trigger_id`` (else its unique ``response_url``)."""
    ident = command.get("trigger_id") or command.get("response_url") or ""
    return f"{command.get('team_id', '')}:{ident}"


class RetryDeduper:
    """A bounded, time-limited set of keys already seen."""

    def __init__(
        self,
        ttl_seconds: float = 3600.0,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is seen within the TTL; False for every repeat."""
        now = self._clock()
        with self._lock:
            while self._seen and (
                len(self._seen) >= self._max or next(iter(self._seen.values())) < now - self._ttl
            ):
                self._seen.popitem(last=False)
            if key in self._seen:
                return False
            self._seen[key] = now
            return True
