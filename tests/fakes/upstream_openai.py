"""OpenAI wire format for the fake upstream: offline tiktoken encodings, token counts, response bodies.

Everything here is a pure function of the request body, so tests can compute the exact values the fake
server will report.
"""

from __future__ import annotations

import codecs
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken.load import load_tiktoken_bpe

__all__ = [
    "BROKEN_FRAME",
    "DEFAULT_MODELS",
    "Reply",
    "auth_error",
    "bad_request",
    "chat_completion",
    "chat_stream_frames",
    "content_text",
    "echoed_key_error",
    "encoding",
    "encoding_name_for_model",
    "make_reply",
    "model_not_found",
    "model_object",
    "models_page",
    "openai_error",
    "openai_prompt_tokens",
    "split_for_stream",
    "status_error",
]

JSONDict = dict[str, Any]

_DATA_DIR = Path(__file__).resolve().parents[2] / "bot" / "core" / "data"
_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"
# pat_str, special tokens and hashes copied from tiktoken_ext/openai_public.py.
_SPECS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}
_cache: dict[str, tiktoken.Encoding] = {}
_lock = threading.Lock()


def encoding(name: str) -> tiktoken.Encoding:
    """Return the cached ``cl100k_base`` / ``o200k_base`` encoding, loaded from ``bot/core/data``."""
    with _lock:
        if name not in _cache:
            sha, pat_str, special = _SPECS[name]
            ranks = load_tiktoken_bpe(str(_DATA_DIR / f"{name}.tiktoken"), expected_hash=sha)
            _cache[name] = tiktoken.Encoding(
                name=name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=dict(special)
            )
        return _cache[name]


def encoding_name_for_model(model: str) -> str:
    """gpt-4o*/gpt-4.1*/o<digit>*/gpt-5* -> o200k_base; other gpt-4*/gpt-3.5* -> cl100k_base; else o200k."""
    if model.startswith(("gpt-4o", "gpt-4.1", "gpt-5")) or re.match(r"o\d", model):
        return "o200k_base"
    if model.startswith(("gpt-4", "gpt-3.5")):
        return "cl100k_base"
    return "o200k_base"


def _tokens(enc: tiktoken.Encoding, text: str) -> list[int]:
    return enc.encode(text, disallowed_special=())


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string as is; a list of parts/blocks concatenated, where a part
    with a string ``text`` contributes that text and any other part its compact sorted JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            else:
                out.append(json.dumps(part, sort_keys=True, separators=(",", ":")))
        return "".join(out)
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def openai_prompt_tokens(body: JSONDict) -> int:
    """OpenAI's chat formula: 3 + Σ_messages (3 + tok(role) + tok(content) + [tok(name) + 1]).

    Encoding from :func:`encoding_name_for_model`; special-token strings count as plain text.
    """
    enc = encoding(encoding_name_for_model(str(body.get("model", ""))))
    total = 3
    for message in body.get("messages", []):
        total += 3 + len(_tokens(enc, str(message.get("role", ""))))
        total += len(_tokens(enc, content_text(message.get("content"))))
        if message.get("name") is not None:
            total += len(_tokens(enc, str(message["name"]))) + 1
    return total


@dataclass(frozen=True)
class Reply:
    """A generated reply: the text, its token count and whether ``max_tokens`` cut it short."""

    text: str
    tokens: list[int]
    truncated: bool

    @property
    def n_tokens(self) -> int:
        """Number of tokens in :attr:`text`."""
        return len(self.tokens)


def make_reply(enc: tiktoken.Encoding, text: str, max_tokens: int | None) -> Reply:
    """Encode ``text`` and keep at most ``max_tokens`` tokens."""
    tokens = _tokens(enc, text)
    if max_tokens is not None and len(tokens) > max_tokens:
        kept = tokens[: max(max_tokens, 0)]
        return Reply(enc.decode(kept), kept, True)
    return Reply(text, tokens, False)


def split_for_stream(enc: tiktoken.Encoding, reply: Reply, per: int = 2) -> list[str]:
    """Split the reply into stream pieces of about ``per`` tokens without breaking UTF-8 characters."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []
    for i in range(0, reply.n_tokens, per):
        piece = decoder.decode(enc.decode_bytes(reply.tokens[i : i + per]))
        if piece:
            pieces.append(piece)
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
    return pieces or [""]


def _usage(prompt: int, reply: Reply, cached: int, reasoning: int) -> JSONDict:
    completion = reply.n_tokens + reasoning
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(
    body: JSONDict, reply: Reply, *, usage: bool, cached: int, reasoning: int, ident: str
) -> JSONDict:
    """A non-streaming ``chat.completion`` object."""
    out: JSONDict = {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "length" if reply.truncated else "stop",
            }
        ],
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if usage:
        out["usage"] = _usage(openai_prompt_tokens(body), reply, cached, reasoning)
    return out


def _sse(data: JSONDict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}\n\n".encode()


def chat_stream_frames(
    body: JSONDict,
    enc: tiktoken.Encoding,
    reply: Reply,
    *,
    usage: bool,
    cached: int,
    reasoning: int,
    ident: str,
) -> tuple[list[bytes], int]:
    """SSE frames of a streamed completion and the cut index for ``drop_mid_stream``.

    Frames: a role chunk, one chunk per piece of :func:`split_for_stream`, a chunk with
    ``finish_reason``, the usage chunk (``choices: []``) when ``stream_options.include_usage`` and
    ``usage`` are true, and ``data: [DONE]``. The cut index keeps the role chunk and the first
    ``ceil(pieces / 2)`` content chunks.
    """
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and usage
    base: JSONDict = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body["model"],
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: JSONDict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    pieces = split_for_stream(enc, reply)
    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": piece}) for piece in pieces]
    cut = 1 + (len(pieces) + 1) // 2
    frames.append(chunk({}, "length" if reply.truncated else "stop"))
    if include_usage:
        frames.append(
            _sse(
                {**base, "choices": [], "usage": _usage(openai_prompt_tokens(body), reply, cached, reasoning)}
            )
        )
    frames.append(_sse("[DONE]"))
    return frames, cut


DEFAULT_MODELS = (
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5", "gpt-5-mini", "gpt-5-nano",
    "gpt-5.1", "gpt-5.2", "gpt-5.4", "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.5", "o3", "o3-mini", "o4-mini",
    "gpt-4", "gpt-4-turbo", "gpt-3.5-turbo",
)  # fmt: skip
"""Model ids the fake knows by default."""

BROKEN_FRAME = b'data: {"id": "chatcmpl-broken", "choi\n\n'
"""The SSE frame with broken JSON sent by the ``malformed`` fault."""

_STATUS_ERRORS = {
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    529: ("Overloaded", "server_error", None),
}


def openai_error(message: str, type_: str, code: str | None = None, param: str | None = None) -> JSONDict:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_error(status: int, request_id: str) -> JSONDict:
    """Body of a 429/500/503/529 error."""
    return openai_error(*_STATUS_ERRORS[status])


def auth_error(key: str, request_id: str) -> JSONDict:
    """Body of a 401 for a wrong key (or a missing one when ``key`` is empty)."""
    if key:
        hint = f"Incorrect API key provided: {key[:3]}***{key[-2:]}."
        return openai_error(hint, "invalid_request_error", "invalid_api_key")
    msg = "You didn't provide an API key. Provide it in the Authorization header (Bearer auth)."
    return openai_error(msg, "invalid_request_error")


def echoed_key_error(key: str, request_id: str) -> JSONDict:
    """Body of a 401 that echoes the whole key (the ``auth_echo`` fault): what must never reach a user."""
    return openai_error(
        f"Incorrect API key provided: Bearer {key}", "invalid_request_error", "invalid_api_key"
    )


def bad_request(message: str, request_id: str) -> JSONDict:
    """Body of a 400."""
    return openai_error(message, "invalid_request_error")


def model_not_found(model: str, request_id: str) -> JSONDict:
    """Body of the 404 for an unknown model."""
    msg = f"The model `{model}` does not exist or you do not have access to it."
    return openai_error(msg, "invalid_request_error", "model_not_found")


def model_object(model: str) -> JSONDict:
    """An item of ``GET /v1/models``."""
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}


def models_page(models: list[str], query: dict[str, str]) -> JSONDict:
    """``GET /v1/models``: every model, no paging."""
    return {"object": "list", "data": [model_object(m) for m in models]}
