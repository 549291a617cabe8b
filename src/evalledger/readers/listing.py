"""What the result commands show, as data: the runs under an output directory, the error groups of
a run, and a run's rows exported to a file. The CLI prints these; Python callers get them as is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalledger.errors import UsageError
from evalledger.readers.frames import jsonable, load_results
from evalledger.readers.locate import RunRef, run_dirs
from evalledger.readers.stats import run_stats


def list_runs(output_dir: str | Path) -> list[dict[str, Any]]:
    """One summary dict per run under ``output_dir`` (what ``evalledger list`` shows)."""
    out = []
    for d in run_dirs(output_dir):
        s = run_stats(d)
        out.append({
            "run_id": s["run_id"], "model": s["model"], "dataset": s["dataset"], "task": s["task"],
            "completed_samples": s["completed_samples"], "total_samples": s["total_samples"],
            "error_count": s["error_count"], "accuracy": s["accuracy"], "cost_usd": s["cost_usd"],
            "last_activity": s["last_checkpoint"], "running": s["running"],
            "writers": [f"pid {w.get('pid')}@{w.get('host')}" for w in s["writers"].values()],
            "state": s["state_label"], "size_bytes": s["size_bytes"],
        })
    return out


def export_results(run: RunRef, path: str | Path, fmt: str, output_dir: str | Path | None = None, *,
                   per_sample: bool = False) -> int:
    """Write ``load_results(run, per_sample=per_sample)`` to ``path`` as csv, parquet or jsonl;
    returns the row count.

    Lists and dicts (a multi-turn response, a dict score) become JSON text in CSV and Parquet,
    which need one type per column. Parquet needs pyarrow: the ``[parquet]`` extra.
    """
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401  # an install without it cannot write Parquet
        except ImportError:
            raise UsageError("--format parquet needs pyarrow: pip install 'evalledger[parquet]' "
                             "(or use --format csv / jsonl)") from None
    df = load_results(run, output_dir, per_sample=per_sample)
    if fmt == "jsonl":
        df.to_json(path, orient="records", lines=True, date_format="iso", force_ascii=False)
        return len(df)
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(jsonable)
            if fmt == "parquet":  # one Arrow type per column: mixed scalars as text
                kinds = {type(v) for v in df[col] if v is not None}
                if len(kinds) > 1:
                    df[col] = df[col].map(lambda v: None if v is None else str(v))
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return len(df)


def error_groups(run: RunRef, output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Samples whose latest record is an error, grouped by error type (largest group first). With
    repeats, ``count`` is of (sample, epoch) units and ``sample_ids`` names each sample once."""
    import pandas as pd  # slow to import: only when a run is read

    df = load_results(run, output_dir, text=False)
    df = df[df["in_dataset"].fillna(True).astype(bool)]  # as in the stats: the run's samples only
    errs = df[(df["status"] != "ok").fillna(True).astype(bool)]
    groups = []
    for etype, g in errs.groupby(errs["error_type"].fillna("unknown"), sort=False):
        first = g.iloc[0]
        codes = sorted({int(c) for c in g["error_status_code"].dropna()})
        groups.append({"type": str(etype), "count": len(g), "samples": int(g["sample_id"].nunique()),
                       "status_codes": codes,
                       "example_sample_id": str(first["sample_id"]),
                       "example_message": None if pd.isna(first["error_message"]) else str(first["error_message"]),
                       "sample_ids": list(dict.fromkeys(str(x) for x in g["sample_id"]))[:20]})  # once per epoch
    return sorted(groups, key=lambda x: -x["count"])
