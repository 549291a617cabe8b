"""What one results file holds as far as resuming cares, summed up and kept under ``<run_dir>/.cache/``.

A resume needs, of each results file, the units of work (sample, epoch) with an ok record (and
whether the last one is correct), the units with error records, how many records each unit has
(for ids the dataset lacks) and a few sums. A unit is stored by its key
(:func:`evalledger.records.unit_key`: the bare sample id for epoch 1). Rescanning a million records for that costs seconds; this index keeps it for the
file's first ``end`` bytes, so a resume scans only what was appended since (:mod:`.resume_scan`).

``<run_dir>/.cache/resume-v1/<results file name>.idx`` (see :mod:`.cachefile` for the layout and
checksum). Validity is the readers' scheme (:mod:`.scan_cache`): the index names the file's device
and inode and a fingerprint of its first ``end`` bytes (their first and last 64 KiB and 16 slices
of 4 KiB between), and is used only if the file is the same inode, still holds ``end`` bytes, and
those hash the same. An append keeps it; the writer's repairs do not (moving garbage lines aside
makes a new inode; truncating a failed write back to before ``end`` shortens the file or changes
the fingerprint). ``end`` is always a line boundary, so a torn last line is never in an index.
Deleting ``.cache`` is always safe: the next resume scans the files in full and writes it again.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress, filterfalse
from pathlib import Path
from typing import IO, Any

from evalledger.fsio import cachefile
from evalledger.ledger.layout import RunPaths

SUBDIR = "resume-v1"  # bump when the content or meaning of an index changes: old ones are then ignored
# Bump when a sum or a key changes meaning: other formats are ignored. 3: keys are unit keys. An
# index of format 2 may come from a version that could not tell a record's epoch and merged them.
FORMAT = 3
MIN_BYTES = 1 << 20  # smaller results files scan in milliseconds: no index, no files left behind
REWRITE_FRACTION = 0.10  # rewrite an index once the unindexed tail is this share of what it covers
_SUMS = ("records", "ok_records", "error_records", "requests", "input_tokens", "output_tokens", "billed_cost")


@dataclass
class FilePart:
    """What the records of one stretch of a results file add up to, in file order.

    Keyed by unit key (see the module docstring). ``last_ok``: key -> whether its last ok record is
    correct (or, as loaded from an index, ``ok_lists``: the keys whose last ok record is correct
    and the others; :meth:`materialise` turns them into ``last_ok``). ``errored``: keys with a
    non-ok record. ``counts``: records per key, only for keys with more than one (every other has one).
    """

    last_ok: dict[str, bool] = field(default_factory=dict)
    errored: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    records: int = 0
    ok_records: int = 0
    error_records: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    billed_cost: float = 0.0
    ok_lists: tuple[list[str], list[str]] | None = None

    def record_count(self, sid: str) -> int:
        """How many records of this part are for ``sid`` (1 unless ``counts`` says otherwise)."""
        return self.counts.get(sid, 1)

    def materialise(self) -> None:
        """Build ``last_ok`` from ``ok_lists`` (before looking ids up in it or adding to it)."""
        if self.ok_lists is not None:
            correct, other = self.ok_lists
            self.last_ok = dict.fromkeys(correct, True)
            self.last_ok.update(dict.fromkeys(other, False))
            self.ok_lists = None

    def ok_ids(self) -> tuple[Iterable[str], Iterable[str]]:
        """(ids whose last ok record is correct, the other ok ids), each iterable once."""
        if self.ok_lists is not None:
            return self.ok_lists
        last_ok = self.last_ok
        return compress(last_ok, last_ok.values()), filterfalse(last_ok.__getitem__, last_ok)

    def then(self, later: FilePart) -> FilePart:
        """This part followed by ``later`` (the next bytes of the same file), as one part."""
        self.materialise()
        later.materialise()
        last_ok = dict(self.last_ok)
        last_ok.update(later.last_ok)
        mine = self.last_ok.keys() | self.errored
        counts = dict(self.counts)
        for sid in later.last_ok.keys() | later.errored:
            if sid in mine:
                counts[sid] = self.record_count(sid) + later.record_count(sid)
            elif later.record_count(sid) > 1:
                counts[sid] = later.record_count(sid)
        merged = FilePart(last_ok, self.errored | later.errored, counts)
        for name in _SUMS:
            setattr(merged, name, getattr(self, name) + getattr(later, name))
        return merged


def multi_counts(ids: list[str]) -> dict[str, int]:
    """Records per id for the ids that occur more than once in ``ids``."""
    if len(set(ids)) == len(ids):
        return {}
    return {sid: n for sid, n in Counter(ids).items() if n > 1}


def index_path(results: Path) -> Path:
    """Where the index of ``results`` lives."""
    return RunPaths(results.parent).cache / SUBDIR / (results.name + ".idx")


def load(results: Path, f: IO[bytes], st: os.stat_result) -> tuple[FilePart, int] | None:
    """The index of ``results`` (open as ``f``, stat ``st``) and the byte offset it covers, or None."""
    got = cachefile.read(index_path(results))
    if got is None:
        return None
    header, blobs = got
    try:
        end = int(header["end"])
        if (header["format"] != FORMAT or header["source"] != results.name or header["dev"] != st.st_dev
                or header["ino"] != st.st_ino or not 0 < end <= st.st_size or len(blobs) != 3):
            return None
        if header["fingerprint"] != cachefile.fingerprint(f, end):
            return None
        correct, other, errored = (cachefile.split_ids(b) for b in blobs)
        counts = {str(k): int(v) for k, v in header["counts"].items()}
        part = FilePart({}, set(errored), counts, ok_lists=(correct, other))
        for name in _SUMS:
            setattr(part, name, float(header[name]) if name == "billed_cost" else int(header[name]))
        return part, end
    except Exception:  # noqa: BLE001 - an index that cannot be read is no index: the file is scanned instead
        return None


def should_save(indexed_end: int, end: int) -> bool:
    """Whether a new index is worth writing: the file is big enough and the index missing or well behind."""
    if end <= 0 or end < MIN_BYTES:
        return False
    return end - indexed_end >= max(MIN_BYTES, REWRITE_FRACTION * indexed_end)


def save(results: Path, f: IO[bytes], st: os.stat_result, part: FilePart, end: int) -> bool:
    """Write ``part`` (the records of the first ``end`` bytes) as the index of ``results``."""
    correct, other = map(list, part.ok_ids())
    blobs = [cachefile.join_ids(correct), cachefile.join_ids(other), cachefile.join_ids(sorted(part.errored))]
    if any(b is None for b in blobs):
        return False
    header: dict[str, Any] = {"format": FORMAT, "source": results.name, "dev": st.st_dev, "ino": st.st_ino,
                              "end": end, "fingerprint": cachefile.fingerprint(f, end), "counts": part.counts}
    header.update({name: getattr(part, name) for name in _SUMS})
    return cachefile.write(index_path(results), header, blobs, run_dir=results.parent)  # type: ignore[arg-type]
