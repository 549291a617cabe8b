"""Read a results file's complete lines in blocks, every line parsed, at orjson's speed.

The resume pass and the writer's garbage-line check read every line of the bytes no resume index
covers (:mod:`evalledger.ledger.index`). A line is a record exactly when
:func:`~evalledger.ledger.parse_record_line` says so, the one rule every reader uses; this module
applies that rule to a block of ~1 MB of lines with C-level loops instead of one Python call a line:

* every line goes through ``orjson.loads`` in one ``map`` (the parser ``parse_record_line`` tries
  first), and
* the results are checked for the shape ``parse_record_line`` requires (:func:`~evalledger.ledger.is_record`:
  an object, a string ``sample_id``, a ``status`` that is a string or absent), with ``set(map(type, ...))``
  over the columns of :data:`evalledger.records.LEAD_KEYS`, which the resume reads next.

If orjson refuses any line of the block (not JSON, a torn or NUL-filled line, invalid UTF-8, text
after the object, ``NaN``, a lone surrogate, a byte order mark) or any result has another shape,
the whole block is read again line by line with ``parse_record_line`` itself, which sorts garbage
from records (and accepts what only the ``json`` module reads: ``NaN``, ``Infinity``). So a block
read the fast way holds exactly the records ``parse_record_line`` would return for its lines, the
same dicts (duplicate keys included: both keep the last value), and no garbage; the fast way is
only a way to skip the per-line Python work. Nothing depends on the order or spacing of the keys:
records written by other tools (``json.dumps`` with its default spacing, sorted keys) are read as
fast as our writer's.

The writer still puts :data:`evalledger.records.LEAD_KEYS` first (:func:`lead_first`): the file
format is unchanged, and a person reading a line sees its id and status first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import IO, Any, Iterator

import msgspec

from evalledger.ledger.files import fast_loads, parse_record_line
from evalledger.records import EPOCH_FIELD, LEAD_KEYS

# About a thousand records: their parsed objects (~6 MB) stay in the CPU's cache while the block is
# checked, summed and freed. 8 MiB blocks took half as long again for the same lines (measured).
BLOCK_BYTES = 1 << 20

_get = dict.get
_RECORD_STATUS_TYPES = frozenset((str, type(None)))
_SID, _STATUS, _EPOCH = LEAD_KEYS.index("sample_id"), LEAD_KEYS.index("status"), LEAD_KEYS.index(EPOCH_FIELD)
_INT_LOW, _INT_HIGH = -(1 << 63), 1 << 64  # the integers orjson reads as integers

#: What :func:`read_lead_block` decodes a line into: the record shape :func:`parse_record_line`
#: requires, and the lead values as they are (any JSON value); every other key is parsed and skipped.
_Lead = msgspec.defstruct(
    "_Lead",
    [(name, str) if name == "sample_id" else (name, str | None, None) if name == "status" else (name, Any, None)
     for name in LEAD_KEYS],
    kw_only=True,
)
_LEAD_DECODER = msgspec.json.Decoder(_Lead)
_LEAD_GETTERS = [attrgetter(name) for name in LEAD_KEYS]


@dataclass
class Block:
    """The complete lines of one block of a file.

    ``records``: the record of every line that is one, in file order. ``garbage``: 1-based line
    numbers of complete lines that are not records. ``fast``: whether the block was read in one go
    (then ``garbage`` is empty); either way ``records`` and ``garbage`` are what
    :func:`parse_record_line` says of each line. ``columns``: when read in one go, the values of
    :data:`evalledger.records.LEAD_KEYS` in the records (:func:`columns`).
    """

    first_line: int
    lines: int
    nbytes: int = 0  # the block's size in bytes (set by read_blocks)
    records: list[dict[str, Any]] = field(default_factory=list)
    garbage: list[int] = field(default_factory=list)
    fast: bool = False
    columns: list[Sequence[Any]] | None = None

    def lead(self) -> dict[str, Sequence[Any]]:
        """Each of :data:`evalledger.records.LEAD_KEYS` → its value in every record (None where absent)."""
        return dict(zip(LEAD_KEYS, self.columns)) if self.columns is not None else lead_columns(self.records)


def iter_blocks(path: Path, tail: list[int] | None = None, block_bytes: int = BLOCK_BYTES,
                start: int = 0, first_line: int = 1) -> Iterator[Block]:
    """Every complete line of ``path``, in blocks (see :func:`read_blocks`). A missing file yields nothing."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        yield from read_blocks(f, tail, block_bytes, start, first_line)


def read_blocks(f: IO[bytes], tail: list[int] | None = None, block_bytes: int = BLOCK_BYTES,
                start: int = 0, first_line: int = 1, stop: int | None = None,
                lead_only: bool = False) -> Iterator[Block]:
    """Every complete line of the file open as ``f``, in blocks. A last line without its newline
    is left out (it is being written right now, or torn); its length is appended to ``tail`` if given.

    ``start``: begin at this byte offset, which must be the start of a line; ``first_line`` is the
    number of that line (for the garbage line numbers). ``stop``: end at this offset (the start of
    a line) instead of the end of the file. ``lead_only``: the caller needs only :meth:`Block.lead`
    and the garbage (:func:`read_lead_block`).
    """
    classify = read_lead_block if lead_only else read_block
    line_no = first_line
    carry = b""
    f.seek(start)
    remaining = None if stop is None else stop - start
    while remaining is None or remaining > 0:
        data = f.read(block_bytes if remaining is None else min(block_bytes, remaining))
        if not data:
            break
        if remaining is not None:
            remaining -= len(data)
        data = carry + data if carry else data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data  # no newline yet: a very long line, keep reading
            continue
        carry = data[cut:]
        block = classify(data[:cut] if cut < len(data) else data, line_no)
        del data  # the block's bytes are not needed once it is split into lines
        block.nbytes = cut
        line_no += block.lines
        yield block
        del block  # its records go as soon as the caller is done with them
    if carry and tail is not None:
        tail.append(len(carry))


def read_block(data: bytes, first_line: int) -> Block:
    """Classify the complete, newline-terminated lines in ``data`` (see the module docstring)."""
    # split on b"\n" only, as ``for line in file`` does (splitlines would also cut at b"\r")
    raw_lines = data.split(b"\n")
    raw_lines.pop()  # the empty string after the last newline
    block = Block(first_line, len(raw_lines))
    fast = _parse_fast(raw_lines)
    if fast is not None:
        block.records, block.columns = fast
        block.fast = True
        return block
    number = first_line
    for raw in raw_lines:
        rec = parse_record_line(raw)
        if rec is None:
            block.garbage.append(number)
        else:
            block.records.append(rec)
        number += 1
    return block


def read_lead_block(data: bytes, first_line: int) -> Block:
    """:func:`read_block` for a reader that needs only the lead columns (:meth:`Block.lead`) and the
    garbage: ``records`` is left empty when every line is a record.

    Each line is still parsed in full, every byte of it, but only the values of
    :data:`evalledger.records.LEAD_KEYS` become Python objects (msgspec into :data:`_Lead`), about
    ten times faster than :func:`read_block` on our records. It takes the block only when that
    provably gives what :func:`read_block` gives; anything else is read by :func:`read_block`:

    * msgspec accepts a line exactly when it is one JSON value with nothing after it, with the
      same syntax orjson and ``json`` accept (numbers, escapes, control characters, nesting depth,
      lone surrogate escapes refused), except that it does not check that skipped strings are
      UTF-8: the block is checked to be UTF-8 first (``isascii``, else a strict decode);
    * the type is the record shape :func:`parse_record_line` requires (an object with a string
      ``sample_id`` and a ``status`` that is a string, null or absent): anything else fails it;
    * ``decode_lines`` skips blank lines, which are garbage: a block whose count of values is not
      its count of lines goes line by line;
    * values are those orjson gives (duplicate keys: the last; escaped keys read as their text;
      floats correctly rounded by both), except an integer beyond 64 bits, exact here and a float
      to orjson. The resume's rules read both alike (a count of 0, the same float cost), except as
      an ``epoch`` (a unit key), so a block with such an epoch goes the other way.
    """
    if not (data.isascii() or _is_utf8(data)):
        return read_block(data, first_line)
    lines = data.count(b"\n")
    try:
        leads = _LEAD_DECODER.decode_lines(data)
    except (msgspec.DecodeError, RecursionError):  # DecodeError includes ValidationError
        return read_block(data, first_line)
    if len(leads) != lines:
        return read_block(data, first_line)
    cols = [list(map(getter, leads)) for getter in _LEAD_GETTERS]
    if not _epochs_read_alike(cols[_EPOCH]):
        return read_block(data, first_line)
    return Block(first_line, lines, fast=True, columns=cols)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _epochs_read_alike(epochs: list[Any]) -> bool:
    """No ``epoch`` is an integer orjson would read as a float (outside its 64-bit range)."""
    try:
        kinds = set(epochs)
    except TypeError:  # an unhashable epoch (a list): compare one by one
        kinds = {e for e in epochs if type(e) is int}
    return all(_INT_LOW <= e < _INT_HIGH for e in kinds if type(e) is int)


def _parse_fast(raw_lines: list[bytes]) -> tuple[list[dict[str, Any]], list[Sequence[Any]]] | None:
    """Every line's record and their lead columns when orjson reads every line and each is
    record-shaped, else None."""
    if fast_loads is None or not raw_lines:
        return None
    try:
        records = list(map(fast_loads, raw_lines))
    except ValueError:  # orjson.JSONDecodeError; the block is read line by line instead
        return None
    # is_record, in C-level loops: objects, string ids, statuses that are strings or absent
    if set(map(type, records)) != {dict}:
        return None
    cols = columns(records, LEAD_KEYS)
    if set(map(type, cols[_SID])) != {str} or not _RECORD_STATUS_TYPES.issuperset(map(type, cols[_STATUS])):
        return None
    return records, cols


def lead_columns(records: list[dict[str, Any]]) -> dict[str, Sequence[Any]]:
    """Each of :data:`evalledger.records.LEAD_KEYS` → its value in every one of ``records`` (None where absent)."""
    return dict(zip(LEAD_KEYS, columns(records, LEAD_KEYS)))


def columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[Sequence[Any]]:
    """``[[row.get(name) for row in rows] for name in names]`` for dicts ``rows``, in C-level loops,
    each row read once when it has every name."""
    if not rows:
        return [() for _ in names]
    try:
        return list(zip(*map(itemgetter(*names), rows))) if len(names) > 1 else [list(map(_get, rows, names))]
    except KeyError:  # some row lacks one (older records, other tools'): read it as None
        return [list(map(_get, rows, repeat(name))) for name in names]


def lead_first(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with :data:`LEAD_KEYS` first (those it has), the rest in their own order."""
    lead = {k: record[k] for k in LEAD_KEYS if k in record}
    return {**lead, **record}
