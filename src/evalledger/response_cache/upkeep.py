"""Looking after a response cache directory: what it holds (``evalledger cache stats``) and removing
old entries (``evalledger cache prune``).

Both read every entry and check it as a run would (:func:`~evalledger.response_cache.entries.decode_entry`).
``prune`` removes entries stored at least ``older_than_days`` ago, entries that cannot be trusted
(a run would ignore them anyway) and temporary files a killed writer left (after an hour, so a
write in progress is never touched). It never removes a directory: a run may be about to write
into it. Pruning while runs use the cache is safe: at worst an entry being replaced at that instant
is removed, and its request is sent again by the next run that needs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalledger.response_cache.entries import ENTRY_DIR, ENTRY_SUFFIX, decode_entry, is_key, resolve_cache_dir
from evalledger.response_cache.store import DAY_S

#: A temporary file older than this is a killed writer's leftover, not a write in progress.
STALE_TEMP_S = 3600.0


@dataclass
class ModelShare:
    """The entries of one ``--model`` string."""

    entries: int = 0
    bytes: int = 0


@dataclass
class CacheStats:
    """What a cache directory holds (:func:`cache_stats`). Times are ISO 8601 UTC; ``bytes`` are the
    files' sizes."""

    cache_dir: str
    exists: bool
    entries: int = 0
    bytes: int = 0
    oldest: str | None = None
    newest: str | None = None
    by_model: dict[str, ModelShare] = field(default_factory=dict)
    corrupt: int = 0  # files a run would ignore
    corrupt_bytes: int = 0
    temp_files: int = 0  # leftovers of killed writers (and writes in progress)

    def to_dict(self) -> dict[str, Any]:
        """As JSON (``cache stats --json``)."""
        out = dict(self.__dict__)
        out["by_model"] = {m: share.__dict__.copy() for m, share in sorted(self.by_model.items())}
        return out


@dataclass
class CachePrune:
    """What :func:`prune_cache` removed (or, with ``dry_run``, would remove)."""

    cache_dir: str
    dry_run: bool
    older_than_days: float | None
    entries: int = 0  # old entries
    corrupt: int = 0
    temp_files: int = 0
    bytes: int = 0
    kept: int = 0  # entries left in place
    failed: list[str] = field(default_factory=list)  # files that could not be removed, with why

    def to_dict(self) -> dict[str, Any]:
        """As JSON (``cache prune --json``)."""
        return dict(self.__dict__)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _files(root: Path) -> Iterator[os.DirEntry[str]]:
    """Every file under the cache's entry directories (two levels), in no particular order."""
    top = root / ENTRY_DIR
    for level1 in _subdirs(top):
        for level2 in _subdirs(Path(level1.path)):
            try:
                with os.scandir(level2.path) as it:
                    yield from (e for e in it if e.is_file(follow_symlinks=False))
            except OSError:
                continue


def _subdirs(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _read(entry: os.DirEntry[str]) -> tuple[bytes | None, int]:
    """The file's bytes (None if it vanished or cannot be read) and its size."""
    try:
        with open(entry.path, "rb") as f:
            data = f.read()
    except OSError:
        return None, 0
    return data, len(data)


def _entry_key(name: str) -> str | None:
    """The key an entry file's name says it holds, or None for another file."""
    key = name[:-len(ENTRY_SUFFIX)] if name.endswith(ENTRY_SUFFIX) else ""
    return key if is_key(key) else None


def cache_stats(cache_dir: str | os.PathLike[str] | None = None) -> CacheStats:
    """What the response cache in ``cache_dir`` (None: the default, see
    :func:`~evalledger.response_cache.entries.default_cache_dir`) holds: entries, bytes, the oldest
    and newest entry, entries and bytes per model, and the files a run would ignore."""
    root = resolve_cache_dir(cache_dir)
    stats = CacheStats(cache_dir=str(root), exists=root.is_dir())
    oldest = newest = None
    for f in _files(root):
        if _is_temp(f.name):
            stats.temp_files += 1
            continue
        data, size = _read(f)
        if data is None:
            continue
        entry = decode_entry(data, _entry_key(f.name))
        if isinstance(entry, str) or _entry_key(f.name) is None:
            stats.corrupt += 1
            stats.corrupt_bytes += size
            continue
        stats.entries += 1
        stats.bytes += size
        share = stats.by_model.setdefault(entry.model, ModelShare())
        share.entries += 1
        share.bytes += size
        oldest = entry.created_ms if oldest is None else min(oldest, entry.created_ms)
        newest = entry.created_ms if newest is None else max(newest, entry.created_ms)
    stats.oldest = None if oldest is None else _iso(oldest)
    stats.newest = None if newest is None else _iso(newest)
    return stats


def prune_cache(cache_dir: str | os.PathLike[str] | None = None, *, older_than_days: float | None = None,
                dry_run: bool = False) -> CachePrune:
    """Remove from the response cache in ``cache_dir`` (None: the default) every entry stored at
    least ``older_than_days`` ago (None: no entry is too old), every file a run would not trust,
    and temporary files left by killed writers. ``dry_run``: only count them."""
    if older_than_days is not None and not older_than_days >= 0:
        raise ValueError(f"older_than_days must be 0 or more, not {older_than_days}")
    root = resolve_cache_dir(cache_dir)
    result = CachePrune(cache_dir=str(root), dry_run=dry_run, older_than_days=older_than_days)
    now = time.time()
    for f in _files(root):
        try:
            st = f.stat(follow_symlinks=False)
        except OSError:
            continue
        if _is_temp(f.name):
            if now - st.st_mtime < STALE_TEMP_S:
                continue
            kind = "temp_files"
        else:
            data, _ = _read(f)
            if data is None:
                continue
            entry = decode_entry(data, _entry_key(f.name))
            if isinstance(entry, str) or _entry_key(f.name) is None:
                kind = "corrupt"
            elif older_than_days is not None and now - entry.created_ms / 1000 >= older_than_days * DAY_S:
                kind = "entries"
            else:
                result.kept += 1
                continue
        if not dry_run:
            try:
                os.unlink(f.path)
            except FileNotFoundError:
                continue
            except OSError as e:
                result.failed.append(f"{f.path}: {e.strerror or e}")
                continue
        setattr(result, kind, getattr(result, kind) + 1)
        result.bytes += st.st_size
    return result
