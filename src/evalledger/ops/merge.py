"""Merging a sharded run: one deduplicated ledger, per unit of work (sample, epoch) its latest ok
record, in dataset order (each sample's epochs together, 1..K).

The library side of ``evalledger merge`` (the command is in :mod:`evalledger.cli.cluster`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalledger.datasets import shard_of
from evalledger.errors import UsageError
from evalledger.fsio import write_bytes_atomic
from evalledger.ledger import (
    RunLedger,
    is_results_name,
    iter_file_records,
    lock_state,
    manifest_epochs,
    results_files,
    shard_of_file,
    shard_of_lock,
    shard_suffix,
    writer_locks,
)
from evalledger.ops.status import expected_sample_ids
from evalledger.ops.units import expected_units, unit_label
from evalledger.records import epoch_of, split_unit_key, unit_key

__all__ = ["MergeReport", "merge_run"]


@dataclass
class MergeReport:
    """What :func:`merge_run` found and wrote.

    Counts and lists are of units of work, (sample, epoch): with one epoch, of samples, named by
    id; with ``--epochs K`` (the manifest's ``epochs``), named ``"<id> epoch <k>"``.
    """

    run_id: str
    output: str | None  # None: nothing written (coverage not exact and not allowed)
    written: int
    expected: int  # units: dataset samples × epochs
    files: list[str]
    ok_records: int
    duplicates_dropped: int  # ok records beyond the one kept per unit
    missing: list[str] = field(default_factory=list)  # dataset units without an ok record
    errors_only: list[str] = field(default_factory=list)  # the missing ones whose latest record is an error
    extra: list[str] = field(default_factory=list)  # ok units the run does not have (left out): foreign ids, later epochs
    misplaced: list[str] = field(default_factory=list)  # "id in file" where the shard file does not own the id
    writers: list[str] = field(default_factory=list)  # shards whose lock is held right now
    epochs: int = 1

    @property
    def exact(self) -> bool:
        """True when every dataset sample is covered once and nothing else is there."""
        return not (self.missing or self.extra or self.misplaced)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {**dataclasses.asdict(self), "exact": self.exact}


def merge_run(run_dir: Path, output: Path, *, allow_incomplete: bool = False) -> MergeReport:
    """Write one deduplicated ledger of a run: per unit (sample, epoch) its latest ok record, in
    dataset order, each sample's epochs together.

    Checks that the results cover the dataset exactly: every unit (each sample × epochs 1..K, K
    the manifest's ``epochs``) has an ok record, no ok record is for a sample the dataset lacks or
    an epoch beyond K, and every shard file holds only samples of its own shard (a sample's epochs
    all belong to its shard). If not, nothing is written unless ``allow_incomplete`` (then the ok records of the
    dataset's samples are written). "Latest" is by ``finished_at``; the file is written
    atomically. Raises :class:`UsageError` if ``output`` would overwrite a results file of the run.
    """
    run_dir = Path(run_dir)
    output = Path(output)
    if output.resolve().parent == run_dir.resolve() and is_results_name(output.name):
        raise UsageError(f"-o {output}: that name is read as a results file of the run; write the merge elsewhere")
    epochs = manifest_epochs(RunLedger(run_dir).read_manifest())
    expected = expected_units(expected_sample_ids(run_dir), epochs)
    universe = set(expected)
    best: dict[str, dict[str, Any]] = {}
    latest_any: dict[str, dict[str, Any]] = {}
    ok_records = 0
    misplaced: list[str] = []
    files = results_files(run_dir)
    for path in files:
        sh = shard_of_file(path)
        for rec in iter_file_records(path):
            sid = rec["sample_id"]
            key = unit_key(sid, epoch_of(rec))
            if sh is not None and shard_of(sid, sh[1]) != sh[0]:
                misplaced.append(f"{unit_label(key, epochs)} in {path.name}")
            latest_any[key] = rec
            if rec.get("status") != "ok":
                continue
            ok_records += 1
            cur = best.get(key)
            if cur is None or str(rec.get("finished_at") or "") >= str(cur.get("finished_at") or ""):
                best[key] = rec
    # A later error does not undo an ok: an acknowledged result is never lost.
    missing = [key for key in expected if key not in best]
    errors_only = [key for key in missing if key in latest_any]
    extra = sorted((key for key in best if key not in universe), key=split_unit_key)
    writers = []
    for lock in writer_locks(run_dir):
        state, _ = lock_state(lock)
        if state in ("held", "held elsewhere"):
            shard = shard_of_lock(lock.name)
            writers.append(shard_suffix(shard).removeprefix(".") if shard else "unsharded")
    labels = [[unit_label(key, epochs) for key in keys] for keys in (missing, errors_only, extra)]
    report = MergeReport(run_id=run_dir.name, output=None, written=0, expected=len(expected),
                         files=[p.name for p in files], ok_records=ok_records,
                         duplicates_dropped=ok_records - len(best), missing=labels[0], errors_only=labels[1],
                         extra=labels[2], misplaced=misplaced, writers=writers, epochs=epochs)
    if not report.exact and not allow_incomplete:
        return report
    lines = [json.dumps(best[key], ensure_ascii=False, separators=(",", ":")) + "\n" for key in expected if key in best]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, "".join(lines).encode())
    report.output = str(output)
    report.written = len(lines)
    return report
