"""A real loopback HTTP server that speaks OpenAI Chat Completions and Anthropic Messages, with faults.

``FakeUpstream`` runs uvicorn (a Starlette app) in a background thread with its own event loop::

    with FakeUpstream(api_key="test-key") as server:
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="test-key")
        server.inject("rate_limit", retry_after=0.01)
        ...

Replies are deterministic ("Echo: " + last user message, cut to ``max_tokens``); token counts follow
:func:`~tests.fakes.upstream_openai.openai_prompt_tokens` and
:func:`~tests.fakes.upstream_anthropic.anthropic_input_tokens`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self, get_args

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes import upstream_anthropic as ant
from tests.fakes import upstream_openai as oai
from tests.fakes.loopback import CYCLE_KEY, BackgroundServer, CaptureCycle, ScriptedResponse, ThreadedServer

__all__ = [
    "DEFAULT_ANTHROPIC_MODELS",
    "DEFAULT_OPENAI_MODELS",
    "FakeUpstream",
    "FaultKind",
    "RecordedRequest",
]

JSONDict = dict[str, Any]
Flavour = Literal["openai", "anthropic"]
FaultKind = Literal[
    "rate_limit", "server_error", "unavailable", "overloaded", "slow",
    "drop", "drop_mid_stream", "malformed", "no_usage", "auth_echo", "empty_reply",
]  # fmt: skip
_ERROR_STATUS = {"rate_limit": 429, "server_error": 500, "unavailable": 503, "overloaded": 529}
_WIRE: dict[Flavour, Any] = {"openai": oai, "anthropic": ant}  # provider modules with the same helpers
DEFAULT_OPENAI_MODELS = oai.DEFAULT_MODELS
DEFAULT_ANTHROPIC_MODELS = ant.DEFAULT_MODELS


@dataclass
class RecordedRequest:
    """One request as the server saw it (``time`` is ``time.monotonic()`` on arrival)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    time: float
    fault: FaultKind | None = None
    """The injected fault applied to this request, if any."""


@dataclass
class _Fault:
    kind: FaultKind
    remaining: int
    retry_after: float | str | None
    path: str | None
    delay: float


class FakeUpstream(BackgroundServer):
    """Fake OpenAI + Anthropic upstream on ``127.0.0.1`` with a random port and fault injection.

    Args:
        api_key: when set, requests must carry exactly this key (``Authorization: Bearer`` for OpenAI,
            ``x-api-key`` or Bearer for Anthropic), else 401. When ``None`` any non-empty key passes.
        openai_models / anthropic_models: known model ids; others get the provider's 404.

    Overrides (restored by :meth:`reset`): ``reply_text``, ``cached_tokens``, ``cache_write_tokens``,
    ``reasoning_tokens``, ``latency``, ``omit_usage``, ``openai_models``, ``anthropic_models``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        openai_models: Sequence[str] = DEFAULT_OPENAI_MODELS,
        anthropic_models: Sequence[str] = DEFAULT_ANTHROPIC_MODELS,
    ) -> None:
        self.api_key = api_key
        self._default_models = (tuple(openai_models), tuple(anthropic_models))
        self.requests: list[RecordedRequest] = []
        """Every request received, in arrival order."""
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self.reset()
        app = CaptureCycle(
            Starlette(
                routes=[
                    Route("/v1/chat/completions", self._chat, methods=["POST"]),
                    Route("/v1/messages", self._messages, methods=["POST"]),
                    Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                    Route("/v1/models", self._models, methods=["GET"]),
                    Route("/v1/models/{model_id:path}", self._models, methods=["GET"]),
                ]
            )
        )
        self._http = ThreadedServer(app, name="FakeUpstream")

    # ----------------------------------------------------------------- configuration
    def reset(self) -> None:
        """Clear queued faults, recorded requests and every override."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
        self.reply_text: str | None = None
        """Fixed reply (still cut to ``max_tokens``); ``None`` means "Echo: " + last user message."""
        self.cached_tokens = 0
        """OpenAI ``prompt_tokens_details.cached_tokens`` and Anthropic ``cache_read_input_tokens``."""
        self.cache_write_tokens = 0
        """Anthropic ``cache_creation_input_tokens`` (5-minute and 1-hour writes together)."""
        self.cache_write_1h_tokens = 0
        """Of ``cache_write_tokens``, those written for 1 hour (``ephemeral_1h_input_tokens``)."""
        self.reasoning_tokens = 0
        """OpenAI ``completion_tokens_details.reasoning_tokens`` (also added to ``completion_tokens``)."""
        self.latency = 0.0
        """Seconds to wait before answering any request."""
        self.usage_patch: dict[str, Any] = {}
        """Fields laid over the ``usage`` of non-streamed answers (absurd counts, for tests)."""
        self.omit_usage = False
        """Send no usage (see ``no_usage`` in :meth:`inject`)."""
        self.openai_models = list(self._default_models[0])
        self.anthropic_models = list(self._default_models[1])

    def inject(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        retry_after: float | str | None = None,
        path: str | None = None,
        delay: float = 1.0,
    ) -> None:
        """Apply fault ``kind`` to the next ``times`` requests whose path equals ``path`` (any if None).

        Faults queue in order; a request takes the first matching one. Kinds:

        * ``rate_limit`` 429, ``server_error`` 500, ``unavailable`` 503, ``overloaded`` 529: the
          provider's error body; ``retry_after`` adds a ``Retry-After`` header (floats allowed).
        * ``slow``: wait ``delay`` seconds, then answer normally.
        * ``drop``: close the connection without any response.
        * ``drop_mid_stream``: streams send the frames up to the cut (OpenAI: role chunk + first
          ceil(n/2) content chunks; Anthropic: message_start, content_block_start, ping + first ceil(n/2)
          deltas), then close without the chunked terminator, finish/usage chunk, ``[DONE]``,
          ``message_delta`` or ``message_stop``. Non-streaming: headers + half the JSON body, then close.
        * ``malformed``: 200 with half a JSON body; streams send the frames up to the cut, one frame
          whose ``data`` is broken JSON, then end the body cleanly.
        * ``no_usage``: this one answer behaves as if ``omit_usage`` were set.
        * ``empty_reply``: non-streaming: 200 with a well-formed body that has neither
          ``choices``/``content`` nor ``usage``.
        * ``auth_echo``: 401 whose error message echoes, in full, the key the request carried
          ("Incorrect API key provided: Bearer <key>"), as a careless upstream or proxy might.
        """
        if kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._faults.append(_Fault(kind, times, retry_after, path, delay))

    def openai_prompt_tokens(self, body: JSONDict) -> int:
        """``usage.prompt_tokens`` the fake reports for a Chat Completions body (OpenAI's formula)."""
        return oai.openai_prompt_tokens(body)

    def anthropic_input_tokens(self, body: JSONDict) -> int:
        """``usage.input_tokens`` / ``count_tokens`` for a Messages body (see ``upstream_anthropic``)."""
        return ant.anthropic_input_tokens(body)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path equals ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # ----------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        """The listening port (after :meth:`start`)."""
        return self._http.port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for the OpenAI SDK (``.../v1``)."""
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for the Anthropic SDK (it appends ``/v1/messages`` itself)."""
        return self.base_url

    def start(self) -> Self:
        """Start serving in a background thread; returns once the port is listening."""
        self._stopping.clear()
        self._http.start()
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread (pending slow answers are cut short)."""
        self._stopping.set()
        self._http.stop()

    # ----------------------------------------------------------------- request plumbing
    async def _sleep(self, request: Request, seconds: float) -> None:
        cycle = request.scope.get(CYCLE_KEY)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stopping.is_set():
            if cycle is not None and cycle.disconnected:
                return
            await asyncio.sleep(min(left, 0.01))

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path is None or fault.path == path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _error(self, flavour: Flavour, status: int, rid: str, body: JSONDict) -> Response:
        return Response(json.dumps(body), status, self._headers(flavour, rid), "application/json")

    @staticmethod
    def _headers(flavour: Flavour, rid: str) -> dict[str, str]:
        return {"x-request-id" if flavour == "openai" else "request-id": rid}

    @staticmethod
    def _sent_key(request: Request, flavour: Flavour) -> str:
        """The API key the request carried (``Authorization: Bearer``, or Anthropic's ``x-api-key``)."""
        bearer = request.headers.get("authorization", "")
        key = bearer[7:] if bearer.lower().startswith("bearer ") else ""
        if flavour == "anthropic":
            key = request.headers.get("x-api-key") or key
        return key

    def _auth_error(self, request: Request, flavour: Flavour, rid: str) -> Response | None:
        key = self._sent_key(request, flavour)
        if key and (self.api_key is None or key == self.api_key):
            return None
        return self._error(flavour, 401, rid, _WIRE[flavour].auth_error(key, rid))

    async def _begin(
        self, request: Request, flavour: Flavour
    ) -> tuple[Any, _Fault | None, str, Response | None]:
        """Record, wait ``latency``, check auth, take a fault; returns (body, fault, request id, early reply)."""
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = RecordedRequest(
            request.method, request.url.path, dict(request.query_params), dict(request.headers), body,
            time.monotonic(),
        )  # fmt: skip
        with self._lock:
            self.requests.append(rec)
        rid = f"req_fake{next(self._ids):06d}"
        await self._sleep(request, self.latency)
        if (denied := self._auth_error(request, flavour, rid)) is not None:
            return body, None, rid, denied
        fault = self._take_fault(rec.path)
        if fault is not None:
            rec.fault = fault.kind
            if fault.kind == "slow":
                await self._sleep(request, fault.delay)
            elif fault.kind == "drop":
                return body, fault, rid, ScriptedResponse(None, {}, drop=True)
            elif fault.kind == "auth_echo":
                echoed = _WIRE[flavour].echoed_key_error(self._sent_key(request, flavour), rid)
                return body, fault, rid, self._error(flavour, 401, rid, echoed)
            elif (status := _ERROR_STATUS.get(fault.kind)) is not None:
                reply = self._error(flavour, status, rid, _WIRE[flavour].status_error(status, rid))
                if fault.retry_after is not None:
                    reply.headers["retry-after"] = str(fault.retry_after)
                return body, fault, rid, reply
        if request.method == "POST" and not (isinstance(body, dict) and isinstance(body.get("model"), str)):
            bad = _WIRE[flavour].bad_request("body must be a JSON object with a string 'model'", rid)
            return body, fault, rid, self._error(flavour, 400, rid, bad)
        return body, fault, rid, body and self._unknown_model(flavour, body["model"], rid)

    def _unknown_model(self, flavour: Flavour, model: str, rid: str) -> Response | None:
        if model in (self.openai_models if flavour == "openai" else self.anthropic_models):
            return None
        return self._error(flavour, 404, rid, _WIRE[flavour].model_not_found(model, rid))

    def _json(self, flavour: Flavour, data: JSONDict, fault: _Fault | None, rid: str) -> Response:
        headers = {**self._headers(flavour, rid), "content-type": "application/json"}
        kind = fault.kind if fault else None
        if kind == "empty_reply":
            data = {k: v for k, v in data.items() if k not in ("choices", "content", "usage")}
        elif self.usage_patch and isinstance(data.get("usage"), dict):
            data = {**data, "usage": {**data["usage"], **self.usage_patch}}
        raw = json.dumps(data).encode()
        if kind == "malformed":
            return Response(raw[: len(raw) // 2], 200, headers)
        if kind == "drop_mid_stream":
            headers["content-length"] = str(len(raw))
            return ScriptedResponse(200, headers, [raw[: len(raw) // 2]], drop=True)
        return Response(raw, 200, headers)

    def _stream(
        self, flavour: Flavour, frames: list[bytes], cut: int, fault: _Fault | None, rid: str
    ) -> Response:
        headers = {**self._headers(flavour, rid), "content-type": "text/event-stream; charset=utf-8"}
        headers["cache-control"] = "no-cache"
        kind = fault.kind if fault else None
        if kind == "drop_mid_stream":
            return ScriptedResponse(200, headers, frames[:cut], drop=True)
        if kind == "malformed":
            frames = [*frames[:cut], _WIRE[flavour].BROKEN_FRAME]
        return ScriptedResponse(200, headers, frames)

    def _usage_on(self, fault: _Fault | None) -> bool:
        return not self.omit_usage and not (fault is not None and fault.kind == "no_usage")

    def _reply_source(self, messages: Sequence[JSONDict]) -> str:
        if self.reply_text is not None:
            return self.reply_text
        users = [m for m in messages if m.get("role") == "user"]
        return "Echo: " + (oai.content_text(users[-1].get("content")) if users else "")

    # ----------------------------------------------------------------- endpoints
    async def _chat(self, request: Request) -> Response:
        body, fault, rid, early = await self._begin(request, "openai")
        if early is not None:
            return early
        enc = oai.encoding(oai.encoding_name_for_model(body["model"]))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        reply = oai.make_reply(enc, self._reply_source(body.get("messages", [])), limit)
        extras: dict[str, Any] = {
            "usage": self._usage_on(fault), "cached": self.cached_tokens,
            "reasoning": self.reasoning_tokens, "ident": f"chatcmpl-fake{rid[8:]}",
        }  # fmt: skip
        if not body.get("stream"):
            return self._json("openai", oai.chat_completion(body, reply, **extras), fault, rid)
        frames, cut = oai.chat_stream_frames(body, enc, reply, **extras)
        return self._stream("openai", frames, cut, fault, rid)

    async def _messages(self, request: Request) -> Response:
        body, fault, rid, early = await self._begin(request, "anthropic")
        if early is not None:
            return early
        enc = oai.encoding(ant.ANTHROPIC_ENCODING)
        reply = oai.make_reply(enc, self._reply_source(body.get("messages", [])), body.get("max_tokens"))
        extras: dict[str, Any] = {
            "usage": self._usage_on(fault), "cache_read": self.cached_tokens,
            "cache_write": self.cache_write_tokens, "cache_write_1h": self.cache_write_1h_tokens,
            "ident": f"msg_fake{rid[8:]}",
        }  # fmt: skip
        if not body.get("stream"):
            return self._json("anthropic", ant.message(body, reply, **extras), fault, rid)
        frames, cut = ant.message_stream_frames(body, reply, **extras)
        return self._stream("anthropic", frames, cut, fault, rid)

    async def _count_tokens(self, request: Request) -> Response:
        body, fault, rid, early = await self._begin(request, "anthropic")
        if early is not None:
            return early
        return self._json("anthropic", {"input_tokens": ant.anthropic_input_tokens(body)}, fault, rid)

    async def _models(self, request: Request) -> Response:
        hdrs = request.headers
        flavour: Flavour = "anthropic" if "x-api-key" in hdrs or "anthropic-version" in hdrs else "openai"
        _, fault, rid, early = await self._begin(request, flavour)
        if early is not None:
            return early
        known = self.openai_models if flavour == "openai" else self.anthropic_models
        if (wanted := request.path_params.get("model_id")) is None:
            page = _WIRE[flavour].models_page(known, dict(request.query_params))
            return self._json(flavour, page, fault, rid)
        missing = self._unknown_model(flavour, wanted, rid)
        return missing or self._json(flavour, _WIRE[flavour].model_object(wanted), fault, rid)
