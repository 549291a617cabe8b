"""The response cache a run reads and writes: look an answer up before a request is sent, store it
once the provider answered.

Why one file per entry, renamed into place
------------------------------------------
The cache is shared by every run of a user: several processes on one host, and Slurm array tasks
on many nodes over a shared filesystem (NFS, Lustre). A database such as SQLite relies on
``fcntl`` locks, which NFS implements badly or not at all, so it is corrupted or blocks there. An
append-only log would need the same locks to interleave writers. Files need none:

* **One entry, one file**, named by its key (the sha256 of the request), under two levels of 256
  directories (:func:`~evalledger.response_cache.entries.entry_path`).
* **Written to a unique temporary name beside it, then renamed over it** (``rename`` is atomic on
  POSIX filesystems and on NFS, where the server performs it). A reader sees the old file, the new
  one, or none: never a mix. Two writers racing on one key each rename a whole entry for the same
  request; whichever lands last wins, and both are valid answers to it. No fsync: after a power
  loss a torn entry is possible, and it is caught below; the run's own ledger is what must survive.
* **Every entry carries its key and a checksum** of its contents. An entry that is not JSON, has a
  wrong checksum, holds another key or malformed fields is *ignored, never trusted*: the request is
  sent, and the fresh answer replaces it. The first such entry of a run is logged (once).
* **A write that fails never fails the run.** A full disk (ENOSPC), a quota (EDQUOT), a read-only
  filesystem (EROFS), a directory without permission: the run warns once, stops writing to the cache
  for the rest of the invocation, and goes on (its answers are in its ledger).

Lookups and stores run in the event loop's thread: a lookup is one ``open`` (a miss costs a few
microseconds on a local disk) and a store a few small metadata operations, cheaper than handing
each to a worker thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from evalledger.config import RunConfig
from evalledger.fsio import write_file_atomically
from evalledger.response_cache.entries import CachedAnswer, decode_entry, encode_entry, entry_path, resolve_cache_dir

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass
class CacheCounters:
    """What one invocation did with the cache."""

    hits: int = 0
    misses: int = 0
    expired: int = 0  # entries older than the TTL, not used (counted as misses too)
    corrupt: int = 0  # entries ignored as untrustworthy (counted as misses too)
    stored: int = 0
    write_failures: int = 0


class ResponseCache:
    """The cache directory ``root`` as a run uses it. ``ttl_days``: entries stored longer ago than
    this are not used (None: no limit). Never raises for the cache's own files."""

    def __init__(self, root: Path, *, ttl_days: float | None = None) -> None:
        self.root = Path(root)
        self.ttl_s = None if ttl_days is None else ttl_days * DAY_S
        self.counters = CacheCounters()
        self.writable = True
        self._dirs: set[Path] = set()  # entry directories known to exist
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer to the request ``key``, or None (no entry, expired, or untrustworthy)."""
        path = entry_path(self.root, key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.counters.misses += 1
            return None
        except OSError as e:  # unreadable (permissions, I/O error): a miss, said once
            self.counters.misses += 1
            self._warn_once("read", f"could not read the response cache entry {path}: {e.strerror or e}; "
                                    "such requests are sent")
            return None
        entry = decode_entry(data, key)
        if isinstance(entry, str):
            self.counters.misses += 1
            self.counters.corrupt += 1
            self._warn_once("corrupt", f"ignored a response cache entry that cannot be trusted ({entry}): {path}; "
                                       "the request is sent and the entry replaced")
            return None
        if self.ttl_s is not None and time.time() - entry.created_ms / 1000 > self.ttl_s:
            self.counters.misses += 1
            self.counters.expired += 1
            return None
        self.counters.hits += 1
        return entry.answer

    def put(self, key: str, answer: CachedAnswer, *, model: str, endpoint: str, epoch: int) -> bool:
        """Store ``answer`` (a successful reply) under ``key``; False if it was not stored. A failure
        warns once and turns writing off for the rest of the invocation; it never raises."""
        if not self.writable:
            return False
        path = entry_path(self.root, key)
        try:
            data = encode_entry(key, created_ms=int(time.time() * 1000), model=model, endpoint=endpoint,
                                epoch=epoch, answer=answer)
            self._write(path, data)
        except OSError as e:
            self.writable = False
            self.counters.write_failures += 1
            self._warn_once("write", f"could not write to the response cache in {self.root}: {e.strerror or e}; "
                                     "the run goes on without storing its answers there")
            return False
        self.counters.stored += 1
        return True

    def _write(self, path: Path, data: bytes) -> None:
        """Write the entry atomically (temporary file, rename), creating its directories once. A
        directory removed meanwhile (by hand) is made again."""
        for attempt in (1, 2):
            if path.parent not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(path.parent)
            try:
                write_file_atomically(path, lambda tmp: _write_new(tmp, data), durable=False)
                return
            except FileNotFoundError:
                self._dirs.discard(path.parent)
                if attempt == 2:
                    raise

    def _warn_once(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning(message)


def _write_new(tmp: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``tmp`` (one ``os.write`` loop, so a short write is completed)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def response_cache_for(config: RunConfig) -> ResponseCache | None:
    """The cache a run uses: None with ``--no-cache`` (nothing read, nothing written)."""
    if not config.cache:
        return None
    return ResponseCache(resolve_cache_dir(config.cache_dir), ttl_days=config.cache_ttl)
