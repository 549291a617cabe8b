"""Reading results for people: the stats dict and the pandas DataFrame.

Safe while a run is writing: readers never take the lock and ignore a partial last line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .ledger import MANIFEST, CheckpointManager

if TYPE_CHECKING:
    import pandas as pd

RESULT_COLUMNS = [
    "sample_id", "status", "correct", "score", "prediction", "target", "input_tokens", "output_tokens",
    "cost_usd", "latency_s", "attempts", "model", "task", "shard", "error_type", "error_message",
    "started_at", "finished_at", "response",
]


def resolve_run_dir(run: str | Path, output_dir: str | Path = "outputs") -> Path:
    """A run directory from a path, or from a run ID under ``output_dir``.

    Raises :class:`UsageError` listing the runs that exist when it is neither.
    """
    p = Path(run)
    if (p / MANIFEST).exists() or any(p.glob("results*.jsonl")):
        return p
    q = Path(output_dir) / str(run)
    if (q / MANIFEST).exists() or any(q.glob("results*.jsonl")):
        return q
    known = sorted(d.name for d in Path(output_dir).iterdir() if (d / MANIFEST).exists()) if Path(output_dir).is_dir() else []
    hint = f"; runs in {output_dir}: {', '.join(known[:20])}" if known else f"; no runs in {output_dir}"
    raise UsageError(f"no run found at {run!r} (neither a run directory nor a run ID under {output_dir}){hint}")


def get_stats(run: str | Path, output_dir: str | Path = "outputs") -> dict[str, Any]:
    """Stats of a run (by run ID or directory), all shards: see :meth:`CheckpointManager.get_stats`."""
    return CheckpointManager(resolve_run_dir(run, output_dir)).get_stats()


def load_results(run: str | Path, output_dir: str | Path = "outputs") -> "pd.DataFrame":
    """One row per sample: its latest ``ok`` record, or its latest error if it has none. All shards."""
    import pandas as pd  # lazily: it costs ~0.7 s of start-up that most CLI commands do not need

    view = CheckpointManager(resolve_run_dir(run, output_dir)).latest_records()
    rows = []
    for rec in view.values():
        usage = rec.get("usage") or {}
        err = rec.get("error") or {}
        rows.append({
            "sample_id": rec["sample_id"],
            "status": rec.get("status"),
            "correct": rec.get("correct"),
            "score": rec.get("score"),
            "prediction": rec.get("prediction"),
            "target": rec.get("target"),
            "input_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"),
            "cost_usd": rec.get("cost_usd"),
            "latency_s": rec.get("latency_s"),
            "attempts": rec.get("attempts"),
            "model": rec.get("model"),
            "task": rec.get("task"),
            "shard": rec.get("shard"),
            "error_type": err.get("type"),
            "error_message": err.get("message"),
            "started_at": rec.get("started_at"),
            "finished_at": rec.get("finished_at"),
            "response": rec.get("response"),
        })
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    # Typed columns: errors have no correctness (NA), never "wrong".
    df["correct"] = df["correct"].astype("boolean")
    for col in ("input_tokens", "output_tokens", "attempts"):
        df[col] = df[col].astype("Int64")
    for col in ("cost_usd", "latency_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Float64")
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col], utc=True, errors="coerce")
    return df.sort_values("sample_id", kind="stable").reset_index(drop=True)
