"""One pass over a run's ledger for what ``run`` needs before sending anything.

What is done, what errored, the usage and spend so far, records for ids the dataset lacks, and
the counters of this writer's own file: everything the runner and the manifest check used to get
from two (or three) full parses of every record, now from one pass that reads most lines by their
prefix only (see :mod:`evalledger.fastlines`).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fastlines import Prefix, iter_blocks
from .ledger import billed, calls_cost, results_files


@dataclass
class FileCounts:
    """Cumulative counters of one results file (to rebuild a resume state)."""

    ok_records: int = 0
    error_records: int = 0
    requests: int = 0  # sum of attempts


@dataclass
class LedgerScan:
    """What every results file of a run holds, as far as resuming cares (garbage lines skipped)."""

    completed: set[str] = field(default_factory=set)  # ids with an ok record
    correct: set[str] = field(default_factory=set)  # ids whose last ok record is correct
    errored: set[str] = field(default_factory=set)  # ids with error records and no ok record
    ok_records: int = 0
    input_tokens: int = 0  # over ok records
    output_tokens: int = 0
    billed_cost: float = 0.0  # what every record (and the calls files) added to the bill
    records: int = 0
    in_dataset: int = 0  # records whose id is in ``known_ids``
    foreign: dict[str, int] = field(default_factory=dict)  # id not in ``known_ids`` -> records
    files: dict[Path, FileCounts] = field(default_factory=dict)

    @property
    def observed(self) -> tuple[int, int, int]:
        """(ok records, their input tokens, their output tokens), for cost estimates."""
        return self.ok_records, self.input_tokens, self.output_tokens


def scan_ledger(run_dir: Path, known_ids: Container[str] | None = None) -> LedgerScan:
    """One streaming pass over every results file (all shards) and the calls files' cost.

    ``known_ids``: the dataset's sample ids; records for other ids are counted in ``foreign``.
    """
    scan = LedgerScan()
    errored_all: set[str] = set()
    for path in results_files(run_dir):
        counts = scan.files.setdefault(path, FileCounts())
        for block in iter_blocks(path):
            if block.prefixes:
                _add_prefixes(scan, counts, errored_all, block.prefixes)
                _count_foreign(scan, [p[0] for p in block.prefixes], known_ids)
            else:
                _add_records(scan, counts, errored_all, block.records)
                _count_foreign(scan, [r["sample_id"] for r in block.records], known_ids)
    scan.errored = errored_all - scan.completed
    scan.billed_cost += calls_cost(run_dir)
    return scan


def _add_prefixes(scan: LedgerScan, counts: FileCounts, errored: set[str], prefixes: list[Prefix]) -> None:
    # Hot path (a million records should take about a second): comprehensions and C-level sums,
    # no per-record function calls.
    ok_rows = [p for p in prefixes if p[1] == "ok"]
    scan.completed.update([p[0] for p in ok_rows])
    errored.update([p[0] for p in prefixes if p[1] != "ok"])
    # the last ok record of a sample decides whether it is correct, as in the merged view
    last_correct = {p[0]: p[3] for p in ok_rows}
    scan.correct.update([sid for sid, c in last_correct.items() if c == "true"])
    scan.correct.difference_update([sid for sid, c in last_correct.items() if c != "true"])
    ok, n = len(ok_rows), len(prefixes)
    scan.records += n
    scan.ok_records += ok
    scan.input_tokens += sum(map(int, [p[4] for p in ok_rows]))
    scan.output_tokens += sum(map(int, [p[5] for p in ok_rows]))
    # billed(): ``paid`` when the record has it, else (older records) its cost; null: unpriced
    bills = [p[7] or p[6] for p in prefixes]
    scan.billed_cost += sum(map(float, [b for b in bills if b != "null"]))
    counts.ok_records += ok
    counts.error_records += n - ok
    counts.requests += sum(map(int, [p[2] for p in prefixes]))


def _add_records(scan: LedgerScan, counts: FileCounts, errored: set[str], records: list[dict[str, Any]]) -> None:
    for rec in records:
        sid = rec["sample_id"]
        scan.records += 1
        attempts = rec.get("attempts")
        counts.requests += attempts if isinstance(attempts, int) and attempts > 0 else 0
        if rec.get("status") == "ok":
            counts.ok_records += 1
            scan.completed.add(sid)
            (scan.correct.add if rec.get("correct") is True else scan.correct.discard)(sid)
            usage = rec.get("usage") or {}
            scan.ok_records += 1
            scan.input_tokens += int(usage.get("input_tokens") or 0)
            scan.output_tokens += int(usage.get("output_tokens") or 0)
        else:
            counts.error_records += 1
            errored.add(sid)
        scan.billed_cost += billed(rec)[2] or 0.0


def _count_foreign(scan: LedgerScan, ids: list[str], known_ids: Container[str] | None) -> None:
    """Count records whose id the dataset lacks (rare: results copied in, a recreated manifest)."""
    if known_ids is None:
        return
    foreign = [sid for sid in ids if sid not in known_ids]
    for sid in foreign:
        scan.foreign[sid] = scan.foreign.get(sid, 0) + 1
    scan.in_dataset += len(ids) - len(foreign)
