"""A fuzz pass over ``/slack/events`` and ``/mcp`` of ``bot serve``, in its own process.

Hypothesis draws headers and bodies, unauthenticated and authenticated (a valid bearer token; a
correct Slack signature over the drawn body): random bytes, random JSON, JSON-RPC-shaped messages
with random methods, batches, deep nesting, form payloads, odd session ids and protocol versions.
Whatever arrives, the answer is never a 5xx (a 503 only while draining, which never happens
here), an unauthenticated request is refused with a 4xx, and the log has no traceback and no
ERROR line. The example counts are kept modest so the pass takes seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mcp.conftest import TOKENS
from tests.serve.conftest import SIGNING_SECRET, Served
from tests.serve.mcp_raw import INITIALIZE
from tests.serve.test_body_limits import assert_clean_log

EXAMPLES = 120
#: Refusals an unauthenticated request may get (bad request, unauthorized, method, size).
REFUSED = {400, 401, 405, 413}

header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
methods = st.sampled_from(
    ["initialize", "tools/list", "tools/call", "resources/read", "resources/list", "ping", "notifications/initialized",
     "prompts/list", "completion/complete", "logging/setLevel", "x/unknown", ""]
)  # fmt: skip
tool_calls = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["generate", "budget_status", "list_models", "nope"]),
        "arguments": st.dictionaries(
            st.sampled_from(["prompt", "model", "max_tokens", "dry_run", "temperature", "provider", "x"]),
            json_values,
            max_size=4,
        ),
    }
)
rpc = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", ""]), "method": methods},
    optional={"id": st.integers() | st.text(max_size=8) | st.none(), "params": json_values | tool_calls},
)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


mcp_bodies = st.one_of(
    st.just(json.dumps(INITIALIZE).encode()),  # opens sessions (up to the client's cap, then 429)
    rpc.map(lambda m: json.dumps(m).encode()),
    rpc.map(lambda m: json.dumps({**m, "id": 1, "jsonrpc": "2.0"}).encode()),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    rpc.map(lambda m: json.dumps(m).encode()),
    st.lists(rpc, max_size=3).map(lambda batch: json.dumps(batch).encode()),
    st.integers(10, 100_000).map(_nested),
    st.just(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ' * 50 + b"{}" + b"}" * 50),
)
slack_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["command", "text", "payload", "team_id", "user_id", "channel_id", "type", "token"]),
        st.text(max_size=40),
        max_size=6,
    ).map(lambda form: "&".join(f"{k}={v}" for k, v in form.items()).encode()),
    st.text(max_size=40).map(lambda t: f"payload={t}".encode()),
)
optional_header = st.none() | header_text
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data",
        "\xff",
    ]
)


def _put(headers: dict[str, str], name: str, value: str | None) -> None:
    if value is not None:
        headers[name] = value.strip(" \t")  # the one thing an HTTP client will not send


def _post(http: httpx2.Client, url: str, method: str, body: bytes, headers: dict[str, str]) -> int:
    raw = {name.encode(): value.encode("latin-1") for name, value in headers.items()}  # any byte
    return http.request(method, url, content=body, headers=raw).status_code


@st.composite
def mcp_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], bool]:
    """(method, body, headers, authenticated) for /mcp."""
    # Mostly well-formed around the drawn part, so that most requests get past the first check.
    auth = draw(st.sampled_from(["valid", "valid", "valid", "none", "wrong", "other scheme", "garbage"]))
    headers: dict[str, str] = {}
    token = TOKENS["alice"]  # the client the served config knows
    auth_value = {
        "none": None, "valid": f"Bearer {token}", "wrong": "Bearer " + "x" * 22,
        "other scheme": f"Basic {token}", "garbage": draw(header_text),
    }[auth]  # fmt: skip
    _put(headers, "authorization", auth_value)
    _put(headers, "content-type", draw(st.just("application/json") | content_types))
    both = "application/json, text/event-stream"
    _put(headers, "accept", draw(st.sampled_from([both, both, both, None, "*/*", "text/html"])))
    _put(headers, "mcp-session-id", draw(st.sampled_from([None, None, None, "0" * 32, "abc"]) | header_text))
    versions = [None, "2025-11-25", "2026-07-28", "2026-07-28", "2025-06-18", "1999-01-01"]
    _put(headers, "mcp-protocol-version", draw(st.sampled_from(versions) | header_text))
    origins = [None, None, None, "http://evil.com", "null", "http://localhost"]
    _put(headers, "origin", draw(st.sampled_from(origins)))
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "DELETE", "PUT"]))
    return method, draw(mcp_bodies), headers, auth == "valid"


@st.composite
def slack_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], bool]:
    """(method, body, headers, signed) for /slack/events."""
    body = draw(slack_bodies)
    signed = draw(st.booleans())
    headers: dict[str, str] = {}
    _put(headers, "content-type", draw(content_types))
    if signed:
        ts = str(int(time.time()))
        digest = hmac.new(SIGNING_SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
        headers.update({"x-slack-request-timestamp": ts, "x-slack-signature": "v0=" + digest.hexdigest()})
    else:
        _put(headers, "x-slack-request-timestamp", draw(optional_header))
        _put(headers, "x-slack-signature", draw(optional_header))
    _put(headers, "x-slack-retry-num", draw(st.none() | st.sampled_from(["1", "x"])))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]))
    return method, body, headers, signed


def _fuzz(served: Served, path: str, requests: Any) -> list[tuple[int, str, bool]]:
    seen: list[tuple[int, str, bool]] = []
    with httpx2.Client(timeout=30) as http:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(requests)
        def one(request: tuple[str, bytes, dict[str, str], bool]) -> None:
            method, body, headers, authenticated = request
            status = _post(http, f"{served.url}{path}", method, body, headers)
            seen.append((status, method, authenticated))
            assert status < 500, (status, request)
            if not authenticated:
                assert status in REFUSED, (status, request)

        one()
    return seen


def test_fuzzed_mcp_requests_get_no_5xx_and_no_traceback(served: Served) -> None:
    seen = _fuzz(served, "/mcp", mcp_requests())
    assert any(authenticated for _, _, authenticated in seen)  # both kinds were tried
    assert any(not authenticated for _, _, authenticated in seen)
    served.stop()
    assert_clean_log(served)


def test_fuzzed_slack_requests_get_no_5xx_and_no_traceback(served: Served) -> None:
    seen = _fuzz(served, "/slack/events", slack_requests())
    assert any(signed for _, _, signed in seen) and any(not signed for _, _, signed in seen)
    served.stop()
    assert_clean_log(served)
