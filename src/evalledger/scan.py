"""One streaming pass over a run's ledger: the per-sample view as columns, plus run-wide sums.

Everything that reads results for people (``get_stats``, ``load_results``, ``report``, ``list``)
builds on :func:`scan_run`, so the DataFrame and the stats can never disagree, and a report needs
only one pass over a million records.

Why columns and not a list of dicts: a million record dicts (with their prompts) would not fit in
2 GB, and turning dicts into a DataFrame is slow. Lines are parsed in ~16 MB batches and each
field is pulled out with a list comprehension, the cheapest loop Python has. Why orjson when it is
installed: ``json.loads`` is ~3.5x slower and dominates the pass (see benchmarks/bench_results.py).

Safe while a run is writing: no lock is taken, a last line without its newline is ignored (it may
be being written right now) and complete lines that are not records are counted, not raised.
Which lines are records is decided by :func:`evalledger.ledger.parse_record_line` alone (the batch
fast path only takes lines that rule would take the same way). Fields of the wrong type in a record
(a ``usage`` that is a list, a cost that is text, a ``NaN`` cost) never crash a reader: they are
read as missing.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass, field
from itertools import accumulate, compress
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable

from .errors import LedgerCorruptError
from .ledger import CheckpointManager, is_record, parse_record_line, results_files

try:  # optional speed-up: same results, ~3.5x faster parsing
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

# Fields of a record that have their own column (or are deliberately left out of the frame).
KNOWN_KEYS = frozenset({
    "sample_id", "status", "attempts", "shard", "model", "task", "input_hash", "prompt", "response",
    "prediction", "target", "score", "correct", "usage", "cost_usd", "latency_s", "request_ids", "error",
    "started_at", "finished_at", "extra",
})
# Self-correction fields get unprefixed columns wherever a task puts them (top level or ``extra``).
SELF_CORRECTION_KEYS = ("correct_before", "correct_after", "transition")
EXTRA_PREFIX = "extra_"

BASE_COLUMNS = (
    "sample_id", "status", "correct", "score", "prediction", "target", "input_tokens", "output_tokens",
    "cost_usd", "latency_s", "attempts", "model", "task", "shard", "error_type", "error_message",
    "error_status_code", "started_at", "finished_at",
)
TEXT_COLUMNS = ("response",)


@dataclass
class FileSummary:
    """Per results file (one per shard): what it holds, counted over every record in it."""

    name: str
    shard: str | None
    records: int = 0
    ok_ids: set[str] = field(default_factory=set)
    error_records: int = 0
    last_finished: str | None = None


@dataclass
class ManifestFacts:
    """What readers take from a run's manifest, each field checked: a wrong type reads as unknown.

    ``problem`` says what was wrong (unreadable file, a field of the wrong type), or is None.
    """

    model: str | None = None
    task: str | None = None
    dataset: str | None = None
    sample_count: int | None = None
    created_at: str | None = None
    ids_not_in_dataset: frozenset[str] = frozenset()
    problem: str | None = None


def _text_or_none(value: Any, what: str, problems: list[str]) -> str | None:
    if value is None or type(value) is str:
        return value
    problems.append(f"{what} is not a string")
    return None


def read_manifest_facts(run_dir: str | Path) -> ManifestFacts:
    """The manifest's facts for readers; never raises for what the file holds (see :class:`ManifestFacts`)."""
    try:
        m = CheckpointManager(run_dir).read_manifest() or {}
    except LedgerCorruptError as e:  # still worth showing what the results say
        return ManifestFacts(problem=e.message)
    problems: list[str] = []
    config, dataset = m.get("config"), m.get("dataset")
    if config is not None and not isinstance(config, dict):
        problems.append("config is not an object")
    if dataset is not None and not isinstance(dataset, dict):
        problems.append("dataset is not an object")
    count = m.get("sample_count")
    if count is not None and (type(count) is not int or count < 0):
        problems.append("sample_count is not a whole number")
        count = None
    foreign = m.get("ids_not_in_dataset")
    if foreign is None:
        foreign = []
    elif not isinstance(foreign, list):
        problems.append("ids_not_in_dataset is not a list")
        foreign = []
    elif not all(type(i) is str for i in foreign):
        problems.append("ids_not_in_dataset holds values that are not strings (ignored)")
    facts = ManifestFacts(
        model=_text_or_none(config.get("model") if isinstance(config, dict) else None, "config.model", problems),
        task=_text_or_none(m.get("task"), "task", problems),
        dataset=_text_or_none(dataset.get("name") if isinstance(dataset, dict) else None, "dataset.name", problems),
        sample_count=count,
        created_at=_text_or_none(m.get("created_at"), "created_at", problems),
        ids_not_in_dataset=frozenset(i for i in foreign if type(i) is str),
    )
    if problems:
        facts.problem = f"{Path(run_dir) / 'manifest.json'}: " + "; ".join(problems) + " (read as unknown)"
    return facts


@dataclass
class RunScan:
    """The result of :func:`scan_run`: the latest-record view as columns, plus sums over *all* records."""

    run_dir: Path
    columns: dict[str, list[Any]]  # one entry per sample: its latest ok record, else its latest
    extras: list[dict[str, Any] | None]  # per row: pass-through fields, or None (the common case)
    locations: list[int]  # per row: file index << 40 | byte offset of its record (ints: no GC work, small)
    files: list[Path]
    file_summaries: list[FileSummary]
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    records_read: int = 0
    unparseable_lines: int = 0
    partial_tail_bytes: int = 0
    last_finished: str | None = None
    manifest: ManifestFacts = field(default_factory=ManifestFacts)


def _flatten_extras(rec: dict[str, Any]) -> dict[str, Any] | None:
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


CHUNK_BYTES = 16 << 20  # lines are parsed in ~16 MB batches: list comprehensions, bounded memory
_EMPTY: dict[str, Any] = {}


def _parse_lines(lines: list[bytes], scan: RunScan) -> tuple[list[dict[str, Any]], list[int]]:
    """Parse a batch of complete lines; returns the records and the indices of the lines they came from.

    The fast path parses the whole batch in comprehensions; a batch with a bad line is redone
    line by line, counting the lines that are not records.
    """
    try:
        # orjson takes a subset of what parse_record_line takes, with the same result; any line
        # it refuses (NaN, garbage) sends the batch to the slow path, which is parse_record_line.
        recs = [_loads(raw) for raw in lines]
        if not all(map(is_record, recs)):
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
                scan.unparseable_lines += 1
        return recs, where


def _as_text(value: Any) -> str | None:
    """A text column's cell: strings stay, anything else a hand-edited record holds becomes its JSON."""
    if value is None or type(value) is str:
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        return str(value)


def _shared_texts(table: dict[Any, Any], values: list[Any]) -> list[Any]:
    """``values`` with one shared object per distinct string (see LOW_CARDINALITY)."""
    try:
        if all(v is None or type(v) is str for v in values):
            return list(map(table.setdefault, values, values))
    except TypeError:
        pass
    values = [_as_text(v) for v in values]
    return list(map(table.setdefault, values, values))


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_amount(v: Any) -> bool:
    return (type(v) is float and math.isfinite(v)) or (type(v) is int)


def _total(values: list[Any], valid: Callable[[Any], bool]) -> Any:
    """Sum of the valid values (fast path: all are valid, which a well-formed ledger guarantees)."""
    try:
        total = sum(filter(None, values))
        finite = type(total) is int or (type(total) is float and math.isfinite(total))
        if finite and all(v is None or valid(v) for v in values):
            return total
    except TypeError:
        pass
    return sum(v for v in values if v is not None and valid(v))


# Columns with few distinct values: one shared str object per value instead of one per record
# (orjson makes a new str for each), which saves ~0.5 GB on a million records.
LOW_CARDINALITY = ("status", "model", "task", "shard", "error_type", "error_message")


def scan_run(run_dir: str | Path, *, text: bool = True) -> RunScan:
    """Read every results file of a run once (all shards) and return a :class:`RunScan`.

    Per sample the view holds its latest ``ok`` record, or its latest error if it has none
    (DESIGN promise 3). ``text=False`` leaves out the response text (for stats and listings).
    The manifest's facts are read too (:func:`read_manifest_facts`), so that every reader of the
    scan sees the same sample count and the same ``ids_not_in_dataset``.
    """
    # The cyclic GC would walk every live container again and again while millions are
    # allocated (quadratic in effect: 70 s instead of 10 s on a million records); nothing
    # here makes reference cycles, so it is paused for the pass.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _scan(Path(run_dir), text)
    finally:
        if was_enabled:
            gc.enable()


def _scan(run_dir: Path, text: bool) -> RunScan:
    files = results_files(run_dir)
    names = BASE_COLUMNS + (TEXT_COLUMNS if text else ())
    # Columns over *every* record first (cheap comprehensions per batch); the latest-record view
    # is picked at the end, usually keeping everything (a sample rarely has two records).
    allc: dict[str, list[Any]] = {c: [] for c in names}
    all_extras: list[dict[str, Any] | None] = []
    all_locs: list[int] = []
    shared: dict[str, dict[Any, Any]] = {c: {} for c in LOW_CARDINALITY}
    fields = ("correct", "score", "prediction", "target", "latency_s", "attempts", "started_at", "model", "task",
              "shard") + (("response",) if text else ())
    getter = itemgetter(*fields)
    scan = RunScan(run_dir=run_dir, columns={}, extras=[], locations=[], files=files, file_summaries=[],
                   manifest=read_manifest_facts(run_dir))
    known = KNOWN_KEYS
    cost_known = True
    for fi, path in enumerate(files):
        m = path.name[len("results."):-len(".jsonl")] if path.name != "results.jsonl" else ""
        fs = FileSummary(name=path.name, shard=m.replace("shard-", "").replace("-of-", "/") or None)
        scan.file_summaries.append(fs)
        try:
            f = open(path, "rb")
        except FileNotFoundError:  # a shard file can vanish only with --overwrite; nothing to read
            continue
        offset = 0
        with f:
            while True:
                lines = f.readlines(CHUNK_BYTES)
                if not lines:
                    break
                if lines[-1][-1:] != b"\n":
                    # The last line without its newline (only ever at EOF): a write in progress or torn.
                    scan.partial_tail_bytes += len(lines.pop())
                offsets = list(accumulate(map(len, lines), initial=offset))
                offset = offsets.pop()  # the end of the batch is where the next one starts
                scan.records_read += len(lines)
                recs, where = _parse_lines(lines, scan)
                fs.records += len(recs)
                usages = [r.get("usage") or _EMPTY for r in recs]
                if not all(type(u) is dict for u in usages):
                    usages = [u if type(u) is dict else _EMPTY for u in usages]
                errs = [r.get("error") or _EMPTY for r in recs]
                if not all(type(e) is dict for e in errs):
                    errs = [e if type(e) is dict else _EMPTY for e in errs]
                statuses = [r.get("status") for r in recs]  # str or None (parse_record_line)
                ids = [r["sample_id"] for r in recs]
                finished = [r.get("finished_at") for r in recs]
                if not all(f is None or type(f) is str for f in finished):
                    finished = [f if type(f) is str else None for f in finished]
                costs = [r.get("cost_usd") for r in recs]
                if not all(c is None or _is_amount(c) for c in costs):
                    costs = [c if _is_amount(c) else None for c in costs]  # not a number: no known cost
                allc["sample_id"] += ids
                allc["status"] += map(shared["status"].setdefault, statuses, statuses)
                try:  # every field present (the runner's records): one C-level getter per record
                    picked = list(zip(*map(getter, recs))) if recs else [()] * len(fields)
                except KeyError:  # a record without some field: the same, field by field
                    picked = [[r.get(name) for r in recs] for name in fields]
                for name, values in zip(fields, picked):
                    sm = shared.get(name)
                    allc[name] += values if sm is None else _shared_texts(sm, values)
                in_tokens = [u.get("input_tokens") for u in usages]
                out_tokens = [u.get("output_tokens") for u in usages]
                allc["input_tokens"] += in_tokens
                allc["output_tokens"] += out_tokens
                allc["cost_usd"] += costs
                types = [e.get("type") for e in errs]
                messages = [e.get("message") for e in errs]
                allc["error_type"] += _shared_texts(shared["error_type"], types)
                allc["error_message"] += _shared_texts(shared["error_message"], messages)
                allc["error_status_code"] += [e.get("status_code") for e in errs]
                allc["finished_at"] += finished
                # One set union per batch (C speed) tells whether any record has fields to pass through.
                batch_keys = set().union(*recs)
                if batch_keys <= known and "extra" not in batch_keys:
                    all_extras += [None] * len(recs)
                else:
                    all_extras += [None if (r.keys() <= known and "extra" not in r) else _flatten_extras(r)
                                   for r in recs]
                base = fi << 40  # offsets below 1 TB per file
                all_locs += [base | offsets[j] for j in where]
                # Tokens and cost over every record: each one stands for requests that were paid.
                # (filter/compress/count: C-level loops; this runs once per record of a million)
                scan.input_tokens += _total(in_tokens, _is_count)
                scan.output_tokens += _total(out_tokens, _is_count)
                scan.cost_usd += _total(costs, _is_amount)
                if cost_known and None in costs and any(c is None and u for c, u in zip(costs, usages)):
                    cost_known = False  # a paid record without a price: the total is unknown, not lower
                fs.ok_ids.update(compress(ids, map("ok".__eq__, statuses)))
                fs.error_records += len(statuses) - statuses.count("ok")
                fin = max(filter(None, finished), default=None)
                if fin and (fs.last_finished is None or fin > fs.last_finished):
                    fs.last_finished = fin
    scan.cost_known = cost_known
    lasts = [fs.last_finished for fs in scan.file_summaries if fs.last_finished]
    scan.last_finished = max(lasts) if lasts else None
    keep = _latest(allc["sample_id"], allc["status"])
    if keep is None:  # no sample has two records: the common case, nothing to copy
        scan.columns, scan.extras, scan.locations = allc, all_extras, all_locs
    else:
        # itemgetter picks in C; the lists hold references, so the copy costs 8 bytes a cell.
        pick = itemgetter(*keep) if len(keep) > 1 else (lambda seq: (seq[keep[0]],))
        scan.columns = {name: list(pick(col)) for name, col in allc.items()}
        scan.extras = list(pick(all_extras))
        scan.locations = list(pick(all_locs))
    return scan


def _latest(ids: list[str], statuses: list[Any]) -> list[int] | None:
    """Indices of each sample's latest ok record, else its latest record; None if all are kept."""
    index: dict[str, int] = {}
    for j, (sid, st) in enumerate(zip(ids, statuses)):
        i = index.get(sid)
        if i is None or st == "ok" or statuses[i] != "ok":
            index[sid] = j  # an ok record is never replaced by a later error
    if len(index) == len(ids):
        return None
    return sorted(index.values())


def fetch_records(scan: RunScan, rows: list[int]) -> list[dict[str, Any]]:
    """The full records (prompt, response, everything) behind some rows of a scan, by seeking.

    Used by the report's sample browser so that the scan need not keep a million prompts in memory.
    """
    out: list[dict[str, Any]] = []
    handles: dict[int, Any] = {}
    try:
        for r in rows:
            fi, pos = scan.locations[r] >> 40, scan.locations[r] & ((1 << 40) - 1)
            f = handles.get(fi)
            if f is None:
                f = handles[fi] = open(scan.files[fi], "rb")
            f.seek(pos)
            out.append(parse_record_line(f.readline()) or {})  # {}: the file was replaced since the scan
    finally:
        for f in handles.values():
            f.close()
    return out
