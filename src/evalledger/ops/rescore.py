"""Rescoring a run: every stored response scored again with a task's current scorer, sending nothing.

The library side of ``evalledger rescore`` (the command is in :mod:`evalledger.cli.rescore`).

For each unit of work (sample, epoch) of the source run, its latest record (the readers' rule,
:func:`evalledger.ledger.latest_records`) is scored again by running the task against a
``generate`` that answers each model call with the record's next stored reply
(:mod:`evalledger.ops.rescoring`), so a multi-turn task (self-correction) re-derives its turns
exactly as it did when the run was made, and no request can go out (no provider is even built).
The rows come from the dataset recorded in the source's manifest, checked against its sha256.

The result is a new run directory, written under the ledger's writer rules (the writer's locks,
fsync, a final status marker) and renamed into place whole. Its manifest is the source's with the new task and a ``rescored_from``
section; its records are the source's latest ones with the new ``prediction``, ``target``,
``score``, ``correct`` (and ``extra``), and ``paid`` zero: nothing was paid for them, the bill
stays with the source, while ``usage`` and ``cost_usd`` remain the facts of each answer. The
source run is only read.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evalledger._version import __version__
from evalledger.config import check_run_id, identity_hash, slug
from evalledger.datasets import BUILTIN_DATASETS, Dataset, check_samples, load_dataset, resolve_dataset
from evalledger.errors import (
    DatasetError,
    EvalLedgerError,
    LockHeldError,
    RunExistsError,
    UsageError,
)
from evalledger.fsio import (
    canonical_json,
    sha256_file,
    utc_now,
)
from evalledger.ledger import (
    RunLedger,
    is_run_dir,
    iter_run_records,
    latest_records,
    lock_status,
    manifest_epochs,
    results_files,
)
from evalledger.ops.rescoring import (
    check_replayable,
    check_task_replays,
    correctness_counts,
    rescored_manifest,
    score_units,
    scores_sha256,
    units_in_dataset_order,
    write_rescored_run,
)
from evalledger.ops.units import expected_units
from evalledger.readers import RunRef, resolve_run_dir
from evalledger.tasks import Task, load_task

__all__ = ["RescoreReport", "rescore_run"]

@dataclass
class RescoreReport:
    """What :func:`rescore_run` did. Counts are of units of work, (sample, epoch).

    ``already_done``: an identical rescore (same source content, same scorer, same scores) was
    there already and nothing was written. Accuracies are over the units with an ``ok`` record
    (None when there is none); ``right_to_wrong`` / ``wrong_to_right`` count units ok in both.
    """

    run_id: str
    run_dir: str
    source_run_id: str
    source_run_dir: str
    task: str
    source_task: str | None
    results_sha256: str
    already_done: bool
    units: int  # units written: the source's latest record of each unit of a dataset sample
    rescored: int  # ok records scored again
    errors_copied: int  # units whose latest record is an error: copied as errors
    scoring_errors: int  # ok records whose new scoring raised: written as error records
    skipped_unknown_ids: int  # units whose sample id is not in the dataset (no row to score against)
    old_correct: int
    new_correct: int
    old_accuracy: float | None
    new_accuracy: float | None
    right_to_wrong: int
    wrong_to_right: int
    moved_aside: str | None = None  # with overwrite: where the run that was in the way went

    @property
    def changed(self) -> int:
        """Units whose correctness changed."""
        return self.right_to_wrong + self.wrong_to_right

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (what ``rescore --json`` prints)."""
        return {**asdict(self), "changed": self.changed}


# ============================================================================================
# The entry point


def rescore_run(run: RunRef, *, task: str | None = None, run_id: str | None = None,
                output_dir: str | Path | None = None, dataset: str | Path | None = None,
                allow_code_execution: bool = False, overwrite: bool = False) -> RescoreReport:
    """Score every stored response of ``run`` again and write the result as a new run; send nothing.

    ``run``: a run ID (under ``output_dir``, default ``outputs``), a run directory or a
    ``RunSummary``. ``task``: the scorer (any ``--task`` spec); default the run's own task, as the
    code now scores it. ``run_id``: the new run's ID; default ``<source>_rescored-<task>-<hash8>``,
    the hash covering the source's results files and the scorer (task name, prompt version, and
    its ``score_version`` if it has one), so the same rescore always gets the same ID.
    ``output_dir``: where the new run goes (default: beside the source). ``dataset``: a copy of
    the run's dataset at another path (its sha256 must be the recorded one).

    Refuses (:class:`EvalLedgerError`, nothing written) a run being written, a dataset that is
    missing or changed, an unknown task or one the rows do not fit, a task that runs code without
    ``allow_code_execution``, a task whose scoring needs what the records do not hold, and a new
    run ID that names another existing run (unless ``overwrite``, which moves it aside). An
    identical rescore that exists already is reported as ``already_done``.
    """
    source = resolve_run_dir(run, output_dir)
    manifest = RunLedger(source).read_manifest()
    if manifest is None:
        raise UsageError(f"{source}: no manifest.json, so the run's dataset and task are unknown; cannot rescore it")
    _refuse_live(source)
    files = results_files(source)
    if not files:
        raise UsageError(f"{source}: no results file; nothing to rescore")
    fingerprints = {p.name: (sha256_file(p), os.stat(p)) for p in files}
    results_sha256 = _combined_sha256({name: fp[0] for name, fp in fingerprints.items()})

    spec, scorer = _load_scorer(manifest, task, allow_code_execution)
    check_task_replays(scorer, spec)
    task_name = scorer.name or spec
    data = _load_run_dataset(source, manifest, dataset, scorer)

    dest_root = Path(output_dir) if output_dir is not None else source.parent
    new_id = run_id if run_id is not None else _default_run_id(source.name, task_name, scorer, results_sha256)
    check_run_id(new_id)
    target = dest_root / new_id
    if target.resolve() == source.resolve():
        raise UsageError(f"--run-id {new_id}: that is the source run itself, which rescore never changes; "
                         "choose another --run-id or --output-dir")

    scorer_identity = _scorer_identity(scorer, task_name)
    exists = is_run_dir(target) or (target.is_dir() and any(target.iterdir()))
    if exists and not overwrite and not _same_source_and_scorer(target, results_sha256, scorer_identity):
        raise RunExistsError(_exists_message(target, results_sha256, scorer_identity))

    view = latest_records(iter_run_records(source))
    _refuse_changed_while_read(source, fingerprints)
    units, skipped = units_in_dataset_order(view, data)
    check_samples(data.path, list({u.sample.id: u.sample for u in units}.values()), scorer.validate_sample, spec)
    check_replayable(units, source.name)
    new_records = asyncio.run(score_units(scorer, task_name, units, _run_seed(manifest)))

    rescored_from = {
        "run_id": source.name, "run_dir": str(source.resolve()), "results_sha256": results_sha256,
        "results_files": {name: fp[0] for name, fp in fingerprints.items()},
        "task": manifest.get("task"), "task_spec": manifest.get("task_spec"),
        "scorer": scorer_identity, "scorer_spec": spec, "scores_sha256": scores_sha256(new_records),
        "rescored_at": utc_now(), "evalledger": __version__,
    }
    counts = correctness_counts(units, new_records)
    report = RescoreReport(
        run_id=new_id, run_dir=str(target), source_run_id=source.name, source_run_dir=str(source),
        task=task_name, source_task=manifest.get("task"), results_sha256=results_sha256, already_done=False,
        units=len(new_records), skipped_unknown_ids=skipped, **counts)
    if exists:
        if _same_rescore(target, rescored_from):
            report.already_done = True
            return report
        if not overwrite:
            raise RunExistsError(_exists_message(target, results_sha256, scorer_identity, scores_differ=True))
    new_manifest = rescored_manifest(manifest, new_id, dest_root, spec, scorer, task_name, rescored_from,
                                     None if dataset is None else data.path)
    count = manifest.get("sample_count")
    selection = data.samples[:count] if type(count) is int else [u.sample for u in units]
    expected = expected_units(dict.fromkeys(s.id for s in selection), manifest_epochs(manifest))
    moved = write_rescored_run(target, new_manifest, new_records, expected, f"evalledger rescore {source}")
    report.moved_aside = None if moved is None else str(moved)
    return report


# ============================================================================================
# Checks before anything is scored


def _refuse_live(source: Path) -> None:
    held = lock_status(source)
    if held:
        who = ", ".join(f"pid {o.get('pid')} on {o.get('host')}" for o in held.values())
        raise LockHeldError(f"run {source.name} is being written right now ({who}); rescore it once it has stopped, "
                            "so that the rescore covers every record")


def _refuse_changed_while_read(source: Path, fingerprints: dict[str, tuple[str, os.stat_result]]) -> None:
    """The records read must be those the hashes describe: refuse if a results file changed since."""
    now = {p.name: os.stat(p) for p in results_files(source)}
    for name, (_, st) in fingerprints.items():
        cur = now.pop(name, None)
        if cur is None or (cur.st_size, cur.st_mtime_ns, cur.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
            raise UsageError(f"{source / name} changed while it was being read; run rescore again")
    if now:
        raise UsageError(f"{source}: results file(s) {', '.join(sorted(now))} appeared while it was being read; "
                         "run rescore again")


def _combined_sha256(file_hashes: dict[str, str]) -> str:
    """One sha256 for a run's results files: over each file's name and sha256, in name order."""
    return hashlib.sha256(canonical_json(dict(sorted(file_hashes.items()))).encode()).hexdigest()


def _load_scorer(manifest: dict[str, Any], task: str | None, allow_code_execution: bool) -> tuple[str, Task]:
    """The task spec and task to score with: ``task``, or the one the run was made with."""
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    spec = task or manifest.get("task_spec") or cfg.get("task") or manifest.get("task")
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("the run's manifest does not name its task; give one with --task")
    builtin = BUILTIN_DATASETS.get(cfg.get("dataset")) if isinstance(cfg.get("dataset"), str) else None
    # Plain self-correct wraps the dataset's default task, as when the run was made.
    scorer = load_task(spec, default_base=builtin.default_task if builtin is not None else None)
    if getattr(scorer, "executes_code", False) and not allow_code_execution:
        raise UsageError(
            f"--task {spec}: scoring this task runs model-written Python code on this machine (in a child process "
            "with resource limits, which is not a security sandbox). Pass --allow-code-execution "
            "(allow_code_execution=True from Python) to rescore it, preferably inside a container or VM."
        )
    return spec, scorer


def _load_run_dataset(source: Path, manifest: dict[str, Any], dataset: str | Path | None, scorer: Task) -> Dataset:
    """The run's dataset, read from ``dataset`` or where the manifest recorded it, refused unless its
    sha256 is the recorded one; every row must have the fields ``scorer`` requires, as ``run`` checks."""
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    recorded = manifest.get("dataset") if isinstance(manifest.get("dataset"), dict) else {}
    sha = recorded.get("sha256")
    name = cfg.get("dataset")
    where = dataset if dataset is not None else (name if name in BUILTIN_DATASETS else recorded.get("path") or name)
    if not isinstance(sha, str) or where is None:
        raise DatasetError(f"run {source.name}: its manifest does not record the dataset's path and sha256; "
                           "cannot check that the rows are the ones the model answered")
    try:
        resolved = resolve_dataset(where if where in BUILTIN_DATASETS else Path(where))
    except DatasetError as e:
        raise DatasetError(f"run {source.name}'s dataset cannot be read: {e.message} (the run recorded sha256 "
                           f"{sha}); pass --dataset FILE to point at a copy with that content") from None
    if resolved.sha256 != sha:
        raise DatasetError(
            f"dataset {resolved.path} is not the one run {source.name} was made with: sha256 {sha} recorded, "
            f"{resolved.sha256} now. Rescoring against other rows would pair answers with the wrong questions; "
            "pass --dataset FILE to point at a copy of the original")
    id_source = recorded.get("id_source")
    id_column = cfg.get("id_column") or (id_source[len("column:"):] if isinstance(id_source, str)
                                         and id_source.startswith("column:") else None)
    return load_dataset(resolved, id_column=id_column, required_fields=scorer.required_fields)


def _default_run_id(source_id: str, task_name: str, scorer: Task, results_sha256: str) -> str:
    """``<source run id>_rescored-<task>-<hash8>``: the hash covers the source's results and the scorer."""
    digest = identity_hash({"results_sha256": results_sha256, **_scorer_identity(scorer, task_name)})
    return f"{slug(source_id, 128)}_rescored-{slug(task_name, 40)}-{digest[:8]}"


def _scorer_identity(scorer: Task, task_name: str) -> dict[str, Any]:
    """What names a scorer: the task's name and prompt version, and its ``score_version`` if it
    sets one (a task may, to tell a fixed scorer from the old one without changing its prompt)."""
    ident: dict[str, Any] = {"task": task_name, "prompt_version": scorer.prompt_version}
    score_version = getattr(scorer, "score_version", None)
    if score_version is not None:
        ident["score_version"] = score_version
    return ident


def _run_seed(manifest: dict[str, Any]) -> int:
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    seed = cfg.get("seed")
    return seed if type(seed) is int else 0


# ============================================================================================
# A run directory already there


def _rescored_from_of(target: Path) -> dict[str, Any] | None:
    """The ``rescored_from`` of the run at ``target``, or None (not a rescore, or no readable manifest)."""
    try:
        old = (RunLedger(target).read_manifest() or {}).get("rescored_from")
    except EvalLedgerError:
        return None
    return old if isinstance(old, dict) else None


def _same_source_and_scorer(target: Path, results_sha256: str, scorer: dict[str, Any]) -> bool:
    old = _rescored_from_of(target)
    return old is not None and old.get("results_sha256") == results_sha256 and old.get("scorer") == scorer


def _same_rescore(target: Path, rescored_from: dict[str, Any]) -> bool:
    """Whether ``target`` is this very rescore: same source content, scorer and scores."""
    old = _rescored_from_of(target)
    return old is not None and all(old.get(k) == rescored_from[k] for k in ("results_sha256", "scorer", "scores_sha256"))


def _exists_message(target: Path, results_sha256: str, scorer: dict[str, Any], *, scores_differ: bool = False) -> str:
    old = _rescored_from_of(target)
    if scores_differ:
        why = ("it rescored the same results with the same task and prompt version, but its scores differ: the "
               "scorer's code changed without a new prompt_version")
    elif old is not None and old.get("results_sha256") != results_sha256:
        why = f"it rescored other results (of run {old.get('run_id')}, results sha256 {old.get('results_sha256')})"
    elif old is not None:
        why = f"it rescored these results with another scorer ({old.get('scorer')})"
    else:
        why = "it is not a rescore of this run"
    return (f"run directory {target} exists already and {why}. Pass --overwrite to move it aside "
            f"(<run_id>.old-<timestamp>, kept) and write this rescore, or choose another --run-id")
