"""The stats dict of a run: counts, accuracy with a Wilson interval, errors, latency, cost, speed."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalledger.fsio import dir_size
from evalledger.ledger import calls_files, iter_file_records, lock_status, run_lifecycle
from evalledger.readers.frames import frame_from_scan
from evalledger.readers.scan import RunScan, scan_run

if TYPE_CHECKING:
    import pandas as pd

# A gap longer than this between finished samples is a pause (the run was stopped and resumed
# later), not slow progress: it is left out of throughput and ETA.
IDLE_GAP_S = 300.0
# The self-correct task's own labels (tasks/self_correct.py: transition()).
TRANSITIONS = ("correct→correct", "correct→incorrect", "incorrect→correct", "incorrect→incorrect")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion (95 % by default); None when ``n`` is 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 % and 100 %.
    """
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact ends at 0 % and 100 % (floating point would give 0.9999999…).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass
class CallsBill:
    """What the calls files of a multi-turn run (one line per paid model call) add to the bill."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True


def _finite(value: Any) -> float | None:
    """A JSON number as a finite float, else None (NaN, ±Infinity, beyond a float, not a number)."""
    if type(value) not in (int, float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def calls_bill(run_dir: Path) -> CallsBill:
    """Tokens and cost of every call in the run's ``calls*.jsonl`` (all shards), as
    :func:`evalledger.ledger.calls_cost` bills them; values of the wrong type count as missing,
    and a call with usage but no price makes the cost unknown."""
    bill = CallsBill()
    costs = []
    for path in calls_files(run_dir):
        for rec in iter_file_records(path):
            bill.calls += 1
            usage = rec.get("usage")
            usage = usage if type(usage) is dict else {}
            for name in ("input_tokens", "output_tokens"):
                v = usage.get(name)
                if type(v) is int and v >= 0:
                    setattr(bill, name, getattr(bill, name) + v)
            cost = _finite(rec.get("cost_usd"))
            if cost is not None:
                costs.append(cost)
            elif usage:
                bill.cost_known = False
    bill.cost_usd = math.fsum(costs)
    return bill


def _active_seconds(finished: "pd.Series") -> tuple[float, int, int, float]:
    """Working time between finishes (gaps over IDLE_GAP_S removed), the finishes in it, and the
    last session's count and span."""
    import numpy as np

    t = np.sort(finished.dropna().dt.as_unit("ns").astype("int64").to_numpy()) / 1e9
    if len(t) < 2:
        return 0.0, 0, len(t), 0.0
    gaps = np.diff(t)
    working = gaps <= IDLE_GAP_S
    active = float(gaps[working].sum())
    breaks = np.nonzero(gaps > IDLE_GAP_S)[0]
    start = int(breaks[-1]) + 1 if len(breaks) else 0
    return active, int(working.sum()), len(t) - start, float(t[-1] - t[start])


# The DataFrame columns the stats read (plus sample_id, in_dataset and the pass-through columns).
STATS_COLUMNS = ("status", "correct", "latency_s", "finished_at", "error_type")


def stats_from_scan(scan: RunScan, df: "pd.DataFrame") -> dict[str, Any]:
    """The stats dict of a scanned run; ``df`` is ``frame_from_scan(scan)`` (passed in, not rebuilt),
    or one with at least :data:`STATS_COLUMNS`.

    Samples the manifest lists as ``ids_not_in_dataset`` are not part of the run: they are left
    out of every count, accuracy, latency and throughput, and listed under ``unknown_sample_ids``.
    Tokens and cost are the run's bill, as ``--max-cost`` counts it: every record's ``paid`` (its
    usage and cost for records older than ``paid``), plus the calls files of multi-turn tasks,
    foreign ids included (those requests were paid for).
    """
    manifest = scan.manifest
    total = manifest.sample_count
    unknown = sorted(df.loc[~df["in_dataset"].fillna(True).astype(bool), "sample_id"].astype(str))
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
    active_s, active_n, session_n, session_span = _active_seconds(df["finished_at"])
    throughput = active_n / active_s if active_s > 0 else None
    locks = lock_status(scan.run_dir)
    running = bool(locks)
    pending = None if total is None else max(total - completed, 0)
    recent_rate = (session_n - 1) / session_span if session_span > 0 else None
    eta = pending / recent_rate if running and pending and recent_rate else None
    calls = calls_bill(scan.run_dir)  # multi-turn tasks: their calls are billed there, once
    cost = math.fsum([scan.cost_usd, calls.cost_usd]) if scan.cost_known and calls.cost_known else None
    state_times = []
    for p in scan.run_dir.glob("resume_state*.json"):
        try:
            state = json.loads(p.read_bytes())
        except (OSError, ValueError):
            continue
        # Any JSON at all may be there; only a string time is a checkpoint time.
        if isinstance(state, dict) and type(state.get("last_checkpoint")) is str:
            state_times.append(state["last_checkpoint"])
    checkpoints = [t for t in [*state_times, scan.last_finished] if t]
    shards = {}
    for fs in scan.file_summaries:
        lock_name = ".lock" if fs.shard is None else f".lock.shard-{fs.shard.replace('/', '-of-')}"
        shards[fs.shard or "all"] = {"file": fs.name, "ok": fs.ok_count(foreign), "error_records": fs.error_records,
                                     "records": fs.records, "last_finished": fs.last_finished,
                                     "running": lock_name in locks}
    stats: dict[str, Any] = {
        "run_id": scan.run_dir.name,
        "run_dir": str(scan.run_dir),
        "model": manifest.model,
        "task": manifest.task,
        "dataset": manifest.dataset,
        "total_samples": total,
        "completed_samples": completed,
        "error_count": len(errs),
        "pending_samples": pending,
        "correct_count": correct,
        "accuracy": (correct / completed) if completed else None,
        "accuracy_ci95": list(ci) if ci else None,
        "errors_by_type": dict(Counter(errs["error_type"].fillna("unknown").astype(str)).most_common()),
        "latency_p50_s": float(lat.quantile(0.5)) if len(lat) else None,
        "latency_p95_s": float(lat.quantile(0.95)) if len(lat) else None,
        "input_tokens": scan.input_tokens + calls.input_tokens,
        "output_tokens": scan.output_tokens + calls.output_tokens,
        "cost_usd": cost,
        "cost_per_correct_usd": (cost / correct) if cost is not None and correct else None,
        "throughput_per_min": throughput * 60 if throughput else None,
        "running": running,
        "writers": locks,
        "eta_s": eta,
        "last_checkpoint": max(checkpoints) if checkpoints else None,
        "records_read": scan.records_read,
        "unparseable_lines": scan.unparseable_lines,
        "partial_tail_bytes": scan.partial_tail_bytes,
        "files": {fs.name: {"completed": fs.ok_count(foreign)} for fs in scan.file_summaries},
        "shards": shards,
        "unknown_sample_ids": unknown,
    }
    if manifest.problem:
        stats["manifest_problem"] = manifest.problem
    stats.update(_self_correction(ok))
    return stats


def _self_correction(ok: "pd.DataFrame") -> dict[str, Any]:
    """Transition counts and accuracy before/after, when the task recorded them (else nothing)."""
    if "correct_before" not in ok.columns and "transition" not in ok.columns:
        return {}
    out: dict[str, Any] = {}
    if "correct_before" in ok.columns and "correct_after" in ok.columns:
        both = ok[ok["correct_before"].notna() & ok["correct_after"].notna()]
        before, after = both["correct_before"].astype(bool), both["correct_after"].astype(bool)
        words = {True: "correct", False: "incorrect"}
        derived = before.map(words) + "→" + after.map(words)
        counts = Counter(derived)
        out["accuracy_before"] = float(before.mean()) if len(both) else None
        out["accuracy_after"] = float(after.mean()) if len(both) else None
    elif "transition" in ok.columns:
        counts = Counter(ok["transition"].dropna().astype(str))
    else:  # correct_before without correct_after (a task's partial record): nothing to count
        counts = Counter()
    out["transitions"] = {k: int(counts.get(k, 0)) for k in TRANSITIONS} | {
        k: int(v) for k, v in counts.items() if k not in TRANSITIONS}
    return out


def run_stats(run_dir: str | Path) -> dict[str, Any]:
    """Stats of the run in ``run_dir`` (one pass over its ledger, all shards)."""
    scan = scan_run(run_dir, text=False)
    stats = stats_from_scan(scan, frame_from_scan(scan, columns=STATS_COLUMNS))
    add_lifecycle(stats, run_dir)
    return stats


def add_lifecycle(stats: dict[str, Any], run_dir: str | Path) -> None:
    """Add the run's status marker view: ``state`` (running, complete, incomplete, interrupted,
    unknown) and ``state_label`` (e.g. "interrupted (process gone)"), plus ``size_bytes``."""
    life = run_lifecycle(run_dir, held=stats.get("writers"))  # the locks stats_from_scan just read
    stats["state"] = life.state
    stats["state_label"] = life.label
    stats["state_detail"] = life.to_dict()
    stats["size_bytes"] = dir_size(Path(run_dir))
