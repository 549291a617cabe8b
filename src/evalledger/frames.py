"""pandas DataFrames of results: one run (:func:`load_results`) or many (:func:`load_runs`).

Typed columns so that analysis code does not have to clean them: errors have ``correct`` = NA
(never False: an error is not a wrong answer), counts are nullable integers, timestamps are UTC.
A value of the wrong type in a hand-edited record (text where a number belongs, ``NaN`` or
``Infinity``, an integer beyond 64 bits) becomes NA rather than an error.

Records for sample ids that the manifest lists as ``ids_not_in_dataset`` are kept as rows (never
hide results) with ``in_dataset`` False; stats, ``errors`` and the report leave them out.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .ledger import MANIFEST
from .scan import BASE_COLUMNS, SELF_CORRECTION_KEYS, RunScan, read_manifest_facts, scan_run

if TYPE_CHECKING:
    import pandas as pd

STRING_COLUMNS = ("sample_id", "status", "model", "task", "shard", "error_type", "error_message")
INT_COLUMNS = ("input_tokens", "output_tokens", "attempts", "error_status_code")
FLOAT_COLUMNS = ("cost_usd", "latency_s")
TIME_COLUMNS = ("started_at", "finished_at")
EXTRA_COLLISION_PREFIX = "record_"  # a task field named like a base column, e.g. a top-level "model"


def _score_dtype(values: list[Any]) -> str | None:
    """``boolean`` / ``Float64`` when every non-null score is a bool / a number, else keep objects."""
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {bool}:
        return "boolean"
    if kinds and kinds <= {int, float}:
        return "Float64"
    return None


def _typed(values: list[Any], dtype: str, valid: Any) -> Any:
    """A nullable array of ``dtype``; values that do not fit (a hand-edited record) become NA."""
    import pandas as pd

    try:
        return pd.array(values, dtype=dtype)  # fast path: a well-formed ledger
    except (TypeError, ValueError, OverflowError):
        return pd.array([v if valid(v) else None for v in values], dtype=dtype)


def _is_int64(v: Any) -> bool:
    return type(v) is int and -(2**63) <= v < 2**63


def _finite(values: list[Any]) -> list[Any]:
    """Numbers as they are; NaN, ±Infinity and anything not a number become None (NA)."""
    return [v if (type(v) is int or (type(v) is float and math.isfinite(v))) else None for v in values]


def frame_from_scan(scan: RunScan, *, keep_row: bool = False) -> "pd.DataFrame":
    """The typed DataFrame of a :class:`RunScan`, sorted by ``sample_id``.

    ``keep_row`` adds ``_row``, the row's position in the scan (for :func:`scan.fetch_records`).
    """
    import pandas as pd  # lazily: ~0.7 s of start-up most CLI commands do not need

    data: dict[str, Any] = {}
    for name, values in scan.columns.items():
        if name in STRING_COLUMNS:
            data[name] = pd.array(values, dtype="string")
        elif name in INT_COLUMNS:
            if not all(v is None or _is_int64(v) for v in values):  # pandas would cast 1e30 to junk
                values = [v if _is_int64(v) else None for v in values]
            data[name] = _typed(values, "Int64", _is_int64)
        elif name in FLOAT_COLUMNS:
            data[name] = pd.array(_finite(values), dtype="Float64")
        elif name in TIME_COLUMNS:
            if not all(v is None or type(v) is str for v in values):
                values = [v if type(v) is str else None for v in values]  # a number is not a time here
            data[name] = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601", errors="coerce").array
        elif name == "correct":
            data[name] = _typed(values, "boolean", lambda v: isinstance(v, bool))
        elif name == "score":
            dt = _score_dtype(values)
            if dt == "Float64":
                values = _finite(values)  # a NaN score is no score, like a missing one
            try:
                data[name] = pd.array(values, dtype=dt) if dt else pd.Series(values, dtype=object).array
            except (TypeError, ValueError, OverflowError):
                data[name] = pd.Series(values, dtype=object).array
        else:
            data[name] = pd.Series(values, dtype=object).array
    df = pd.DataFrame(data)
    # Pass-through fields (self-correction and any task's extras): rare, so built only if present.
    extra_names: dict[str, None] = {}
    for ext in scan.extras:
        if ext:
            extra_names.update(dict.fromkeys(ext))
    for name in extra_names:
        values = [ext.get(name) if ext else None for ext in scan.extras]
        col = name if name not in df.columns else EXTRA_COLLISION_PREFIX + name  # never shadow a base column
        if name in ("correct_before", "correct_after"):
            df[col] = pd.array([v if isinstance(v, bool) else None for v in values], dtype="boolean")
        elif name == "transition":
            df[col] = pd.array([None if v is None else str(v) for v in values], dtype="string")
        else:
            df[col] = pd.Series(values, dtype=object)
    foreign = scan.manifest.ids_not_in_dataset
    if "in_dataset" in df.columns:  # a task's own field of that name
        df = df.rename(columns={"in_dataset": EXTRA_COLLISION_PREFIX + "in_dataset"})
    df["in_dataset"] = pd.array([sid not in foreign for sid in scan.columns["sample_id"]] if foreign
                                else [True] * len(df), dtype="boolean")
    if keep_row:
        df["_row"] = range(len(df))
    return df.sort_values("sample_id", kind="stable").reset_index(drop=True)


def load_results(run: str | Path, output_dir: str | Path = "outputs", *, text: bool = True) -> "pd.DataFrame":
    """One row per sample of a run: its latest ``ok`` record, or its latest error. All shards merged.

    ``run`` is a run ID under ``output_dir`` or a run directory. Columns: ``sample_id, status,
    correct, score, prediction, target, input_tokens, output_tokens, cost_usd, latency_s, attempts,
    model, task, shard, error_type, error_message, error_status_code, started_at, finished_at,
    response`` (left out with ``text=False``), then any self-correction columns (``correct_before``,
    ``correct_after``, ``transition``) and other per-record fields (``extra_<key>``) when present,
    and ``in_dataset``: False for a sample id the manifest lists as ``ids_not_in_dataset`` (results
    kept from another dataset, not part of this run; :func:`get_stats` leaves them out), else True.
    Safe while the run is writing: never takes the lock, ignores a partial last line.
    """
    from .report import resolve_run_dir

    return frame_from_scan(scan_run(resolve_run_dir(run, output_dir), text=text))


def run_dirs(output_dir: str | Path) -> list[Path]:
    """Every run directory directly under ``output_dir`` (has a manifest or a results file), sorted.

    Directories moved aside by ``--overwrite`` (``<run_id>.old-<timestamp>``) are left out.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and ".old-" not in d.name and ((d / MANIFEST).exists() or any(d.glob("results*.jsonl"))):
            out.append(d)
    return out


def run_meta(run_dir: Path) -> dict[str, Any]:
    """The manifest facts a listing needs (model, dataset, task, sample count), tolerating a bad manifest."""
    m = read_manifest_facts(run_dir)  # a corrupt manifest must not hide the other runs in a listing
    return {
        "run_id": run_dir.name,
        "model": m.model,
        "dataset": m.dataset,
        "task": m.task,
        "total_samples": m.sample_count,
        "created_at": m.created_at,
    }


def _matches(value: Any, patterns: str | Iterable[str] | None) -> bool:
    if patterns is None:
        return True
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return value is not None and any(fnmatch.fnmatchcase(str(value), p) for p in pats)


def load_runs(
    output_dir: str | Path = "outputs",
    *,
    model: str | Iterable[str] | None = None,
    dataset: str | Iterable[str] | None = None,
    task: str | Iterable[str] | None = None,
    run_id: str | Iterable[str] | None = None,
    text: bool = False,
) -> "pd.DataFrame":
    """Results of many runs in one DataFrame, with ``run_id`` and ``dataset`` columns first.

    Filters take a value or a list of values, each a shell-style pattern
    (``model="openai/*"``). ``text`` includes the response text (off by default: a study's
    responses can be large). Runs are read without their locks, so running ones are included.
    """
    import pandas as pd

    frames = []
    for d in run_dirs(output_dir):
        meta = run_meta(d)
        if not (_matches(meta["model"], model) and _matches(meta["dataset"], dataset)
                and _matches(meta["task"], task) and _matches(meta["run_id"], run_id)):
            continue
        df = frame_from_scan(scan_run(d, text=text))
        df.insert(0, "dataset", pd.array([meta["dataset"]] * len(df), dtype="string"))
        df.insert(0, "run_id", pd.array([meta["run_id"]] * len(df), dtype="string"))
        frames.append(df)
    if not frames:
        empty = pd.DataFrame({c: [] for c in ("run_id", "dataset", *BASE_COLUMNS, "in_dataset")})
        return empty
    return pd.concat(frames, ignore_index=True)


def jsonable(value: Any) -> Any:
    """A cell as CSV/Parquet can hold it: lists and dicts become JSON text, scalars stay."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


__all__ = ["load_results", "load_runs", "frame_from_scan", "run_dirs", "run_meta", "SELF_CORRECTION_KEYS"]
