"""One pass over a run's ledger for what ``run`` needs before sending anything.

What is done, what errored (by unit of work, (sample, epoch): :func:`evalledger.records.unit_key`,
the bare sample id for epoch 1), the usage and spend so far, records for ids the dataset lacks, and
the counters of this writer's own file: everything the runner and the manifest check need, in one
pass that reads most lines by their prefix only (see :mod:`evalledger.ledger.lines`), and only past what each file's index under
``<run_dir>/.cache/resume-v1/`` already sums up (see :mod:`evalledger.ledger.index`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Container
from dataclasses import dataclass, field
from itertools import chain, compress, filterfalse
from operator import not_
from pathlib import Path
from typing import Any

from evalledger.fsio import paused_gc
from evalledger.ledger import index as ledger_index
from evalledger.ledger.files import calls_bill
from evalledger.ledger.index import FilePart, multi_counts
from evalledger.ledger.layout import results_files
from evalledger.ledger.lines import Prefix, iter_blocks, prefix_unit_keys
from evalledger.records import UNIT_SEPARATOR, BillTotal, bill_of, count_of, epoch_of, total_cost, unit_key


@dataclass
class FileCounts:
    """Cumulative counters of one results file (to rebuild a resume state)."""

    ok_records: int = 0
    error_records: int = 0
    requests: int = 0  # sum of attempts


@dataclass
class LedgerScan:
    """What every results file of a run holds, as far as resuming cares (garbage lines skipped).

    ``completed``, ``correct`` and ``errored`` hold unit keys (:func:`evalledger.records.unit_key`):
    the bare sample id for epoch 1, so for a run without repeats they are its sample ids.
    """

    completed: set[str] = field(default_factory=set)  # units with an ok record
    correct: set[str] = field(default_factory=set)  # units whose last ok record is correct
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
    scan = LedgerScan()
    errored_all: set[str] = set()
    with paused_gc():  # a million prefix tuples, none in a cycle: see gcpause
        for path in results_files(run_dir):
            counts = scan.files.setdefault(path, FileCounts())
            part, end, indexed_end = _scan_file(path)
            if path == own:
                scan.own, scan.own_end, scan.own_indexed_end = part, end, indexed_end
            _apply(scan, counts, errored_all, part, known_ids)
    if own is not None and scan.own is None:
        scan.own = FilePart()  # no such file yet: it starts empty
    scan.errored = errored_all - scan.completed
    scan.billed_cost += _as_sum(calls_bill(run_dir).cost_usd)
    return scan


def _scan_file(path: Path) -> tuple[FilePart, int, int]:
    """What the complete records of one results file add up to (a torn last line is left out),
    the bytes that covers, and the bytes its index on disk covers afterwards (0: none)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return FilePart(), 0, 0
    with f:
        st = os.fstat(f.fileno())
        use_index = index_enabled()
        cached = ledger_index.load(path, f, st) if use_index and st.st_size >= ledger_index.MIN_BYTES else None
        start = cached[1] if cached is not None else 0
        tail = FilePart()
        keys: list[str] = []  # the unit key of every record, in file order
        end = start
        for block in iter_blocks(path, start=start):
            end += block.nbytes
            if block.prefixes:
                _add_prefixes(tail, keys, block.prefixes)
            else:
                _add_records(tail, keys, block.records)
        tail.counts = multi_counts(keys)
        if cached is None:
            part = tail
        else:
            part = cached[0] if not tail.records else cached[0].then(tail)
        if use_index and ledger_index.should_save(start, end) and ledger_index.save(path, f, st, part, end):
            start = end
    return part, end, start


def note_committed(part: FilePart, records: list[dict[str, Any]]) -> None:
    """Add records just appended to the file ``part`` describes (the writer's own file)."""
    part.materialise()
    for rec in records:
        key = unit_key(rec["sample_id"], epoch_of(rec))
        if key in part.last_ok or key in part.errored:
            part.counts[key] = part.counts.get(key, 1) + 1
    _add_records(part, [], records)


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
    return os.environ.get("EVALLEDGER_SCAN_CACHE", "").strip().lower() not in ("0", "off", "no", "false")


def _apply(scan: LedgerScan, counts: FileCounts, errored: set[str], part: FilePart,
           known_ids: Container[str] | None) -> None:
    """Add one file's part to the scan (files in order: a later ok record decides ``correct``)."""
    # C-level loops only: this runs over every id of every file
    correct, other = (list(ids) for ids in part.ok_ids())
    scan.completed.update(correct)
    scan.completed.update(other)
    scan.correct.update(correct)
    scan.correct.difference_update(other)
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
    keys = list(filterfalse(known_ids.__contains__, chain(correct, other)))
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


def _add_prefixes(part: FilePart, keys: list[str], prefixes: list[Prefix]) -> None:
    # Hot path (a million records should take about a second): comprehensions and C-level sums,
    # no per-record function calls.
    units = prefix_unit_keys(prefixes)
    is_ok = [p[2] == "ok" for p in prefixes]
    ok_rows = list(compress(prefixes, is_ok))
    # the last ok record of a unit decides whether it is correct, as in the merged view
    part.last_ok.update(zip(compress(units, is_ok), [p[4] == "true" for p in ok_rows]))
    part.errored.update(compress(units, map(not_, is_ok)))
    keys.extend(units)
    ok, n = len(ok_rows), len(prefixes)
    part.records += n
    part.ok_records += ok
    part.error_records += n - ok
    part.input_tokens += sum(map(int, [p[5] for p in ok_rows]))
    part.output_tokens += sum(map(int, [p[6] for p in ok_rows]))
    part.billed_cost += _prefix_cost([p[8] or p[7] for p in prefixes])
    part.requests += sum(map(int, [p[3] for p in prefixes]))


def _prefix_cost(costs: list[str]) -> float:
    """The cost the lines of a block add to the bill, from their prefixes' ``paid`` cost, or (lines
    without ``paid``) their ``cost_usd``: :func:`evalledger.records.bill_of`, in C-level loops. The
    object billed from always holds tokens here, so a missing cost (null, negative, beyond a float)
    makes the bill unknown (NaN)."""
    if "null" in costs:
        return math.nan
    values = list(map(float, costs))
    if min(values, default=0.0) < 0:
        return math.nan
    return _as_sum(total_cost(values))  # a number too large for a float reads as inf: unknown


def _as_sum(cost: float | None) -> float:
    """A cost to add to ``billed_cost``: NaN for an unknown one, so that the sum is unknown too."""
    return math.nan if cost is None else cost


def _add_records(part: FilePart, keys: list[str], records: list[dict[str, Any]]) -> None:
    bill = BillTotal()
    for rec in records:
        key = unit_key(rec["sample_id"], epoch_of(rec))
        keys.append(key)
        part.records += 1
        part.requests += count_of(rec.get("attempts"))
        if rec.get("status") == "ok":
            part.ok_records += 1
            part.last_ok[key] = rec.get("correct") is True
            usage = rec.get("usage")
            if type(usage) is dict:
                part.input_tokens += count_of(usage.get("input_tokens"))
                part.output_tokens += count_of(usage.get("output_tokens"))
        else:
            part.error_records += 1
            part.errored.add(key)
        bill.add(bill_of(rec))
    part.billed_cost += _as_sum(bill.cost_usd)
