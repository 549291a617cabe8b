"""What one results file holds as far as resuming cares, summed up and kept under ``<run_dir>/.cache/``.

A resume needs, of each results file, the units of work (sample, epoch) with an ok record (and
whether the last one is correct), the units with error records, how many records each unit has
(for ids the dataset lacks) and a few sums. A unit is stored by its key
(:func:`evalledger.records.unit_key`: the bare sample id for epoch 1). Rescanning a million records
for that costs seconds; this index keeps it for the file's first ``end`` bytes, so a resume scans
only what was appended since (:mod:`evalledger.ledger.resume`), and the writer's torn-tail and
garbage-line checks look only at those bytes too (:func:`evalledger.ledger.repair.check_results_file`).

``<run_dir>/.cache/resume-v1/<results file name>.idx`` (see :mod:`evalledger.fsio.cachefile` for
the layout and checksum). An index is used only if the file is the same device and inode, still
holds ``end`` bytes, and those bytes have the same fingerprint (their first and last 64 KiB and 16
slices of 4 KiB between, :func:`evalledger.fsio.cachefile.fingerprint`). ``end`` is always a line
boundary, so a torn last line is never in an index. The index also counts the lines of those bytes
that were not records (``garbage``); the writer skips its garbage check over them only when there
were none.

What that proves, and what it does not. Same inode and length means nothing replaced or shortened
the file: our writer only appends, and every one of its repairs either makes a new inode (moving
garbage lines aside renames a cleaned copy over the file) or cuts the file back to before ``end``
(a torn tail, a rolled-back write), which changes the length or the fingerprint. Every index covers
only bytes that were on disk when it was written (:func:`save` fsyncs the results file first), so
a power loss cannot leave behind an index over bytes that came back as zeros. What the fingerprint
does not prove is that the bytes *between* its samples are unchanged: a change made in place that
keeps the inode and the length (``dd conv=notrunc``, an editor that rewrites the file in place,
a failing disk) and misses every sample goes unseen, both by the resume (which counts what the
index says) and by the garbage check (which does not read those bytes). Nothing evalledger does
and no crash makes such a change; ``evalledger verify`` reads every line, ``verify --repair``
moves garbage aside wherever it is, and deleting ``.cache`` makes the next resume read it all.
Deleting ``.cache`` is always safe: the next resume scans the files in full and writes it again.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress, filterfalse, repeat
from operator import gt
from pathlib import Path
from typing import IO, Any

from evalledger.fsio import cachefile
from evalledger.ledger.layout import RunPaths

SUBDIR = "resume-v1"  # bump when the content or meaning of an index changes: old ones are then ignored
# Bump when a sum or a key changes meaning: other formats are ignored. 3: keys are unit keys (an
# index of format 2 may come from a version that could not tell a record's epoch and merged them).
# 4: every line was parsed in full (format 3 read lines by a prefix and could count a line damaged
# after it as a record) and the garbage lines are counted.
FORMAT = 4
MIN_BYTES = 1 << 20  # smaller results files scan in milliseconds: no index, no files left behind
REWRITE_FRACTION = 0.10  # rewrite an index once the unindexed tail is this share of what it covers
#: The counts and sums of a :class:`FilePart` (stored in an index's header).
SUMS = ("records", "garbage", "ok_records", "error_records", "requests", "input_tokens", "output_tokens",
         "billed_cost")


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
    garbage: int = 0  # complete lines that are not records
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
        """This part followed by ``later`` (the next bytes of the same file), as one part: this one,
        changed (a loaded index is extended in place, with work in proportion to ``later``)."""
        self.materialise()
        later.materialise()
        theirs = later.last_ok.keys() | later.errored
        both = (self.last_ok.keys() & theirs) | (self.errored & theirs)  # units with records in each part
        mine = {sid: self.record_count(sid) for sid in both}
        self.counts.update(later.counts)
        for sid, n in mine.items():
            self.counts[sid] = n + later.record_count(sid)
        self.last_ok.update(later.last_ok)
        self.errored |= later.errored
        for name in SUMS:
            setattr(self, name, getattr(self, name) + getattr(later, name))
        return self

    def unique_units(self) -> int:
        """How many units of work this part has records for."""
        self.materialise()
        return len(self.last_ok) + len(self.errored.difference(self.last_ok))


def multi_counts(ids: list[str]) -> dict[str, int]:
    """Records per id for the ids that occur more than once in ``ids``."""
    counts = Counter(ids)
    return dict(compress(counts.items(), map(gt, counts.values(), repeat(1))))


def index_path(results: Path) -> Path:
    """Where the index of ``results`` lives."""
    return RunPaths(results.parent).cache / SUBDIR / (results.name + ".idx")


@dataclass(frozen=True)
class Covered:
    """What a valid index says of the bytes it covers, without its ids."""

    end: int  # the bytes it covers (a line boundary)
    lines: int  # the complete lines in them
    garbage: int  # how many of those lines were not records


def covered(results: Path, f: IO[bytes], st: os.stat_result) -> Covered | None:
    """What the valid index of ``results`` (open as ``f``, stat ``st``) covers, or None; cheaper than
    :func:`load` (the ids are not read)."""
    got = _valid(results, f, st)
    if got is None:
        return None
    header = got[0]
    try:
        return Covered(int(header["end"]), int(header["records"]) + int(header["garbage"]), int(header["garbage"]))
    except Exception:  # noqa: BLE001 - an index that cannot be read is no index
        return None


def claimed_end(results: Path, st: os.stat_result) -> int:
    """How many bytes of ``results`` (stat ``st``) its index says it covers, from the index's header
    alone (0: no index for this file), without checking its digest or fingerprint: enough to decide
    whether indexing is worth starting (:mod:`evalledger.ledger.prefetch`), never to trust it."""
    header = cachefile.read_header(index_path(results))
    return (_end_for(header, results, st) or 0) if header is not None else 0


def _end_for(header: dict[str, Any], results: Path, st: os.stat_result) -> int | None:
    """The end an index's ``header`` gives when it is an index of ``results`` as it is now (stat
    ``st``: same format, name, device and inode, no longer than the file), else None."""
    try:
        end = int(header["end"])
        if (header["format"] != FORMAT or header["source"] != results.name or header["dev"] != st.st_dev
                or header["ino"] != st.st_ino or not 0 < end <= st.st_size):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return end


def load(results: Path, f: IO[bytes], st: os.stat_result) -> tuple[FilePart, int] | None:
    """The index of ``results`` (open as ``f``, stat ``st``) and the byte offset it covers, or None."""
    got = _valid(results, f, st)
    if got is None:
        return None
    header, blobs = got
    try:
        correct, other, errored = (cachefile.split_ids(b) for b in blobs)
        counts = {str(k): int(v) for k, v in header["counts"].items()}
        part = FilePart({}, set(errored), counts, ok_lists=(correct, other))
        for name in SUMS:
            setattr(part, name, float(header[name]) if name == "billed_cost" else int(header[name]))
        return part, int(header["end"])
    except Exception:  # noqa: BLE001 - an index that cannot be read is no index: the file is scanned instead
        return None


def _valid(results: Path, f: IO[bytes], st: os.stat_result) -> tuple[dict[str, Any], list[bytes]] | None:
    """The header and blobs of the index of ``results`` if it is valid for the file as it is now
    (see the module docstring), else None."""
    got = cachefile.read(index_path(results))
    if got is None:
        return None
    header, blobs = got
    try:
        end = _end_for(header, results, st)
        if end is None or len(blobs) != 3 or header["fingerprint"] != cachefile.fingerprint(f, end):
            return None
    except Exception:  # noqa: BLE001 - an index that cannot be read is no index: the file is scanned instead
        return None
    return header, blobs


def should_save(indexed_end: int, end: int) -> bool:
    """Whether a new index is worth writing: the file is big enough and the index missing or well behind."""
    if end <= 0 or end < MIN_BYTES:
        return False
    return end - indexed_end >= max(MIN_BYTES, REWRITE_FRACTION * indexed_end)


def save(results: Path, f: IO[bytes], st: os.stat_result, part: FilePart, end: int) -> bool:
    """Write ``part`` (the records of the first ``end`` bytes) as the index of ``results``.

    ``results`` is fsynced first (``f`` may be open read-only), so the index never covers bytes
    that a power loss could still take back (see the module docstring)."""
    try:
        os.fsync(f.fileno())
    except OSError:
        return False
    correct, other = map(list, part.ok_ids())
    blobs = [cachefile.join_ids(correct), cachefile.join_ids(other), cachefile.join_ids(sorted(part.errored))]
    if any(b is None for b in blobs):
        return False
    header: dict[str, Any] = {"format": FORMAT, "source": results.name, "dev": st.st_dev, "ino": st.st_ino,
                              "end": end, "fingerprint": cachefile.fingerprint(f, end), "counts": part.counts}
    header.update({name: getattr(part, name) for name in SUMS})
    return cachefile.write(index_path(results), header, blobs, run_dir=results.parent)  # type: ignore[arg-type]
