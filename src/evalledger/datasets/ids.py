"""Sample ids (an id column or a content hash, never a row's position) and the required-field check."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evalledger.datasets.parse import Row
from evalledger.datasets.values import (
    _describe_json_type,
    _is_missing,
    _jsonable_fields,
    _listed,
    _plural,
    all_present,
)
from evalledger.errors import DatasetError
from evalledger.records import UNIT_SEPARATOR


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


def choose_id_column(
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


def id_from_value(value: Any) -> str | None:
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


def assign_sample_ids(path: Path, rows: Sequence[Row], label: str, id_col: str | None) -> list[str]:
    if id_col is None:
        ids = [content_hash_id(row.fields) for row in rows]
    else:
        ids = []
        missing: list[int] = []
        for row in rows:
            value = row.fields.get(id_col)
            if type(value) is str and value and not value.isspace() and "\x1f" not in value:
                ids.append(value)  # the usual case, what id_from_value gives, without the calls
                continue
            try:
                sid = id_from_value(value)
            except TypeError as exc:
                raise DatasetError(
                    f"{path} {label} {row.number}: id column {id_col!r} holds {exc}; "
                    "ids must be strings or numbers"
                ) from None
            if sid is None:
                missing.append(row.number)
                sid = ""
            elif UNIT_SEPARATOR in sid:
                # It joins a sample id and a repeat number in the runner's keys (records.unit_key).
                raise DatasetError(
                    f"{path} {label} {row.number}: id column {id_col!r} holds the control character U+001F; "
                    "ids must not contain it"
                )
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


def _mixed_type_example(rows: Sequence[Row], id_col: str, duplicated: set[str], ids: Sequence[str]) -> str:
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


def check_required(
    path: Path, rows: Sequence[Row], label: str, columns: Sequence[str], required: Sequence[str]
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
    if all(all_present(row.fields, required) for row in rows):
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
