"""The fast path of a cold scan: a block of ledger lines through pyarrow's JSON reader.

:func:`evalledger.readers.scan_batch.parse_batch` turns lines into :data:`~evalledger.readers.scan_batch.SCHEMA`
columns in Python (orjson, then a comprehension per field): ~20 µs a record. pyarrow's reader
parses a block in C++ on every core, into typed columns, for a fraction of that. It is strict,
though: one value of an unexpected type fails the whole block, and it does not apply our rule for
what a line is (:func:`evalledger.ledger.parse_record_line`). So :func:`parse_block` takes a block
only when it can prove that both ways give the same rows, and returns None otherwise; the caller
then parses that block with ``parse_batch``. Taken are blocks in which

* every line starts with ``{`` and ends with ``}`` (no blank line, no ``null``/array/number line:
  pyarrow skips or mis-reads those, and a first line ``null`` crashes it), holds no control
  byte (which orjson and json refuse), is valid UTF-8 (pyarrow does not check) and no ``\\uD8xx``
  escape (a lone surrogate makes a line garbage), and pyarrow returns one row per line;
* every record has only the fields our runner writes, each of the type it writes
  (:data:`READ_SCHEMA`, unexpected fields are an error): so no pass-through field, no score
  that is not a bool, no list response (multi-turn tasks), nothing needing a JSON twin column;
* every ``sample_id`` is a string, and the few sums that a struct cannot answer exactly (an
  empty ``usage``/``paid`` object against one of nulls) are not needed.

Values are then cleaned as ``parse_batch`` cleans them (NaN and ±Infinity costs are null, a missing
or non-positive ``epoch`` is epoch 1, a null among ``fewshot_ids`` sends the block there), and the
bill is read as :func:`evalledger.records.bill_of` reads it (a negative cost is no cost either).
``tests/test_scan_arrow.py`` compares the two paths on a hostile ledger.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from evalledger.readers.scan_batch import SCHEMA, SCORE_JSON, STRING_LIST, BatchSums
from evalledger.records import (
    BATCH_IDS_FIELD,
    BILLED_COST_COLUMN,
    BOOL_FIELDS,
    EPOCH_COLUMN,
    EPOCH_FIELD,
    ERROR_FIELDS,
    EXTRAS_COLUMN,
    FEWSHOT_IDS_COLUMN,
    FLOAT_FIELDS,
    INT_FIELDS,
    JSON_SUFFIX,
    MESSAGE_FIELDS,
    OBJECT_COLUMNS,
    OBJECT_FIELDS,
    OFFSET_COLUMN,
    PAID_FIELDS,
    SAVED_COST_COLUMN,
    SAVED_FIELD,
    SCORE_BOOL_COLUMN,
    SCORE_COLUMN,
    STRING_FIELDS,
    TOKEN_FIELDS,
)

_USAGE = pa.struct([(n, pa.int64()) for n in TOKEN_FIELDS])
_PAID = pa.struct([(n, pa.int64() if n in TOKEN_FIELDS else pa.float64()) for n in PAID_FIELDS])
_ERROR = pa.struct(list(zip(ERROR_FIELDS, (pa.string(), pa.string(), pa.bool_(), pa.int64()))))
_MESSAGE = pa.struct([(n, pa.string()) for n in MESSAGE_FIELDS])
READ_SCHEMA = pa.schema(
    [(n, pa.string()) for n in STRING_FIELDS + OBJECT_FIELDS]
    + [(n, pa.int64()) for n in INT_FIELDS]
    + [(n, pa.bool_()) for n in BOOL_FIELDS]
    + [(n, pa.float64()) for n in FLOAT_FIELDS]
    + [("usage", _USAGE), ("paid", _PAID), (SAVED_FIELD, _PAID), ("request_ids", pa.list_(pa.string())),
       ("prompt", pa.list_(_MESSAGE)), ("error", _ERROR), (FEWSHOT_IDS_COLUMN, STRING_LIST),
       (BATCH_IDS_FIELD, pa.list_(pa.string()))]
)
"""Every field of a record as the runner writes it (single-turn tasks); any other field fails the block."""

_PARSE = pj.ParseOptions(explicit_schema=READ_SCHEMA, unexpected_field_behavior="error")
_READ = pj.ReadOptions(use_threads=True, block_size=4 << 20)  # a few tasks per block for 2+ cores
_ERROR_PREFIX = "error_"  # the columns of the error object's fields
_MAX_COUNT = 1 << 40  # larger token counts would risk overflowing an int64 sum: parse_batch sums those
_LF, _OPEN, _CLOSE, _SPACE, _BACKSLASH, _U, _D = (ord(c) for c in '\n{} \\ud')


def parse_block(data: bytes, start: int) -> tuple[pa.Table, BatchSums] | None:
    """Rows of :data:`~evalledger.readers.scan_batch.SCHEMA` for ``data`` (complete lines, the first at byte
    ``start`` of its file), with their sums; None when the block needs ``parse_batch`` (see above)."""
    ends = _line_ends(data)
    if ends is None:
        return None
    try:
        t = pj.read_json(pa.py_buffer(data), read_options=_READ, parse_options=_PARSE)
    except (pa.ArrowException, ValueError):  # a value of another type, an unexpected field, not JSON
        return None
    n = len(ends)
    if t.num_rows != n or t["sample_id"].null_count:
        return None
    cols = {name: t[name] for name in SCHEMA.names if name in READ_SCHEMA.names}  # fields read as they are
    usage, error, paid = t["usage"], t["error"], t["paid"]
    for name in TOKEN_FIELDS:
        cols[name] = _field(usage, name)
    for name in ERROR_FIELDS:
        if _ERROR_PREFIX + name in SCHEMA.names:
            cols[_ERROR_PREFIX + name] = _field(error, name)
    for name in FLOAT_FIELDS:
        cols[name] = _finite(t[name])
    cols[SCORE_BOOL_COLUMN] = t[SCORE_COLUMN]
    cols[SAVED_COST_COLUMN] = _amount(_field(t[SAVED_FIELD], "cost_usd"))  # records.saved_cost
    # records.epoch_of: an epoch below 1 or none at all is epoch 1 (other types failed the read).
    epoch = t[EPOCH_FIELD]
    cols[EPOCH_COLUMN] = pc.fill_null(pc.if_else(pc.greater_equal(epoch, 1), epoch, 1), 1)
    if pc.list_flatten(t[FEWSHOT_IDS_COLUMN]).null_count:  # a null among the ids: parse_batch drops the list
        return None
    for name in (SCORE_JSON, EXTRAS_COLUMN, *(c + JSON_SUFFIX for c in OBJECT_COLUMNS)):
        cols[name] = pa.nulls(n, pa.string())
    starts = np.empty(n, dtype=np.int64)
    starts[0] = start
    starts[1:] = ends[:-1] + 1 + start
    cols[OFFSET_COLUMN] = pa.array(starts)

    # The bill (records.bill_of): ``paid`` when the record has one, else its usage and cost.
    has_paid = pc.is_valid(paid)
    bill_in, bill_out = (pc.if_else(has_paid, _field(paid, name), cols[name]) for name in TOKEN_FIELDS)
    cols[BILLED_COST_COLUMN] = _amount(pc.if_else(has_paid, _field(paid, "cost_usd"), t["cost_usd"]))
    sums = BatchSums(records=n)
    for name, tokens in zip(TOKEN_FIELDS, (bill_in, bill_out)):
        counts = pc.filter(tokens, pc.greater_equal(tokens, 0))  # records.count_of: whole numbers >= 0
        if (pc.max(counts).as_py() or 0) >= _MAX_COUNT:
            return None
        setattr(sums, name, pc.sum(counts).as_py() or 0)
    unpriced = pc.and_(pc.is_null(cols[BILLED_COST_COLUMN]), pc.or_(has_paid, pc.is_valid(usage)))
    if pc.any(unpriced).as_py():
        # A bill without a price makes the total unknown, unless the object it came from is empty
        # ({}), which a struct of nulls cannot tell from {"cost_usd": null}: parse_batch decides.
        not_empty = pc.if_else(has_paid, _any_field(paid), _any_field(usage))
        if not pc.all(pc.filter(not_empty, unpriced)).as_py():
            return None
        sums.cost_known = False
    sums.error_records = n - (pc.sum(pc.equal(cols["status"], "ok")).as_py() or 0)  # None: no status at all
    last = pc.max(cols["finished_at"]).as_py()
    sums.last_finished = last or None  # "" is no time (parse_batch filters it out too)
    return pa.table([cols[f.name] for f in SCHEMA], schema=SCHEMA), sums


def _line_ends(data: bytes) -> np.ndarray | None:
    """Positions of the newlines of ``data`` when every line looks like one JSON object each
    reader reads the same way (see the module docstring), else None."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < _SPACE)  # every control byte must be a newline
    if len(ends) == 0 or ends[-1] != len(raw) - 1 or np.any(raw[ends] != _LF):
        return None
    if raw[0] != _OPEN or np.any(raw[ends[:-1] + 1] != _OPEN) or np.any(raw[ends - 1] != _CLOSE):
        return None
    # No \uD800-\uDFFF escape (a backslash, "u", "d" or "D"): a surrogate may be a lone one.
    # (numpy, not bytes.find: escapes are rare, and two finds over 16 MB cost ~30 ms.)
    slash = np.flatnonzero(raw[:-2] == _BACKSLASH)
    if np.any((raw[slash + 1] == _U) & ((raw[slash + 2] | 0x20) == _D)):
        return None
    return ends


def _field(struct: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """A child of a struct column, null where the struct itself is null."""
    return pc.struct_field(struct, name)


def _finite(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Floats with NaN and ±Infinity as null, as parse_batch reads them."""
    return pc.if_else(pc.is_finite(values), values, pa.scalar(None, pa.float64()))


def _amount(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Costs as :func:`evalledger.records.cost_amount` reads them: NaN, ±Infinity and negative ones are null."""
    valid = pc.and_(pc.is_finite(values), pc.greater_equal(values, 0))
    return pc.if_else(valid, values, pa.scalar(None, pa.float64()))


def _any_field(struct: pa.ChunkedArray) -> pa.ChunkedArray:
    """Per row, whether a struct has a non-null field (so the object it was read from is not empty)."""
    names = [struct.type.field(i).name for i in range(struct.type.num_fields)]
    out = pc.is_valid(_field(struct, names[0]))
    for name in names[1:]:
        out = pc.or_(out, pc.is_valid(_field(struct, name)))
    return out
