"""One streaming pass over a run's ledger: the latest-record view as Arrow columns, plus run-wide sums.

The view holds one row per unit of work, a (sample, epoch) (:func:`evalledger.records.record_unit_key`;
a record without ``epoch`` answers epoch 1, so a run without repeats has one row per sample).

Everything that reads results for people (``get_stats``, ``load_results``, ``report``, ``list``)
builds on :func:`scan_run`, so the DataFrame and the stats can never disagree, and a report needs
only one pass over a million records.

Each results file is read in ~16 MB blocks of complete lines and parsed into typed Arrow columns
(a million records of Python dicts would not fit in 2 GB): by pyarrow's multi-threaded JSON reader
when the block is the runner's plain records (:mod:`evalledger.readers.scan_arrow`), else line by line by
:func:`evalledger.readers.scan_batch.parse_batch`, which gives the same rows. What was parsed is
kept in a columnar copy beside the run (:mod:`evalledger.readers.scan_cache`, ``<run_dir>/.cache/``), so the
next reader parses only the bytes appended since: on a live run, the new records.

Safe while a run is writing: no lock is taken, a last line without its newline is ignored (it may
be being written right now) and complete lines that are not records are counted, not raised.
Which lines are records is decided by :func:`evalledger.ledger.parse_record_line` alone. Fields
of the wrong type in a record (a ``usage`` that is a list, a cost that is text, a ``NaN`` cost)
never crash a reader: they are read as missing.
"""

from __future__ import annotations

import gc
import io
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from evalledger.errors import UsageError
from evalledger.fsio import switch_on
from evalledger.ledger import parse_record_line, results_files, shard_of_file
from evalledger.readers.manifest import ManifestFacts, read_manifest_facts
from evalledger.records import BILLED_COST_COLUMN, EPOCH_COLUMN, total_cost

if TYPE_CHECKING:
    import pyarrow as pa

    from evalledger.readers.scan_batch import BatchSums

# pyarrow (a dependency) is imported by the functions that read results, not with the package:
# `import evalledger` and `evalledger run` do not pay its start-up.
CHUNK_BYTES = 16 << 20  # lines are parsed in ~16 MB blocks: bounded memory


def arrow_parser_enabled() -> bool:
    """Whether blocks go to pyarrow's JSON reader first (see :mod:`.scan_arrow`).

    ``EVALLEDGER_SCAN_ARROW=off`` parses every line in Python, to compare the two or time them.
    """
    return switch_on("EVALLEDGER_SCAN_ARROW")


@dataclass
class FileSummary:
    """Per results file (one per shard): what it holds, counted over every record in it."""

    name: str
    shard: str | None
    records: int = 0
    error_records: int = 0
    last_finished: str | None = None
    ok_units: "pa.Table | None" = None  # (sample_id, epoch) of each unit with an ok record in this file
    from_cache: int = 0  # bytes of the file whose rows came from the columnar copy

    def ok_count(self, foreign: frozenset[str] = frozenset()) -> int:
        """Units (samples × epochs) with an ``ok`` record in this file, leaving out ``foreign`` sample ids."""
        import pyarrow as pa  # slow to import: only when a file is parsed
        import pyarrow.compute as pc  # slow to import: only when a file is parsed

        if self.ok_units is None:
            return 0
        if not foreign:
            return len(self.ok_units)
        inside = pc.is_in(self.ok_units["sample_id"], value_set=pa.array(sorted(foreign), type=pa.string()))
        return len(self.ok_units) - (pc.sum(inside).as_py() or 0)

    @property
    def ok_ids(self) -> set[str]:
        """The ids of samples with an ``ok`` record (in any epoch) in this file (a Python set: small runs, tests)."""
        return set() if self.ok_units is None else set(self.ok_units["sample_id"].to_pylist())


@dataclass
class RunScan:
    """The result of :func:`scan_run`: the latest-record view as columns, plus sums over *all* records.

    ``input_tokens``, ``output_tokens`` and ``cost_usd`` are what the results records added to the
    run's bill (:func:`evalledger.records.bill_of` of every record); the calls files of multi-turn
    tasks hold the rest (:func:`evalledger.ledger.calls_bill`, read by stats only, not by every frame).
    ``cost_known`` is False when the cost is unknown (something was billed without a valid cost,
    or the sum overflows a float; see :mod:`evalledger.records`): ``cost_usd`` is then no bill.

    ``rows`` holds every record of every results file, in ledger order, with the columns of
    :data:`evalledger.readers.scan_batch.SCHEMA` plus ``file`` (an index into ``files``); ``offset`` and
    ``file`` locate a record for :func:`fetch_records`. ``keep`` picks the view out of it: one row
    per (sample, epoch), its latest ok record, else its latest record (None: every row, no unit has two).
    """

    run_dir: Path
    rows: "pa.Table"
    files: list[Path]
    file_summaries: list[FileSummary]
    keep: "pa.Array | None" = None
    text: bool = True
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    records_read: int = 0
    unparseable_lines: int = 0
    partial_tail_bytes: int = 0
    last_finished: str | None = None
    manifest: ManifestFacts = field(default_factory=ManifestFacts)

    def view(self, columns: list[str], positions: "pa.Array | None" = None) -> "pa.Table":
        """Some columns of the view, or of the view rows at ``positions`` (only those are copied)."""
        index = self.keep if positions is None else (positions if self.keep is None else self.keep.take(positions))
        part = self.rows.select(columns)
        return part if index is None else part.take(index)

    @property
    def sample_ids(self) -> list[str]:
        """The view's sample ids, in ledger order (a sample appears once per epoch)."""
        return self.view(["sample_id"])["sample_id"].to_pylist()

    @property
    def max_epoch(self) -> int:
        """The highest epoch any record answers (1 for a run without repeats, or without records)."""
        import pyarrow.compute as pc  # slow to import: only when a file is parsed

        return pc.max(self.rows[EPOCH_COLUMN]).as_py() or 1


def scan_run(run_dir: str | Path, *, text: bool = True) -> RunScan:
    """Read every results file of a run once (all shards) and return a :class:`RunScan`.

    Per unit of work, a (sample, epoch), the view holds its latest ``ok`` record, or its latest
    error if it has none (an ok record is never replaced by a later error); a record without
    ``epoch`` answers epoch 1. ``text=False`` tells the DataFrame builder to leave out the response text.
    The manifest's facts are read too (:func:`read_manifest_facts`), so that every reader of the
    scan sees the same sample count and the same ``ids_not_in_dataset``.
    """
    # The cyclic GC would walk every live container again and again while millions are
    # allocated (quadratic in effect); nothing here makes reference cycles, so it is paused.
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:  # a broken install: say what is missing instead of a traceback
        raise UsageError(f"reading results needs pyarrow, a dependency of evalledger: pip install pyarrow ({e})") from e
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _scan(Path(run_dir), text)
    finally:
        if was_enabled:
            gc.enable()


def _scan(run_dir: Path, text: bool) -> RunScan:
    import pyarrow as pa  # slow to import: only when a file is parsed
    import pyarrow.compute as pc  # slow to import: only when a file is parsed

    from evalledger.readers.scan_batch import SCHEMA  # imports pyarrow: only when a file is parsed

    files = results_files(run_dir)
    scan = RunScan(run_dir=run_dir, rows=SCHEMA.empty_table(), files=files, file_summaries=[], text=text,
                   manifest=read_manifest_facts(run_dir))
    tables = []
    lasts = []
    for fi, path in enumerate(files):
        sh = shard_of_file(path)
        fs = FileSummary(name=path.name, shard=None if sh is None else f"{sh[0]}/{sh[1]}")
        scan.file_summaries.append(fs)
        table, sums, lines, partial, fs.from_cache = _scan_file(path)
        scan.records_read += lines
        scan.partial_tail_bytes += partial
        scan.unparseable_lines += sums.unparseable_lines
        scan.input_tokens += sums.input_tokens
        scan.output_tokens += sums.output_tokens
        scan.cost_known = scan.cost_known and sums.cost_known
        fs.records, fs.error_records, fs.last_finished = sums.records, sums.error_records, sums.last_finished
        if sums.last_finished:
            lasts.append(sums.last_finished)
        if len(table):
            ok = pc.fill_null(pc.equal(table["status"], "ok"), False)
            fs.ok_units = (table.select(["sample_id", EPOCH_COLUMN]).filter(ok)
                           .group_by(["sample_id", EPOCH_COLUMN], use_threads=False).aggregate([]))
        tables.append(table.append_column("file", pa.array([fi] * len(table), type=pa.int32())))
    scan.last_finished = max(lasts) if lasts else None
    if tables:
        scan.rows = pa.concat_tables(tables)
        scan.keep = _latest(scan.rows)
        # Correctly rounded, so the total does not depend on batch sizes or on what was cached.
        total = total_cost(pc.drop_null(scan.rows[BILLED_COST_COLUMN]).to_numpy())
        scan.cost_usd = 0.0 if total is None else total
        scan.cost_known = scan.cost_known and total is not None
    else:
        scan.rows = scan.rows.append_column("file", pa.array([], type=pa.int32()))
    return scan


def _scan_file(path: Path) -> "tuple[pa.Table, BatchSums, int, int, int]":
    """One results file: (rows of every record, sums, complete lines read, partial tail bytes, cached bytes).

    Rows of the bytes a valid columnar copy covers come from it; only the rest is parsed. A new
    copy is written when the parsed part is large (see :func:`evalledger.readers.scan_cache.should_save`).
    """
    import pyarrow as pa  # slow to import: only when a file is parsed

    from evalledger.readers import scan_cache  # scan_cache imports pyarrow: only when a file is parsed
    from evalledger.readers.scan_batch import SCHEMA, BatchSums  # imports pyarrow: only when a file is parsed

    try:
        f = open(path, "rb")
    except FileNotFoundError:  # a shard file can vanish only with --overwrite; nothing to read
        return SCHEMA.empty_table(), BatchSums(), 0, 0, 0
    with f:
        st = os.fstat(f.fileno())
        cached = scan_cache.load(path, f, st) if scan_cache.enabled() else None
        sums = BatchSums()
        parts: list[pa.Table] = []
        offset = lines_read = 0
        if cached is not None:
            sums.add(cached.sums)
            offset = cached.end
            lines_read = cached.sums.records + cached.sums.unparseable_lines
            parts.append(cached.table)
        f.seek(offset)
        blocks = _blocks(f, offset)
        # Two blocks in hand: while pyarrow parses one (it releases the GIL), the byte checks of
        # the next run (numpy releases it too). 1M records, 2 cores: 4.4-5.0 s instead of 5.1-6.4 s.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="evalledger-scan") as pool:
            pending: deque[Future[tuple[pa.Table, BatchSums, int]]] = deque()
            for data, start in blocks:
                pending.append(pool.submit(_parse_block, data, start))
                if len(pending) >= 2:
                    lines_read += _take(pending.popleft().result(), parts, sums)
            while pending:
                lines_read += _take(pending.popleft().result(), parts, sums)
        offset, carry = blocks.end, blocks.carry
        # A last line without its newline (only ever at EOF) is a write in progress or torn: not read.
        partial = len(carry)
        table = pa.concat_tables(parts) if parts else SCHEMA.empty_table()
        if scan_cache.should_save(path, st, cached, offset):
            scan_cache.save(path, f, st, scan_cache.CachedFile(table=table, sums=sums, end=offset))
    return table, sums, lines_read, partial, cached.end if cached is not None else 0


class _blocks:
    """Iterate over ``f`` from byte ``start`` in ~CHUNK_BYTES blocks of complete lines: (bytes,
    offset of the first). Afterwards ``end`` is where the complete lines end and ``carry`` the
    bytes of an unfinished last line."""

    def __init__(self, f: IO[bytes], start: int) -> None:
        self.f, self.end, self.carry = f, start, b""

    def __iter__(self) -> "Iterator[tuple[bytes, int]]":
        while True:
            data = self.f.read(CHUNK_BYTES)
            if not data:
                return
            if self.carry:
                data = self.carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no newline yet: a very long line, read on
                self.carry = data
                continue
            self.carry = data[cut:]
            start, self.end = self.end, self.end + cut
            yield (data[:cut] if self.carry else data), start


def _take(parsed: "tuple[pa.Table, BatchSums, int]", parts: "list[pa.Table]", sums: "BatchSums") -> int:
    """Add a parsed block to a file's rows and sums; its line count."""
    table, block_sums, lines = parsed
    parts.append(table)
    sums.add(block_sums)
    return lines


def _parse_block(data: bytes, start: int) -> "tuple[pa.Table, BatchSums, int]":
    """Complete lines (the first at byte ``start``): their rows, sums and line count.

    pyarrow's reader when it reads them exactly as parse_batch would (:mod:`.scan_arrow`), else
    parse_batch itself.
    """
    import pyarrow as pa  # slow to import: only when a file is parsed

    from evalledger.readers.scan_batch import parse_batch  # imports pyarrow: only when a file is parsed

    if arrow_parser_enabled():
        from evalledger.readers.scan_arrow import parse_block  # imports pyarrow: only when a file is parsed

        fast = parse_block(data, start)
        if fast is not None:
            return fast[0], fast[1], fast[1].records
    lines = io.BytesIO(data).readlines()  # split at b"\n" only, newlines kept, as a file reads them
    offsets = list(accumulate(map(len, lines), initial=start))
    batch, sums = parse_batch(lines, offsets[:-1])
    return pa.Table.from_batches([batch]), sums, len(lines)


def _latest(table: "pa.Table") -> "pa.Array | None":
    """Row indices of each unit's (sample, epoch) latest ok record, else its latest record; None if
    all are kept."""
    import pyarrow as pa  # slow to import: only when a file is parsed
    import pyarrow.compute as pc  # slow to import: only when a file is parsed

    ids, epochs = table["sample_id"], table[EPOCH_COLUMN]
    if (pc.max(epochs).as_py() or 1) == 1:  # no repeats: the sample id alone is the unit
        keys, units = ["sid"], pc.count_distinct(ids).as_py()
    else:
        keys = ["sid", "epoch"]
        units = len(table.select(["sample_id", EPOCH_COLUMN]).group_by(["sample_id", EPOCH_COLUMN],
                                                                        use_threads=False).aggregate([]))
    if units == len(table):
        return None  # no unit has two records: the common case, nothing to copy
    import numpy as np  # slow to import: only when a run is read

    index = pa.array(np.arange(len(table), dtype=np.int64))
    ok = pc.fill_null(pc.equal(table["status"], "ok"), False)
    rows = pa.table({"sid": ids, "epoch": epochs, "i": index,
                     "ok_i": pc.if_else(ok, index, pa.scalar(None, pa.int64()))})
    grouped = rows.group_by(keys, use_threads=False).aggregate([("i", "max"), ("ok_i", "max")])
    # An ok record is never replaced by a later error. Sorted: ledger order.
    picked = pc.coalesce(grouped["ok_i_max"], grouped["i_max"])
    return pc.take(picked, pc.sort_indices(picked))


def fetch_records(scan: RunScan, rows: list[int]) -> list[dict[str, Any]]:
    """The full records (prompt, response, everything) behind some rows of a scan, by seeking.

    Used by the report's sample browser so that the scan need not keep a million prompts in memory.
    """
    import pyarrow as pa  # slow to import: only when a file is parsed

    out: list[dict[str, Any]] = []
    handles: dict[int, Any] = {}
    where = scan.view(["file", "offset"], pa.array(rows, type=pa.int64())) if rows else None
    files = where["file"].to_pylist() if where is not None else []
    offsets = where["offset"].to_pylist() if where is not None else []
    try:
        for fi, pos in zip(files, offsets):
            f = handles.get(fi)
            if f is None:
                f = handles[fi] = open(scan.files[fi], "rb")
            f.seek(pos)
            out.append(parse_record_line(f.readline()) or {})  # {}: the file was replaced since the scan
    finally:
        for f in handles.values():
            f.close()
    return out


__all__ = ["scan_run", "fetch_records", "RunScan", "FileSummary"]
