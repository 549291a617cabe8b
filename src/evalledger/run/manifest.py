"""A run's manifest: created on the first run, checked on every resume against the results.

The manifest pins the experiment (its identity fields), so that a resume with other settings
is refused with a field-by-field diff instead of mixing two experiments in one ledger. A manifest
that went missing beside existing results is recreated only when the records agree with the
command; records for sample ids the dataset lacks are kept and listed (``ids_not_in_dataset``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evalledger.config import diff_identity
from evalledger.errors import ConfigDriftError
from evalledger.fsio import create_json_exclusive, utc_now, write_json_atomic
from evalledger.ledger import MANIFEST, LedgerScan, RunLedger, manifest_epochs, parse_record_line, results_files
from evalledger.records import epoch_of
from evalledger.run.sample import input_hash as _input_hash

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from evalledger.run.prepare import PreparedRun


@dataclass
class _ResultsSeen:
    """What the run directory's results files hold, as far as this run's checks care."""

    records: int = 0
    in_dataset: int = 0  # records whose sample id is in the dataset
    foreign: dict[str, int] = field(default_factory=dict)  # sample id not in the dataset -> records
    mismatch: str | None = None  # the first record that contradicts this command, described
    max_epoch: int = 1  # the latest epoch a record answers (a recreated manifest must hold it)


def _scan_results(prepared: PreparedRun, *, check_records: bool) -> _ResultsSeen:
    """One pass over every results file of the run (all shards), garbage lines skipped.

    ``check_records`` also compares each record with this command (model, task, input hash);
    only needed when the manifest is missing, and the input hash costs a JSON dump per record.
    """
    seen = _ResultsSeen()
    all_ids = prepared.dataset.all_ids
    # Only when the manifest is missing: then every record's input is compared with its row.
    by_id = {s.id: s for s in prepared.samples} if check_records else {}
    task_name = prepared.task.name or prepared.task_spec
    model = prepared.config.model
    for path in results_files(prepared.run_dir):
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    break
                rec = parse_record_line(raw)
                if rec is None:
                    continue
                seen.records += 1
                seen.max_epoch = max(seen.max_epoch, epoch_of(rec))
                sid = rec["sample_id"]
                if sid not in all_ids:
                    seen.foreign[sid] = seen.foreign.get(sid, 0) + 1
                else:
                    seen.in_dataset += 1
                if not check_records or seen.mismatch is not None:
                    continue
                where = f"{path.name} line {number} (sample {sid!r})"
                if rec.get("model") != model:
                    seen.mismatch = f"{where} has model {rec.get('model')!r}, this command has {model!r}"
                elif rec.get("task") != task_name:
                    seen.mismatch = f"{where} has task {rec.get('task')!r}, this command has {task_name!r}"
                elif sid in by_id and "input_hash" in rec and rec["input_hash"] != _input_hash(by_id[sid]):
                    seen.mismatch = (
                        f"{where} was made from other input (input_hash {rec['input_hash']!r}); the row in "
                        f"{prepared.dataset.path} {prepared.dataset.row_label} {by_id[sid].row} differs"
                    )
    return seen


def check_or_create_manifest(prepared: PreparedRun, scan: LedgerScan | None = None) -> dict[str, Any]:
    """Create the manifest, or check an existing one against this run's identity.

    A resume whose identity fields differ is refused with a field-by-field diff (it would mix
    two experiments in one ledger). A changed ``--limit`` or ``--epochs`` is not identity: the
    manifest keeps the largest extent ever asked (``sample_count``, ``epochs``; the run's total is
    their product, in units of work). A manifest that is not a JSON object is refused (:class:`LedgerCorruptError`).

    A *missing* manifest beside existing results (deleted by hand, or results copied in) is
    recreated from this command only if the results agree with it; see
    :func:`_recreate_manifest_or_refuse`. Records for sample ids the dataset does not have are
    reported with a warning, kept, and listed in the manifest as ``ids_not_in_dataset``.

    ``scan``: the runner's pass over the ledger (made with the dataset's ids), reused so the
    results are not read twice; without it, or when the manifest is missing (every record must
    then be checked in full), the results are read here.
    """
    path = prepared.run_dir / MANIFEST
    existing = RunLedger(prepared.run_dir).read_manifest()
    if existing is None or scan is None:
        seen = _scan_results(prepared, check_records=existing is None)
    else:
        seen = _ResultsSeen(records=scan.records, in_dataset=scan.in_dataset, foreign=dict(scan.foreign))
    if existing is None:
        fresh = prepared.manifest()
        # The run's epochs: this command's, or (a manifest recreated beside results) the latest recorded.
        fresh["epochs"] = max(prepared.config.epochs, seen.max_epoch)
        if seen.records:
            fresh["recreated"] = _recreate_manifest_or_refuse(prepared, seen)
        if create_json_exclusive(path, fresh):
            _note_foreign_ids(prepared, fresh, seen)
            return fresh
        # Another shard created it between our read and our create: check against theirs.
        existing = RunLedger(prepared.run_dir).read_manifest() or {}
    _refuse_drift(prepared, existing)
    changed = _accept_endpoint(prepared, existing)
    if extends(existing, len(prepared.samples)):
        # The run's total is the largest extent ever asked for: a smaller --limit on a resume runs
        # fewer samples now, but what is done stays part of the run and "done" never exceeds it.
        existing["sample_count"] = len(prepared.samples)
        existing["limit"] = prepared.config.limit
        changed = True
    if prepared.config.epochs > manifest_epochs(existing):
        # Likewise for repeats: raising --epochs extends the run; a smaller one removes nothing.
        existing["epochs"] = prepared.config.epochs
        changed = True
    if changed:
        existing["updated_at"] = utc_now()
        write_json_atomic(path, existing)
    _note_foreign_ids(prepared, existing, seen)
    return existing


def extends(manifest: dict[str, Any], sample_count: int) -> bool:
    """Whether a selection of ``sample_count`` samples is larger than the run's recorded total."""
    recorded = manifest.get("sample_count")
    return not isinstance(recorded, int) or isinstance(recorded, bool) or sample_count > recorded


def check_manifest(prepared: PreparedRun) -> dict[str, Any] | None:
    """Refuse (:class:`ConfigDriftError`) when the run exists with other settings; change nothing.

    For commands that only look or plan (``slurm`` writing a script, ``estimate``): the run's files
    stay byte for byte as they were. Returns the manifest, or None when the run has none yet.
    """
    existing = RunLedger(prepared.run_dir).read_manifest()
    if existing is not None:
        _refuse_drift(prepared, existing)
        _refuse_endpoint_change(prepared, existing)
    return existing


def _refuse_endpoint_change(prepared: PreparedRun, existing: dict[str, Any]) -> None:
    recorded = existing.get("endpoint")
    if not isinstance(recorded, str) or recorded == prepared.endpoint or prepared.config.allow_endpoint_change:
        return
    raise ConfigDriftError(
        f"run {prepared.run_id} in {prepared.run_dir} was made against another endpoint; resuming would mix two "
        f"servers' answers in one ledger:\n  endpoint: run has {recorded!r}, this command has {prepared.endpoint!r}"
        "\nIf it is the same model behind another address (a proxy, a new port), pass --allow-endpoint-change; "
        "otherwise point --base-url (or OPENAI_BASE_URL / ANTHROPIC_BASE_URL) back at it, or use another --run-id."
    )


def _accept_endpoint(prepared: PreparedRun, existing: dict[str, Any]) -> bool:
    """Refuse an endpoint change unless allowed; record the endpoint (and every earlier one, under
    ``endpoints``) when it is new. Returns whether the manifest changed."""
    _refuse_endpoint_change(prepared, existing)
    recorded = existing.get("endpoint")
    if recorded == prepared.endpoint:
        return False
    if isinstance(recorded, str):
        earlier = existing.get("endpoints") if isinstance(existing.get("endpoints"), list) else [recorded]
        existing["endpoints"] = [*earlier, prepared.endpoint]
        log.warning(f"run {prepared.run_id}: the endpoint changed from {recorded} to {prepared.endpoint} "
                    "(--allow-endpoint-change); both are recorded in the manifest")
    existing["endpoint"] = prepared.endpoint  # a manifest made before endpoints were recorded gets it now
    return True


def _refuse_drift(prepared: PreparedRun, existing: dict[str, Any]) -> None:
    old_identity = existing.get("identity") or {}
    if not isinstance(old_identity, dict):
        old_identity = {}
    diff = diff_identity(old_identity, prepared.identity)
    if diff:
        raise ConfigDriftError(
            f"run {prepared.run_id} in {prepared.run_dir} was made with different settings; "
            "resuming would mix two experiments in one ledger:\n"
            + "\n".join(diff)
            + "\nUse the original settings to resume, --overwrite to start this run afresh "
            "(the old one is moved aside), or a different --run-id."
        )


def _recreate_manifest_or_refuse(prepared: PreparedRun, seen: _ResultsSeen) -> dict[str, Any]:
    """Decide whether a missing manifest may be rebuilt from this command; return a note for it.

    Why recreate at all: the results are the valuable part, and refusing would leave a user
    whose manifest was deleted no way to resume but to pay again with ``--overwrite``. Why not
    always: a manifest pins the experiment, so writing one from *this* command over results made
    by another would silently mix two experiments in one ledger (bad input must never damage results).

    So we recreate only when everything the records themselves show agrees with this command:
    every record's ``model`` and ``task``; the ``input_hash`` of every record whose sample is in
    this selection (the row's content is the same); and at least one record is for a sample of
    this dataset. What records do not show (temperature, max tokens, top-p, seed, prompt version)
    cannot be checked from them; with a derived run ID they are covered by the hash in the
    directory's name, which matches this command; with ``--run-id`` they are taken on trust, and
    the warning says so. Otherwise refuse (exit 2) naming the first contradicting record.
    """
    run_dir = prepared.run_dir
    problem = seen.mismatch
    if problem is None and seen.in_dataset == 0:
        examples = ", ".join(repr(i) for i in list(seen.foreign)[:3])
        problem = f"none of the {seen.records} record(s) is for a sample of {prepared.dataset.path} (e.g. {examples})"
    if problem is not None:
        raise ConfigDriftError(
            f"{run_dir / MANIFEST} is missing, and the results in {run_dir} do not match this command: "
            f"{problem}. Recreating the manifest from this command would mix two experiments in one "
            "ledger, so the run is refused; the results are left as they are. Use the command that "
            "made this run, a different --run-id, or --overwrite to move the old run aside."
        )
    if prepared.config.run_id is None:
        unchecked = "the run ID's hash, which covers them, matches this command"
    else:
        unchecked = "with --run-id they are taken on trust: if the run used other values, move it aside"
    log.warning(
        f"{run_dir / MANIFEST} was missing; recreated it from this command because the {seen.records} "
        f"record(s) in the results agree with it (model, task and the input of every sample checked). "
        f"Temperature, max tokens, top-p, seed and prompt version are not in the records: {unchecked}."
    )
    return {"at": utc_now(), "records_checked": seen.records, "run_id_given": prepared.config.run_id is not None}


def _note_foreign_ids(prepared: PreparedRun, manifest: dict[str, Any], seen: _ResultsSeen) -> None:
    """Warn about records for sample ids the dataset lacks, and list them in the manifest.

    They are kept (never delete results), and they are not part of this run: the runner's
    totals and pending count come from the dataset's samples only. The manifest lists them so
    that readers (stats, reports) can leave them out too. The list is small in practice: with a
    manifest in place the dataset's content is pinned by its sha256, so foreign records only come
    from results copied in or a manifest that was recreated.
    """
    foreign = sorted(seen.foreign)
    if foreign:
        examples = ", ".join(repr(i) for i in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        log.warning(
            f"{sum(seen.foreign.values())} record(s) in {prepared.run_dir} are for {len(foreign)} sample id(s) "
            f"that are not in {prepared.dataset.path}: {examples}. They are kept, and not counted as done or "
            "pending for this run."
        )
    if manifest.get("ids_not_in_dataset", []) != foreign:
        if foreign:
            manifest["ids_not_in_dataset"] = foreign
        else:
            manifest.pop("ids_not_in_dataset", None)
        write_json_atomic(prepared.run_dir / MANIFEST, manifest)
