"""The sha256 of a dataset file, remembered by its stat so that a resume need not read it.

The hash names the run (it is part of the run ID), so a resume used to read and hash the whole
file (0.2 s and the file's size in memory for 134 MB) before it could find its run directory. Like
git's index, a file whose size, modification and change times (ns), inode and device are those it
had when it was hashed is taken to hold the same bytes. The change time cannot be set by a user:
any write to the file moves it. A file that had changed less than ``STABLE_NS`` before it was
hashed is never remembered, so a write landing in the same tick of a coarse file-system clock as
the hashing cannot go unnoticed.

One small JSON file per dataset path under ``<user cache>/evalledger/dataset-hashes/``, written
atomically; a damaged or foreign entry is ignored; nothing here ever fails a run.
``EVALLEDGER_HASH_CACHE=off`` turns it off. ``validate`` never uses it: it reads and hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from evalledger.datasets.files import read_dataset_file
from evalledger.fsio import switch_on, user_cache_home, write_json_atomic

HASH_CACHE_VARIABLE = "EVALLEDGER_HASH_CACHE"
#: A file must have been unchanged this long (ns) before it was hashed for the hash to be kept.
STABLE_NS = 2_000_000_000
_FORMAT = "evalledger-dataset-sha256-v1"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def hash_cache_dir() -> Path:
    """Where the remembered hashes live."""
    return user_cache_home() / "evalledger" / "dataset-hashes"


def _enabled() -> bool:
    return switch_on(HASH_CACHE_VARIABLE)


def _entry(path: Path) -> tuple[Path, str]:
    where = str(path.resolve())
    return hash_cache_dir() / f"{hashlib.sha256(where.encode()).hexdigest()[:32]}.json", where


def _fingerprint(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
            "dev": st.st_dev}


def _checksum(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def remembered_sha256(path: Path, st: os.stat_result) -> str | None:
    """The sha256 remembered for ``path`` if the file's stat ``st`` is the one it had then, else None."""
    if not _enabled():
        return None
    entry, where = _entry(path)
    try:
        data = json.loads(entry.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    fields = {k: v for k, v in data.items() if k != "checksum"}
    sha = fields.get("sha256")
    ok = (fields.get("format") == _FORMAT and fields.get("path") == where and fields.get("stat") == _fingerprint(st)
          and isinstance(sha, str) and _SHA256.fullmatch(sha) is not None and data.get("checksum") == _checksum(fields))
    return sha if ok else None


def remember_sha256(path: Path, st: os.stat_result, sha256: str, hashed_at_ns: int) -> None:
    """Remember that ``path`` with stat ``st`` (taken before its bytes were read, at ``hashed_at_ns``
    by the wall clock) hashed to ``sha256``; not if it had changed within STABLE_NS before."""
    if not _enabled() or hashed_at_ns - max(st.st_mtime_ns, st.st_ctime_ns) < STABLE_NS:
        return
    entry, where = _entry(path)
    fields = {"format": _FORMAT, "path": where, "stat": _fingerprint(st), "sha256": sha256}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(entry, {**fields, "checksum": _checksum(fields)})
    except OSError:
        pass  # a cache: a read-only home or a full disk only costs the next resume a hash


def hashed_dataset(path: Path, *, remembered: bool) -> tuple[bytes | None, os.stat_result, str]:
    """The dataset file's bytes, stat and sha256; with ``remembered``, a hash remembered for this
    very file (same stat) is used and its bytes are not read (None)."""
    if remembered:
        try:
            st = path.stat()
        except OSError:
            st = None  # read_dataset_file says what is wrong
        sha = None if st is None else remembered_sha256(path, st)
        if st is not None and sha is not None:
            return None, st, sha
    hashed_at = time.time_ns()  # before the bytes are read: see remember_sha256
    raw, st = read_dataset_file(path)
    sha = hashlib.sha256(raw).hexdigest()
    remember_sha256(path, st, sha, hashed_at)
    return raw, st, sha


def forget_sha256(path: Path) -> None:
    """Drop what is remembered for ``path`` (its bytes did not match it)."""
    try:
        _entry(path)[0].unlink()
    except OSError:
        pass


__all__ = ["HASH_CACHE_VARIABLE", "STABLE_NS", "forget_sha256", "hash_cache_dir", "hashed_dataset", "remember_sha256",
           "remembered_sha256"]
