"""pandas DataFrames of results: one run (:func:`load_results`) or many (:func:`load_runs`).

One row per unit of work, a (sample, epoch): its latest ``ok`` record, else its latest error.
``epoch`` is 1 for records without one, so a run without repeats has one row per sample.
``load_results(run, per_sample=True)`` folds the epochs into one row per sample
(:func:`evalledger.readers.repeats.per_sample_frame`).

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

from evalledger.readers.locate import RunRef, resolve_run_dir, run_dirs
from evalledger.readers.manifest import read_manifest_facts
from evalledger.readers.repeats import per_sample_frame
from evalledger.readers.scan import RunScan, scan_run
from evalledger.records import (
    BASE_COLUMNS,
    BOOL_COLUMNS,
    CORRECT_AFTER,
    CORRECT_BEFORE,
    EPOCH_COLUMN,
    EXTRAS_COLUMN,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    JSON_SUFFIX,
    LIST_COLUMNS,
    OBJECT_COLUMNS,
    OPTIONAL_COLUMNS,
    SCORE_BOOL_COLUMN,
    SCORE_COLUMN,
    SELF_CORRECTION_KEYS,
    STRING_COLUMNS,
    TEXT_COLUMNS,
    TIME_COLUMNS,
    TRANSITION,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

EXTRA_COLLISION_PREFIX = "record_"  # a task field named like a base column, e.g. a top-level "model"


def _score_dtype(values: list[Any]) -> str | None:
    """``boolean`` / ``Float64`` when every non-null score is a bool / a number, else keep objects."""
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {bool}:
        return "boolean"
    if kinds and kinds <= {int, float}:
        return "Float64"
    return None


def _finite(values: list[Any]) -> list[Any]:
    """Numbers as they are; NaN, ±Infinity and anything not a number become None (NA)."""
    return [v if (type(v) is int or (type(v) is float and math.isfinite(v))) else None for v in values]


def _objects(plain: "pa.ChunkedArray", as_json: "pa.ChunkedArray") -> list[Any]:
    """A column's Python values from its string part and its JSON part (see scan_batch)."""
    values = plain.to_pylist()
    if as_json.null_count < len(as_json):
        for i, text in enumerate(as_json.to_pylist()):
            if text is not None:
                values[i] = json.loads(text)
    return values


def _score_array(bools: "pa.ChunkedArray", as_json: "pa.ChunkedArray") -> Any:
    """The score column: ``boolean`` when every score is a bool, ``Float64`` when every one is a number."""
    import pandas as pd  # slow to import (~0.5 s): only when a run is read

    if as_json.null_count == len(as_json) and bools.null_count < len(bools):
        return pd.array(bools.to_pylist(), dtype="boolean")
    values = _objects(bools, as_json)
    dt = _score_dtype(values)
    if dt == "Float64":
        values = _finite(values)  # a NaN score is no score, like a missing one
    try:
        return pd.array(values, dtype=dt) if dt else pd.Series(values, dtype=object).array
    except (TypeError, ValueError, OverflowError):
        return pd.Series(values, dtype=object).array


def _timestamps(strings: "pa.ChunkedArray") -> Any:
    """ISO 8601 text as ``datetime64[us, UTC]`` (always microseconds); what does not parse is NaT.

    Arrow parses the runner's timestamps in C (a million in ~0.02 s; pandas needs ~0.3 s) but
    refuses a whole column for one value it cannot read (no zone, 7 decimals, garbage), and then
    pandas reads it value by value.
    """
    import pandas as pd  # slow to import (~0.5 s): only when a run is read
    import pyarrow as pa  # slow to import: only when a file is parsed
    import pyarrow.compute as pc  # slow to import: only when a file is parsed

    try:
        return pd.array(pc.cast(strings, pa.timestamp("us", tz="UTC")).to_pandas())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        objects = strings.to_numpy(zero_copy_only=False)  # objects, as the ledger holds them
        parsed = pd.to_datetime(pd.Series(objects, dtype=object), utc=True, format="ISO8601", errors="coerce")
        return parsed.astype("datetime64[us, UTC]").array  # one dtype whatever the values (pandas may pick ns)


def _object_array(plain: "pa.ChunkedArray", as_json: "pa.ChunkedArray") -> Any:
    """prediction / target / response: pandas' ``str`` when every value is text (straight from
    Arrow, no Python objects), else Python objects (numbers, lists, dicts as the record holds them)."""
    import pandas as pd  # slow to import (~0.5 s): only when a run is read

    if as_json.null_count == len(as_json) and plain.null_count < len(plain):
        return pd.array(plain, dtype="str")
    return pd.Series(_objects(plain, as_json), dtype=object).array


def _present(scan: RunScan, names: Iterable[str]) -> list[str]:
    """Those of ``names`` (optional columns) that some row of the view holds a value in."""
    present = []
    for name in names:
        values = scan.view([name])[name]
        if values.null_count < len(values):
            present.append(name)
    return present


def frame_from_scan(scan: RunScan, *, keep_row: bool = False, columns: Iterable[str] | None = None) -> "pd.DataFrame":
    """The typed DataFrame of a :class:`RunScan`, one row per (sample, epoch), sorted by ``sample_id``
    and ``epoch``.

    ``keep_row`` adds ``_row``, the row's position in the scan (for :func:`scan.fetch_records`).
    ``columns`` limits the base columns built (``sample_id`` and ``in_dataset`` are always there,
    and so are pass-through columns): stats need a handful, not the text. Without ``columns``,
    ``seed`` and ``fewshot_ids`` follow ``epoch`` when some record has them.
    """
    import pandas as pd  # lazily: ~0.7 s of start-up most CLI commands do not need
    import pyarrow as pa  # slow to import: only when a file is parsed
    import pyarrow.compute as pc  # slow to import: only when a file is parsed

    order = pc.sort_indices(scan.view(["sample_id", EPOCH_COLUMN]),
                            sort_keys=[("sample_id", "ascending"), (EPOCH_COLUMN, "ascending")])
    base = list(BASE_COLUMNS)
    if columns is None:
        base[base.index(EPOCH_COLUMN) + 1:base.index(EPOCH_COLUMN) + 1] = _present(scan, OPTIONAL_COLUMNS)
    wanted = set(base + list(TEXT_COLUMNS if scan.text else ())) if columns is None else {"sample_id", *columns}
    names = [c for c in base + list(TEXT_COLUMNS) if c in wanted and (scan.text or c not in TEXT_COLUMNS)]
    sources = {SCORE_COLUMN: [SCORE_BOOL_COLUMN, SCORE_COLUMN + JSON_SUFFIX],
               **{c: [c, c + JSON_SUFFIX] for c in OBJECT_COLUMNS}}
    t = scan.view([src for c in names for src in sources.get(c, [c])] + [EXTRAS_COLUMN], order)  # one copy
    nullable = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.bool_(): pd.BooleanDtype()}
    data: dict[str, Any] = {}
    for name in names:
        if name in STRING_COLUMNS:
            data[name] = pd.array(t[name], dtype="string")
        elif name == EPOCH_COLUMN:  # never null: a plain int64
            data[name] = t[name].to_numpy()
        elif name in LIST_COLUMNS:
            data[name] = pd.Series(t[name].to_pylist(), dtype=object).array
        elif name in INT_COLUMNS or name in FLOAT_COLUMNS or name in BOOL_COLUMNS:
            data[name] = t[name].to_pandas(types_mapper=nullable.get).array
        elif name in TIME_COLUMNS:
            data[name] = _timestamps(t[name])
        elif name == SCORE_COLUMN:
            data[name] = _score_array(t[SCORE_BOOL_COLUMN], t[SCORE_COLUMN + JSON_SUFFIX])
        elif name in OBJECT_COLUMNS:
            data[name] = _object_array(t[name], t[name + JSON_SUFFIX])
    df = pd.DataFrame(data)
    # Pass-through fields (self-correction and any task's extras): rare, so built only if present.
    extras_json = t[EXTRAS_COLUMN]
    if extras_json.null_count < len(extras_json):
        extras = [None if e is None else json.loads(e) for e in extras_json.to_pylist()]
        extra_names: dict[str, None] = {}
        for ext in extras:
            if ext:
                extra_names.update(dict.fromkeys(ext))
        for name in extra_names:
            values = [ext.get(name) if ext else None for ext in extras]
            col = name if name not in BASE_COLUMNS + TEXT_COLUMNS else EXTRA_COLLISION_PREFIX + name  # never shadow
            if name in (CORRECT_BEFORE, CORRECT_AFTER):
                df[col] = pd.array([v if isinstance(v, bool) else None for v in values], dtype="boolean")
            elif name == TRANSITION:
                df[col] = pd.array([None if v is None else str(v) for v in values], dtype="string")
            else:
                df[col] = pd.Series(values, dtype=object)
    foreign = scan.manifest.ids_not_in_dataset
    if "in_dataset" in df.columns:  # a task's own field of that name
        df = df.rename(columns={"in_dataset": EXTRA_COLLISION_PREFIX + "in_dataset"})
    if foreign:
        inside = pc.invert(pc.is_in(t["sample_id"], value_set=pa.array(sorted(foreign), type=pa.string())))
        df["in_dataset"] = pd.array(inside.to_pylist(), dtype="boolean")
    else:
        df["in_dataset"] = pd.array([True] * len(df), dtype="boolean")
    if keep_row:
        df["_row"] = order.to_numpy()
    return df


def load_results(run: RunRef, output_dir: str | Path | None = None, *, text: bool = True,
                 per_sample: bool = False) -> "pd.DataFrame":
    """One row per sample and epoch of a run: its latest ``ok`` record, or its latest error. All
    shards merged. A record without ``epoch`` answers epoch 1, so a run without repeats (and every
    run written before them) has one row per sample.

    ``run`` is a run ID under ``output_dir`` or a run directory. Columns: ``sample_id, epoch,
    status, correct, score, prediction, target, input_tokens, output_tokens, cost_usd, latency_s,
    attempts, model, task, shard, error_type, error_message, error_status_code, started_at,
    finished_at, response`` (left out with ``text=False``; ``seed`` and ``fewshot_ids`` follow
    ``epoch`` when the records have them), then any self-correction columns (``correct_before``,
    ``correct_after``, ``transition``) and other per-record fields (``extra_<key>``) when present,
    and ``in_dataset``: False for a sample id the manifest lists as ``ids_not_in_dataset`` (results
    kept from another dataset, not part of this run; :func:`get_stats` leaves them out), else True.

    ``per_sample=True`` gives one row per sample instead (:func:`~evalledger.readers.repeats.per_sample_frame`:
    its epochs, ok epochs, correct epochs, mean correctness, the majority-vote prediction for
    ``qa``/``mcq`` and pass@k for ``humaneval``).
    Safe while the run is writing: never takes the lock, ignores a partial last line.
    """
    scan = scan_run(resolve_run_dir(run, output_dir), text=text and not per_sample)
    if not per_sample:
        return frame_from_scan(scan)
    df = frame_from_scan(scan, columns=(EPOCH_COLUMN, "status", "correct", "prediction", "task"))
    return per_sample_frame(df, task_of(scan, df), epochs_of(scan))


def task_of(scan: RunScan, df: "pd.DataFrame") -> str | None:
    """The run's task: the manifest's, else the one its records name most often."""
    if scan.manifest.task is not None:
        return scan.manifest.task
    named = df["task"].dropna() if "task" in df.columns else ()
    return str(named.mode().iloc[0]) if len(named) else None


def epochs_of(scan: RunScan) -> int:
    """The run's K: the largest number of epochs its manifest asked for, or the highest epoch a
    record answers if that is higher (1 for a run without repeats)."""
    return max(scan.manifest.epochs, scan.max_epoch)


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
    import pandas as pd  # slow to import (~0.5 s): only when a run is read

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


__all__ = ["load_results", "load_runs", "frame_from_scan", "run_meta", "SELF_CORRECTION_KEYS"]
