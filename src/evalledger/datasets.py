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

We parse with the standard library (and pyarrow for Parquet) instead of pandas on purpose.
``pandas.read_json`` turns ``"007"`` into ``7`` and parses date-like columns. ``read_csv`` does the
same type guessing, reads ``"NA"``/``"None"`` as missing, and loses line numbers. Parquet read
through pandas turns an integer column that has nulls into floats. Any of these would change the
values a task sees, and the content-hash ids with them.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import decimal
import gzip
import hashlib
import io
import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DatasetError, UsageError
from .samples import Sample

try:  # ~5x faster than json on large JSON-lines datasets; json stays the reference (see _parse_jsonl)
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _orjson_loads = None
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})

__all__ = [
    "BUILTIN_DATASETS",
    "SUPPORTED_EXTENSIONS",
    "BuiltinDataset",
    "Dataset",
    "ResolvedDataset",
    "content_hash_id",
    "data_dir",
    "dataset_stem",
    "filter_shard",
    "load_dataset",
    "parse_shard",
    "resolve_dataset",
    "shard_of",
]

DATA_DIR_ENV = "EVALLEDGER_DATA_DIR"
"""Environment variable that overrides the directory holding the built-in data files."""

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".jsonl",
    ".jsonl.gz",
    ".json",
    ".json.gz",
    ".csv",
    ".csv.gz",
    ".parquet",
)
"""File name endings :func:`load_dataset` can read (matched case-insensitively)."""

# Suffixes stripped from a file name to get the dataset stem used in run IDs.
_STEM_SUFFIXES = (".gz", ".jsonl", ".json", ".csv", ".parquet")

# How many rows or ids an error message lists before "and N more".
_MAX_LISTED = 10

MAX_FIELD_CHARS_ENV = "EVALLEDGER_MAX_FIELD_CHARS"
"""Environment variable that overrides :data:`DEFAULT_MAX_FIELD_CHARS`."""

DEFAULT_MAX_FIELD_CHARS = 16 * 1024 * 1024
"""The longest text a single field may hold (characters), unless ``$EVALLEDGER_MAX_FIELD_CHARS`` says otherwise.

16 Mi characters is several times the largest context window of any current model (about 2M
tokens, roughly 8 MB of text), so a longer field cannot be sent to a model anyway. In a CSV the
usual cause is an unbalanced quote that makes one field swallow the rest of the file. Refusing it
up front, naming the row and the column, beats a provider error on every sample, or the csv
module's own "field larger than field limit" message, which names neither.
"""


# --------------------------------------------------------------------------------------------
# Built-in datasets


def data_dir() -> Path:
    """The directory that holds the built-in data files.

    This is ``$EVALLEDGER_DATA_DIR`` if set. Otherwise it is the repository's ``data/``
    directory, because the package is installed editable from the repository.
    """
    override = os.environ.get(DATA_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "data"


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset shipped in ``data/`` (see ``data/SOURCES.md`` for provenance and licenses)."""

    name: str
    filename: str
    default_task: str
    id_column: str | None = None
    description: str = ""

    @property
    def path(self) -> Path:
        """Where the data file is expected (it may not exist)."""
        return data_dir() / self.filename


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    ds.name: ds
    for ds in (
        BuiltinDataset(
            name="gsm8k",
            filename="gsm8k_test.jsonl",
            default_task="qa",
            description="GSM8K test split, 1319 grade-school math word problems",
        ),
        BuiltinDataset(
            name="mmlu-elementary-math",
            filename="mmlu_elementary_mathematics_test.jsonl",
            default_task="mcq",
            description="MMLU elementary_mathematics test split, 378 four-choice questions",
        ),
        BuiltinDataset(
            name="humaneval",
            filename="HumanEval.jsonl.gz",
            default_task="humaneval",
            id_column="task_id",
            description="HumanEval, 164 Python function-completion problems",
        ),
    )
}
"""Built-in datasets by name. The name is what ``--dataset`` accepts and what run IDs use."""


# --------------------------------------------------------------------------------------------
# Resolving a spec to a file


@dataclass(frozen=True)
class ResolvedDataset:
    """A dataset spec resolved to a file.

    ``name`` is the stem used in the run ID: the built-in name, or else the file name without its
    format suffixes. ``sha256`` is the hash of the file's bytes. ``default_task`` and
    ``default_id_column`` are set only for built-in datasets.
    """

    name: str
    path: Path
    sha256: str
    default_task: str | None = None
    default_id_column: str | None = None


def dataset_stem(path: str | os.PathLike[str]) -> str:
    """The file name without the ``.jsonl``/``.json``/``.csv``/``.parquet``/``.gz`` suffixes.

    ``HumanEval.jsonl.gz`` becomes ``HumanEval`` and ``my.data.csv`` becomes ``my.data``.
    """
    name = Path(path).name
    stem = name
    while True:
        lowered = stem.lower()
        for suffix in _STEM_SUFFIXES:
            if lowered.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            return stem or name


def _format_of(path: Path) -> str | None:
    """The supported extension ``path`` ends with (longest match), or None."""
    lowered = path.name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if lowered.endswith(ext) and len(lowered) > len(ext):
            return ext
    return None


def _sha256_of_file(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from exc


def _builtin_names() -> str:
    return ", ".join(sorted(BUILTIN_DATASETS))


def _resolve_path(path: Path, *, spec: str | None = None) -> Path:
    """Check that ``path`` is an existing file in a supported format; return it absolute."""
    shown = spec if spec is not None else str(path)
    try:
        absolute = path.expanduser().resolve()
    except (RuntimeError, OSError) as exc:
        # Python 3.11 raises RuntimeError("Symlink loop from ...") for a loop, later versions
        # OSError(ELOOP); both would otherwise escape as a traceback.
        raise DatasetError(f"dataset path {shown}: cannot resolve it ({exc}); is it a symlink loop?") from None
    if not absolute.exists():
        message = f"dataset not found: {shown}"
        if str(absolute) != shown:
            message += f" (looked for {absolute})"
        looks_like_name = (
            spec is not None and "/" not in spec and os.sep not in spec and not Path(spec).suffix
        )
        if looks_like_name:
            message += f"; built-in datasets are: {_builtin_names()}"
        raise DatasetError(message)
    if absolute.is_dir():
        raise DatasetError(f"dataset path is a directory, not a file: {absolute}")
    if not absolute.is_file():
        # A FIFO or a device would block or never end when read.
        raise DatasetError(f"dataset path is not a regular file: {absolute}")
    if _format_of(absolute) is None:
        raise DatasetError(
            f"unsupported dataset format: {absolute.name} ({absolute}); "
            f"supported extensions are {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return absolute


def resolve_dataset(spec: str | os.PathLike[str]) -> ResolvedDataset:
    """Resolve a built-in dataset name or a file path, and hash the file.

    A string that names a built-in dataset wins over a file with the same relative name.
    Raises :class:`DatasetError` if the file is missing, is a directory, or has an unsupported
    extension. For a missing file, a spec that looks like a name rather than a path also gets
    the list of built-in datasets.
    """
    if isinstance(spec, str) and spec in BUILTIN_DATASETS:
        builtin = BUILTIN_DATASETS[spec]
        path = builtin.path
        if not path.is_file():
            where = (
                f"${DATA_DIR_ENV}={os.environ[DATA_DIR_ENV]}"
                if os.environ.get(DATA_DIR_ENV, "").strip()
                else "the repository's data/ directory"
            )
            raise DatasetError(
                f"built-in dataset {spec!r}: data file not found: {path} (looked in {where}; "
                f"set {DATA_DIR_ENV} to the directory that holds {builtin.filename})"
            )
        return ResolvedDataset(
            name=builtin.name,
            path=path,
            sha256=_sha256_of_file(path),
            default_task=builtin.default_task,
            default_id_column=builtin.id_column,
        )
    text = os.fspath(spec)
    if not text.strip():
        raise DatasetError(f"empty dataset spec; give a file path or one of: {_builtin_names()}")
    path = _resolve_path(Path(text), spec=text if isinstance(spec, str) else None)
    return ResolvedDataset(name=dataset_stem(path), path=path, sha256=_sha256_of_file(path))


# --------------------------------------------------------------------------------------------
# Loaded datasets


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
    samples: list[Sample]
    total_rows: int
    id_source: str
    row_label: str = "line"
    columns: tuple[str, ...] = field(default=())
    all_ids: frozenset[str] = field(default=frozenset(), repr=False)
    """Every sample id in the file, also those cut by ``limit``.

    The ledger uses it to tell results for rows beyond ``--limit`` (still part of this dataset)
    from results for ids the dataset does not have at all.
    """

    def location(self, sample: Sample) -> str:
        """Where ``sample`` is in the file, for messages (``"/data/x.csv line 7"``)."""
        return f"{self.path} {self.row_label} {sample.row}"


@dataclass(slots=True)
class _Row:
    """A parsed row before validation: its 1-based number (line or record) and its fields.

    ``small``: its source text is shorter than the field size limit, so no field can exceed it.
    """

    number: int
    fields: dict[str, Any]
    small: bool = False


@dataclass
class _Parsed:
    rows: list[_Row]
    row_label: str  # "line" or "record"


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
    path = _resolve_path(resolved.path)

    # Hash the same bytes we parse, so the sha256 recorded for the run describes exactly the
    # content the samples came from, even if the file is replaced in between.
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from exc
    sha256 = hashlib.sha256(raw).hexdigest()
    if sha256 != resolved.sha256:
        raise DatasetError(
            f"dataset {path} changed while it was being loaded "
            f"(sha256 {resolved.sha256[:12]}… when resolved, {sha256[:12]}… now); run again"
        )

    parsed = _parse(path, raw)
    rows = parsed.rows
    label = parsed.row_label
    if not rows:
        raise DatasetError(f"dataset {path} is empty: it has no rows")

    _check_field_sizes(path, rows, label)
    columns = _columns(rows)
    id_col = _choose_id_column(path, columns, id_column, resolved.default_id_column)
    ids = _sample_ids(path, rows, label, id_col)
    _check_required(path, rows, label, columns, tuple(required_fields))

    samples = [Sample(id=sid, row=row.number, fields=row.fields) for sid, row in zip(ids, rows)]
    if limit is not None:
        samples = samples[:limit]
    return Dataset(
        name=resolved.name,
        path=path,
        sha256=sha256,
        samples=samples,
        total_rows=len(rows),
        id_source=f"column:{id_col}" if id_col is not None else "content-hash",
        row_label=label,
        columns=tuple(columns),
        all_ids=frozenset(ids),
    )


# --------------------------------------------------------------------------------------------
# Parsing


def _parse(path: Path, raw: bytes) -> _Parsed:
    fmt = _format_of(path)
    if fmt == ".parquet":
        return _parse_parquet(path, raw)
    if fmt is not None and fmt.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"cannot decompress {path}: {exc}") from exc
        fmt = fmt[: -len(".gz")]
    if fmt == ".jsonl":
        return _parse_jsonl(path, raw)
    if fmt == ".json":
        return _parse_json(path, raw)
    if fmt == ".csv":
        return _parse_csv(path, raw)
    raise DatasetError(  # _resolve_path already refused these
        f"unsupported dataset format: {path}; supported extensions are "
        f"{', '.join(SUPPORTED_EXTENSIONS)}"
    )


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(_not_utf8(path, line, raw, exc.start)) from exc


def _not_utf8(path: Path, line: int, raw: bytes, offset: int) -> str:
    """The message for a byte that is not UTF-8: line, byte offset in the file, and the byte."""
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    if path.name.lower().endswith(".gz"):
        offset_note = " of the decompressed data"
    else:
        offset_note = ""
    return (
        f"{path} line {line}: not valid UTF-8 (byte 0x{raw[offset]:02x} at byte offset {offset}{offset_note}, "
        f"column {column}); save the file as UTF-8 (it may be Latin-1 or Windows-1252)"
        if raw[offset] >= 0x80
        else f"{path} line {line}: not valid UTF-8 (byte 0x{raw[offset]:02x} at byte offset {offset}{offset_note}); "
        "save the file as UTF-8"
    )


def _describe_json_type(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _parse_jsonl(path: Path, raw: bytes) -> _Parsed:
    rows: list[_Row] = []
    start = 0  # byte offset of the current line, for encoding errors
    size_limit = max_field_chars()
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if _orjson_loads is not None:
            # Fast path: orjson refuses what json alone reads (NaN, lone surrogates, a BOM,
            # invalid UTF-8) and otherwise gives the same values, all plain JSON types already,
            # so no _jsonable copy. Anything else takes the path below, which words the errors.
            try:
                value = _orjson_loads(line)
            except ValueError:
                value = None
            # Only rows of plain scalars: orjson reads an integer beyond 64 bits as a float
            # (json keeps it exact), so a float (or a container that may hide one) takes the
            # json path.
            if type(value) is dict and all(map(_PLAIN_TYPES.__contains__, map(type, value.values()))):
                start += len(line) + 1
                # A field cannot hold more characters than its line has bytes: short lines need
                # no size check (_check_field_sizes).
                rows.append(_Row(number, value, len(line) <= size_limit))
                continue
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(_not_utf8(path, number, raw, start + exc.start)) from exc
        start += len(line) + 1
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path} line {number}: invalid JSON: {exc.msg} (column {exc.colno})"
            ) from exc
        if not isinstance(value, dict):
            raise DatasetError(
                f"{path} line {number}: expected a JSON object, got {_describe_json_type(value)}"
            )
        rows.append(_Row(number, _jsonable_fields(value)))
    return _Parsed(rows, "line")


def _parse_json(path: Path, raw: bytes) -> _Parsed:
    text = _decode(path, raw)
    if not text.strip():
        return _Parsed([], "record")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # More than one top-level value: JSON lines in a .json file.
            return _parse_jsonl(path, raw)
        raise DatasetError(
            f"{path} line {exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
        ) from exc
    if isinstance(value, dict):
        # A single object on one line is a one-row JSON-lines file.
        if len(text.strip().splitlines()) == 1:
            return _parse_jsonl(path, raw)
        raise DatasetError(
            f"{path}: expected a JSON array of objects (or one object per line), got an object "
            f"with keys {', '.join(list(map(str, value))[:_MAX_LISTED])}"
        )
    if not isinstance(value, list):
        raise DatasetError(
            f"{path}: expected a JSON array of objects, got {_describe_json_type(value)}"
        )
    rows: list[_Row] = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DatasetError(
                f"{path} record {number}: expected a JSON object, got {_describe_json_type(item)}"
            )
        rows.append(_Row(number, _jsonable_fields(item)))
    return _Parsed(rows, "record")


def _parse_csv(path: Path, raw: bytes) -> _Parsed:
    # CSV has no types: every value is the exact string in the file ("" for an empty cell).
    text = _decode(path, raw)
    # The csv module's own limit (128 KiB by default, process-wide) would fail long fields with
    # a message naming neither row nor column. Lift it while we parse and check field sizes
    # ourselves (_check_field_sizes); the whole file is in memory already, so this costs nothing.
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        return _parse_csv_text(path, text)
    finally:
        csv.field_size_limit(previous_limit)


def _parse_csv_text(path: Path, text: str) -> _Parsed:
    limit = max_field_chars()
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    rows: list[_Row] = []
    last_line = 0
    try:
        for record in reader:
            first_line = last_line + 1  # a quoted field may span several physical lines
            last_line = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            for i, value in enumerate(record):
                # Before the row-length check: an unbalanced quote swallows the rest of the file
                # into one field, and the row then looks short; the size is the real story.
                if len(value) > limit:
                    name = header[i] if header is not None and i < len(header) else f"column {i + 1}"
                    raise _field_too_long(path, f"line {first_line}", name, len(value), limit)
            if header is None:
                header = _csv_header(path, record, first_line)
                header_line = first_line
                continue
            if len(record) != len(header):
                # A short row is refused like a long one: padding it with empty cells would
                # hide the usual cause, a line broken in two by an unquoted newline.
                raise DatasetError(
                    f"{path} line {first_line}: {len(record)} value{'s' if len(record) != 1 else ''}, "
                    f"but the header (line {header_line}) has {len(header)} columns"
                    + ("" if len(record) > len(header) else f"; missing {', '.join(map(repr, header[len(record):][:_MAX_LISTED]))}")
                )
            rows.append(_Row(first_line, dict(zip(header, record))))
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.line_num}: invalid CSV: {exc}") from exc
    return _Parsed(rows, "line")


def _csv_header(path: Path, record: list[str], line: int) -> list[str]:
    # Unnamed columns get pandas' names (a DataFrame saved with its index has one), so the
    # columns match what the researcher sees in pandas.
    header = [name if name.strip() else f"Unnamed: {i}" for i, name in enumerate(record)]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DatasetError(
            f"{path} line {line}: duplicate column names in the header: {', '.join(duplicates)}"
        )
    return header


def _parse_parquet(path: Path, raw: bytes) -> _Parsed:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is installed in dev
        raise DatasetError(
            f"reading {path} needs pyarrow: pip install 'evalledger[parquet]'"
        ) from exc
    try:
        table = pq.read_table(pa.BufferReader(raw))
        records = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path} as Parquet: {exc}") from exc
    rows = [_Row(n, _jsonable_fields(rec)) for n, rec in enumerate(records, start=1)]
    return _Parsed(rows, "record")


# --------------------------------------------------------------------------------------------
# Values


def _jsonable_fields(record: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(key): _jsonable(value) for key, value in record.items()}


def _jsonable(value: Any) -> Any:
    """Convert a value to plain JSON-compatible Python (so ``json.dumps`` always works).

    numpy scalars and arrays become Python numbers and lists. NaN and NaT become None. Dates and
    times become ISO 8601 strings, timedeltas seconds, Decimals numbers. Bytes become text if
    they are UTF-8, otherwise base64.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return _jsonable_fields(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return None if value != value else value.isoformat()  # NaT != NaT
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None if value.is_nan() else float(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(data).decode("ascii")
    # numpy scalars and arrays (without importing numpy): .tolist() gives Python values.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    if isinstance(value, (set, frozenset)):
        return [_jsonable(v) for v in sorted(value, key=repr)]
    return str(value)


def _is_missing(value: Any) -> bool:
    """Absent, null, NaN or an empty (or all-whitespace) string."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _all_present(fields: Mapping[str, Any], required: Sequence[str]) -> bool:
    """No required field is missing (see _is_missing), checked inline for the usual text values."""
    for name in required:
        value = fields.get(name)
        if type(value) is str:
            if not value or value.isspace():
                return False
        elif _is_missing(value):
            return False
    return True


def max_field_chars() -> int:
    """The field size limit in effect: ``$EVALLEDGER_MAX_FIELD_CHARS`` or :data:`DEFAULT_MAX_FIELD_CHARS`."""
    override = os.environ.get(MAX_FIELD_CHARS_ENV, "").strip()
    if not override:
        return DEFAULT_MAX_FIELD_CHARS
    try:
        value = int(override)
    except ValueError:
        raise UsageError(f"${MAX_FIELD_CHARS_ENV}={override!r}: must be a whole number of characters") from None
    if value < 1:
        raise UsageError(f"${MAX_FIELD_CHARS_ENV}={override!r}: must be at least 1")
    return value


def _text_size(value: Any) -> int:
    """The length of the longest string in ``value`` (nested lists and objects included)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return max((max(len(str(k)), _text_size(v)) for k, v in value.items()), default=0)
    if isinstance(value, list):
        return max((_text_size(v) for v in value), default=0)
    return 0


def _field_too_long(path: Path, where: str, name: str, size: int, limit: int) -> DatasetError:
    hint = (
        "; in a CSV this is usually an unbalanced quote that runs on to the end of the file"
        if path.name.lower().endswith((".csv", ".csv.gz"))
        else ""
    )
    return DatasetError(
        f"{path} {where}: field {name!r} holds {size:,} characters, more than the limit of {limit:,} "
        f"(no model's context is that large){hint}; set ${MAX_FIELD_CHARS_ENV} to raise the limit"
    )


def _check_field_sizes(path: Path, rows: Sequence[_Row], label: str) -> None:
    limit = max_field_chars()
    for row in rows:
        if row.small:
            continue
        for name, value in row.fields.items():
            size = max(len(name), _text_size(value))
            if size > limit:
                raise _field_too_long(path, f"{label} {row.number}", name, size, limit)


def _columns(rows: Iterable[_Row]) -> list[str]:
    """Every key in any row, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row.fields:
            seen.setdefault(key, None)
    return list(seen)


# --------------------------------------------------------------------------------------------
# Ids and validation


def content_hash_id(fields: Mapping[str, Any]) -> str:
    """The content-hash id of a row: the first 16 hex chars of the sha256 of its canonical JSON.

    Canonical JSON means ``sort_keys=True``, ``separators=(",", ":")`` and ``ensure_ascii=False``,
    encoded as UTF-8. The id depends only on the row's content, never on its position.
    """
    canonical = json.dumps(
        _jsonable_fields(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    # surrogatepass: JSON may legally contain lone surrogates ("\ud800"); hash them as well.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _listed(items: Sequence[str]) -> str:
    """The first items joined with commas, plus "and N more"."""
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f" and {len(items) - _MAX_LISTED} more"
    return shown


def _plural(label: str, numbers: Sequence[int]) -> str:
    """``"line 3"`` or ``"lines 3, 5"``."""
    return f"{label}{'s' if len(numbers) > 1 else ''} {_listed([str(n) for n in numbers])}"


def _choose_id_column(
    path: Path, columns: Sequence[str], id_column: str | None, default_id_column: str | None
) -> str | None:
    if id_column is not None:
        if id_column not in columns:
            raise DatasetError(
                f"id column {id_column!r} not found in {path}; "
                f"columns are: {', '.join(columns)}"
            )
        return id_column
    if default_id_column is not None:
        if default_id_column not in columns:
            raise DatasetError(
                f"id column {default_id_column!r} of this built-in dataset not found in {path}; "
                f"columns are: {', '.join(columns)}"
            )
        return default_id_column
    if "id" in columns:
        return "id"
    return None


def _id_from_value(value: Any) -> str | None:
    """The id a cell holds, or None if it is missing. Raises TypeError for non-scalar cells."""
    if _is_missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(_describe_json_type(value))
    if isinstance(value, float):
        if math.isinf(value):
            raise TypeError("an infinite number")
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _sample_ids(path: Path, rows: Sequence[_Row], label: str, id_col: str | None) -> list[str]:
    if id_col is None:
        ids = [content_hash_id(row.fields) for row in rows]
    else:
        ids = []
        missing: list[int] = []
        for row in rows:
            value = row.fields.get(id_col)
            if type(value) is str and value and not value.isspace():
                ids.append(value)  # the usual case, what _id_from_value gives, without the calls
                continue
            try:
                sid = _id_from_value(value)
            except TypeError as exc:
                raise DatasetError(
                    f"{path} {label} {row.number}: id column {id_col!r} holds {exc}; "
                    "ids must be strings or numbers"
                ) from None
            if sid is None:
                missing.append(row.number)
                sid = ""
            ids.append(sid)
        if missing:
            raise DatasetError(
                f"{path}: missing or empty id in column {id_col!r} at {_plural(label, missing)}"
            )

    if len(set(ids)) == len(ids):
        return ids  # the usual case; the per-id line lists below are only for the message
    where: dict[str, list[int]] = {}
    for sid, row in zip(ids, rows):
        where.setdefault(sid, []).append(row.number)
    duplicated = [(sid, numbers) for sid, numbers in where.items() if len(numbers) > 1]
    if duplicated:
        described = [f"{sid!r} ({_plural(label, numbers)})" for sid, numbers in duplicated]
        if id_col is None:
            raise DatasetError(
                f"{path}: rows with identical content get the same content-hash id: "
                f"{_listed(described)}; remove the duplicate rows or add an 'id' column"
            )
        message = (
            f"{path}: duplicate ids in column {id_col!r}: {_listed(described)}; "
            "every sample needs a unique id"
        )
        mixed = _mixed_type_example(rows, id_col, {sid for sid, _ in duplicated}, ids)
        if mixed:
            message += f" ({mixed})"
        raise DatasetError(message)
    return ids


def _mixed_type_example(rows: Sequence[_Row], id_col: str, duplicated: set[str], ids: Sequence[str]) -> str:
    """Explain a collision between a number and a string id (``1`` and ``"1"``), if there is one."""
    kinds: dict[str, dict[str, Any]] = {}
    for sid, row in zip(ids, rows):
        if sid in duplicated:
            value = row.fields.get(id_col)
            kinds.setdefault(sid, {}).setdefault(type(value).__name__, value)
    for sid, by_type in kinds.items():
        if len(by_type) > 1:
            shown = " and ".join(
                f"the {'string' if isinstance(v, str) else 'number'} {json.dumps(v)}" for v in by_type.values()
            )
            return f"{shown} are the same id {sid!r}: ids are compared as text"
    return ""


def _check_required(
    path: Path, rows: Sequence[_Row], label: str, columns: Sequence[str], required: Sequence[str]
) -> None:
    if not required:
        return
    absent = [name for name in required if name not in columns]
    if absent:
        raise DatasetError(
            f"{path}: required field{'s' if len(absent) > 1 else ''} "
            f"{', '.join(map(repr, absent))} not found in any row; "
            f"columns are: {', '.join(columns)}"
        )
    if all(_all_present(row.fields, required) for row in rows):
        return
    bad: list[str] = []
    fields_hit: dict[str, None] = {}
    for row in rows:
        missing = [name for name in required if _is_missing(row.fields.get(name))]
        if missing:
            for name in missing:
                fields_hit.setdefault(name, None)
            bad.append(f"{label} {row.number} ({', '.join(missing)})")
    if bad:
        raise DatasetError(
            f"{path}: {len(bad)} row{'s' if len(bad) > 1 else ''} missing required "
            f"field{'s' if len(fields_hit) > 1 else ''} {', '.join(map(repr, fields_hit))} "
            f"(absent, null or empty): {_listed(bad)}"
        )


# --------------------------------------------------------------------------------------------
# Sharding


def parse_shard(
    text: str | None, *, environ: Mapping[str, str] | None = None
) -> tuple[int, int] | None:
    """Parse ``--shard``: ``"K/N"`` (1-based, 1 <= K <= N), ``"none"``/``""``, or ``"auto"``.

    Returns ``(k, n)``, or None for no sharding. ``"auto"`` reads Slurm's
    ``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_MIN`` and ``SLURM_ARRAY_TASK_COUNT`` from
    ``environ`` (default ``os.environ``). Raises :class:`UsageError` naming ``--shard``.
    """
    value = (text or "").strip()
    if value.lower() in ("", "none"):
        return None
    if value.lower() == "auto":
        return _slurm_shard(os.environ if environ is None else environ)
    parts = value.split("/")
    if len(parts) != 2:
        raise UsageError(f"--shard {value}: expected K/N such as 1/4 (or 'auto' or 'none')")
    try:
        k, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise UsageError(
            f"--shard {value}: K and N must be whole numbers, as in 1/4"
        ) from None
    if n < 1:
        raise UsageError(f"--shard {value}: N must be at least 1 (got N={n})")
    if not 1 <= k <= n:
        raise UsageError(f"--shard {value}: K must be between 1 and N (got K={k}, N={n})")
    return k, n


def _slurm_shard(environ: Mapping[str, str]) -> tuple[int, int]:
    """Shard ``(k, n)`` of this Slurm array task: the task's position in the array, 1-based.

    ``--array=1-8``, ``--array=0-7`` and ``--array=0-7%4`` (at most 4 at once) all give N=8 and
    K = position + 1, so an array may start at 0 or 1 and be throttled. A stepped array
    (``--array=0-14:2``) counts by its step. An array with holes (``--array=1,3,8``) is refused:
    its positions are not the task ids, and a shard would silently never run.
    """
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
    unset = [name for name in names if not environ.get(name, "").strip()]
    if unset:
        in_job = bool(environ.get("SLURM_JOB_ID", "").strip())
        where = ("in a Slurm job that is not an array (submit with --array=1-N)" if in_job
                 else "not running in a Slurm job array")
        raise UsageError(
            f"--shard auto: {where} ({', '.join(unset)} not set); give --shard K/N, "
            "or let `evalledger slurm --shards N` write the job array for you"
        )
    optional = ("SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")
    present = [*names, *(name for name in optional if environ.get(name, "").strip())]
    try:
        values = {name: int(environ[name]) for name in present}
    except ValueError:
        shown = ", ".join(f"{name}={environ[name]!r}" for name in present)
        raise UsageError(f"--shard auto: Slurm array variables are not integers: {shown}") from None
    task_id = values["SLURM_ARRAY_TASK_ID"]
    task_min = values["SLURM_ARRAY_TASK_MIN"]
    count = values["SLURM_ARRAY_TASK_COUNT"]
    step = values.get("SLURM_ARRAY_TASK_STEP", 1)
    task_max = values.get("SLURM_ARRAY_TASK_MAX")
    shown = ", ".join(f"{name}={values[name]}" for name in present)
    if step < 1 or count < 1:
        raise UsageError(f"--shard auto: unusable Slurm array variables ({shown})")
    # Slurm sets MAX for every array; only an evenly spaced array has MIN + (COUNT-1)*STEP == MAX.
    # A list like --array=1,3,8 has COUNT=3, MIN=1, MAX=8, STEP=1: task 8 would be "shard 8/3".
    if task_max is not None and task_min + (count - 1) * step != task_max:
        raise UsageError(
            f"--shard auto: the Slurm array has holes ({shown}); use a contiguous array such as "
            f"--array=1-{count} (a throttle like --array=1-{count}%4 is fine)"
        )
    offset = task_id - task_min
    k = offset // step + 1
    if offset % step or not 1 <= k <= count:
        raise UsageError(
            f"--shard auto: task {task_id} is not in the array ({shown}); use a contiguous array such as "
            f"--array=1-{count}"
        )
    return k, count


def shard_of(sample_id: str, n: int) -> int:
    """The 1-based shard (of ``n``) that ``sample_id`` belongs to.

    The result depends only on the id: ``int(sha256(id)[:16], 16) % n + 1``.
    """
    if n < 1:
        raise UsageError(f"number of shards must be at least 1 (got {n})")
    digest = hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()
    return int(digest[:16], 16) % n + 1


def filter_shard(samples: Iterable[Sample], shard: tuple[int, int] | None) -> list[Sample]:
    """The samples in ``shard`` (``(k, n)``, 1-based), in their original order; all if None."""
    if shard is None:
        return list(samples)
    k, n = shard
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {k}/{n}: K must be between 1 and N (got K={k}, N={n})")
    return [s for s in samples if shard_of(s.id, n) == k]
