"""Pause Python's cyclic garbage collector around bulk loads.

Parsing a million dataset rows or ledger records allocates millions of small containers (dicts,
tuples, lists), none of them in a reference cycle. Each allocation burst triggers collections that
walk every tracked object so far, a third of the time of such a load here. Pausing the collector
for the load and resuming it afterwards changes nothing else: reference counting still frees
everything as usual, and any cycle is collected at the next collection after the pause.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector inside the block (if it was enabled), re-enable it after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
