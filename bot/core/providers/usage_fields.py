"""A provider's reported usage, read with genai-prices' own map of its billed fields.

genai-prices knows, per provider and API, which fields of a reply's ``usage`` are billed and how
they add up (Anthropic's input is ``input_tokens`` plus its cache reads and writes; its 1-hour
cache writes are ``cache_creation.ephemeral_1h_input_tokens``; OpenAI's cache writes are
``prompt_tokens_details.cache_write_tokens``…). We read the reply with that map instead of
mapping fields by hand, so a field it learns is one we bill. Its own ``extract_usage`` also
matches the model against its whole price list (about 0.1 ms); the map alone is compiled once
per provider into attribute paths, read off the SDK's objects in a few microseconds.
"""

from __future__ import annotations

import functools
from typing import Any

from genai_prices import data_snapshot

from bot.core.types import Usage

__all__ = ["billed_usage"]

#: genai-prices' usage fields, as ``Usage``'s (the others, audio and web searches, are not priced
#: by the gateway yet).
_OURS = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_tokens": "cache_read_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "cache_write_1h_tokens": "cache_write_1h_tokens",
    "output_reasoning_tokens": "reasoning_tokens",
}

#: One field's place in ``usage``, where it goes, and whether a reply without it has no usage.
_Mapping = tuple[tuple[str, ...], str, bool]


@functools.cache
def _field_map(provider_id: str, api_flavor: str) -> tuple[_Mapping, ...]:
    """genai-prices' usage mappings of ``provider_id``'s ``api_flavor`` replies, for ``Usage``."""
    provider = next(p for p in data_snapshot.get_snapshot().providers if p.id == provider_id)
    extractor = next(e for e in provider.extractors or () if e.api_flavor == api_flavor)
    mappings = []
    for m in extractor.mappings:
        path = (m.path,) if isinstance(m.path, str) else tuple(str(p) for p in m.path)
        if m.dest in _OURS:
            mappings.append((path, _OURS[m.dest], m.required))
    return tuple(mappings)


def _read(raw: Any, path: tuple[str, ...]) -> Any:
    value = raw
    for key in path:
        if value is None:
            return None
        # ``type(...) is dict``, not an ABC check: this runs a dozen times per call.
        value = value.get(key) if type(value) is dict else getattr(value, key, None)
    return value


def billed_usage(raw: Any, provider_id: str, api_flavor: str) -> Usage | None:
    """The ``Usage`` of a reply's ``usage`` object (an SDK object or a dict) as ``provider_id``
    bills it; None when there is none, or a field genai-prices requires is missing."""
    if raw is None:
        return None
    counts = dict.fromkeys(_OURS.values(), 0)
    for path, ours, required in _field_map(provider_id, api_flavor):
        value = _read(raw, path)
        if value is None:
            if required:
                return None
            continue
        counts[ours] += int(value)
    return Usage(**counts)
