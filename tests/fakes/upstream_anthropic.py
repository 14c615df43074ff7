"""Anthropic Messages wire format for the fake upstream: token formula, message bodies, SSE events."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.upstream_openai import Reply, content_text, encoding, split_for_stream

__all__ = [
    "ANTHROPIC_ENCODING",
    "BROKEN_FRAME",
    "DEFAULT_MODELS",
    "anthropic_error",
    "anthropic_input_tokens",
    "auth_error",
    "bad_request",
    "echoed_key_error",
    "message",
    "message_stream_frames",
    "model_not_found",
    "model_object",
    "models_page",
    "status_error",
]

JSONDict = dict[str, Any]

ANTHROPIC_ENCODING = "cl100k_base"
"""The fake counts (and truncates) Anthropic text with this tiktoken encoding."""


def _count(text: str) -> int:
    return len(encoding(ANTHROPIC_ENCODING).encode(text, disallowed_special=()))


def anthropic_input_tokens(body: JSONDict) -> int:
    """The fake's deterministic Anthropic prompt size: tok(system) + Σ_messages (4 + tok(content)).

    ``tok`` is cl100k_base over :func:`content_text` (text blocks concatenated, other blocks as compact
    JSON); ``tools`` and roles are not counted. This is both ``count_tokens``' answer and the reported
    ``usage.input_tokens``; configured cache reads/writes are reported on top of it (Anthropic's
    ``input_tokens`` excludes them).
    """
    total = _count(content_text(body.get("system")))
    for msg in body.get("messages", []):
        total += 4 + _count(content_text(msg.get("content")))
    return total


def _usage(
    body: JSONDict, output_tokens: int, cache_read: int, cache_write: int, cache_write_1h: int
) -> JSONDict:
    return {
        "input_tokens": anthropic_input_tokens(body),
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_write - cache_write_1h,
            "ephemeral_1h_input_tokens": cache_write_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message(
    body: JSONDict,
    reply: Reply,
    *,
    usage: bool,
    cache_read: int,
    cache_write: int,
    ident: str,
    cache_write_1h: int = 0,
) -> JSONDict:
    """A non-streaming ``message`` object (``usage`` key left out entirely when ``usage`` is false)."""
    out: JSONDict = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "max_tokens" if reply.truncated else "end_turn",
        "stop_sequence": None,
    }
    if usage:
        out["usage"] = _usage(body, reply.n_tokens, cache_read, cache_write, cache_write_1h)
    return out


def _event(name: str, data: JSONDict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def message_stream_frames(
    body: JSONDict,
    reply: Reply,
    *,
    usage: bool,
    cache_read: int,
    cache_write: int,
    ident: str,
    cache_write_1h: int = 0,
) -> tuple[list[bytes], int]:
    """SSE events of a streamed message and the cut index for ``drop_mid_stream``.

    Events: ``message_start`` (usage with input/cache tokens and ``output_tokens: 1``),
    ``content_block_start``, ``ping``, one ``content_block_delta`` (``text_delta``) per piece,
    ``content_block_stop``, ``message_delta`` (stop_reason and cumulative usage, as the real API sends)
    and ``message_stop``. Without ``usage`` the ``usage`` keys are left out. The cut index keeps
    everything up to and including the first ``ceil(pieces / 2)`` deltas.
    """
    start = message(
        body, reply, usage=usage, cache_read=cache_read, cache_write=cache_write, ident=ident,
        cache_write_1h=cache_write_1h,
    )  # fmt: skip
    start.update(content=[], stop_reason=None)
    if usage:
        start["usage"]["output_tokens"] = 1
    pieces = split_for_stream(encoding(ANTHROPIC_ENCODING), reply)
    frames = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _event("ping", {"type": "ping"}),
    ]
    for piece in pieces:
        delta = {"type": "text_delta", "text": piece}
        frames.append(
            _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    cut = 3 + (len(pieces) + 1) // 2
    frames.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    delta_event: JSONDict = {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens" if reply.truncated else "end_turn", "stop_sequence": None},
    }
    if usage:
        final = _usage(body, reply.n_tokens, cache_read, cache_write, cache_write_1h)
        delta_event["usage"] = {
            k: final[k]
            for k in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            )
        }
    frames.append(_event("message_delta", delta_event))
    frames.append(_event("message_stop", {"type": "message_stop"}))
    return frames, cut


DEFAULT_MODELS = (
    "claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-6", "claude-sonnet-4-6", "claude-haiku-4-5",
    "claude-haiku-4-5-20251001", "claude-sonnet-5", "claude-opus-5", "claude-sonnet-5-5", "claude-haiku-5-5",
    "claude-sonnet-4-5", "claude-sonnet-4-5-20250929",  # deprecated: the SDK warns when they are used
)  # fmt: skip
"""Model ids the fake knows by default."""

BROKEN_FRAME = b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n'
"""The SSE frame with broken JSON sent by the ``malformed`` fault."""

_STATUS_ERRORS = {
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    529: ("overloaded_error", "Overloaded"),
}


def anthropic_error(type_: str, message_: str, request_id: str) -> JSONDict:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    return {"type": "error", "error": {"type": type_, "message": message_}, "request_id": request_id}


def status_error(status: int, request_id: str) -> JSONDict:
    """Body of a 429/500/503/529 error."""
    return anthropic_error(*_STATUS_ERRORS[status], request_id)


def auth_error(key: str, request_id: str) -> JSONDict:
    """Body of a 401 for a wrong key (or a missing one when ``key`` is empty)."""
    msg = "invalid x-api-key" if key else "x-api-key header is required"
    return anthropic_error("authentication_error", msg, request_id)


def echoed_key_error(key: str, request_id: str) -> JSONDict:
    """Body of a 401 that echoes the whole key (the ``auth_echo`` fault): what must never reach a user."""
    return anthropic_error("authentication_error", f"Incorrect API key provided: Bearer {key}", request_id)


def bad_request(message_: str, request_id: str) -> JSONDict:
    """Body of a 400."""
    return anthropic_error("invalid_request_error", message_, request_id)


def model_not_found(model: str, request_id: str) -> JSONDict:
    """Body of the 404 for an unknown model."""
    return anthropic_error("not_found_error", f"model: {model}", request_id)


def model_object(model: str) -> JSONDict:
    """A ``ModelInfo`` item of ``GET /v1/models``."""
    return {
        "type": "model",
        "id": model,
        "display_name": model,
        "created_at": "2025-01-01T00:00:00Z",
        "lifecycle": "active",
    }


def models_page(models: list[str], query: dict[str, str]) -> JSONDict:
    """``GET /v1/models`` page honouring ``after_id`` and ``limit`` (default 20)."""
    start = models.index(query["after_id"]) + 1 if query.get("after_id") in models else 0
    page = [model_object(m) for m in models[start : start + int(query.get("limit", "20"))]]
    return {
        "data": page,
        "has_more": start + len(page) < len(models),
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
