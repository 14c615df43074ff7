"""``/metrics`` behind its own bearer token, when ``BOT_METRICS_TOKEN`` is set.

The exposition names every MCP client and budget key (a Slack team, user or channel id) with
what it spent: worth keeping from whoever can reach the port. With the token set, a scrape must
send ``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: …}`` in the
scrape config); anything else is answered 401 with a hint, compared in constant time, and never
logged. Unset, ``/metrics`` answers anyone, as before: keep the port private then.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.logging_setup import REFUSAL_SCOPE_KEY

__all__ = ["MetricsAuth"]

_HINT = (
    "Send 'Authorization: Bearer <BOT_METRICS_TOKEN>'; in Prometheus, set the scrape job's "
    "authorization: {type: Bearer, credentials: ...}."
)


class MetricsAuth:
    """Checks a ``/metrics`` request against the token (every request passes when it is None)."""

    def __init__(self, token: str | None) -> None:
        self._expected = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        """Whether a token is required."""
        return self._expected is not None

    def refusal(self, request: Request) -> Response | None:
        """None when the request may read the metrics, else the 401 to answer."""
        if self._expected is None:
            return None
        header = request.headers.get("authorization", "").encode("latin-1", "replace")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._expected):
            return None
        why = "no bearer token" if not header else "wrong metrics token"
        request.scope[REFUSAL_SCOPE_KEY] = why
        return JSONResponse(
            {"error": "unauthorized", "message": f"/metrics needs its token ({why})", "hint": _HINT},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
