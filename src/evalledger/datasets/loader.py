"""Load datasets (JSONL, JSON, CSV, Parquet), validate them, give samples stable ids, shard them.

A dataset is named by a *spec*: the name of a built-in dataset (see :data:`BUILTIN_DATASETS`) or a
path. :func:`resolve_dataset` turns a spec into an absolute path plus the sha256 of its bytes (part
of the run ID), and :func:`load_dataset` reads, validates and converts the rows to
:class:`~evalledger.samples.Sample` values. Every problem a user can cause is a
:class:`~evalledger.errors.DatasetError` that names the file and the line, record or ids at fault,
raised before any request is sent.

Sample ids never depend on a row's position: they come from an id column, or else from a hash of
the row's content. Reordering a file therefore never changes which results belong to which sample,
and shard membership (a hash of the id) stays stable too.

The part is split by job: :mod:`.files` (built-in datasets, resolving and hashing),
:mod:`.parse` (the file formats), :mod:`.values` (cell values, sizes), :mod:`.ids` (ids and
required fields), :mod:`.sharding` (shards) and :mod:`.index` (what a resume needs: the validated
ids, rows materialised on demand). This module loads a dataset; ``evalledger.datasets`` is the
part's public face.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evalledger.datasets.files import (
    BUILTIN_DATASETS,
    DATA_DIR_ENV,
    SUPPORTED_EXTENSIONS,
    BuiltinDataset,
    ResolvedDataset,
    check_dataset_path,
    data_dir,
    dataset_format,
    dataset_stem,
    read_dataset_file,
    resolve_dataset,
)
from evalledger.datasets.ids import assign_sample_ids, check_required, choose_id_column, content_hash_id
from evalledger.datasets.index import RowRefs
from evalledger.datasets.parse import check_field_sizes, columns_of, parse_rows
from evalledger.datasets.sharding import filter_shard, parse_shard, shard_of
from evalledger.datasets.values import DEFAULT_MAX_FIELD_CHARS, MAX_FIELD_CHARS_ENV, max_field_chars
from evalledger.errors import DatasetError, UsageError
from evalledger.fsio import paused_gc
from evalledger.samples import Sample

__all__ = [
    "BUILTIN_DATASETS",
    "SUPPORTED_EXTENSIONS",
    "BuiltinDataset",
    "DATA_DIR_ENV",
    "DEFAULT_MAX_FIELD_CHARS",
    "MAX_FIELD_CHARS_ENV",
    "Dataset",
    "ResolvedDataset",
    "check_samples",
    "content_hash_id",
    "data_dir",
    "dataset_stem",
    "filter_shard",
    "load_dataset",
    "max_field_chars",
    "parse_shard",
    "resolve_dataset",
    "shard_of",
]

@dataclass(frozen=True)
class Dataset:
    """A loaded, validated dataset.

    ``samples`` are in file order (cut to ``limit`` if one was given). ``total_rows`` counts every
    row in the file. ``id_source`` is ``"column:<name>"`` or ``"content-hash"``. ``sha256`` is the
    hash of the exact bytes that were parsed. ``row_label`` is ``"line"`` or ``"record"``: it says
    what ``Sample.row`` counts (see :meth:`location`).
    """

    name: str
    path: Path
    sha256: str
    samples: Sequence[Sample]
    total_rows: int
    id_source: str
    row_label: str = "line"
    columns: tuple[str, ...] = field(default=())
    all_ids: frozenset[str] = field(default=frozenset(), repr=False)
    """Every sample id in the file, also those cut by ``limit``.

    The ledger uses it to tell results for rows beyond ``--limit`` (still part of this dataset)
    from results for ids the dataset does not have at all.
    """
    refs: RowRefs | None = field(default=None, repr=False, compare=False)
    """Every row's id and number (and, for JSON lines, the byte offset of its line), in file order.

    ``samples`` is a plain list from :func:`load_dataset`; ``prepare_run`` may replace it with a
    :class:`~evalledger.datasets.index.LazySamples` that reads rows back from the file by these.
    """

    def location(self, sample: Sample) -> str:
        """Where ``sample`` is in the file, for messages (``"/data/x.csv line 7"``)."""
        return f"{self.path} {self.row_label} {sample.row}"


def load_dataset(
    source: ResolvedDataset | str | os.PathLike[str],
    *,
    id_column: str | None = None,
    required_fields: Sequence[str] = (),
    limit: int | None = None,
) -> Dataset:
    """Read, validate and convert a dataset to samples.

    ``source`` can be a :class:`ResolvedDataset`, a spec string (a built-in name or a path), or a
    path-like object (always treated as a path). The whole file is validated even when ``limit``
    is given, so every problem shows up before any money is spent: parse errors, no rows,
    ``required_fields`` missing (absent, null, NaN or ``""``), and missing, empty or duplicate ids.

    Sample ids come from ``id_column`` if given. Otherwise they come from the built-in dataset's
    id column, or a column named ``id`` if there is one. Otherwise each id is
    :func:`content_hash_id` of the row, never its position. ``limit`` keeps the first N samples in
    file order and must be positive. Field values are plain JSON-compatible Python values.

    Ids are text. An id column may mix numbers and strings (``1`` and ``"a"``): numbers become
    their decimal text (``1`` and ``1.0`` give ``"1"``). Values that become the same text, such as
    the number ``1`` and the string ``"1"``, are duplicate ids and refused, because the ledger,
    shards and CSV exports could never tell them apart. No field may be longer than
    :data:`DEFAULT_MAX_FIELD_CHARS` characters (``$EVALLEDGER_MAX_FIELD_CHARS`` overrides it).

    Raises :class:`DatasetError` for bad data and :class:`UsageError` for a bad ``limit``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise UsageError(f"--limit must be a positive integer (got {limit!r})")
    if isinstance(required_fields, str):
        required_fields = (required_fields,)

    if isinstance(source, ResolvedDataset):
        resolved = source
    elif isinstance(source, str):
        resolved = resolve_dataset(source)
    else:
        resolved = resolve_dataset(Path(source))
    path = check_dataset_path(resolved.path)

    # Hash the same bytes we parse, so the sha256 recorded for the run describes exactly the
    # content the samples came from, even if the file is replaced in between.
    raw, _ = read_dataset_file(path)
    sha256 = hashlib.sha256(raw).hexdigest()
    if sha256 != resolved.sha256:
        raise DatasetError(
            f"dataset {path} changed while it was being loaded "
            f"(sha256 {resolved.sha256[:12]}… when resolved, {sha256[:12]}… now); run again"
        )
    with paused_gc():  # a million small dicts, none in a cycle: see gcpause
        return load_dataset_bytes(resolved, raw, id_column=id_column, required_fields=required_fields, limit=limit)


def load_dataset_bytes(
    resolved: ResolvedDataset,
    raw: bytes,
    *,
    id_column: str | None = None,
    required_fields: Sequence[str] = (),
    limit: int | None = None,
) -> Dataset:
    """:func:`load_dataset` of ``raw``, the bytes of ``resolved.path`` whose sha256 is ``resolved.sha256``
    (the caller read and hashed them: the file is read and hashed once)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise UsageError(f"--limit must be a positive integer (got {limit!r})")
    if isinstance(required_fields, str):
        required_fields = (required_fields,)
    path = resolved.path
    parsed = parse_rows(path, raw)
    rows = parsed.rows
    label = parsed.row_label
    if not rows:
        raise DatasetError(f"dataset {path} is empty: it has no rows")

    check_field_sizes(path, rows, label)
    columns = columns_of(rows)
    id_col = choose_id_column(path, columns, id_column, resolved.default_id_column)
    ids = assign_sample_ids(path, rows, label, id_col)
    check_required(path, rows, label, columns, tuple(required_fields))

    samples = [Sample(id=sid, row=row.number, fields=row.fields) for sid, row in zip(ids, rows)]
    if limit is not None:
        samples = samples[:limit]
    jsonl = (dataset_format(path) == ".jsonl" and label == "line")
    return Dataset(
        name=resolved.name,
        path=path,
        sha256=resolved.sha256,
        samples=samples,
        total_rows=len(rows),
        id_source=f"column:{id_col}" if id_col is not None else "content-hash",
        row_label=label,
        columns=tuple(columns),
        all_ids=frozenset(ids),
        refs=RowRefs(ids, [row.number for row in rows], [row.start for row in rows] if jsonl else None),
    )


def check_samples(path: Path, samples: Iterable[Sample], check: Callable[[Sample], str | None], task_spec: str) -> None:
    """A task's own check (``validate_sample``, or ``validate_exemplar`` for exemplars) of every sample
    of ``path``: one :class:`DatasetError` listing the first ten bad rows, each with its number, id
    and problem."""
    problems = []
    for sample in samples:
        problem = check(sample)
        if problem:
            problems.append(f"row {sample.row} (id {sample.id}): {problem}")
    if problems:
        more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DatasetError(
            f"{path}: {len(problems)} row(s) cannot be used by task '{task_spec}':\n  "
            + "\n  ".join(problems[:10])
            + more
        )
