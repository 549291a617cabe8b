"""Reading records back from a run's JSONL files (the readers' side of the ledger).

Readers never take the lock; they ignore a last line without its newline (it may be being written
right now) and skip lines that do not parse. Re-exported by :mod:`evalledger.ledger`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from evalledger.ledger.layout import calls_files, results_files
from evalledger.records import BillTotal, bill_of_call, epoch_of, unit_key

try:  # optional: ~3.5x faster parsing on the passes over the results made at every open
    import orjson

    #: orjson's ``loads`` (None without orjson): the parser :func:`parse_record_line` tries first.
    fast_loads: Any = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    fast_loads = None


def calls_bill(run_dir: Path) -> BillTotal:
    """What the calls files of a run (multi-turn tasks: every paid call once, all shards) add to its
    bill, by :func:`evalledger.records.bill_of_call`; ``items`` is the number of calls."""
    total = BillTotal()
    for path in calls_files(run_dir):
        for rec in iter_file_records(path):
            total.add(bill_of_call(rec))
    return total


@dataclass
class ReadReport:
    """What a streaming read saw besides records."""

    lines: int = 0
    skipped_lines: int = 0  # complete lines that are not valid JSON objects
    partial_tail_bytes: int = 0  # bytes after the last newline (a write in progress or torn)


def iter_file_records(path: Path, report: ReadReport | None = None) -> Iterator[dict[str, Any]]:
    """Yield each complete, parseable record line of one results file, streaming."""
    report = report if report is not None else ReadReport()
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                # The last line without its newline: a concurrent append or a torn tail.
                report.partial_tail_bytes += len(raw)
                break
            report.lines += 1
            rec = parse_record_line(raw)
            if rec is None:
                report.skipped_lines += 1
                continue
            yield rec


def is_record(obj: Any) -> bool:
    """Whether a parsed JSON value has the shape every reader relies on: an object with a string
    ``sample_id`` and a ``status`` that is a string (or absent/null, read as "not ok")."""
    return type(obj) is dict and type(obj.get("sample_id")) is str and (
        obj.get("status") is None or type(obj["status"]) is str)


def parse_record_line(raw: bytes) -> dict[str, Any] | None:
    """The record a complete line holds, or None if the line is garbage.

    The one rule for what a results line is, shared by every reader (``scan``, stats, DataFrames,
    reports, resume) and by the writer's repair, so that all of them count the same lines.

    A record is a JSON object whose ``sample_id`` is a string and whose ``status`` is a string or
    absent (our writer never writes anything else). Anything else (not JSON, NUL bytes left by a
    power loss, a JSON array, an object without a string id, a status like ``5`` or ``[1]``) is
    garbage: readers skip it and the writer moves it aside on open. Requiring a string id and
    status also keeps hostile lines such as ``{"sample_id": [1]}`` from crashing the set and dict
    look-ups every reader does by them.

    ``NaN``/``Infinity`` (which Python's ``json.dumps``, our writer, emits for float nan/inf) are
    accepted: orjson refuses them, so such a line is re-read with ``json``. A line whose strings
    hold a lone surrogate escape (``"\\ud800"``) is garbage: it cannot be encoded as UTF-8, so our
    writer cannot have written it, and it would crash whatever prints or exports it.
    """
    rec = None
    if fast_loads is not None:
        try:
            rec = fast_loads(raw)
        except ValueError:
            rec = None  # orjson refuses NaN, Infinity and lone surrogates, which json accepts
    if rec is None:
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError; nesting past
            return None  # the interpreter's limit (orjson stops at 1024 levels) is no record either
        if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(rec):
            return None
    if not is_record(rec):
        return None
    return rec


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def iter_run_records(run_dir: Path, report: ReadReport | None = None) -> Iterator[dict[str, Any]]:
    """Yield records from every results file of the run (all shards)."""
    for path in results_files(run_dir):
        yield from iter_file_records(path, report)


def latest_records(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per unit of work (sample, epoch): the latest ``ok`` record, or the latest error record if it
    has no ``ok``, by unit key (:func:`evalledger.records.unit_key`: the bare sample id for epoch
    1, so a run without repeats is keyed by its sample ids).

    The merged ledger view: each unit at most once, the last ``ok`` wins.
    """
    view: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = unit_key(rec["sample_id"], epoch_of(rec))
        cur = view.get(key)
        if cur is None or rec.get("status") == "ok" or cur.get("status") != "ok":
            view[key] = rec
    return view
