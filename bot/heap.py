"""The garbage collector and the objects that live as long as the process: frozen after start-up.

Why: CPython's full (generation 2) collection walks every object that survived two younger
collections. After start-up that is ~320,000 objects here (the config, SQLAlchemy's tables,
genai-prices' price data, both SDKs' types), none of which will ever become garbage. A full
collection comes every few thousand calls and paused the event loop for tens of milliseconds
(docs/benchmarks.md): a latency spike for whoever was waiting.
``gc.freeze()`` moves everything alive now into a permanent generation the collector skips, so
later full collections walk only what was allocated since. It is the standard remedy
(CPython's ``gc.freeze`` documentation; Instagram's "Dismissing Python Garbage Collection").

Nothing frozen is ever collected, so this runs once, after a ``gc.collect()``, when start-up's
own garbage is gone: ``bot serve`` calls it once the providers' SDKs are loaded.

It also raises the youngest generation's threshold from 700 to ``YOUNG_THRESHOLD``. Why: that
threshold counts allocations minus deallocations of *any* generation. With 50 calls in flight
each call's objects outlive a few young collections, are promoted, and die in generation 1, so
the count keeps falling back while generation 0 fills with the live calls' objects, and every
young collection walks thousands of them (measured in docs/benchmarks.md, "Core overhead"). At 10,000, calls at 50 in flight run
almost no young collection, and the rare one walks what it always did.
Cyclic garbage waits longer for it, bounded by those 10,000 objects (a few MB).
"""

from __future__ import annotations

import asyncio
import gc
import logging

__all__ = ["YOUNG_THRESHOLD", "freeze_startup_heap", "freeze_when_ready"]

log = logging.getLogger(__name__)

#: Generation 0's collection threshold once start-up is over (CPython's default is 700).
YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> int:
    """Collect start-up's garbage, freeze what is left and raise generation 0's threshold.

    Returns how many objects are frozen. A threshold already above ``YOUNG_THRESHOLD`` (or the
    collector disabled) is left as the operator set it.
    """
    gc.collect()
    gc.freeze()
    young, *older = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *older)
    return gc.get_freeze_count()


async def freeze_when_ready(ready: asyncio.Event) -> None:
    """Wait for ``ready`` (the SDKs are loaded), then ``freeze_startup_heap`` once."""
    await ready.wait()
    frozen = freeze_startup_heap()
    log.info("start-up objects frozen out of garbage collection", extra={"frozen_objects": frozen})
