"""One pass over a run's ledger for what ``run`` needs before sending anything.

What is done, what errored (by unit of work, (sample, epoch): :func:`evalledger.records.unit_key`,
the bare sample id for epoch 1), the usage and spend so far, records for ids the dataset lacks, and
the counters of this writer's own file: everything the runner and the manifest check need, in one
pass that parses every line with C-level loops (:mod:`evalledger.ledger.tally`), and only past
what each file's index under ``<run_dir>/.cache/resume-v1/`` already sums up (see
:mod:`evalledger.ledger.index`). The writer's own file has usually been read already, when the
writer opened it (:func:`evalledger.ledger.repair.check_results_file` indexes what it read), so the
pass then reads only the other writers' files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Container
from dataclasses import dataclass, field
from itertools import chain, filterfalse
from pathlib import Path
from typing import IO, Any

from evalledger.fsio import paused_gc, switch_on
from evalledger.ledger import index as ledger_index
from evalledger.ledger.files import calls_bill
from evalledger.ledger.index import FilePart
from evalledger.ledger.layout import results_files
from evalledger.ledger.lines import lead_columns
from evalledger.ledger.tally import add_records, as_sum, joined, read_results
from evalledger.records import UNIT_SEPARATOR, epoch_of, unit_key


@dataclass
class FileCounts:
    """Cumulative counters of one results file (to rebuild a resume state)."""

    ok_records: int = 0
    error_records: int = 0
    requests: int = 0  # sum of attempts


@dataclass
class LedgerScan:
    """What every results file of a run holds, as far as resuming cares (garbage lines skipped).

    ``completed``, ``incorrect`` and ``errored`` hold unit keys (:func:`evalledger.records.unit_key`):
    the bare sample id for epoch 1, so for a run without repeats they are its sample ids. The
    correct units are ``completed`` less ``incorrect``: kept that way round because most units of
    a run are usually correct, and a second set of a million keys costs ~35 MB.
    """

    completed: set[str] = field(default_factory=set)  # units with an ok record
    incorrect: set[str] = field(default_factory=set)  # units whose last ok record is not correct
    errored: set[str] = field(default_factory=set)  # units with error records and no ok record
    ok_records: int = 0
    input_tokens: int = 0  # over ok records
    output_tokens: int = 0
    billed_cost: float = 0.0  # what every record (and the calls files) added to the bill; NaN: unknown
    records: int = 0
    in_dataset: int = 0  # records whose sample id is in ``known_ids``
    foreign: dict[str, int] = field(default_factory=dict)  # sample id not in ``known_ids`` -> records
    files: dict[Path, FileCounts] = field(default_factory=dict)
    own: FilePart | None = None  # the ``own`` file's part (see scan_ledger), kept up to date by the writer
    own_end: int = 0  # the bytes of the own file that ``own`` covers
    own_indexed_end: int = 0  # the bytes of the own file its index on disk covers (0: none)
    #: every key of ``completed`` is one of ``known_ids`` (no later epoch's, no foreign one); False
    #: when that is not known (no ``known_ids``). Lets a resume of a complete run skip a pass.
    within_known: bool = False

    @property
    def correct(self) -> set[str]:
        """The units whose last ok record is correct (a new set: for tools and tests, not the hot path)."""
        return self.completed - self.incorrect

    @property
    def observed(self) -> tuple[int, int, int]:
        """(ok records, their input tokens, their output tokens), for cost estimates."""
        return self.ok_records, self.input_tokens, self.output_tokens

    @property
    def cost_known(self) -> bool:
        """Whether the run's bill so far is known (see :mod:`evalledger.records`: a record or call
        that billed tokens without a valid cost makes it unknown, and so does a float overflow)."""
        return math.isfinite(self.billed_cost)

    @property
    def cost_usd(self) -> float | None:
        """The run's bill so far, as ``get_stats`` reports it: None when unknown."""
        return self.billed_cost if self.cost_known else None


def scan_ledger(run_dir: Path, known_ids: Container[str] | None = None, own: Path | None = None) -> LedgerScan:
    """One streaming pass over every results file (all shards) and the calls files' cost.

    ``known_ids``: the dataset's sample ids; records for other ids are counted in ``foreign``.
    A results file with a valid index (:mod:`.ledger_index`) is scanned only after the bytes its
    index covers; a file whose unindexed part is large gets a new index. ``own``: the writer's
    own results file, whose part is kept in ``scan.own`` so the writer can add what it appends
    (:func:`note_committed`) and index the file while it runs and when it stops (:func:`save_own_index`).
    """
    scan = LedgerScan(within_known=known_ids is not None)
    errored_all: set[str] = set()
    with paused_gc():  # a million parsed records and ids, none in a cycle: see gcpause
        for path in results_files(run_dir):
            counts = scan.files.setdefault(path, FileCounts())
            part, end, indexed_end = _scan_file(path)
            if path == own:
                scan.own, scan.own_end, scan.own_indexed_end = part, end, indexed_end
            _apply(scan, counts, errored_all, part, known_ids)
    if own is not None and scan.own is None:
        scan.own = FilePart()  # no such file yet: it starts empty
    scan.errored = errored_all - scan.completed
    scan.billed_cost += as_sum(calls_bill(run_dir).cost_usd)
    return scan


def load_index(path: Path, f: IO[bytes], st: os.stat_result) -> tuple[FilePart, int] | None:
    """The valid index of ``path`` (open as ``f``) and the bytes it covers, if indexes are on and
    the file is large enough to have one."""
    if not index_enabled() or st.st_size < ledger_index.MIN_BYTES:
        return None
    return ledger_index.load(path, f, st)


def _scan_file(path: Path) -> tuple[FilePart, int, int]:
    """What the complete records of one results file add up to (a torn last line is left out),
    the bytes that covers, and the bytes its index on disk covers afterwards (0: none)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return FilePart(), 0, 0
    with f:
        st = os.fstat(f.fileno())
        cached = load_index(path, f, st)
        if cached is None:
            read = read_results(f)
        else:
            read = read_results(f, cached[1], cached[0].records + cached[0].garbage + 1)
        part = joined(cached[0] if cached is not None else None, read)
        indexed = read.start
        if index_enabled() and ledger_index.should_save(indexed, read.end) and ledger_index.save(
                path, f, st, part, read.end):
            indexed = read.end
    return part, read.end, indexed


def note_committed(part: FilePart, records: list[dict[str, Any]]) -> None:
    """Add records just appended to the file ``part`` describes (the writer's own file)."""
    part.materialise()
    for rec in records:
        key = unit_key(rec["sample_id"], epoch_of(rec))
        if key in part.last_ok or key in part.errored:
            part.counts[key] = part.counts.get(key, 1) + 1
    add_records(part, [], lead_columns(records))


def save_own_index(path: Path, part: FilePart, end: int, indexed_end: int) -> bool:
    """Index the writer's own results file, while it runs and when it stops, if ``part``
    describes exactly its first ``end`` bytes (the writer's own count of them) and the index on
    disk is well behind."""
    if not (index_enabled() and ledger_index.should_save(indexed_end, end)):
        return False
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size < end:
                return False
            return ledger_index.save(path, f, st, part, end)
    except OSError:
        return False


def index_enabled() -> bool:
    """Whether resumes use and write the ledger index (``EVALLEDGER_SCAN_CACHE=off`` turns it off, like the readers' cache)."""
    return switch_on("EVALLEDGER_SCAN_CACHE")


def _apply(scan: LedgerScan, counts: FileCounts, errored: set[str], part: FilePart,
           known_ids: Container[str] | None) -> None:
    """Add one file's part to the scan (files in order: a later ok record decides ``correct``)."""
    # C-level loops only: this runs over every id of every file
    correct, other = (list(ids) for ids in part.ok_ids())
    first = not scan.completed  # then ``completed`` is this part's ok units once updated
    scan.completed.update(correct)
    scan.completed.update(other)
    scan.incorrect.difference_update(correct)  # a later file's ok record decides
    scan.incorrect.update(other)
    errored.update(part.errored)
    scan.records += part.records
    scan.ok_records += part.ok_records
    scan.input_tokens += part.input_tokens
    scan.output_tokens += part.output_tokens
    scan.billed_cost += part.billed_cost
    counts.ok_records += part.ok_records
    counts.error_records += part.error_records
    counts.requests += part.requests
    if known_ids is None:
        return
    # Records for ids the dataset lacks (rare: results copied in, a recreated manifest). A key that
    # is not a dataset id is a later epoch's or a foreign one: only those are split (ids never
    # hold the separator, so the id is what comes before it).
    if first and isinstance(known_ids, (set, frozenset)) and scan.completed <= known_ids:
        keys = []  # every ok unit is a dataset id (the usual case), found with one C-level pass
    else:
        keys = list(filterfalse(known_ids.__contains__, chain(correct, other)))
    scan.within_known = scan.within_known and not keys
    foreign = [k for k in keys if k.partition(UNIT_SEPARATOR)[0] not in known_ids]
    foreign_ok = set(foreign)
    foreign += [k for k in part.errored if k not in known_ids and k not in foreign_ok
                and k.partition(UNIT_SEPARATOR)[0] not in known_ids]
    n_foreign = 0
    for key in foreign:
        n = part.record_count(key)
        n_foreign += n
        sid = key.partition(UNIT_SEPARATOR)[0]
        scan.foreign[sid] = scan.foreign.get(sid, 0) + n
    scan.in_dataset += part.records - n_foreign
