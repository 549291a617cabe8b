"""A columnar copy of each results file's parsed records, so that readers parse only what is new.

``<run_dir>/.cache/scan-v2/<results file name>.arrow`` (an Arrow IPC file) holds the rows that
:func:`evalledger.readers.scan_batch.parse_batch` made from the file's first ``end`` bytes (always a line
boundary), plus the sums over those records. A reader that finds a valid copy parses only the
bytes after ``end``: on a live run, exactly the records appended since. Nothing in ``.cache`` is
ever results: deleting the directory at any time is safe and only costs one full parse.

Validity. The copy names the results file's device and inode and a fingerprint of its first
``end`` bytes (a hash of the first and last 64 KiB before ``end`` and of 16 slices of 4 KiB spread
over them). The copy is used only if the file is the same inode, still holds at least ``end``
bytes and those bytes hash the same. So an append keeps the copy (its tail is parsed), while the
writer's repairs invalidate it: moving garbage lines aside replaces the file (a new inode), and a
truncation back to before ``end`` (a failed write) makes the file shorter or changes the
fingerprint. A torn last line is never in the copy (it is not a complete line).

Writing. Readers never lock anything, so the copy is written to a unique temporary name in the
same directory and renamed over the old one (atomic; concurrent readers each write a whole file,
the last rename wins). It is skipped silently when it cannot or should not be written: a run
directory not owned by this user (it would leave them files they cannot delete), a read-only
directory, less than 1 GiB free after it (never compete with a writer for disk space), a results
file under :data:`MIN_BYTES`, or ``EVALLEDGER_SCAN_CACHE=off``. No fsync: a copy torn by a crash
fails to open and is ignored, like any copy that cannot be read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa

from evalledger.fsio import cachefile, leftover_temps, switch_on
from evalledger.ledger.layout import RunPaths
from evalledger.readers.scan_batch import SCHEMA, BatchSums

SUBDIR = "scan-v2"
FORMAT = 3  # bump when a column or a sum changes meaning: copies of another format are ignored (and replaced)
MIN_BYTES = 8 << 20  # smaller results files parse in well under a second: no copy, no files left behind
REWRITE_FRACTION = 0.10  # rewrite a copy once the uncached tail is this share of what it covers
MIN_FREE_BYTES = 1 << 30
STALE_TMP_S = 3600.0


@dataclass
class CachedFile:
    """Parsed rows of a results file's first ``end`` bytes and the sums over their records."""

    table: pa.Table
    sums: BatchSums
    end: int


def enabled() -> bool:
    """Whether readers use the cache (``EVALLEDGER_SCAN_CACHE=off`` turns it off, e.g. to time a cold read)."""
    return switch_on("EVALLEDGER_SCAN_CACHE")


def cache_path(results: Path) -> Path:
    """Where the copy of ``results`` lives."""
    return RunPaths(results.parent).cache / SUBDIR / (results.name + ".arrow")


def load(results: Path, f: IO[bytes], st: os.stat_result) -> CachedFile | None:
    """The valid copy of ``results`` (open as ``f``, stat ``st``), or None (missing, stale, unreadable)."""
    path = cache_path(results)
    try:
        # Not closed by hand: the table's buffers point into the map, which lives as long as they do.
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        meta = json.loads((reader.schema.metadata or {})[b"evalledger"])
        end = int(meta["end"])
        if (meta["format"] != FORMAT or meta["source"] != results.name or meta["dev"] != st.st_dev
                or meta["ino"] != st.st_ino or not 0 <= end <= st.st_size
                or not reader.schema.remove_metadata().equals(SCHEMA)):
            return None
        if meta["fingerprint"] != cachefile.fingerprint(f, end):
            return None
        table = reader.read_all().replace_schema_metadata(None)
        return CachedFile(table=table, sums=BatchSums(**meta["sums"]), end=end)
    except Exception:  # noqa: BLE001 - a copy that cannot be read is no copy; the file is parsed instead
        return None


def should_save(results: Path, st: os.stat_result, old: CachedFile | None, end: int) -> bool:
    """Whether a new copy is worth writing: the file is big enough and the copy missing or well behind."""
    if not enabled() or end < MIN_BYTES:
        return False
    if old is None:
        return True
    return end - old.end >= max(MIN_BYTES, REWRITE_FRACTION * old.end)


def save(results: Path, f: IO[bytes], st: os.stat_result, cached: CachedFile) -> bool:
    """Write ``cached`` as the copy of ``results``; False (and nothing left behind) when it cannot be."""

    def write_to(tmp: Path) -> None:
        _remove_stale_tmp(tmp.parent)
        meta = {"format": FORMAT, "source": results.name, "dev": st.st_dev, "ino": st.st_ino, "end": cached.end,
                "fingerprint": cachefile.fingerprint(f, cached.end), "sums": asdict(cached.sums)}
        schema = SCHEMA.with_metadata({"evalledger": json.dumps(meta)})
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_table(cached.table.cast(schema))

    return cachefile.write_atomically(cache_path(results), results.parent, cached.table.nbytes, MIN_FREE_BYTES,
                                      write_to)


def _remove_stale_tmp(directory: Path) -> None:
    """Temporary files of readers that were killed while writing a copy (older than an hour)."""
    now = time.time()
    for p in leftover_temps(directory / "*"):
        try:
            if now - p.stat().st_mtime > STALE_TMP_S:
                p.unlink()
        except OSError:
            pass
