"""Remember which slash commands already started, so Slack's retries never run one twice.

Slack resends a request it believes failed (header ``X-Slack-Retry-Num``) with the same body, so
the same ``trigger_id``; Bolt does not de-duplicate. The memory here is per process
and answers a retry at once; a retry that reaches another replica is refused by the ledger, since
both copies carry the same request id (``request_id_of``).

A command with neither ``trigger_id`` nor ``response_url`` is identified by the signed request
itself (its timestamp and raw body): two different commands never share a key, and only an exact
replay of one signed request (within Slack's five-minute window) is taken for a retry.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RetryDeduper", "command_key", "event_key", "request_id_for", "request_id_of"]


def command_key(command: Mapping[str, Any], *, timestamp: str = "", raw_body: str = "") -> str:
    """Identity of one invocation: team plus ``trigger_id``, else its unique ``response_url``.

    With neither, a hash of the signed request (``timestamp``, the ``X-Slack-Request-Timestamp``
    header, and ``raw_body``); without those either (a payload that never came over HTTP) the
    hash covers the command's own fields.
    """
    ident = command.get("trigger_id") or command.get("response_url")
    if not ident:
        if raw_body:
            ident = "signed:" + hashlib.sha256(f"{timestamp}:{raw_body}".encode()).hexdigest()[:32]
        else:
            fields = json.dumps(dict(command), sort_keys=True, default=str)
            ident = "fields:" + hashlib.sha256(fields.encode()).hexdigest()[:32]
    return f"{command.get('team_id', '')}:{ident}"


def event_key(body: Mapping[str, Any]) -> str:
    """Identity of the message an Events API delivery is about: team, channel and the message's
    ``ts`` (unique in its channel), else the delivery's ``event_id``.

    Every retry of one event carries the same of both; keying on the message also answers a
    message once when two subscriptions (``app_mention`` and ``message.im``) report it.
    """
    event = body.get("event") or {}
    channel, ts = event.get("channel"), event.get("ts")
    ident = f"msg:{channel}:{ts}" if channel and ts else f"event:{body.get('event_id', '')}"
    return f"{body.get('team_id') or event.get('team') or ''}:{ident}"


def request_id_for(key: str) -> str:
    """The call's idempotency key for ``command_key``'s ``key``: the same on any replica.

    The ledger refuses a second call with it, which covers what the per-process memory cannot: a
    retry that a load balancer sends to another replica.
    """
    return "slack-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def request_id_of(command: Mapping[str, Any], *, timestamp: str = "", raw_body: str = "") -> str:
    """``request_id_for(command_key(command, ...))``: the same for every retry of one invocation."""
    return request_id_for(command_key(command, timestamp=timestamp, raw_body=raw_body))


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
