"""Malformed requests to ``bot serve``, in its own process: 400 or 401, never a 500 or a traceback."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx2

from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.serve.conftest import SIGNING_SECRET, Served
from tests.serve.test_body_limits import assert_clean_log

FORM = "application/x-www-form-urlencoded"
COMMAND = "command=%2Fgenerate&text=hi&team_id=T1&user_id=U1&channel_id=C1&trigger_id=t.1"


Request = tuple[bytes, dict[str, str]]


def now() -> str:
    """The current Unix time, as Slack sends it."""
    return str(int(time.time()))


def unsigned(
    body: bytes, ts: str | None, signature: str | None = "v0=" + "0" * 64, **headers: str
) -> Request:
    """A request with the given timestamp and signature headers (None leaves one out)."""
    out = {"content-type": FORM, **headers}
    if ts is not None:
        out["x-slack-request-timestamp"] = ts
    if signature is not None:
        out["x-slack-signature"] = signature
    return body, out


def signed(body: bytes, content_type: str = FORM) -> Request:
    """A request correctly signed with the server's signing secret (as only Slack could send)."""
    ts = now()
    digest = hmac.new(SIGNING_SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return body, {
        "content-type": content_type,
        "x-slack-request-timestamp": ts,
        "x-slack-signature": "v0=" + digest.hexdigest(),
    }


#: name -> (request, expected status). The first group is what anyone on the network can send.
CASES = {
    "timestamp not a number": (unsigned(COMMAND.encode(), "abc"), 400),
    "timestamp with underscores": (unsigned(COMMAND.encode(), "1_700_000_000"), 400),
    "timestamp of 400 digits": (unsigned(COMMAND.encode(), "9" * 400), 400),
    "timestamp far in the future": (unsigned(COMMAND.encode(), str(int(time.time()) + 10**6)), 401),
    "timestamp stale": (unsigned(COMMAND.encode(), "1000000000"), 401),
    "no signature headers": (unsigned(COMMAND.encode(), None, None), 401),
    "no signature": (unsigned(COMMAND.encode(), now(), None), 401),
    "no timestamp": (unsigned(COMMAND.encode(), None), 401),
    "empty signature": (unsigned(COMMAND.encode(), now(), ""), 401),
    "wrong signature": (unsigned(COMMAND.encode(), now()), 401),
    "signature not hex": (unsigned(COMMAND.encode(), now(), "v0=zz"), 401),
    "body not UTF-8": (unsigned(b"\xff\xfe\xfd", now()), 401),
    "empty body": (unsigned(b"", now()), 401),
    "body not the JSON it claims": (unsigned(b"{", now(), **{"content-type": "application/json"}), 401),
    "payload field not JSON": (unsigned(b"payload=%7B", now()), 401),
    "ssl_check without a signature": (unsigned(b"ssl_check=1&token=x", None, None), 401),
    # Correctly signed, so only Slack (or a holder of the secret) could send these; still no 500.
    "signed, body not UTF-8": (signed(b"\xff\xfe\xfd"), 400),
    "signed, empty body": (signed(b""), 400),
    "signed, broken JSON": (signed(b"{", "application/json"), 400),
    "signed, payload not JSON": (signed(b"payload=%7B"), 400),
    "signed, JSON not an object": (signed(b"[1, 2]", "application/json"), 400),
}


async def test_every_malformed_slack_request_is_400_or_401_without_a_traceback(
    served: Served, fake: FakeUpstream, slack_fake: FakeSlackApi
) -> None:
    answers: dict[str, httpx2.Response] = {}
    async with httpx2.AsyncClient(timeout=10) as http:
        for name, ((body, headers), _) in CASES.items():
            if name.startswith("signed, "):
                # Signed now, not at import: on a loaded machine the run may reach this test more
                # than five minutes later, and a stale signature is (rightly) a 401.
                body, headers = signed(body, headers["content-type"])
            answers[name] = await http.post(f"{served.url}/slack/events", content=body, headers=headers)
        health = await http.get(f"{served.url}/healthz")
    for name, (_, status) in CASES.items():
        answer = answers[name]
        assert answer.status_code == status, (name, answer.text)
        body = answer.json()
        assert body["message"] and body["hint"], name  # what was wrong, and how to fix it
    assert health.status_code == 200
    assert fake.requests_to("/v1/chat/completions") == [] and slack_fake.calls_to("chat.postMessage") == []
    assert_clean_log(served)
    lines = [line for line in served.log_lines() if line["message"].startswith("POST /slack/events")]
    assert len(lines) == len(CASES) and all(line["refused"] for line in lines)


async def test_malformed_mcp_authorization_is_401_without_a_traceback(served: Served) -> None:
    headers = {b"content-type": b"application/json", b"accept": b"application/json, text/event-stream"}
    answers = []
    async with httpx2.AsyncClient(timeout=10) as http:
        for authorization in (b"Bearer", b"Bearer \xff\xfe", b"bearer alice", b"Basic YWxpY2U6eA==", b"\xff"):
            sent = {**headers, b"authorization": authorization}
            answers.append(await http.post(f"{served.url}/mcp", content=b"{not json", headers=sent))
        answers.append(await http.post(f"{served.url}/mcp", content=b"{not json", headers=headers))
    for answer in answers:
        assert answer.status_code == 401
        assert "Authorization: Bearer <token>" in answer.json()["hint"]
    assert_clean_log(served)


async def test_odd_request_ids_and_paths_are_harmless(served: Served) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        odd_id = await http.get(f"{served.url}/healthz", headers={b"x-request-id": b"\xff" * 500})
        traversal = await http.get(f"{served.url}/%2e%2e/%2e%2e/etc/passwd")
        wrong_method = await http.put(f"{served.url}/slack/events", content=b"x")
        health = await http.get(f"{served.url}/healthz")
    assert odd_id.status_code == 200 and len(odd_id.headers["x-request-id"]) == 16  # ours, not theirs
    assert traversal.status_code == 404 and wrong_method.status_code == 405
    assert health.status_code == 200
    assert_clean_log(served)
