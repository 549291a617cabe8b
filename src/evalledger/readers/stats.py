"""The stats dict of a run: counts, accuracy with a Wilson interval, errors, latency, cost, speed,
and for a run with repeats (``--epochs K``) the metrics of :mod:`.repeats`.

Counts are of units of work, a (sample, epoch): with one epoch (every run without repeats) a unit
is a sample."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalledger.fsio import dir_size
from evalledger.ledger import (
    RESULTS,
    RunPaths,
    batch_summary,
    calls_bill,
    lock_status,
    resume_state_files,
    run_lifecycle,
    writer_paths,
)
from evalledger.readers.frames import epochs_of, frame_from_scan, task_of
from evalledger.readers.intervals import wilson_interval
from evalledger.readers.repeats import default_metrics, repeat_stats
from evalledger.readers.scan import RunScan, scan_run
from evalledger.records import (
    CACHED_COLUMN,
    CORRECT_AFTER,
    CORRECT_BEFORE,
    SAVED_COST_COLUMN,
    STATS_COLUMNS,
    TRANSITION,
    TRANSITIONS,
    total_cost,
)

if TYPE_CHECKING:
    import pandas as pd

# A gap longer than this between finished samples is a pause (the run was stopped and resumed
# later), not slow progress: it is left out of throughput and ETA.
IDLE_GAP_S = 300.0


def _sessions(df: "pd.DataFrame") -> list[tuple[float, float, int]]:
    """The run's working sessions: (start, end, samples finished) in epoch seconds, from each
    sample's interval [finished_at - latency_s, finished_at] (the finish alone when the latency is
    unknown). Overlapping intervals, or ones less than :data:`IDLE_GAP_S` apart, are one session; a
    longer gap is a pause (the run was stopped and resumed later)."""
    import numpy as np  # slow to import: only when a run is read

    end = df["finished_at"].dropna()
    if not len(end):
        return []
    t1 = end.dt.as_unit("us").array.asi8 / 1e6  # epoch seconds (no NaT left)
    t0 = t1.copy()
    if "latency_s" in df.columns:
        lat = df.loc[end.index, "latency_s"].to_numpy(dtype="float64", na_value=np.nan)
        ok = np.isfinite(lat) & (lat >= 0)
        t0[ok] = t1[ok] - lat[ok]
    order = np.argsort(t0)
    t0, t1 = t0[order], t1[order]
    reach = np.maximum.accumulate(t1)  # the latest finish among the intervals started so far
    new = np.empty(len(t0), dtype=bool)
    new[0] = True
    new[1:] = t0[1:] > reach[:-1] + IDLE_GAP_S
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(t0)) - 1
    return [(float(t0[i]), float(reach[j]), int(j - i + 1)) for i, j in zip(first, last)]


def stats_from_scan(scan: RunScan, df: "pd.DataFrame", *, vote: bool | None = None,
                    pass_k: bool | None = None) -> dict[str, Any]:
    """The stats dict of a scanned run; ``df`` is ``frame_from_scan(scan)`` (passed in, not rebuilt),
    or one with at least :data:`~evalledger.records.STATS_COLUMNS` (and ``prediction`` and
    ``task`` for the majority vote).

    Samples the manifest lists as ``ids_not_in_dataset`` are not part of the run: they are left
    out of every count, accuracy, latency and throughput, and listed under ``unknown_sample_ids``.
    Tokens and cost are the run's bill, as ``--max-cost`` counts it (:func:`run_bill`).

    Counts are of units, (sample, epoch): ``total_samples`` is the manifest's sample count × K.
    With K > 1 epochs (or when ``vote``/``pass_k`` ask for those metrics) ``repeats`` holds
    :func:`~evalledger.readers.repeats.repeat_stats`, and ``accuracy`` / ``accuracy_ci95`` are the
    mean over epochs and its interval over samples (with one epoch: correct / completed and Wilson).
    """
    manifest = scan.manifest
    epochs = epochs_of(scan)
    total = None if manifest.sample_count is None else manifest.sample_count * epochs
    unknown = sorted(set(df.loc[~df["in_dataset"].fillna(True).astype(bool), "sample_id"].astype(str)))
    if unknown:
        df = df[df["in_dataset"].fillna(True).astype(bool)]
    foreign = manifest.ids_not_in_dataset
    is_ok = df["status"] == "ok"
    ok = df[is_ok.fillna(False)]
    errs = df[~is_ok.fillna(False)]
    completed = len(ok)
    correct = int(ok["correct"].fillna(False).sum())
    ci = wilson_interval(correct, completed)
    lat = ok["latency_s"].dropna().astype(float)
    locks = lock_status(scan.run_dir)
    pending = None if total is None else max(total - completed, 0)
    throughput, eta = _speed(df, pending if locks else None)
    input_tokens, output_tokens, cost = run_bill(scan)
    checkpoints = [t for t in [*_checkpoint_times(scan.run_dir), scan.last_finished] if t]
    stats: dict[str, Any] = {
        "run_id": scan.run_dir.name,
        "run_dir": str(scan.run_dir),
        "model": manifest.model,
        "task": manifest.task,
        "dataset": manifest.dataset,
        "total_samples": total,
        "epochs": epochs,
        "completed_samples": completed,
        "error_count": len(errs),
        "pending_samples": pending,
        "correct_count": correct,
        "accuracy": (correct / completed) if completed else None,
        "accuracy_ci95": list(ci) if ci else None,
        "errors_by_type": dict(Counter(errs["error_type"].fillna("unknown").astype(str)).most_common()),
        "latency_p50_s": float(lat.quantile(0.5)) if len(lat) else None,
        "latency_p95_s": float(lat.quantile(0.95)) if len(lat) else None,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": cost,
        "cost_per_correct_usd": (cost / correct) if cost is not None and correct else None,
        **cache_savings(scan),
        "throughput_per_min": throughput * 60 if throughput else None,
        "running": bool(locks),
        "writers": locks,
        "eta_s": eta,
        "last_checkpoint": max(checkpoints) if checkpoints else None,
        "records_read": scan.records_read,
        "unparseable_lines": scan.unparseable_lines,
        "partial_tail_bytes": scan.partial_tail_bytes,
        "files": {fs.name: {"completed": fs.ok_count(foreign)} for fs in scan.file_summaries},
        "shards": _shards(scan, locks),
        "unknown_sample_ids": unknown,
    }
    if manifest.problem:
        stats["manifest_problem"] = manifest.problem
    stats.update(_self_correction(ok))
    _add_repeats(stats, scan, df, epochs, vote, pass_k)
    return stats


def _add_repeats(stats: dict[str, Any], scan: RunScan, df: "pd.DataFrame", epochs: int, vote: bool | None,
                 pass_k: bool | None) -> None:
    """``repeats`` for a run with K > 1 epochs (or when the vote or pass@k is asked for), and then
    ``accuracy`` / ``accuracy_ci95`` as the mean over epochs with its interval over samples."""
    task = task_of(scan, df)
    vote, pass_k = default_metrics(task, epochs, vote, pass_k, single=False)
    if epochs == 1 and not vote and not pass_k:
        return
    stats["repeats"] = {"samples": scan.manifest.sample_count,
                        **repeat_stats(df, task, epochs, vote=vote, pass_k=pass_k)}
    if epochs > 1:  # the sample is the unit: its repeats are not independent answers
        stats["accuracy"] = stats["repeats"]["mean_accuracy"]
        stats["accuracy_ci95"] = stats["repeats"]["mean_accuracy_ci95"]


def run_bill(scan: RunScan) -> tuple[int, int, float | None]:
    """The run's bill (input tokens, output tokens, cost or None when unknown), as ``--max-cost``
    counts it (:mod:`evalledger.records`): every results record's ``paid`` (its usage and cost for
    records older than ``paid``), foreign ids included (those requests were paid for), plus the
    calls files of multi-turn tasks, where their calls are billed, once."""
    calls = calls_bill(scan.run_dir)
    costs = [scan.cost_usd if scan.cost_known else None, calls.cost_usd]
    cost = None if None in costs else total_cost(costs)
    return scan.input_tokens + calls.input_tokens, scan.output_tokens + calls.output_tokens, cost


def cache_savings(scan: RunScan) -> dict[str, Any]:
    """``cache_hits``: the units whose record (the view's: latest ok, else latest error) took some
    answer from the response cache (``cached``), foreign ids left out; ``cache_saved_usd``: what
    those answers would have cost (their records' ``saved``), None when some had no known price."""
    import pyarrow as pa  # slow to import: only when a run is read
    import pyarrow.compute as pc  # slow to import: only when a run is read

    t = scan.view(["sample_id", CACHED_COLUMN, SAVED_COST_COLUMN])
    hit = pc.fill_null(t[CACHED_COLUMN], False)
    foreign = scan.manifest.ids_not_in_dataset
    if foreign:
        hit = pc.and_(hit, pc.invert(pc.is_in(t["sample_id"], value_set=pa.array(sorted(foreign), type=pa.string()))))
    saved = pc.filter(t[SAVED_COST_COLUMN], hit)
    return {"cache_hits": len(saved), "cache_saved_usd": None if saved.null_count else total_cost(saved.to_pylist())}


def _speed(df: "pd.DataFrame", pending: int | None) -> tuple[float | None, float | None]:
    """Samples finished per second of working time (the sessions' total length: time when some
    sample was under way, pauses left out), and the seconds left for ``pending`` samples at the last
    session's pace (``pending`` None: the run is not running, no ETA)."""
    sessions = _sessions(df)
    working = sum(end - start for start, end, _ in sessions)
    finished = sum(n for _, _, n in sessions)
    throughput = finished / working if working > 0 else None
    last = sessions[-1] if sessions else None
    recent_rate = last[2] / (last[1] - last[0]) if last and last[1] > last[0] else None
    eta = pending / recent_rate if pending and recent_rate else None
    return throughput, eta


def _checkpoint_times(run_dir: Path) -> list[str]:
    """The ``last_checkpoint`` times of the run's resume states (any JSON may be there: only a
    string time is one)."""
    times = []
    for p in resume_state_files(run_dir):
        try:
            state = json.loads(p.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and type(state.get("last_checkpoint")) is str:
            times.append(state["last_checkpoint"])
    return times


def _shards(scan: RunScan, locks: Any) -> dict[str, dict[str, Any]]:
    """Per results file (``all`` for the unsharded one, ``worker W`` or ``K/N worker W`` for a worker
    process's): its counts and whether its writer runs."""
    shards = {}
    for fs in scan.file_summaries:
        writer = writer_paths(Path(fs.name), RESULTS) or RunPaths(Path())
        key = fs.shard or "all"
        if writer.worker is not None:
            key = f"{fs.shard} worker {writer.worker}" if fs.shard else f"worker {writer.worker}"
        shards[key] = {"file": fs.name, "ok": fs.ok_count(scan.manifest.ids_not_in_dataset),
                       "error_records": fs.error_records, "records": fs.records,
                       "last_finished": fs.last_finished, "running": writer.lock.name in locks}
    return shards


def _self_correction(ok: "pd.DataFrame") -> dict[str, Any]:
    """Transition counts and accuracy before/after, when the task recorded them (else nothing)."""
    if CORRECT_BEFORE not in ok.columns and TRANSITION not in ok.columns:
        return {}
    out: dict[str, Any] = {}
    if CORRECT_BEFORE in ok.columns and CORRECT_AFTER in ok.columns:
        both = ok[ok[CORRECT_BEFORE].notna() & ok[CORRECT_AFTER].notna()]
        before, after = both[CORRECT_BEFORE].astype(bool), both[CORRECT_AFTER].astype(bool)
        words = {True: "correct", False: "incorrect"}
        derived = before.map(words) + "→" + after.map(words)
        counts = Counter(derived)
        out["accuracy_before"] = float(before.mean()) if len(both) else None
        out["accuracy_after"] = float(after.mean()) if len(both) else None
    elif TRANSITION in ok.columns:
        counts = Counter(ok[TRANSITION].dropna().astype(str))
    else:  # correct_before without correct_after (a task's partial record): nothing to count
        counts = Counter()
    out["transitions"] = {k: int(counts.get(k, 0)) for k in TRANSITIONS} | {
        k: int(v) for k, v in counts.items() if k not in TRANSITIONS}
    return out


def run_stats(run_dir: str | Path, *, vote: bool | None = None, pass_k: bool | None = None) -> dict[str, Any]:
    """Stats of the run in ``run_dir`` (one pass over its ledger, all shards); ``vote`` and
    ``pass_k`` ask for (True) or turn off (False) the majority vote and pass@k (None: by task)."""
    scan = scan_run(run_dir, text=False)
    repeated = vote or pass_k or epochs_of(scan) > 1
    columns = STATS_COLUMNS + (("prediction", "task") if repeated else ())  # the vote reads predictions
    stats = stats_from_scan(scan, frame_from_scan(scan, columns=columns), vote=vote, pass_k=pass_k)
    add_lifecycle(stats, run_dir)
    return stats


def add_lifecycle(stats: dict[str, Any], run_dir: str | Path) -> None:
    """Add the run's status marker view: ``state`` (running, complete, incomplete, interrupted,
    unknown) and ``state_label`` (e.g. "interrupted (process gone)"), plus ``size_bytes`` and
    ``batches`` (a ``--batch`` run's provider batches, :func:`evalledger.ledger.batch_summary`)."""
    life = run_lifecycle(run_dir, held=stats.get("writers"))  # the locks stats_from_scan just read
    stats["state"] = life.state
    stats["state_label"] = life.label
    stats["state_detail"] = life.to_dict()
    stats["size_bytes"] = dir_size(Path(run_dir))
    stats["batches"] = batch_summary(Path(run_dir))  # --batch runs: the provider batches' states
