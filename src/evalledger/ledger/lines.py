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
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, Iterator

from evalledger.ledger.files import fast_loads, parse_record_line
from evalledger.records import LEAD_KEYS

# About a thousand records: their parsed objects (~6 MB) stay in the CPU's cache while the block is
# checked, summed and freed. 8 MiB blocks took half as long again for the same lines (measured).
BLOCK_BYTES = 1 << 20

_get = dict.get
_RECORD_STATUS_TYPES = frozenset((str, type(None)))
_SID, _STATUS = LEAD_KEYS.index("sample_id"), LEAD_KEYS.index("status")


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
        return dict(zip(LEAD_KEYS, self.columns if self.columns is not None else columns(self.records, LEAD_KEYS)))


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
                start: int = 0, first_line: int = 1, stop: int | None = None) -> Iterator[Block]:
    """Every complete line of the file open as ``f``, in blocks. A last line without its newline
    is left out (it is being written right now, or torn); its length is appended to ``tail`` if given.

    ``start``: begin at this byte offset, which must be the start of a line; ``first_line`` is the
    number of that line (for the garbage line numbers). ``stop``: end at this offset (the start of
    a line) instead of the end of the file.
    """
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
        block = read_block(data[:cut] if cut < len(data) else data, line_no)
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
