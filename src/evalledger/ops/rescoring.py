"""Scoring stored replies again, and writing the rescored run; used by :func:`evalledger.ops.rescore_run`.

A task runs against a ``generate`` that answers each model call with the record's next stored
reply, so nothing is sent and a multi-turn task (self-correction) re-derives its turns exactly as
it did when the run was made.

A unit's new record is its old one with the task's new ``prediction``, ``target``, ``score``,
``correct`` and ``extra``, and ``paid`` zero (nothing was paid for it: the bill stays with the
run that asked). An error record stays an error record; a scorer that raises for a unit turns it
into one, as a run would have recorded it.

The rescored run is built in a hidden staging directory beside its place with the ledger's writer
(its locks, fsync, a final status marker), then renamed there, so it appears whole or not at all.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalledger.config import identity_hash
from evalledger.datasets import BUILTIN_DATASETS, Dataset
from evalledger.errors import DiskSpaceError, RunExistsError, UsageError
from evalledger.fsio import (
    canonical_json,
    disk_failure_message,
    file_timestamp,
    fsync_dir,
    is_disk_error,
    utc_now,
    write_json_atomic,
)
from evalledger.ledger import (
    COMPLETE,
    INCOMPLETE,
    RunLedger,
    RunPaths,
    StatusWriter,
    lock_status,
    manifest_epochs,
    move_run_aside,
)
from evalledger.records import SELF_CORRECTION_KEYS, epoch_of, record_unit_key, unit_key
from evalledger.samples import Sample, sample_rng
from evalledger.tasks import HumanEvalTask, SelfCorrectTask, Task

__all__ = ["NOTHING_PAID", "ReplayUnit", "check_replayable", "check_task_replays", "correctness_counts",
           "rescored_manifest", "score_units", "scores_sha256", "stored_replies", "units_in_dataset_order",
           "write_rescored_run"]

#: What a rescored record adds to the run's bill: nothing.
NOTHING_PAID = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
#: Units scored at once (a task that runs code limits its own processes; see HumanEvalTask).
_BATCH = 256
#: Records per write of the new results file.
_WRITE_BATCH = 2048
#: ``Task.run`` of the tasks whose scoring needs nothing but the stored replies and the row: one
#: call and its score (the default), HumanEval (its tests run again), self-correction (both turns
#: scored again with the base task's scorer). A task that overrides ``run`` otherwise may depend on
#: what was never stored.
_REPLAYABLE_RUNS = (Task.run, HumanEvalTask.run, SelfCorrectTask.run)


@dataclass
class ReplayUnit:
    """One unit of work (sample, epoch): its dataset row and its latest record."""

    key: str
    sample: Sample
    record: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"

    @property
    def label(self) -> str:
        epoch = epoch_of(self.record)
        return f"sample {self.sample.id!r}" + (f" epoch {epoch}" if epoch > 1 else "")


def units_in_dataset_order(view: dict[str, dict[str, Any]], data: Dataset) -> tuple[list[ReplayUnit], int]:
    """The records of ``view`` (one per unit) whose sample is in the dataset, in dataset order, each
    sample's epochs together (1..K); and how many were left out (sample ids the dataset lacks)."""
    by_sample: dict[str, list[dict[str, Any]]] = {}
    for rec in view.values():
        by_sample.setdefault(rec["sample_id"], []).append(rec)
    units = []
    for sample in data.samples:
        for rec in sorted(by_sample.pop(sample.id, []), key=epoch_of):
            units.append(ReplayUnit(unit_key(sample.id, epoch_of(rec)), sample, rec))
    return units, sum(len(recs) for recs in by_sample.values())


def stored_replies(record: dict[str, Any]) -> list[str] | None:
    """The replies an ok record holds, in call order (None if it holds no reply text)."""
    response = record.get("response")
    if isinstance(response, str):
        return [response]
    if isinstance(response, list) and response and all(isinstance(r, str) for r in response):
        return response
    return None


def check_task_replays(task: Task, spec: str) -> None:
    """Refuse a task whose scoring may need more than the stored replies (it runs its own conversation)."""
    if type(task).run not in _REPLAYABLE_RUNS:
        raise UsageError(
            f"--task {spec}: task {task.name or spec} runs its own conversation (it overrides run()), so its "
            "scoring may depend on more than the stored replies; rescore takes tasks that score one reply "
            "(score()), humaneval and self-correct")


def check_replayable(units: list[ReplayUnit], run_id: str) -> None:
    """Refuse an ok record that holds no reply text to score."""
    for unit in units:
        if unit.ok and stored_replies(unit.record) is None:
            raise UsageError(f"run {run_id}: the ok record of {unit.label} holds no reply text to score "
                             f"(response is {type(unit.record.get('response')).__name__}); cannot rescore it")


class _NotStored(BaseException):
    """The task asked for a model call the record holds no reply for. A BaseException, so that a
    task's own error handling lets it through: it is a refusal, not a scoring error."""


class _Replay:
    """The task's ``generate``: the record's replies, one per call, in order. Sends nothing."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.used = 0

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        if self.used >= len(self.replies):
            raise _NotStored()
        self.used += 1
        return self.replies[self.used - 1]


async def score_units(task: Task, task_name: str, units: list[ReplayUnit], seed: int) -> list[dict[str, Any]]:
    """Every unit's new record, in order. ``seed``: the run's, for the task's per-unit RNG. A
    :class:`UsageError` (a unit whose replies do not fit the task's calls) is raised once its batch
    has finished, so no scoring is left running."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(units), _BATCH):
        batch = units[start:start + _BATCH]
        results = await asyncio.gather(*(_score_unit(task, task_name, u, seed) for u in batch),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            out.append(result)
    return out


async def _score_unit(task: Task, task_name: str, unit: ReplayUnit, seed: int) -> dict[str, Any]:
    # The old task's own fields go: they would contradict the new score.
    record = {k: v for k, v in unit.record.items() if k != "extra" and k not in SELF_CORRECTION_KEYS}
    record.update(task=task_name, paid=dict(NOTHING_PAID))
    if not unit.ok:
        if "extra" in unit.record:
            record["extra"] = unit.record["extra"]
        return record
    replies = stored_replies(unit.record) or []
    replay = _Replay(replies)
    try:
        output = await task.run(unit.sample, replay, sample_rng(seed, unit.sample.id, epoch_of(unit.record)))
    except _NotStored:
        raise UsageError(_calls_message(task_name, unit, len(replies), None)) from None
    except Exception as e:  # a scorer bug for this sample: an error record, as a run would write
        record.update(status="error", prediction=None, target=None, score=None, correct=None,
                      error={"type": type(e).__name__, "message": str(e) or type(e).__name__, "retryable": False,
                             "status_code": None})
        return record
    if replay.used != len(replies):
        raise UsageError(_calls_message(task_name, unit, len(replies), replay.used))
    record.update(prediction=output.score.prediction, target=output.score.target, score=output.score.score,
                  correct=bool(output.score.correct))
    if output.extra:
        record["extra"] = output.extra
    return record


def _calls_message(task_name: str, unit: ReplayUnit, stored: int, used: int | None) -> str:
    made = repr(unit.record.get("task"))
    if used is None:
        what = (f"asks for more model calls than the {stored} reply(ies) the record holds: its scoring needs "
                "replies that were never asked for")
    else:
        what = (f"makes {used} model call(s) where the record holds {stored} reply(ies): it would score only part "
                "of the conversation")
    return (f"task {task_name} {what} ({unit.label}, answered for task {made}). Rescore with a task that makes "
            f"the same model calls as {made} (e.g. self-correct:BASE for a self-correct run)")


def correctness_counts(units: list[ReplayUnit], new_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Old and new correctness over ok units: counts, accuracies, and the units whose verdict changed."""
    old_ok = [u.record.get("correct") is True for u in units if u.ok]
    new_ok = [r.get("correct") is True for r in new_records if r.get("status") == "ok"]
    right_to_wrong = wrong_to_right = 0
    for unit, new in zip(units, new_records):
        if unit.ok and new.get("status") == "ok":
            before, after = unit.record.get("correct") is True, new.get("correct") is True
            right_to_wrong += before and not after
            wrong_to_right += after and not before
    return {
        "rescored": len(old_ok), "errors_copied": sum(not u.ok for u in units),
        "scoring_errors": len(old_ok) - len(new_ok), "old_correct": sum(old_ok), "new_correct": sum(new_ok),
        "old_accuracy": sum(old_ok) / len(old_ok) if old_ok else None,
        "new_accuracy": sum(new_ok) / len(new_ok) if new_ok else None,
        "right_to_wrong": right_to_wrong, "wrong_to_right": wrong_to_right,
    }


def scores_sha256(records: list[dict[str, Any]]) -> str:
    """sha256 of what the scorer decided, unit by unit (not, say, how long HumanEval's programs took)."""
    h = hashlib.sha256()
    for r in records:
        extra = r.get("extra") if isinstance(r.get("extra"), dict) else {}
        decided = [r.get("sample_id"), epoch_of(r), r.get("status"), r.get("prediction"), r.get("target"),
                   r.get("score"), r.get("correct"), *(extra.get(k) for k in SELF_CORRECTION_KEYS)]
        h.update(canonical_json(decided).encode() + b"\n")
    return h.hexdigest()


# ============================================================================================
# The rescored run's directory


def rescored_manifest(source: dict[str, Any], run_id: str, dest_root: Path, spec: str, task: Task, task_name: str,
                      rescored_from: dict[str, Any], dataset_copy: Path | None) -> dict[str, Any]:
    """The source's manifest for the rescored run: the new task (``spec``), ID and output directory,
    ``rescored_from``, and the dataset's path when it was read from a copy (``verify`` reads it there)."""
    manifest = copy.deepcopy(source)
    for stale in ("updated_at", "recreated", "ids_not_in_dataset"):
        manifest.pop(stale, None)
    identity = dict(manifest["identity"]) if isinstance(manifest.get("identity"), dict) else {}
    identity.update(task=task_name, prompt_version=task.prompt_version)
    cfg = manifest["config"] if isinstance(manifest.get("config"), dict) else {}
    cfg.update(task=spec, run_id=run_id, output_dir=str(dest_root))
    if dataset_copy is not None and isinstance(manifest.get("dataset"), dict):
        manifest["dataset"]["path"] = str(dataset_copy)
        if cfg.get("dataset") not in BUILTIN_DATASETS:
            cfg["dataset"] = str(dataset_copy)
    manifest.update(run_id=run_id, identity=identity, identity_hash=identity_hash(identity), config=cfg,
                    task=task_name, task_spec=spec, prompt_version=task.prompt_version, created_at=utc_now(),
                    rescored_from=rescored_from)
    return manifest


def write_rescored_run(target: Path, manifest: dict[str, Any], records: list[dict[str, Any]],
                        expected: list[str], command: str) -> Path | None:
    """Write the run in a hidden directory beside ``target``, then rename it there, so it appears
    whole or not at all. A run directory in the way (``overwrite`` was checked by the caller) is
    moved aside just before, and where it went is returned."""
    dest_root, run_id = target.parent, target.name
    dest_root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(dest_root, run_id)
    staging = dest_root / f".{run_id}.rescoring-{file_timestamp()}"
    staging.mkdir()
    moved = None
    try:
        built = staging / run_id
        _write_run_files(built, manifest, records, expected, command)
        if target.exists():
            moved = move_run_aside(target)
        try:
            os.rename(built, target)
        except OSError as e:
            raise RunExistsError(f"{target} appeared while the rescore was written ({e.strerror}); "
                                 "nothing was changed there") from None
        fsync_dir(dest_root)
    except OSError as e:
        if is_disk_error(e):
            raise DiskSpaceError(disk_failure_message(staging, e)) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return moved


def _remove_leftovers(dest_root: Path, run_id: str) -> None:
    """Staging directories of this rescore that a killed process left (nobody holds their lock)."""
    for old in dest_root.glob(f".{run_id}.rescoring-*"):
        if old.is_dir() and not old.is_symlink() and not lock_status(old / run_id):
            shutil.rmtree(old, ignore_errors=True)


def _write_run_files(run_dir: Path, manifest: dict[str, Any], records: list[dict[str, Any]], expected: list[str],
                     command: str) -> None:
    """The manifest, the results under the writer's locks (fsynced), and the final status marker:
    ``complete`` when every ``expected`` unit has an ok record, else ``incomplete``."""
    run_dir.mkdir()
    write_json_atomic(RunPaths(run_dir).manifest, manifest)
    epochs = manifest_epochs(manifest)
    total = len(expected)
    ok_units = {record_unit_key(r) for r in records if r.get("status") == "ok"}
    done = sum(key in ok_units for key in expected)
    with RunLedger(run_dir).open_writer() as ledger:
        status = StatusWriter(run_dir, None, run_dir.name)
        status.begin(total=total, pending=total, command=command, epochs=epochs)
        for start in range(0, len(records), _WRITE_BATCH):
            ledger.write_records(records[start:start + _WRITE_BATCH])
        ledger.sync()
        complete = done == total
        counts = {"total_samples": total, "completed_samples": done,
                  "error_samples": sum(r.get("status") != "ok" for r in records), "pending_samples": total - done,
                  "correct_samples": sum(r.get("correct") is True for r in records), "requests_this_run": 0}
        if epochs > 1:
            counts["epochs"] = epochs
        status.finish(COMPLETE if complete else INCOMPLETE, reason=None if complete else "errors",
                      exit_code=0 if complete else 1, counts=counts, files=[ledger.results_path])
