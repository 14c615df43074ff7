"""Exact OpenAI token counts, offline.

tiktoken normally downloads its BPE files on first use; this machine (and many deployments) cannot,
so the two official files ship inside the package and are loaded here with tiktoken's own loader,
which verifies their SHA-256 exactly as tiktoken does for a download.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import threading
from collections.abc import Sequence
from importlib import resources

import tiktoken

from bot.core.types import Message

__all__ = [
    "ESTIMATE_FACTOR",
    "conservative_text_tokens",
    "count_chat_tokens",
    "count_text_tokens",
    "encoding_for_model",
    "encoding_name_for_model",
]

_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"

# The pattern strings and special tokens below are tiktoken's own (tiktoken_ext/openai_public.py);
# a test checks that our encodings give the same tokens as tiktoken's registry.
_ENCODINGS: dict[str, dict[str, object]] = {
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        "special_tokens": {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    },
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
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
        "special_tokens": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    },
}

_cache: dict[str, tiktoken.Encoding] = {}
_lock = threading.Lock()


def _load(name: str) -> tiktoken.Encoding:
    return encoding_from_bytes(
        name, resources.files("bot.core").joinpath("data", f"{name}.tiktoken").read_bytes()
    )


def encoding_from_bytes(name: str, data: bytes) -> tiktoken.Encoding:
    """Build encoding ``name`` from the bytes of its official rank file, refusing a corrupt one."""
    spec = _ENCODINGS[name]
    # Read and verified here rather than through tiktoken's loader, which would also copy the
    # file into a cache under /tmp (not writable in a locked-down container).
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec["sha256"]:
        raise ValueError(f"the bundled {name}.tiktoken is corrupt (sha256 {digest}); reinstall the package")
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(
        name=name,
        pat_str=str(spec["pat_str"]),
        mergeable_ranks=ranks,
        special_tokens=dict(spec["special_tokens"]),  # type: ignore[call-overload]
    )


@functools.lru_cache(maxsize=256)  # asked on every call; tiktoken's lookup walks prefixes
def encoding_name_for_model(model: str) -> str:
    """Return the encoding OpenAI uses for ``model`` (o200k_base for unknown and newer models)."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return "o200k_base"
    # o200k_harmony (gpt-oss) shares o200k_base's ranks for ordinary text.
    return name if name in _ENCODINGS else "o200k_base"


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """Return the (cached) tiktoken encoding for ``model``, loaded from the bundled files."""
    name = encoding_name_for_model(model)
    enc = _cache.get(name)
    if enc is None:
        with _lock:  # loading takes ~0.3 s; do it once even if two threads race here
            enc = _cache.get(name) or _load(name)
            _cache[name] = enc
    return enc


def count_text_tokens(text: str, model: str) -> int:
    """Count the tokens of plain text (special-token strings are counted as ordinary text)."""
    return len(encoding_for_model(model).encode(text, disallowed_special=()))


def count_chat_tokens(messages: Sequence[Message], model: str) -> int:
    """Count the prompt tokens OpenAI bills for a Chat Completions request.

    OpenAI's documented formula: 3 tokens of framing per message, the tokens of each field, and 3
    more that prime the assistant's reply.
    """
    enc = encoding_for_model(model)
    total = 3
    for message in messages:
        total += 3
        total += _role_tokens(enc, message.role)
        total += len(enc.encode(message.content, disallowed_special=()))
    return total


@functools.lru_cache(maxsize=64)
def _role_tokens(enc: tiktoken.Encoding, role: str) -> int:
    """Tokens of a role name: a handful of roles, counted on every call."""
    return len(enc.encode(role, disallowed_special=()))


#: Tokenizers we cannot run locally (Claude's, a self-hosted model's) are estimated with cl100k
#: and scaled up, so an estimate errs towards reserving or charging too much, never too little.
ESTIMATE_FACTOR = 1.35


def conservative_text_tokens(text: str, model: str, *, exact_tokenizer: bool) -> int:
    """Tokens of ``text``: exact for OpenAI models, a scaled-up estimate for others."""
    if exact_tokenizer:
        return count_text_tokens(text, model)
    return math.ceil(count_text_tokens(text, "gpt-4") * ESTIMATE_FACTOR)
