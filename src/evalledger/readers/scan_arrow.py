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

Values are then cleaned as ``parse_batch`` cleans them (NaN and ±Infinity costs are null).
``tests/test_scan_arrow.py`` compares the two paths on a hostile ledger.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from evalledger.readers.scan_batch import SCHEMA, BatchSums

_USAGE = pa.struct([("input_tokens", pa.int64()), ("output_tokens", pa.int64())])
_PAID = pa.struct([("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("cost_usd", pa.float64())])
_ERROR = pa.struct([("type", pa.string()), ("message", pa.string()), ("retryable", pa.bool_()),
                    ("status_code", pa.int64())])
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_STRINGS = ("sample_id", "status", "shard", "model", "task", "input_hash", "started_at", "finished_at",
            "prediction", "target", "response")
READ_SCHEMA = pa.schema(
    [(n, pa.string()) for n in _STRINGS]
    + [("attempts", pa.int64()), ("correct", pa.bool_()), ("score", pa.bool_()), ("usage", _USAGE),
       ("cost_usd", pa.float64()), ("paid", _PAID), ("latency_s", pa.float64()),
       ("request_ids", pa.list_(pa.string())), ("prompt", pa.list_(_MESSAGE)), ("error", _ERROR)]
)
"""Every field of a record as the runner writes it (single-turn tasks); any other field fails the block."""

_PARSE = pj.ParseOptions(explicit_schema=READ_SCHEMA, unexpected_field_behavior="error")
_READ = pj.ReadOptions(use_threads=True, block_size=4 << 20)  # a few tasks per block for 2+ cores
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
    cols = {name: t[name] for name in ("sample_id", "status", "shard", "model", "task", "started_at", "finished_at",
                                       "attempts", "correct", "prediction", "target", "response")}
    usage, error, paid = t["usage"], t["error"], t["paid"]
    cols["input_tokens"], cols["output_tokens"] = _field(usage, "input_tokens"), _field(usage, "output_tokens")
    cols["error_type"], cols["error_message"] = _field(error, "type"), _field(error, "message")
    cols["error_status_code"] = _field(error, "status_code")
    cols["cost_usd"], cols["latency_s"] = _finite(t["cost_usd"]), _finite(t["latency_s"])
    cols["score_bool"] = t["score"]
    for name in ("score_json", "prediction_json", "target_json", "response_json", "extras_json"):
        cols[name] = pa.nulls(n, pa.string())
    starts = np.empty(n, dtype=np.int64)
    starts[0] = start
    starts[1:] = ends[:-1] + 1 + start
    cols["offset"] = pa.array(starts)

    # The bill (scan_batch._bills): ``paid`` when the record has one, else its usage and cost.
    has_paid = pc.is_valid(paid)
    bill_in = pc.if_else(has_paid, _field(paid, "input_tokens"), cols["input_tokens"])
    bill_out = pc.if_else(has_paid, _field(paid, "output_tokens"), cols["output_tokens"])
    cols["billed_cost_usd"] = pc.if_else(has_paid, _finite(_field(paid, "cost_usd")), cols["cost_usd"])
    sums = BatchSums(records=n)
    for name, tokens in (("input_tokens", bill_in), ("output_tokens", bill_out)):
        counts = pc.filter(tokens, pc.greater_equal(tokens, 0))  # parse_batch counts whole numbers >= 0
        if (pc.max(counts).as_py() or 0) >= _MAX_COUNT:
            return None
        setattr(sums, name, pc.sum(counts).as_py() or 0)
    unpriced = pc.and_(pc.is_null(cols["billed_cost_usd"]), pc.or_(has_paid, pc.is_valid(usage)))
    if pc.any(unpriced).as_py():
        # A bill without a price makes the total unknown, unless the object it came from is empty
        # ({}), which a struct of nulls cannot tell from {"cost_usd": null}: parse_batch decides.
        not_empty = pc.if_else(has_paid, _any_field(paid), _any_field(usage))
        if not pc.all(pc.filter(not_empty, unpriced)).as_py():
            return None
        sums.cost_known = False
    sums.error_records = n - pc.sum(pc.equal(cols["status"], "ok")).as_py() if n else 0
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


def _any_field(struct: pa.ChunkedArray) -> pa.ChunkedArray:
    """Per row, whether a struct has a non-null field (so the object it was read from is not empty)."""
    names = [struct.type.field(i).name for i in range(struct.type.num_fields)]
    out = pc.is_valid(_field(struct, names[0]))
    for name in names[1:]:
        out = pc.or_(out, pc.is_valid(_field(struct, name)))
    return out
