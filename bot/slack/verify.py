"""Check a request to ``/slack/events`` before Bolt sees it: signature first, then the payload.

Bolt decodes and parses the body before it checks the signature, so an unsigned body that is not
UTF-8, or not the JSON its content type claims, raised inside Bolt (500, a traceback in the log);
so did a timestamp that is not a number. Here the signature is checked on the raw bytes first,
with every malformed header answered 400 or 401, so an unauthenticated request never reaches a
parser. Only a correctly signed request is then decoded and parsed, and one that still cannot be
read is answered 400; Bolt verifies the signature again (cheap) and handles the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from slack_bolt.request.internals import parse_body
from starlette.responses import JSONResponse, Response

__all__ = ["MAX_AGE_SECONDS", "Refusal", "SignatureCheck", "payload_refusal"]

#: Slack's replay window: a request signed longer ago (or further ahead) than this is refused.
MAX_AGE_SECONDS = 300
#: A Unix time in whole seconds; Python's int() would also take " 1", "+1" or "1_0".
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE_HINT = (
    "Requests to /slack/events must come from Slack, signed with the app's signing secret "
    "(SLACK_SIGNING_SECRET, from the app's Basic Information page)."
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the HTTP status, a message naming what was wrong, and the fix."""

    status: int
    message: str
    hint: str = _SIGNATURE_HINT

    def response(self) -> Response:
        """The JSON answer (``{"error", "message", "hint"}``)."""
        error = "unauthorized" if self.status == 401 else "bad request"
        return JSONResponse({"error": error, "message": self.message, "hint": self.hint}, self.status)


class SignatureCheck:
    """Slack's v0 request signature over the raw body, with its five-minute replay window."""

    def __init__(self, signing_secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = signing_secret.encode()
        self._clock = clock

    def refusal(self, headers: Mapping[str, str], body: bytes) -> Refusal | None:
        """None when ``body`` is signed by Slack now; else why not (400 malformed, 401 unsigned)."""
        timestamp = headers.get("x-slack-request-timestamp")
        signature = headers.get("x-slack-signature")
        if not timestamp or not signature:
            missing = " and ".join(
                name
                for name, value in (
                    ("X-Slack-Request-Timestamp", timestamp),
                    ("X-Slack-Signature", signature),
                )
                if not value
            )
            return Refusal(401, f"the request has no {missing} header")
        if not _TIMESTAMP.fullmatch(timestamp):
            return Refusal(400, "the X-Slack-Request-Timestamp header is not a Unix time in seconds")
        skew = self._clock() - int(timestamp)
        if abs(skew) > MAX_AGE_SECONDS:
            when = "more than 5 minutes old" if skew > 0 else "more than 5 minutes in the future"
            return Refusal(
                401,
                f"the request was signed {when} (replays are refused)",
                hint="If Slack's requests are refused this way, set this server's clock right (NTP).",
            )
        digest = hmac.new(self._secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
        expected = b"v0=" + digest.hexdigest().encode()
        # Header values are latin-1 text; comparing bytes also copes with non-ASCII in the header.
        if not hmac.compare_digest(expected, signature.encode("latin-1", errors="replace")):
            return Refusal(401, "the X-Slack-Signature does not match the request")
        return None


def payload_refusal(body: bytes, content_type: str | None) -> Refusal | None:
    """None when a signed ``body`` is a Slack payload Bolt can read; else a 400 naming the problem.

    Slack never sends these; a client holding the signing secret could, and must get an answer,
    not a 500.
    """
    hint = "Slack sends UTF-8 form fields (slash commands, payload=…) or a JSON object (events)."
    if not body:
        return Refusal(400, "the request body is empty", hint=hint)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(400, "the request body is not UTF-8 text", hint=hint)
    mime = content_type.split(";")[0] if content_type else None  # exactly what Bolt will parse by
    try:
        parsed: Any = parse_body(text, mime)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return Refusal(400, "the request body is not valid JSON", hint=hint)
    if not isinstance(parsed, dict):
        return Refusal(400, f"the request body is JSON {type(parsed).__name__}, not an object", hint=hint)
    return None
