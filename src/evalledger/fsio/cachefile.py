"""Small cache files under ``<run_dir>/.cache/``: a JSON header line, then byte blobs, checksummed.

Used by the dataset's validated index (:mod:`evalledger.datasets.index`) and the ledger's per-file index
(:mod:`evalledger.ledger.index`). A file is trusted only whole: the header names each blob's length and a
blake2b of all of them, so a copy torn or zeroed by a crash (they are written without fsync) is
rejected and the data is recomputed. Writing goes to a unique temporary name renamed over the old
file, so concurrent writers each write a whole file and the last rename wins. Nothing here is
ever results: deleting ``.cache`` at any time is safe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any, Callable

from evalledger.fsio.atomic import write_file_atomically

MIN_FREE_BYTES = 256 << 20  # never compete with the ledger for the last of the disk


def _digest(blobs: list[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()


def write_atomically(path: Path, run_dir: Path, size: int, min_free: int, write_to: Callable[[Path], None]) -> bool:
    """Write a cache file through ``write_to(temporary path)`` and rename it over ``path``.

    False, with nothing left behind, when it cannot or should not be written: ``run_dir`` belongs to
    another user (never leave them files they cannot delete), less than ``min_free`` bytes plus
    twice ``size`` are free (never compete with the ledger for the disk), or anything fails (a
    read-only directory, a full disk, a race: caches are optional). Shared by these small files and
    the readers' Arrow copies (:mod:`.scan_cache`).
    """
    try:
        if run_dir.stat().st_uid != os.geteuid():
            return False
        st = os.statvfs(run_dir)
        if st.f_bavail * st.f_frsize < min_free + 2 * size:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_file_atomically(path, write_to, durable=False)
    except Exception:  # noqa: BLE001 - the cache is optional
        return False


def write(path: Path, header: dict[str, Any], blobs: list[bytes], *, run_dir: Path) -> bool:
    """Write ``header`` and ``blobs`` to ``path``; False (nothing left behind) when it cannot or should not."""
    head = json.dumps({**header, "blobs": [len(b) for b in blobs], "digest": _digest(blobs)}).encode() + b"\n"

    def write_to(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(head)
            for blob in blobs:
                f.write(blob)

    return write_atomically(path, run_dir, sum(map(len, blobs)), MIN_FREE_BYTES, write_to)


# The validity fingerprint of a file's first ``end`` bytes, shared by every per-file cache.
_HEAD = 64 << 10
_SLICE = 4 << 10
_SLICES = 16


def fingerprint(f: IO[bytes], end: int) -> str:
    """A hash of samples of the file's first ``end`` bytes (cheap: about 200 KiB read): the first and
    last 64 KiB before ``end`` and 16 slices of 4 KiB spread over them."""
    h = hashlib.blake2b(digest_size=16)
    h.update(end.to_bytes(8, "little"))
    if end <= 2 * _HEAD + _SLICES * _SLICE:
        f.seek(0)
        h.update(f.read(end))
        return h.hexdigest()
    step = (end - 2 * _HEAD) // (_SLICES + 1)
    spans = [(0, _HEAD), *((_HEAD + step * (i + 1), _SLICE) for i in range(_SLICES)), (end - _HEAD, _HEAD)]
    for start, size in spans:
        f.seek(start)
        h.update(f.read(size))
    return h.hexdigest()


def read_header(path: Path) -> dict[str, Any] | None:
    """The header of ``path`` alone (its first line), unchecked: the blobs and their digest are not
    read. None if it is missing or its first line is no JSON object."""
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def read(path: Path) -> tuple[dict[str, Any], list[bytes]] | None:
    """The header and blobs of ``path``, or None if it is missing, torn or does not check out."""
    try:
        data = path.read_bytes()
        cut = data.index(b"\n") + 1
        header = json.loads(data[:cut])
        lengths = header["blobs"]
        if not isinstance(header, dict) or sum(lengths) != len(data) - cut:
            return None
        blobs, at = [], cut
        for n in lengths:
            blobs.append(data[at:at + n])
            at += n
        if header["digest"] != _digest(blobs):
            return None
        return header, blobs
    except Exception:  # noqa: BLE001 - a file that cannot be read is no cache
        return None


def split_ids(blob: bytes) -> list[str]:
    """Ids stored one per line (see :func:`join_ids`)."""
    return blob.decode("utf-8").split("\n") if blob else []


def join_ids(ids: list[str]) -> bytes | None:
    """Ids one per line, or None when they cannot be stored that way (an id holding a newline or a lone surrogate)."""
    if "" in ids:  # an empty id would read back as no id (or merge with a neighbour)
        return None
    text = "\n".join(ids)
    if text.count("\n") != max(len(ids) - 1, 0):
        return None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None
