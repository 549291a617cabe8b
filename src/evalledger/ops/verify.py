"""``evalledger verify RUN``: read everything in a run and report what could make a number wrong.

Checks, each reported with the file and where in it:

* lines that do not parse as records (file, line number, byte offset), and a torn last line;
* units of work (sample, epoch) with more than one ``ok`` record, and which one readers use (the last);
* records whose sample id is not in the dataset (when the dataset is still at its recorded path
  with its recorded sha256; otherwise a note says the check could not be made), and records for
  an epoch beyond the run's (its manifest's ``epochs``);
* a ``resume_state*.json`` that fails its checksum or is malformed;
* results files that no longer match a ``complete`` marker's sha256;
* shards that overlap (a unit ok in two files, a record in the wrong shard's file) or leave
  units uncovered (no ok record anywhere: a shard that never ran, errors left, a run cut short).
  A run asked with ``--epochs K`` must have every (sample, epoch) for epochs 1..K; missing ones are
  named by id and epoch. A sample's epochs all belong to its shard.

Exit codes: 0 clean, 1 findings, 2 the run cannot be read. It changes nothing; ``repair=True``
moves torn tails and garbage lines aside exactly as ``run`` does (under the same lock), and
nothing else.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalledger.datasets import BUILTIN_DATASETS, load_dataset, resolve_dataset, shard_of
from evalledger.errors import DatasetError, EvalLedgerError, LedgerCorruptError, LockHeldError
from evalledger.ledger import (
    COMPLETE,
    RESULTS,
    RESUME_STATE,
    RunLedger,
    RunPaths,
    calls_files,
    file_fingerprint,
    lock_status,
    manifest_epochs,
    move_garbage_lines_aside,
    parse_record_line,
    read_status,
    repair_torn_tail,
    results_files,
    resume_state_files,
    shard_of_file,
    shard_of_status,
    status_files,
    unit_noun,
    writer_of_lock,
    writer_paths,
)
from evalledger.ops.units import expected_units, unit_dict, unit_label
from evalledger.readers import resolve_run_dir
from evalledger.records import epoch_of, split_unit_key, unit_key

EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNREADABLE = 0, 1, 2
_SHOW = 5  # examples per finding


@dataclass
class Finding:
    """One defect: ``kind`` is a stable key (for scripts), ``message`` says it for people."""

    kind: str
    message: str
    file: str | None = None
    line: int | None = None
    offset: int | None = None


@dataclass
class VerifyReport:
    """What :func:`verify_run` found. ``exit_code``: 0 clean, 1 findings, 2 unreadable."""

    run_id: str
    run_dir: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # checks that could not be made, live writers
    checked: dict[str, Any] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)
    unreadable: str | None = None

    @property
    def exit_code(self) -> int:
        if self.unreadable:
            return EXIT_UNREADABLE
        return EXIT_FINDINGS if self.findings else EXIT_CLEAN

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        d["clean"] = self.exit_code == EXIT_CLEAN
        return d


def run_dataset_ids(run_dir: Path, manifest: dict[str, Any]) -> tuple[frozenset[str], list[str]]:
    """(every sample id of the run's dataset, the run's selection after ``--limit`` in file order).

    Raises :class:`DatasetError` when the dataset is gone or its sha256 differs from the one the
    run recorded: the ids could not be trusted then.
    """
    cfg = manifest.get("config") or {}
    ds = manifest.get("dataset") or {}
    spec = cfg.get("dataset")
    resolved = resolve_dataset(spec) if spec in BUILTIN_DATASETS else resolve_dataset(Path(ds.get("path", spec or "")))
    if ds.get("sha256") and resolved.sha256 != ds["sha256"]:
        raise DatasetError(
            f"dataset {resolved.path} changed since run {Path(run_dir).name} was made "
            f"(sha256 {ds['sha256'][:12]}… then, {resolved.sha256[:12]}… now)"
        )
    dataset = load_dataset(resolved, id_column=cfg.get("id_column"), limit=manifest.get("limit"))
    return dataset.all_ids, [s.id for s in dataset.samples]


def _examples(items: list[str]) -> str:
    return ", ".join(items[:_SHOW]) + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


@dataclass
class _Seen:
    """Per file and per unit (sample, epoch), what the record pass saw (only what the checks need)."""

    records: int = 0
    ok_at: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # unit key -> [(file, line)]
    any_ids: set[str] = field(default_factory=set)
    misplaced: Counter = field(default_factory=Counter)  # file -> records of another shard
    misplaced_ex: dict[str, list[str]] = field(default_factory=dict)


def _scan_file(path: Path, live: bool, report: VerifyReport, seen: _Seen | None) -> None:
    """Stream one JSONL file: unparseable lines and a torn tail become findings; records go to ``seen``."""
    shard = shard_of_file(path) if seen is not None else None
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                if live:
                    report.notes.append(f"{path.name}: {len(raw)} bytes after the last newline at byte {offset} "
                                        "(a write in progress: the run is live)")
                else:
                    report.findings.append(Finding(
                        "torn_tail", f"{path.name}: the last line (line {number}, byte {offset}, {len(raw)} bytes) "
                        "has no newline: a torn write; `run` or `verify --repair` moves it aside",
                        path.name, number, offset))
                break
            rec = parse_record_line(raw)
            if rec is None:
                preview = raw[:60].decode("utf-8", "replace").rstrip("\n")
                report.findings.append(Finding(
                    "unparseable_line", f"{path.name}: line {number} (byte {offset}) is not a record: {preview!r}",
                    path.name, number, offset))
            elif seen is not None:
                seen.records += 1
                sid = rec["sample_id"]
                seen.any_ids.add(sid)
                if rec.get("status") == "ok":
                    seen.ok_at.setdefault(unit_key(sid, epoch_of(rec)), []).append((path.name, number))
                if shard is not None and shard_of(sid, shard[1]) != shard[0]:
                    seen.misplaced[path.name] += 1
                    seen.misplaced_ex.setdefault(path.name, []).append(sid)
            offset += len(raw)


def _live_files(run_dir: Path) -> set[str]:
    """Results/calls files whose writer holds its lock right now."""

    live: set[str] = set()
    for lock in lock_status(run_dir):
        writer = writer_of_lock(lock)
        if writer is not None:
            paths = RunPaths(run_dir, *writer)
            live |= {paths.results.name, paths.calls.name}
    return live


def verify_run(run: str | Path, output_dir: str | Path = "outputs", *, repair: bool = False) -> VerifyReport:
    """Check a run's integrity (see the module doc); with ``repair``, move torn tails and garbage
    lines aside first (as ``run`` does) and report what is left."""
    try:
        run_dir = resolve_run_dir(run, output_dir)
    except EvalLedgerError as e:
        return VerifyReport(str(run), str(run), unreadable=e.message)
    repaired: list[str] = []
    if repair:
        repaired = _repair(run_dir)
    report = _verify(run_dir)
    report.repaired = repaired
    return report


def _repair(run_dir: Path) -> list[str]:
    done: list[str] = []
    for path in results_files(run_dir):
        writer = writer_paths(path, RESULTS)
        assert writer is not None
        cm = RunLedger(run_dir, writer.shard, worker=writer.worker)
        try:
            with cm.repair_lock():
                tail = repair_torn_tail(path)
                if tail is not None:
                    done.append(f"{path.name}: torn last line moved to {tail.name}")
                aside, numbers = move_garbage_lines_aside(path)
                if aside is not None:
                    done.append(f"{path.name}: {len(numbers)} line(s) that are not records moved to {aside.name}")
        except LockHeldError as e:
            done.append(f"{path.name}: not repaired, a writer holds its lock ({e.message.splitlines()[0]})")
    return done


def _verify(run_dir: Path) -> VerifyReport:
    report = VerifyReport(run_dir.name, str(run_dir))
    try:
        manifest = RunLedger(run_dir).read_manifest()
    except LedgerCorruptError as e:
        report.unreadable = e.message
        return report
    if manifest is None:
        report.notes.append("no manifest.json: the dataset is unknown, so ids and coverage cannot be checked")
    live = _live_files(run_dir)
    if live:
        report.notes.append(f"a writer holds the lock of {', '.join(sorted(f for f in live if f.startswith('results')))}: "
                            "the run is live, so what is read is a snapshot")
    seen = _Seen()
    files = results_files(run_dir)
    try:
        for p in files:
            _scan_file(p, p.name in live, report, seen)
        for p in calls_files(run_dir):
            _scan_file(p, p.name in live, report, None)
    except OSError as e:
        report.unreadable = f"{e.filename or run_dir}: cannot be read ({e.strerror or e})"
        return report
    epochs = manifest_epochs(manifest)
    report.checked = {"results_files": [p.name for p in files], "records": seen.records,
                      "samples_with_ok": len({split_unit_key(key)[0] for key in seen.ok_at}), "epochs": epochs}
    if epochs > 1:
        report.checked["units_with_ok"] = len(seen.ok_at)

    _check_duplicates(run_dir, seen, report, epochs)
    _check_shards(seen, report, epochs)
    _check_states(run_dir, report)
    markers = _check_markers(run_dir, report)
    if manifest is not None:
        _check_dataset(run_dir, manifest, seen, markers, report)
    return report


def _check_duplicates(run_dir: Path, seen: _Seen, report: VerifyReport, epochs: int) -> None:
    dup = {key: where for key, where in seen.ok_at.items() if len(where) > 1}
    if not dup:
        return
    # A second pass, only for the duplicated samples: their scores, to say whether they disagree.
    scores: dict[tuple[str, int], str] = {}
    wanted = {w for where in dup.values() for w in where}
    for p in results_files(run_dir):
        with open(p, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if (p.name, number) in wanted:
                    rec = parse_record_line(raw) or {}
                    scores[(p.name, number)] = json.dumps([rec.get("score"), rec.get("prediction")], default=str)
    lines = []
    disagree = 0
    for key, where in sorted(dup.items()):
        differ = len({scores.get(w) for w in where}) > 1
        disagree += differ
        if len(lines) < _SHOW:
            at = ", ".join(f"{f} line {n}" for f, n in where)
            lines.append(f"{unit_label(key, epochs)} ({at}; readers use {where[-1][0]} line {where[-1][1]}"
                         + ("; they disagree on score/prediction" if differ else "") + ")")
    more = f" and {len(dup) - _SHOW} more" if len(dup) > _SHOW else ""
    report.findings.append(Finding(
        "duplicate_ok", f"{len(dup)} {unit_noun(epochs)} have more than one ok record ({disagree} with different "
        f"scores or predictions); readers use the last one: {'; '.join(lines)}{more}"))


def _check_shards(seen: _Seen, report: VerifyReport, epochs: int) -> None:
    pairs: Counter = Counter()
    for where in seen.ok_at.values():
        names = sorted({f for f, _ in where})
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs[(a, b)] += 1
    for (a, b), n in sorted(pairs.items()):
        report.findings.append(Finding("shard_overlap", f"{a} and {b} both have ok records for {n} {unit_noun(epochs)}: "
                                                        "the shards overlap (different shard layouts, or files copied in)"))
    for name, n in sorted(seen.misplaced.items()):
        report.findings.append(Finding("shard_overlap", f"{name}: {n} record(s) for samples of another shard "
                                                        f"(e.g. {_examples(seen.misplaced_ex[name])})", name))


def _check_states(run_dir: Path, report: VerifyReport) -> None:
    for p in resume_state_files(run_dir):
        writer = writer_paths(p, RESUME_STATE)
        assert writer is not None
        state, problem = RunLedger(run_dir, writer.shard, worker=writer.worker).read_resume_state()
        if state is None and problem:
            report.findings.append(Finding("bad_resume_state", f"{problem} (the next run rebuilds it from the "
                                                               "results; nothing is lost)", p.name))


def _check_markers(run_dir: Path, report: VerifyReport) -> dict[tuple[int, int] | None, dict[str, Any]]:
    """Complete markers' hashes against the files now. Returns every marker by shard."""
    markers: dict[tuple[int, int] | None, dict[str, Any]] = {}
    for p in status_files(run_dir):
        doc = read_status(p)
        if doc is None:
            continue
        markers[shard_of_status(p)] = doc
        if doc.get("problem"):
            report.findings.append(Finding("bad_status", doc["problem"], p.name))
            continue
        if doc.get("state") != COMPLETE:
            continue
        for name, fp in sorted((doc.get("files") or {}).items()):
            path = run_dir / name
            if not path.exists():
                report.findings.append(Finding("changed_after_complete", f"{name} is gone, but {p.name} recorded it "
                                                                         "when the run completed", name))
                continue
            now = file_fingerprint(path)
            if not isinstance(fp, dict) or now["sha256"] != fp.get("sha256"):
                was = fp.get("sha256", "?")[:12] if isinstance(fp, dict) else "?"
                size = f"{fp.get('bytes')} → {now['bytes']} bytes" if isinstance(fp, dict) else ""
                report.findings.append(Finding(
                    "changed_after_complete", f"{name} changed after the run completed: sha256 {was}… in {p.name}, "
                    f"{now['sha256'][:12]}… now ({size})", name))
    return markers


def _check_dataset(run_dir: Path, manifest: dict[str, Any], seen: _Seen,
                   markers: dict[tuple[int, int] | None, dict[str, Any]], report: VerifyReport) -> None:
    try:
        all_ids, selection = run_dataset_ids(run_dir, manifest)
    except EvalLedgerError as e:
        report.notes.append(f"could not check sample ids and coverage against the dataset: {e.message}")
        return
    epochs = manifest_epochs(manifest)
    unknown = sorted(seen.any_ids - all_ids)
    if unknown:
        report.findings.append(Finding("unknown_id", f"{len(unknown)} sample id(s) in the results are not in the "
                                                     f"dataset: {_examples(unknown)}"))
    beyond = sorted(key for key in seen.ok_at if split_unit_key(key)[1] > epochs)
    if beyond:
        report.findings.append(Finding("unknown_epoch", f"{len(beyond)} ok record(s) are for epochs beyond the run's "
                                                        f"{epochs} (the manifest's epochs): "
                                                        f"{_examples([unit_label(k, 2) for k in beyond])}"))
    units = expected_units(selection, epochs)
    missing = [key for key in units if key not in seen.ok_at]
    # A sample counts as covered once every one of its epochs has an ok record.
    incomplete = {split_unit_key(key)[0] for key in missing}
    report.checked["dataset_samples"] = len(selection)
    report.checked["samples_with_ok"] = len(selection) - len(incomplete)
    if epochs > 1:
        report.checked["dataset_units"] = len(units)
        report.checked["units_with_ok"] = len(units) - len(missing)
    if missing:
        report.checked["missing"] = [unit_dict(key) for key in missing]
        report.findings.append(Finding("uncovered", _uncovered_text(run_dir, markers, missing, len(units), epochs)))


def _uncovered_text(run_dir: Path, markers: dict[tuple[int, int] | None, dict[str, Any]], missing: list[str],
                    total: int, epochs: int) -> str:
    """What ``missing`` (unit keys without an ok record) says: how many, which, in which shards."""
    sids = [split_unit_key(key)[0] for key in missing]
    layouts = {k[1] for k in markers if k is not None} | {sh[1] for p in results_files(run_dir)
                                                            if (sh := shard_of_file(p)) is not None}
    # Markers that say complete although one of their units has no ok record (a unit is in its sample's shard).
    claims = [RunPaths(run_dir, k).status.name for k, d in markers.items() if d.get("state") == COMPLETE
              and any(k is None or shard_of(sid, k[1]) == k[0] for sid in sids)]
    shown = _examples([unit_label(key, epochs) for key in missing])
    text = f"{len(missing)} of {total} {unit_noun(epochs)} have no ok record: {shown}"
    if len(layouts) == 1 and None not in markers:
        n = layouts.pop()
        by_shard = Counter(shard_of(sid, n) for sid in sids)
        never = [k for k in sorted(by_shard) if not RunPaths(run_dir, (k, n)).results.exists()]
        text += "; by shard: " + ", ".join(f"{k}/{n}: {c}" for k, c in sorted(by_shard.items()))
        if never:
            text += f" (shard{'s' if len(never) > 1 else ''} {', '.join(map(str, never))} never ran)"
    if claims:
        text += f". Yet {', '.join(claims)} say{'s' if len(claims) == 1 else ''} complete"
    return text


__all__ = ["Finding", "VerifyReport", "run_dataset_ids", "verify_run"]
