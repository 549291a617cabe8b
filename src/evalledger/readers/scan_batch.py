"""Parse a batch of complete ledger lines into typed Arrow columns (one row per record).

This is the only place that turns JSON into the readers' columns; :mod:`.scan` calls it for every
byte of a results file that its cache (:mod:`.scan_cache`) does not already hold, so a cached and
a freshly parsed file give the same table.

The columns hold every record (not yet the latest-record view) with values already cleaned the way
the DataFrame documents them: a field of the wrong type (a ``usage`` that is a list, a cost that is
text, ``NaN``) is null. Values a column type cannot hold exactly travel as JSON text in a twin
column (``score_json`` for a score that is not a bool, ``prediction_json`` for a prediction that is
not a string, ...), and the fields a record carries beyond the known ones in ``extras_json``.
``billed_cost_usd`` is what the record added to the run's bill (its ``paid`` cost, or for records
older than ``paid`` its ``cost_usd``; see :func:`evalledger.ledger.billed`).

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
from evalledger.records import SELF_CORRECTION_KEYS  # unprefixed columns wherever a task puts them (top level or extra)

try:  # the fast parser; json is ~3.5x slower (orjson is a dependency, this only guards odd installs)
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

# Fields of a record that have their own column (or are deliberately left out of the frame).
KNOWN_KEYS = frozenset({
    "sample_id", "status", "attempts", "shard", "model", "task", "input_hash", "prompt", "response",
    "prediction", "target", "score", "correct", "usage", "cost_usd", "latency_s", "request_ids", "error",
    "started_at", "finished_at", "extra", "paid",
})
EXTRA_PREFIX = "extra_"

STRING_FIELDS = ("sample_id", "status", "model", "task", "shard", "error_type", "error_message",
                 "started_at", "finished_at")
INT_FIELDS = ("input_tokens", "output_tokens", "attempts", "error_status_code")
FLOAT_FIELDS = ("cost_usd", "latency_s", "billed_cost_usd")
OBJECT_FIELDS = ("prediction", "target", "response")  # str in a string column, anything else as JSON

SCHEMA = pa.schema(
    [(n, pa.string()) for n in STRING_FIELDS]
    + [(n, pa.int64()) for n in INT_FIELDS]
    + [(n, pa.float64()) for n in FLOAT_FIELDS]
    + [("correct", pa.bool_()), ("score_bool", pa.bool_()), ("score_json", pa.string())]
    + [(c, pa.string()) for n in OBJECT_FIELDS for c in (n, n + "_json")]
    + [("extras_json", pa.string()), ("offset", pa.int64())]
)

_EMPTY: dict[str, Any] = {}
_NONE = type(None)
# Fields read straight off each record with one C-level getter when every record has them all.
_DIRECT = ("correct", "score", "prediction", "target", "response", "latency_s", "attempts", "started_at",
           "finished_at", "model", "task", "shard")


@dataclass
class BatchSums:
    """Sums over every record of a batch (or of a whole file): what stats add up besides the view.

    Tokens are what the records added to the run's bill (:func:`billed_parts`), not their ``usage``:
    a multi-turn task's record carries the sample's usage but bills nothing (its calls file does).
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


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_amount(v: Any) -> bool:
    return (type(v) is float and math.isfinite(v)) or (type(v) is int)


def _count_total(values: list[Any]) -> int:
    """Sum of the token counts (whole numbers >= 0) among ``values``."""
    if _only(values, int) and min(filter(None, values), default=0) >= 0:
        return sum(filter(None, values))  # the runner's records: all valid (C-level loops)
    return sum(v for v in values if v is not None and _is_count(v))


def parse_batch(lines: list[bytes], offsets: list[int]) -> tuple[pa.RecordBatch, BatchSums]:
    """The records among complete ``lines`` (starting at byte ``offsets``) as a batch of :data:`SCHEMA`.

    Also returns the batch's :class:`BatchSums`: the tokens every record added to the bill
    (:func:`_bills`; its cost is the ``billed_cost_usd`` column), error records, the latest
    ``finished_at`` and unparseable lines.
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
        "latency_s": _floats(raw["latency_s"]),
        "correct": _bools(raw["correct"]),
    }
    for name in ("model", "task", "shard", "started_at", "finished_at"):
        cols[name] = _strings(raw[name])
    cols["score_bool"], cols["score_json"] = _score(raw["score"])
    for name in OBJECT_FIELDS:
        cols[name], cols[name + "_json"] = _object(raw[name])
    # One set union per batch (C speed) tells whether any record has fields to pass through.
    batch_keys = set().union(*recs)
    if batch_keys <= KNOWN_KEYS and "extra" not in batch_keys:
        cols["extras_json"] = pa.nulls(len(recs), pa.string())
    else:
        cols["extras_json"] = pa.array(
            [None if (r.keys() <= KNOWN_KEYS and "extra" not in r) else _json_or_none(flatten_extras(r))
             for r in recs], type=pa.string())
    cols["offset"] = pa.array([offsets[j] for j in where], type=pa.int64())

    bill_in, bill_out, bill_cost, sources = _bills(recs, usages, in_tokens, out_tokens, costs)
    cols["billed_cost_usd"] = _floats(bill_cost)
    sums.input_tokens = _count_total(bill_in)
    sums.output_tokens = _count_total(bill_out)
    if not _only(bill_cost, float, int) or not math.isfinite(sum(filter(None, bill_cost))):
        bill_cost = [c if _is_amount(c) else None for c in bill_cost]  # not a number: no known cost
    if None in bill_cost and any(c is None and s for c, s in zip(bill_cost, sources)):
        sums.cost_known = False  # a paid record without a price: the total is unknown, not lower
    sums.error_records = len(statuses) - statuses.count("ok")
    sums.last_finished = max(filter(None, finished), default=None)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in SCHEMA], schema=SCHEMA), sums


def _bills(recs: list[dict[str, Any]], usages: list[dict[str, Any]], in_tokens: list[Any], out_tokens: list[Any],
           costs: list[Any]) -> tuple[list[Any], list[Any], list[Any], list[dict[str, Any]]]:
    """What each record adds to the run's bill, as :func:`evalledger.ledger.billed` reads it: its
    ``paid`` when that is an object, else (records older than ``paid``) its ``usage`` and ``cost_usd``.

    Returns input tokens, output tokens, cost and the object each was read from, per record.
    """
    paids = [r.get("paid") for r in recs]
    if _only(paids):  # no record has ``paid``: the usage is the bill
        return in_tokens, out_tokens, costs, usages
    sources = [p if type(p) is dict else u for p, u in zip(paids, usages)]
    has = [type(p) is dict for p in paids]
    return ([s.get("input_tokens") if h else v for s, h, v in zip(sources, has, in_tokens)],
            [s.get("output_tokens") if h else v for s, h, v in zip(sources, has, out_tokens)],
            [s.get("cost_usd") if h else v for s, h, v in zip(sources, has, costs)],
            sources)
