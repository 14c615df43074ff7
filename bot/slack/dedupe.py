"""Remember which slash commands already started, so Slack's retries never run one twice.

Slack resends a request it believes failed (header ``X-Slack-Retry-Num``) with the same body, so
the same ``trigger_id``; Bolt does not de-duplicate. The memory here is per process
and answers a retry at once; a retry that reaches another replica is refused by the ledger, since
both copies carry the same request id (``request_id_of``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RetryDeduper", "command_key", "request_id_of"]


def command_key(command: Mapping[str, Any]) -> str:
    """Identity of one invocation: team plus ``trigger_id`` (else its unique ``response_url``)."""
    ident = command.get("trigger_id") or command.get("response_url") or ""
    return f"{command.get('team_id', '')}:{ident}"


def request_id_of(command: Mapping[str, Any]) -> str:
    """The call's idempotency key: the same for every retry of one invocation, on any replica.

    The ledger refuses a second call with it, which covers what the per-process memory cannot: a
    retry that a load balancer sends to another replica.
    """
    return "slack-" + hashlib.sha256(command_key(command).encode()).hexdigest()[:40]


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
