"""Validate a large JSON-lines dataset a column at a time, for runs that keep only its index.

A run of a large JSON-lines file keeps no row in memory: it keeps the file's validated index
(:class:`~evalledger.datasets.index.ValidatedIndex`: ids, line numbers, line offsets) and reads a
row back when it is sent. Building that index row by row (:func:`evalledger.datasets.load_dataset`,
then the task's check of every sample) costs ~4 s a million rows, which a first resume of a large
run pays before sending nothing. :func:`validated_index` builds the same index with C-level loops
over whole columns: every line parsed with orjson in one ``map``, then each check on a column.

It gives exactly what the row-by-row path gives, or None, and then the caller takes that path,
which words the error (naming the file, line and field) or accepts what is unusual:

* every line must be a JSON object orjson reads whose values are strings, integers, booleans or
  null: the rows the row-by-row parser reads with orjson too (a float, or a list or object that
  may hold one, is read by ``json`` there, which keeps integers beyond 64 bits exact). A blank
  line, a byte order mark, invalid UTF-8, ``NaN`` or a lone surrogate make orjson refuse the line;
* ids from an id column must be strings that are not empty, not only whitespace and without
  U+001F, all different (numbers as ids, missing or duplicate ids: the other path);
* the required fields must be present and, where they are strings, not empty or only whitespace;
* no line may be longer than the field size limit (a field cannot hold more characters than its
  line has bytes), else that path checks the sizes;
* the task's check runs on the rows its :meth:`~evalledger.tasks.Task.rows_to_validate` names,
  the others being rows the check passes by its own fast rule; any problem: the other path.

Rows without an id column get content-hash ids one by one, as the other path does.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, chain, repeat
from pathlib import Path
from typing import Any

import orjson

from evalledger.datasets.ids import choose_id_column, content_hash_id
from evalledger.datasets.index import RowRefs, ValidatedIndex
from evalledger.datasets.values import max_field_chars
from evalledger.errors import DatasetError
from evalledger.records import UNIT_SEPARATOR
from evalledger.samples import Sample

_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


def validated_index(path: Path, raw: bytes, *, id_column: str | None, default_id_column: str | None,
                    required_fields: Sequence[str], limit: int | None,
                    rows_to_validate: Callable[[Sequence[dict[str, Any]]], Iterable[int]],
                    validate: Callable[[Sample], str | None]) -> ValidatedIndex | None:
    """The validated index of the JSON-lines file ``path`` whose bytes are ``raw``, as the
    row-by-row path would build it for these settings (``validate``: the task's
    ``validate_sample``, run on the first ``limit`` rows), or None when that path must decide
    (see the module docstring): this function raises nothing of its own."""
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the end of the last line; a file without its final newline keeps its last line
    rows = _plain_rows(lines)
    if rows is None or max(map(len, lines)) > max_field_chars():
        return None
    columns = {name: _column(rows, name) for name in dict.fromkeys(chain.from_iterable(rows))}
    if any(not _PLAIN_TYPES.issuperset(map(type, values)) for values in columns.values()):
        return None
    try:
        id_col = choose_id_column(path, list(columns), id_column, default_id_column)
    except DatasetError:
        return None  # the other path raises it, after the checks that come first there
    ids = list(map(content_hash_id, rows)) if id_col is None else _text_ids(columns[id_col])
    if (ids is None or len(set(ids)) != len(ids)
            or not all(name in columns and _present(columns[name]) for name in required_fields)):
        return None
    checked = rows if limit is None else rows[:limit]
    for position in rows_to_validate(checked):
        if validate(Sample(id=ids[position], row=position + 1, fields=rows[position])) is not None:
            return None
    starts = array("q", accumulate(map((1).__add__, map(len, lines[:-1])), initial=0))
    refs = RowRefs(ids, range(1, len(rows) + 1), starts)
    id_source = f"column:{id_col}" if id_col is not None else "content-hash"
    return ValidatedIndex(refs, len(rows), id_source, "line", tuple(columns))


def _plain_rows(lines: list[bytes]) -> list[dict[str, Any]] | None:
    """Every line's object, when orjson reads each line as one; else None."""
    if not lines:
        return None
    try:
        rows = list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        return None
    return rows if set(map(type, rows)) == {dict} else None


def _column(rows: list[dict[str, Any]], name: str) -> list[Any]:
    return list(map(dict.get, rows, repeat(name)))


def _text_ids(values: list[Any]) -> list[str] | None:
    """``values`` when they are ids :func:`~evalledger.datasets.ids.assign_sample_ids` takes as
    they are (strings, not empty, not only whitespace, without U+001F); else None."""
    if (set(map(type, values)) != {str} or not all(values) or any(map(str.isspace, values))
            or UNIT_SEPARATOR in "".join(values)):
        return None
    return values


def _present(values: list[Any]) -> bool:
    """No value of a column is missing (absent, null, or a string that is empty or only whitespace)."""
    kinds = set(map(type, values))
    if type(None) in kinds:
        return False
    texts = values if kinds == {str} else [v for v in values if type(v) is str]
    return all(texts) and not any(map(str.isspace, texts))
