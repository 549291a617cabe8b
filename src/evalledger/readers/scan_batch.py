"""Parse a batch of complete ledger lines into typed Arrow columns (one row per record).

This is the only place that turns JSON into the readers' columns; :mod:`.scan` calls it for every
byte of a results file that its cache (:mod:`.scan_cache`) does not already hold, so a cached and
a freshly parsed file give the same table.

The columns hold every record (not yet the latest-record view) with values already cleaned the way
the DataFrame documents them: a field of the wrong type (a ``usage`` that is a list, a cost that is
text, ``NaN``) is null. Values a column type cannot hold exactly travel as JSON text in a twin
column (``score_json`` for a score that is not a bool, ``prediction_json`` for a prediction that is
not a string, ...), and the fields a record carries beyond the known ones in ``extras_json``.
``billed_cost_usd`` is the cost the record added to the run's bill (:func:`evalledger.records.bill_of`:
its ``paid`` cost, or for records older than ``paid`` its ``cost_usd``; null when it has no valid one).

The fast path for whole blocks of the runner's own records is :mod:`evalledger.readers.scan_arrow`; it
must give exactly the rows this module gives (``tests/test_scan_arrow.py``).

Which lines are records is decided by :func:`evalledger.ledger.parse_record_line` alone (the
orjson fast path only takes lines that rule would take the same way).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable

import pyarrow as pa

from evalledger.ledger import parse_record_line
from evalledger.records import (
    BILLED_COST_COLUMN,
    BOOL_COLUMNS,
    CACHED_COLUMN,
    EPOCH_COLUMN,
    EPOCH_FIELD,
    EXTRA_PREFIX,
    EXTRAS_COLUMN,
    FEWSHOT_IDS_COLUMN,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    JSON_SUFFIX,
    LIST_COLUMNS,
    OBJECT_COLUMNS,
    OFFSET_COLUMN,
    RECORD_FIELDS,
    SAVED_COST_COLUMN,
    SCORE_BOOL_COLUMN,
    SCORE_COLUMN,
    SEED_COLUMN,
    SELF_CORRECTION_KEYS,
    STRING_COLUMNS,
    TIME_COLUMNS,
    bill_of,
    epoch_of,
    saved_cost,
)

try:  # the fast parser; json is ~3.5x slower (orjson is a dependency, this only guards odd installs)
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

# Fields of a record that have their own column (or are deliberately left out of the frame).
KNOWN_KEYS = frozenset(RECORD_FIELDS)
SCORE_JSON = SCORE_COLUMN + JSON_SUFFIX
STRING_LIST = pa.list_(pa.string())

SCHEMA = pa.schema(
    [(n, pa.string()) for n in STRING_COLUMNS + TIME_COLUMNS]
    + [(n, pa.int64()) for n in INT_COLUMNS]
    + [(n, STRING_LIST) for n in LIST_COLUMNS]
    + [(n, pa.float64()) for n in FLOAT_COLUMNS + (BILLED_COST_COLUMN,)]
    + [(n, pa.bool_()) for n in BOOL_COLUMNS]
    + [(SCORE_BOOL_COLUMN, pa.bool_()), (SCORE_JSON, pa.string())]
    + [(c, pa.string()) for n in OBJECT_COLUMNS for c in (n, n + JSON_SUFFIX)]
    + [(EXTRAS_COLUMN, pa.string()), (OFFSET_COLUMN, pa.int64())]
)

_EMPTY: dict[str, Any] = {}
_NONE = type(None)
# Fields read straight off each record with one C-level getter when every record has them all.
_DIRECT = ("correct", "score", "prediction", "target", "response", "latency_s", "attempts", "started_at",
           "finished_at", "model", "task", "shard")


@dataclass
class BatchSums:
    """Sums over every record of a batch (or of a whole file): what stats add up besides the view.

    Tokens are what the records added to the run's bill (:func:`evalledger.records.bill_of`), not
    their ``usage``: a multi-turn task's record carries the sample's usage but bills nothing (its
    calls file does). ``cost_known`` is False when a record billed tokens without a valid cost.
    """

    records: int = 0
    unparseable_lines: int = 0
    error_records: int = 0
    input_tokens: int = 0  # billed
    output_tokens: int = 0  # billed
    cost_known: bool = True  # the cost total itself is summed from the billed_cost_usd column (see scan)
    last_finished: str | None = None

    def add(self, other: "BatchSums") -> None:
        """Fold ``other`` (a later part of the same file) into this one."""
        self.records += other.records
        self.unparseable_lines += other.unparseable_lines
        self.error_records += other.error_records
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_known = self.cost_known and other.cost_known
        if other.last_finished and (self.last_finished is None or other.last_finished > self.last_finished):
            self.last_finished = other.last_finished


def _parse_lines(lines: list[bytes], sums: BatchSums) -> tuple[list[dict[str, Any]], list[int]]:
    """Parse complete lines; the records and the indices of the lines they came from.

    The fast path parses the whole batch in one comprehension; a batch with a line orjson refuses
    (NaN, garbage) or that is not a record is redone line by line with parse_record_line.
    """
    try:
        recs = [_loads(raw) for raw in lines]
        if not _all_records(recs):
            raise ValueError
        return recs, list(range(len(lines)))
    except (ValueError, TypeError):
        recs, where = [], []
        for j, raw in enumerate(lines):
            r = parse_record_line(raw)
            if r is not None:
                recs.append(r)
                where.append(j)
            else:
                sums.unparseable_lines += 1
        return recs, where


def _all_records(values: list[Any]) -> bool:
    """:func:`evalledger.ledger.is_record` of every value, in C-level loops: all objects, every
    ``sample_id`` a string, every ``status`` a string or null."""
    if not values:
        return True
    if set(map(type, values)) != {dict}:
        return False
    return (set(map(type, [r.get("sample_id") for r in values])) == {str}
            and _only([r.get("status") for r in values], str))


def as_text(value: Any) -> str | None:
    """A text cell: strings stay, anything else a hand-edited record holds becomes its JSON."""
    if value is None or type(value) is str:
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        return str(value)


def _only(values: list[Any], *kinds: type) -> bool:
    """Whether every value's exact type is one of ``kinds`` (C-level: map + set)."""
    return set(map(type, values)) <= {_NONE, *kinds}


def _strings(values: list[Any]) -> pa.Array:
    if not _only(values, str):
        values = [as_text(v) for v in values]
    return pa.array(values, type=pa.string())


def _is_int64(v: Any) -> bool:
    return type(v) is int and -(2**63) <= v < 2**63


def _ints(values: list[Any]) -> pa.Array:
    if _only(values, int):
        try:
            return pa.array(values, type=pa.int64())
        except (OverflowError, pa.ArrowInvalid):
            pass
    return pa.array([v if _is_int64(v) else None for v in values], type=pa.int64())


def _finite_float(v: Any) -> float | None:
    """A number as a float; NaN, ±Infinity, an int too big for a float and non-numbers are None."""
    if type(v) is float:
        return v if math.isfinite(v) else None
    if type(v) is int:
        try:
            return float(v)
        except OverflowError:
            return None
    return None


def _epochs(values: list[Any]) -> pa.Array:
    """Epochs as :func:`evalledger.records.epoch_of` reads them (1 for a missing or invalid one); an
    epoch an int64 cannot hold is read as missing too."""
    if set(map(type, values)) <= {int} and (not values or (min(values) >= 1 and max(values) < 2**63)):
        return pa.array(values, type=pa.int64())
    return pa.array([e if e < 2**63 else 1 for e in (epoch_of({EPOCH_FIELD: v}) for v in values)], type=pa.int64())


def _string_lists(values: list[Any]) -> pa.Array:
    """Lists of strings (few-shot ids); any other value is missing."""
    if _only(values):
        return pa.nulls(len(values), STRING_LIST)
    return pa.array([v if type(v) is list and _only(v, str) and None not in v else None for v in values],
                    type=STRING_LIST)


def _floats(values: list[Any]) -> pa.Array:
    if _only(values, float):
        arr = pa.array(values, type=pa.float64())
        finite = all(map(math.isfinite, filter(None, values)))
        if finite:
            return arr
    return pa.array([_finite_float(v) for v in values], type=pa.float64())


def _bools(values: list[Any]) -> pa.Array:
    if not _only(values, bool):
        values = [v if type(v) is bool else None for v in values]
    return pa.array(values, type=pa.bool_())


def _json_or_none(v: Any) -> str | None:
    return None if v is None else json.dumps(v, ensure_ascii=False)


def _object(values: list[Any]) -> tuple[pa.Array, pa.Array]:
    """A column of any JSON values: (strings, JSON text of everything else)."""
    if _only(values, str):
        return pa.array(values, type=pa.string()), pa.nulls(len(values), pa.string())
    return (pa.array([v if type(v) is str else None for v in values], type=pa.string()),
            pa.array([None if v is None or type(v) is str else _json_or_none(v) for v in values], type=pa.string()))


def _score(values: list[Any]) -> tuple[pa.Array, pa.Array]:
    """A score column: (bools, JSON text of every score that is not a bool)."""
    if _only(values, bool):
        return pa.array(values, type=pa.bool_()), pa.nulls(len(values), pa.string())
    return (pa.array([v if type(v) is bool else None for v in values], type=pa.bool_()),
            pa.array([None if v is None or type(v) is bool else _json_or_none(v) for v in values], type=pa.string()))


def flatten_extras(rec: dict[str, Any]) -> dict[str, Any] | None:
    """Fields a record carries beyond the known ones, for pass-through columns.

    Unknown top-level keys keep their name; keys of the ``extra`` dict get ``extra_``, except the
    self-correction keys, which get their plain name so that reports find them in one place.
    """
    out: dict[str, Any] = {}
    for k in rec.keys() - KNOWN_KEYS:
        out[k] = rec[k]
    extra = rec.get("extra")
    if isinstance(extra, dict):
        for k, v in extra.items():
            out[k if k in SELF_CORRECTION_KEYS else EXTRA_PREFIX + k] = v
    return out or None


def parse_batch(lines: list[bytes], offsets: list[int]) -> tuple[pa.RecordBatch, BatchSums]:
    """The records among complete ``lines`` (starting at byte ``offsets``) as a batch of :data:`SCHEMA`.

    Also returns the batch's :class:`BatchSums`: the tokens every record added to the bill
    (:func:`evalledger.records.bill_of`; its cost is the ``billed_cost_usd`` column), error
    records, the latest ``finished_at`` and unparseable lines.
    """
    sums = BatchSums()
    recs, where = _parse_lines(lines, sums)
    sums.records = len(recs)
    usages = [r.get("usage") or _EMPTY for r in recs]
    if not _only(usages, dict):
        usages = [u if type(u) is dict else _EMPTY for u in usages]
    errs = [r.get("error") or _EMPTY for r in recs]
    if not _only(errs, dict):
        errs = [e if type(e) is dict else _EMPTY for e in errs]
    try:  # every field present (the runner's records): one C-level getter per record
        picked = list(zip(*map(itemgetter(*_DIRECT), recs))) if recs else [()] * len(_DIRECT)
    except KeyError:  # a record without some field: the same, field by field
        picked = [[r.get(name) for r in recs] for name in _DIRECT]
    raw = {name: list(values) for name, values in zip(_DIRECT, picked)}
    statuses = [r.get("status") for r in recs]  # str or None (parse_record_line)
    finished = raw["finished_at"]
    if not _only(finished, str):
        finished = raw["finished_at"] = [f if type(f) is str else None for f in finished]
    started = raw["started_at"]
    if not _only(started, str):
        raw["started_at"] = [f if type(f) is str else None for f in started]
    costs = [r.get("cost_usd") for r in recs]
    in_tokens = [u.get("input_tokens") for u in usages]
    out_tokens = [u.get("output_tokens") for u in usages]

    cols: dict[str, pa.Array] = {
        "sample_id": pa.array([r["sample_id"] for r in recs], type=pa.string()),
        "status": pa.array(statuses, type=pa.string()),
        "error_type": _strings([e.get("type") for e in errs]),
        "error_message": _strings([e.get("message") for e in errs]),
        "input_tokens": _ints(in_tokens),
        "output_tokens": _ints(out_tokens),
        "error_status_code": _ints([e.get("status_code") for e in errs]),
        "cost_usd": _floats(costs),
        "attempts": _ints(raw["attempts"]),
        EPOCH_COLUMN: _epochs([r.get(EPOCH_FIELD) for r in recs]),
        SEED_COLUMN: _ints([r.get(SEED_COLUMN) for r in recs]),
        FEWSHOT_IDS_COLUMN: _string_lists([r.get(FEWSHOT_IDS_COLUMN) for r in recs]),
        "latency_s": _floats(raw["latency_s"]),
        "correct": _bools(raw["correct"]),
        CACHED_COLUMN: _bools([r.get(CACHED_COLUMN) for r in recs]),
        SAVED_COST_COLUMN: pa.array([saved_cost(r) for r in recs], type=pa.float64()),
    }
    for name in ("model", "task", "shard", "started_at", "finished_at"):
        cols[name] = _strings(raw[name])
    cols[SCORE_BOOL_COLUMN], cols[SCORE_JSON] = _score(raw[SCORE_COLUMN])
    for name in OBJECT_COLUMNS:
        cols[name], cols[name + JSON_SUFFIX] = _object(raw[name])
    # One set union per batch (C speed) tells whether any record has fields to pass through.
    batch_keys = set().union(*recs)
    if batch_keys <= KNOWN_KEYS and "extra" not in batch_keys:
        cols[EXTRAS_COLUMN] = pa.nulls(len(recs), pa.string())
    else:
        cols[EXTRAS_COLUMN] = pa.array(
            [None if (r.keys() <= KNOWN_KEYS and "extra" not in r) else _json_or_none(flatten_extras(r))
             for r in recs], type=pa.string())
    cols[OFFSET_COLUMN] = pa.array([offsets[j] for j in where], type=pa.int64())

    bills = list(map(bill_of, recs))
    cols[BILLED_COST_COLUMN] = pa.array([b.cost_usd for b in bills], type=pa.float64())
    sums.input_tokens = sum([b.input_tokens for b in bills])
    sums.output_tokens = sum([b.output_tokens for b in bills])
    sums.cost_known = all([b.cost_known for b in bills])  # a bill without a price: the total is unknown
    sums.error_records = len(statuses) - statuses.count("ok")
    sums.last_finished = max(filter(None, finished), default=None)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in SCHEMA], schema=SCHEMA), sums
