"""What a run keeps of its dataset once every row is validated: ids, row numbers, where rows are.

Parsing, validating and holding every row of a million-row dataset costs ~750 MB and most of a
resume's time, to send nothing. A run only needs the fields of the rows it will send. So, once the
whole file has been validated:

* :class:`RowRefs` keeps every row's id and number and, for JSON lines, the byte offset of its line;
* :class:`LazySamples` is a sequence of samples over some of those rows that reads a row back from
  the file only when it is iterated or indexed (JSON lines: by offset; other formats: one more
  parse of the file), after checking the file is the one that was validated, and checks the row
  again (same id, required fields, the task's ``validate_sample``);
* the *validated index* (``dataset-v1/index.bin`` in the run's cache directory, ``<run_dir>/.cache/``) stores the ``RowRefs`` of a
  file that passed every check, keyed by everything the checks depend on (the file's sha256, the
  task, the id column, the required fields, the field size limit, ``--limit``, the evalledger
  version). A resume that finds a matching index skips parsing and validating the file: it only
  hashes it (the run ID needs the hash anyway). Nothing in ``.cache`` is results: deleting it is
  always safe and costs one full validation on the next run.

Small datasets (under :data:`MIN_BYTES`) get no index: they parse in well under a second, and
their samples are held as parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter, not_
from pathlib import Path
from typing import Any, overload

from evalledger.datasets.files import read_dataset_file
from evalledger.datasets.ids import content_hash_id, id_from_value
from evalledger.datasets.parse import parse_jsonl_rows, parse_rows
from evalledger.datasets.sharding import filter_shard, shard_of
from evalledger.datasets.values import all_present
from evalledger.errors import DatasetError
from evalledger.fsio import cachefile
from evalledger.samples import Sample

INDEX_DIR = "dataset-v1"  # bump when the index's content or meaning changes: old ones are then ignored
INDEX_NAME = "index.bin"
FORMAT = 1
MIN_BYTES = 1 << 20
"""Datasets smaller than this are held as parsed and get no index (they parse in well under a second)."""
CHUNK = 1024  # rows read back at a time while iterating


@dataclass
class RowRefs:
    """Every row's id and 1-based number, and (JSON lines only) the byte offset of its line, in file order."""

    ids: list[str]
    rows: Sequence[int]
    starts: Sequence[int] | None = None


def file_signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must not change between validating a file and reading rows back from it."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class RowSource:
    """Reads rows of one validated dataset file back, on demand.

    ``st`` is the stat of the file when its bytes were read and hashed; a read-back refuses a file
    whose device, inode, size or mtime differ. ``id_column``: the column ids come from (None: the
    content hash). ``required`` and ``validate`` (the task's ``validate_sample``) are checked again
    on every row read back, so a row is never sent without passing them. ``attach`` (with
    ``--fewshot``) gives each sample read back its exemplars, so rows read on demand carry them
    like rows held in memory do.
    """

    def __init__(self, path: Path, sha256: str, st: os.stat_result, refs: RowRefs, row_label: str, *,
                 id_column: str | None, required: Sequence[str] = (),
                 validate: Callable[[Sample], str | None] | None = None,
                 attach: Callable[[Sample], Sample] | None = None) -> None:
        self.path = path
        self.sha256 = sha256
        self.signature = file_signature(st)
        self.refs = refs
        self.row_label = row_label
        self.id_column = id_column
        self.required = tuple(required)
        self.validate = validate
        self.attach = attach
        self._fields: list[dict[str, Any]] | None = None  # every row's fields, for formats read in one piece

    def samples_at(self, positions: Sequence[int]) -> list[Sample]:
        """The samples of the rows at ``positions`` (indexes into :attr:`refs`), in that order."""
        if not positions:
            return []
        fields = self._read_lines(positions) if self.refs.starts is not None else self._reparse(positions)
        out = []
        for p, f in zip(positions, fields):
            sample = Sample(id=self.refs.ids[p], row=self.refs.rows[p], fields=f)
            self._check(sample)
            out.append(sample if self.attach is None else self.attach(sample))
        return out

    def _changed(self, detail: str) -> DatasetError:
        return DatasetError(f"dataset {self.path} changed since it was validated ({detail}); run again")

    def _read_lines(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        starts = self.refs.starts
        assert starts is not None
        out = []
        try:
            with open(self.path, "rb") as f:
                if file_signature(os.fstat(f.fileno())) != self.signature:
                    raise self._changed("its size, modification time or inode differ")
                for p in positions:
                    f.seek(starts[p])
                    line = f.readline()
                    rows = parse_jsonl_rows(self.path, line[:-1] if line.endswith(b"\n") else line).rows
                    if len(rows) != 1:
                        raise self._changed(f"{self.row_label} {self.refs.rows[p]} is no longer a row")
                    out.append(rows[0].fields)
        except OSError as exc:
            raise DatasetError(f"cannot read dataset {self.path}: {exc.strerror or exc}") from exc
        return out

    def _reparse(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        if self._fields is None:
            raw, _ = read_dataset_file(self.path)
            if hashlib.sha256(raw).hexdigest() != self.sha256:
                raise self._changed("its sha256 differs")
            rows = parse_rows(self.path, raw).rows
            if len(rows) != len(self.refs.ids):
                raise self._changed("its number of rows differs")
            self._fields = [row.fields for row in rows]
        return [self._fields[p] for p in positions]

    def _check(self, sample: Sample) -> None:
        where = f"{self.path} {self.row_label} {sample.row}"
        try:
            sid = (content_hash_id(sample.fields) if self.id_column is None
                   else id_from_value(sample.fields.get(self.id_column)))
        except TypeError:
            sid = None
        if sid != sample.id:
            raise self._changed(f"{where} no longer has id {sample.id!r}")
        if self.required and not all_present(sample.fields, self.required):
            raise self._changed(f"{where} now lacks a required field")
        problem = self.validate(sample) if self.validate is not None else None
        if problem:
            raise DatasetError(f"{where} (id {sample.id}): {problem}")


class LazySamples(Sequence[Sample]):
    """Samples of some rows of a :class:`RowSource`, read back only when iterated or indexed.

    Iteration reads :data:`CHUNK` rows at a time, so holding this holds no row's fields; ``ids``
    gives the ids without reading anything.
    """

    def __init__(self, source: RowSource, positions: Sequence[int]) -> None:
        self.source = source
        self.positions = positions

    @property
    def ids(self) -> list[str]:
        """The samples' ids, in order (nothing is read)."""
        all_ids = self.source.refs.ids
        if isinstance(self.positions, range) and self.positions.step == 1:
            return all_ids[self.positions.start:self.positions.stop]
        if not self.positions:
            return []
        if len(self.positions) == 1:
            return [all_ids[self.positions[0]]]
        return list(itemgetter(*self.positions)(all_ids))

    def __len__(self) -> int:
        return len(self.positions)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> LazySamples: ...

    def __getitem__(self, index: int | slice) -> Sample | LazySamples:
        if isinstance(index, slice):
            return LazySamples(self.source, self.positions[index])
        return self.source.samples_at([self.positions[index]])[0]

    def __iter__(self) -> Iterator[Sample]:
        for k in range(0, len(self.positions), CHUNK):
            yield from self.source.samples_at(self.positions[k:k + CHUNK])

    def keep(self, ids_kept: Callable[[list[str]], Iterable[bool]]) -> LazySamples:
        """The samples for which ``ids_kept(ids)`` says True, one flag per id (nothing is read)."""
        return LazySamples(self.source, list(compress(self.positions, ids_kept(self.ids))))


def sample_ids(samples: Sequence[Sample]) -> list[str]:
    """The ids of ``samples`` in order, without reading any row back."""
    if isinstance(samples, LazySamples):
        return samples.ids
    return [s.id for s in samples]


def without_ids(samples: Sequence[Sample], excluded: Container[str]) -> Sequence[Sample]:
    """``samples`` whose id is not in ``excluded``, in order (nothing is read back)."""
    if isinstance(samples, LazySamples):
        return samples.keep(lambda ids: map(not_, map(excluded.__contains__, ids)))
    return [s for s in samples if s.id not in excluded]


def with_ids(samples: Sequence[Sample], wanted: Container[str]) -> Sequence[Sample]:
    """``samples`` whose id is in ``wanted``, in order (nothing is read back; fast for a small ``wanted``)."""
    if isinstance(samples, LazySamples):
        if not wanted:
            return LazySamples(samples.source, [])
        return samples.keep(lambda ids: map(wanted.__contains__, ids))
    return [s for s in samples if s.id in wanted]


def in_shard(samples: Sequence[Sample], shard: tuple[int, int] | None) -> Sequence[Sample]:
    """``samples`` of ``shard`` (``(k, n)``), in order; all of them if None (see :func:`~.sharding.filter_shard`)."""
    if shard is None or not isinstance(samples, LazySamples):
        return filter_shard(samples, shard) if shard is not None else samples
    filter_shard([], shard)  # the same check of (k, n)
    k, n = shard
    return samples.keep(lambda ids: [shard_of(sid, n) == k for sid in ids])


# --------------------------------------------------------------------------------------------
# The validated index, in the run's cache directory (the ledger names it; see RunPaths.cache)


def index_path(cache_dir: Path) -> Path:
    """Where the validated index lives in a run's cache directory."""
    return Path(cache_dir) / INDEX_DIR / INDEX_NAME


@dataclass
class ValidatedIndex:
    """A dataset file's :class:`RowRefs` and facts, from a load that passed every check."""

    refs: RowRefs
    total_rows: int
    id_source: str
    row_label: str
    columns: tuple[str, ...]


def load_index(cache_dir: Path, key: dict[str, Any]) -> ValidatedIndex | None:
    """The validated index for ``key`` in a run's cache directory, or None (missing, for other data,
    torn, unreadable)."""
    got = cachefile.read(index_path(cache_dir))
    if got is None:
        return None
    header, blobs = got
    try:
        if header.get("format") != FORMAT or header.get("key") != key or len(blobs) != 3:
            return None
        ids = cachefile.split_ids(blobs[0])
        rows = array("q")
        rows.frombytes(blobs[1])
        starts: array[int] | None = None
        if header["has_starts"]:
            starts = array("q")
            starts.frombytes(blobs[2])
        n = len(ids)
        if n != header["total_rows"] or len(rows) != n or (starts is not None and len(starts) != n):
            return None
        return ValidatedIndex(RowRefs(ids, rows, starts), n, str(header["id_source"]),  # type: ignore[arg-type]
                              str(header["row_label"]), tuple(map(str, header["columns"])))
    except Exception:  # noqa: BLE001 - an index that cannot be read is no index: the file is validated instead
        return None


def save_index(cache_dir: Path, key: dict[str, Any], index: ValidatedIndex) -> bool:
    """Write ``index`` for ``key``; False, leaving nothing behind, when it cannot (see :mod:`.cachefile`)."""
    ids = cachefile.join_ids(index.refs.ids)
    if ids is None:
        return False
    starts = index.refs.starts
    header = {"format": FORMAT, "key": key, "total_rows": index.total_rows, "id_source": index.id_source,
              "row_label": index.row_label, "columns": list(index.columns), "has_starts": starts is not None}
    blobs = [ids, array("q", index.refs.rows).tobytes(), array("q", starts or []).tobytes()]
    return cachefile.write(index_path(cache_dir), header, blobs, run_dir=Path(cache_dir).parent)


def index_key(**facts: Any) -> dict[str, Any]:
    """The facts a validation depends on, as JSON values (compared with the stored index's key)."""
    return json.loads(json.dumps(facts, sort_keys=True, default=str))
