"""The response cache shared across runs: an identical request (same model, endpoint, messages,
generation parameters, seed and repeat) is answered from here instead of being paid for again,
after ``--overwrite``, under another ``--run-id``, in another study.

One file per entry, renamed into place, each with its key and a checksum (see
:mod:`evalledger.response_cache.store` for why); ``entries`` defines the key and the entry,
``upkeep`` the ``cache stats`` and ``cache prune`` tools. Knows nothing about runs, providers or
tasks: the run part builds the key from its request and decides what a hit means for the bill.
"""

from __future__ import annotations

from evalledger.response_cache.entries import (
    CACHE_DIR_VARIABLE,
    CachedAnswer,
    default_cache_dir,
    entry_path,
    request_key,
    resolve_cache_dir,
)
from evalledger.response_cache.store import CacheCounters, ResponseCache, response_cache_for
from evalledger.response_cache.upkeep import CachePrune, CacheStats, ModelShare, cache_stats, prune_cache

__all__ = [
    "CACHE_DIR_VARIABLE",
    "CacheCounters",
    "CachePrune",
    "CacheStats",
    "CachedAnswer",
    "ModelShare",
    "ResponseCache",
    "cache_stats",
    "default_cache_dir",
    "entry_path",
    "prune_cache",
    "request_key",
    "resolve_cache_dir",
    "response_cache_for",
]
