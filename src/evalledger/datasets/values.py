"""Dataset cell values: conversion to plain JSON-compatible Python, missing values, field sizes.

Shared by the parsers (:mod:`evalledger.datasets.parse`) and the id and required-field checks
(:mod:`evalledger.datasets.ids`); also the small helpers that word their error messages.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evalledger.errors import DatasetError, UsageError

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


def all_present(fields: Mapping[str, Any], required: Sequence[str]) -> bool:
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


def _describe_json_type(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _listed(items: Sequence[str]) -> str:
    """The first items joined with commas, plus "and N more"."""
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f" and {len(items) - _MAX_LISTED} more"
    return shown


def _plural(label: str, numbers: Sequence[int]) -> str:
    """``"line 3"`` or ``"lines 3, 5"``."""
    return f"{label}{'s' if len(numbers) > 1 else ''} {_listed([str(n) for n in numbers])}"
