"""Where a (sharded) run stands: per-shard progress, locks seen from outside, missing and stalled shards.

Progress counts units of work, (sample, epoch): a run asked with ``--epochs K`` (its manifest's
``epochs``) has K per sample, all in the sample's shard; a run without repeats, one per sample.

The library side of ``evalledger status`` (the click command is in :mod:`evalledger.cli.cluster`). Reads
only and never takes a lock, so it is safe while tasks are writing.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalledger.datasets import shard_of
from evalledger.errors import EvalLedgerError, UsageError
from evalledger.ledger import (
    RESULTS,
    RESUME_STATE,
    ReadReport,
    RunLedger,
    batch_summary,
    iter_file_records,
    lock_state,
    manifest_epochs,
    marker_state,
    results_files,
    resume_state_files,
    run_lifecycle,
    shard_of_file,
    shard_of_lock,
    worker_files,
    writer_locks,
)
from evalledger.ops.slurm import read_submissions
from evalledger.ops.units import expected_units
from evalledger.ops.verify import run_dataset_ids
from evalledger.records import split_unit_key

#: A running shard with no new record or checkpoint for this long is reported as stalled.
DEFAULT_STALLED_AFTER = 600.0


# ============================================================================================
# Which samples a run should have


def expected_sample_ids(run_dir: Path) -> list[str]:
    """The run's sample IDs in dataset order (after ``--limit``), from its manifest and dataset.

    Raises :class:`DatasetError` if the dataset file is gone or no longer has the sha256 the run
    was made with: the IDs could not be trusted then.
    """
    manifest = RunLedger(run_dir).read_manifest()
    if manifest is None:
        raise UsageError(f"{run_dir}: no manifest.json, so the run's dataset is unknown")
    return run_dataset_ids(run_dir, manifest)[1]


# ============================================================================================
# Status


@dataclass
class ShardStatus:
    """Progress of one shard, in units of work. ``total`` is None when the dataset could not be read."""

    shard: int
    shards: int
    total: int | None
    done: int
    errors: int  # units of this shard whose latest record is an error (no ok record yet)
    records: int  # lines in the shard's own results file
    last_activity: str | None  # UTC, the later of its results file's and resume state's mtimes
    idle_seconds: float | None
    lock: str
    owner: dict[str, Any] | None
    state: str  # done | running | stalled | queued | stopped | missing
    slurm_state: str | None = None  # the array task's state in squeue (PENDING, RUNNING …), if queued
    marker: str | None = None  # its status marker as readers show it, e.g. "interrupted (process gone)"

    @property
    def label(self) -> str:
        """``K/N``."""
        return f"{self.shard}/{self.shards}"


@dataclass
class RunStatus:
    """Progress of a run over all its shards (``shards`` None: an unsharded run), in units of work
    (samples × ``epochs``)."""

    run_id: str
    run_dir: str
    shards: int | None
    total: int | None
    done: int
    errors: int
    pending: int | None
    shard_status: list[ShardStatus]
    missing: list[int]
    stalled: list[int]
    running: list[int]
    other_files: list[str]  # results files of an unsharded run or another shard count
    last_activity: str | None
    dataset_problem: str | None = None
    last_job_id: str | None = None
    complete: bool = False
    state: str = "unknown"  # the status markers' verdict: running | complete | incomplete | interrupted | unknown
    state_label: str = "unknown"  # e.g. "interrupted (process gone)"
    epochs: int = 1  # the run's --epochs (its manifest's): each sample is asked this many times
    batches: dict[str, Any] = field(default_factory=dict)  # --batch runs: the journals' batches (batch_summary)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (what ``status --json`` prints)."""
        d = dataclasses.asdict(self)
        d["shard_status"] = [dataclasses.asdict(s) for s in self.shard_status]
        return d


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_iso(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _mtime(*paths: Path) -> float | None:
    times = []
    for p in paths:
        try:
            times.append(p.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times) if times else None


def _slurm_task_states(job_id: str) -> dict[int, str] | None:
    """Array task id -> squeue state for a job, or None if squeue is absent or does not know the job.

    Best effort, for display only: a shard whose task waits in the queue is "queued", not "missing".
    """
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        r = subprocess.run([squeue, "-h", "-r", "-j", job_id, "-o", "%K %T"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None  # e.g. the job finished long ago and the controller forgot it
    states: dict[int, str] = {}
    for line in r.stdout.splitlines():
        task, _, state = line.strip().partition(" ")
        if task.isdigit():
            states[int(task)] = state.strip()
    return states


def _shard_count(run_dir: Path, requested: int | None) -> int | None:
    """N from --shards, else the latest submission, else the shard files (if they agree)."""
    if requested is not None:
        return requested
    subs = read_submissions(run_dir)
    if subs:
        return subs[-1].shards
    seen = {sh[1] for p in results_files(run_dir) if (sh := shard_of_file(p)) is not None}
    seen |= {sh[1] for p in writer_locks(run_dir) if (sh := shard_of_lock(p.name))}
    if len(seen) > 1:
        raise UsageError(f"{run_dir} has shard files for several shard counts ({', '.join(map(str, sorted(seen)))}); "
                         "pick one with --shards N")
    return seen.pop() if seen else None


def run_status(run_dir: Path, *, shards: int | None = None, stalled_after: float = DEFAULT_STALLED_AFTER,
               now: float | None = None, query_slurm: bool = True) -> RunStatus:
    """Per-shard progress of a run: done/total/errors, last activity, lock, and what is missing or stalled.

    Reads only (never takes a lock), so it is safe while tasks are writing. A shard is ``done``
    when every one of its samples has an ok record (in any results file of the run), ``running``
    while its lock is held, ``stalled`` when held but silent for ``stalled_after`` seconds,
    ``queued`` when its array task waits in Slurm's queue (asked of ``squeue`` for the last job
    ``evalledger slurm --submit`` recorded, if ``query_slurm``), ``stopped`` when it has results
    but nobody writes it, ``missing`` when it never started and is not queued.
    """
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    n = _shard_count(run_dir, shards)
    if n is not None and n < 1:
        raise UsageError(f"--shards {n}: must be at least 1")
    dataset_problem = None
    try:
        expected: list[str] | None = expected_sample_ids(run_dir)
    except EvalLedgerError as e:
        expected, dataset_problem = None, e.message
    # The merged view over every file: a unit is done once any writer recorded it ok.
    latest = RunLedger(run_dir).latest_records()
    ok_ids = {key for key, r in latest.items() if r.get("status") == "ok"}
    err_ids = {key for key, r in latest.items() if r.get("status") != "ok"}
    manifest = RunLedger(run_dir).read_manifest() or {}
    epochs = manifest_epochs(manifest)
    if expected is not None:
        expected = expected_units(expected, epochs)
    count = manifest.get("sample_count")
    total = len(expected) if expected is not None else (count * epochs if type(count) is int else None)
    universe = set(expected) if expected is not None else None

    other_files = [p.name for p in results_files(run_dir) if (sh := shard_of_file(p)) is None or sh[1] != n]
    subs = read_submissions(run_dir)
    # Array task K runs shard K only for the layout of the last submission.
    slurm_states = (_slurm_task_states(subs[-1].job_id) if query_slurm and subs and subs[-1].shards == n
                    else None) or {}
    shard_rows: list[ShardStatus] = []
    if n is not None:
        members: dict[int, set[str]] = {k: set() for k in range(1, n + 1)}
        for key in (expected if expected is not None else ok_ids | err_ids):
            members[shard_of(split_unit_key(key)[0], n)].add(key)  # a unit is in its sample's shard
        shard_rows = [_shard_status(run_dir, (k, n), members[k], expected is not None, ok_ids, err_ids,
                                    slurm_states.get(k), stalled_after, now) for k in range(1, n + 1)]
    done_all = len(ok_ids & universe) if universe is not None else len(ok_ids)
    errors_all = len(err_ids & universe) if universe is not None else len(err_ids)
    all_files = [*results_files(run_dir), *resume_state_files(run_dir)]
    life = run_lifecycle(run_dir)
    return RunStatus(
        run_id=run_dir.name,
        run_dir=str(run_dir),
        shards=n,
        total=total,
        done=done_all,
        errors=errors_all,
        pending=None if total is None else max(total - done_all, 0),
        shard_status=shard_rows,
        missing=[s.shard for s in shard_rows if s.state == "missing"],
        stalled=[s.shard for s in shard_rows if s.state == "stalled"],
        running=[s.shard for s in shard_rows if s.state == "running"],
        other_files=other_files,
        last_activity=_iso(_mtime(*all_files)),
        dataset_problem=dataset_problem,
        last_job_id=subs[-1].job_id if subs else None,
        complete=total is not None and done_all >= total,
        state=life.state,
        state_label=life.label,
        epochs=epochs,
        batches=batch_summary(run_dir),
    )


def _shard_status(run_dir: Path, shard: tuple[int, int], mine: set[str], known: bool, ok_ids: set[str],
                  err_ids: set[str], slurm_state: str | None, stalled_after: float, now: float) -> ShardStatus:
    """One shard's row. ``mine``: its unit keys (``known``: from the dataset, so its total is known)."""
    k, n = shard
    cm = RunLedger(run_dir, shard)
    lock, owner = lock_state(cm.lock_path, cm.owner_path)
    # The shard's own files, and those of its worker processes (a shard run with --workers).
    results = [cm.results_path, *worker_files(run_dir, RESULTS, shard)]
    states = [cm.state_path, *worker_files(run_dir, RESUME_STATE, shard)]
    report = ReadReport()
    for path in results:
        for _ in iter_file_records(path, report):
            pass
    done = len(mine & ok_ids)
    shard_total = len(mine) if known else None
    last = _mtime(*results, *states)
    if shard_total is not None and done >= shard_total:
        state = "done"
    elif lock in ("held", "held elsewhere"):
        # Quiet since the later of its last write and the moment the writer took the lock.
        since = _parse_iso(owner.get("since")) if owner else None
        marks = [t for t in (last, since) if t is not None]
        quiet_for = now - max(marks) if marks else None
        state = "stalled" if quiet_for is not None and quiet_for >= stalled_after else "running"
    elif slurm_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"):
        state = "queued"
    elif any(p.exists() for p in (*results, *states)):
        state = "stopped"  # it started once, and nobody writes it now
    else:
        state = "missing"
    marker = marker_state(run_dir, cm.paths.status)
    return ShardStatus(shard=k, shards=n, total=shard_total, done=done, errors=len(mine & err_ids),
                       records=report.lines, last_activity=_iso(last),
                       idle_seconds=None if last is None else max(0.0, now - last), lock=lock, owner=owner,
                       state=state, slurm_state=slurm_state, marker=None if marker is None else marker.label)
