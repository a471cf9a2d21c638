"""Pausing Python's cyclic garbage collector around allocation-heavy task code.

Reading Kafka records and decoding Avro values keep many container objects alive at once (tens
of thousands of live ``Message`` objects while a Bronze task reads; about 20 containers per record
while a batch of values is decoded). Each allocation burst triggers generation scans that walk
all of them: measured, they cost as much as the decoding itself, and twice the reading itself.
None of these objects forms reference cycles, so reference counting frees them all anyway.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block; re-enable it afterwards only if it was enabled
    before (so nested pauses, and code that runs with it disabled, are left as they are)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["gc_paused"]
