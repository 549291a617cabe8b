"""Parse a dataset file's bytes (JSON lines, JSON, CSV, Parquet; gzip) into numbered rows.

Every problem is a :class:`~evalledger.errors.DatasetError` naming the file and the line or record.

We parse with the standard library (and pyarrow for Parquet) instead of pandas on purpose.
``pandas.read_json`` turns ``"007"`` into ``7`` and parses date-like columns. ``read_csv`` does the
same type guessing, reads ``"NA"``/``"None"`` as missing, and loses line numbers. Parquet read
through pandas turns an integer column that has nulls into floats. Any of these would change the
values a task sees, and the content-hash ids with them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalledger.datasets.files import SUPPORTED_EXTENSIONS, dataset_format
from evalledger.datasets.values import (
    _MAX_LISTED,
    _describe_json_type,
    _field_too_long,
    _jsonable_fields,
    _text_size,
    max_field_chars,
)
from evalledger.errors import DatasetError

try:  # ~5x faster than json on large JSON-lines datasets; json stays the reference (see parse_jsonl_rows)
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _orjson_loads = None
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


@dataclass(slots=True)
class Row:
    """A parsed row before validation: its 1-based number (line or record) and its fields.

    ``small``: its source text is shorter than the field size limit, so no field can exceed it.
    ``start``: for JSON lines, the byte offset of its line in the parsed bytes (-1 otherwise); the
    line ends at the next ``\n`` (see :mod:`evalledger.datasets.index`, which reads pending rows back by it).
    """

    number: int
    fields: dict[str, Any]
    small: bool = False
    start: int = -1


@dataclass
class _Parsed:
    rows: list[Row]
    row_label: str  # "line" or "record"


def parse_rows(path: Path, raw: bytes) -> _Parsed:
    fmt = dataset_format(path)
    if fmt == ".parquet":
        return _parse_parquet(path, raw)
    if fmt is not None and fmt.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"cannot decompress {path}: {exc}") from exc
        fmt = fmt[: -len(".gz")]
    if fmt == ".jsonl":
        return parse_jsonl_rows(path, raw)
    if fmt == ".json":
        return _parse_json(path, raw)
    if fmt == ".csv":
        return _parse_csv(path, raw)
    raise DatasetError(  # check_dataset_path already refused these
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


def parse_jsonl_rows(path: Path, raw: bytes) -> _Parsed:
    rows: list[Row] = []
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
                # A field cannot hold more characters than its line has bytes: short lines need
                # no size check (check_field_sizes).
                rows.append(Row(number, value, len(line) <= size_limit, start))
                start += len(line) + 1
                continue
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(_not_utf8(path, number, raw, start + exc.start)) from exc
        line_start = start
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
        rows.append(Row(number, _jsonable_fields(value), start=line_start))
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
            return parse_jsonl_rows(path, raw)
        raise DatasetError(
            f"{path} line {exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
        ) from exc
    if isinstance(value, dict):
        # A single object on one line is a one-row JSON-lines file.
        if len(text.strip().splitlines()) == 1:
            return parse_jsonl_rows(path, raw)
        raise DatasetError(
            f"{path}: expected a JSON array of objects (or one object per line), got an object "
            f"with keys {', '.join(list(map(str, value))[:_MAX_LISTED])}"
        )
    if not isinstance(value, list):
        raise DatasetError(
            f"{path}: expected a JSON array of objects, got {_describe_json_type(value)}"
        )
    rows: list[Row] = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DatasetError(
                f"{path} record {number}: expected a JSON object, got {_describe_json_type(item)}"
            )
        rows.append(Row(number, _jsonable_fields(item)))
    return _Parsed(rows, "record")


def _parse_csv(path: Path, raw: bytes) -> _Parsed:
    # CSV has no types: every value is the exact string in the file ("" for an empty cell).
    text = _decode(path, raw)
    # The csv module's own limit (128 KiB by default, process-wide) would fail long fields with
    # a message naming neither row nor column. Lift it while we parse and check field sizes
    # ourselves (check_field_sizes); the whole file is in memory already, so this costs nothing.
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
    rows: list[Row] = []
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
            rows.append(Row(first_line, dict(zip(header, record))))
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
        import pyarrow as pa  # slow to import: only when a file is parsed
        import pyarrow.parquet as pq  # slow to import: only for a Parquet dataset
    except ImportError as exc:  # pragma: no cover - pyarrow is installed in dev
        raise DatasetError(
            f"reading {path} needs pyarrow: pip install 'evalledger[parquet]'"
        ) from exc
    try:
        table = pq.read_table(pa.BufferReader(raw))
        records = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path} as Parquet: {exc}") from exc
    rows = [Row(n, _jsonable_fields(rec)) for n, rec in enumerate(records, start=1)]
    return _Parsed(rows, "record")


def check_field_sizes(path: Path, rows: Sequence[Row], label: str) -> None:
    limit = max_field_chars()
    for row in rows:
        if row.small:
            continue
        for name, value in row.fields.items():
            size = max(len(name), _text_size(value))
            if size > limit:
                raise _field_too_long(path, f"{label} {row.number}", name, size, limit)


def columns_of(rows: Iterable[Row]) -> list[str]:
    """Every key in any row, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row.fields:
            seen.setdefault(key, None)
    return list(seen)
