"""What the lines of a stretch of a results file add up to, for resuming: read once, in one
process or two.

:func:`read_results` reads every complete line (:mod:`evalledger.ledger.lines`: every line parsed,
a block at a time) and sums the records up as :class:`evalledger.ledger.index.FilePart`: the units
of work done and whether their last ok record is correct, the errored units, the records per unit
where a unit has several, and the counts and bill. :func:`add_records` does that sum in C-level
loops, with exactly the rules of :mod:`evalledger.records` (``unit_key``, ``count_of``, ``bill_of``).

A long stretch (a first resume of a large run: no index yet, or ``.cache`` deleted) is read by two
processes at once, on Linux, when the process has no other thread and may use two cores: a forked
child reads the second half and sends its sums back through a pipe, while this process reads the
first; :meth:`~evalledger.ledger.index.FilePart.then` joins them as if one process had read both.
If the child fails in any way, this process reads the second half itself.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import eq, is_, not_
from typing import IO, Any

from evalledger.fsio import cachefile, paused_gc
from evalledger.ledger.index import SUMS, FilePart, multi_counts
from evalledger.ledger.lines import columns, read_blocks
from evalledger.records import (
    COUNT_LIMIT,
    EPOCH_FIELD,
    TOKEN_FIELDS,
    UNIT_SEPARATOR,
    BillTotal,
    bill_from,
    count_of,
)

#: A stretch at least this long is read by two processes (below it, forking costs more than it saves).
TWO_PROCESS_BYTES = 64 << 20

_get = dict.get
_EPOCH_ONE = frozenset((None, 1))  # the epoch values that mean epoch 1 to a set (1.0 and True equal 1)


@dataclass
class FileRead:
    """What :func:`read_results` found in the lines of one results file after ``start``."""

    part: FilePart  # what those lines add up to
    end: int  # where they end (a torn last line is left out)
    start: int
    first_line: int  # the number of the line at ``start``
    garbage: list[int] = field(default_factory=list)  # 1-based numbers of the lines read that are not records
    lines: int = 0  # how many complete lines were read


def read_results(f: IO[bytes], start: int = 0, first_line: int = 1) -> FileRead:
    """Read the complete lines of the results file open as ``f`` from byte ``start`` (the start of
    line number ``first_line``) to its end, and sum them up."""
    size = os.fstat(f.fileno()).st_size
    if size - start >= TWO_PROCESS_BYTES and may_fork():
        middle = _line_start_after(f, start + (size - start) // 2)
        if middle is not None:
            return _read_in_two(f, start, first_line, middle)
    return _read_range(f, start, first_line)


def _read_range(f: IO[bytes], start: int, first_line: int, stop: int | None = None) -> FileRead:
    """:func:`read_results` of the lines from ``start`` to ``stop`` (the end of the file: None), in this process."""
    part = FilePart()
    keys: list[str] = []  # the unit key of every record, in file order
    read = FileRead(part, start, start, first_line)
    with paused_gc():  # a million parsed records, none in a cycle: see gcpause
        for block in read_blocks(f, start=start, first_line=first_line, stop=stop, lead_only=True):
            read.end += block.nbytes
            read.lines += block.lines
            read.garbage += block.garbage
            add_records(part, keys, block.lead())
            del block  # its records go now, not after the next block is read
        part.garbage = len(read.garbage)
        # records per unit only where a unit has several (retries); none in most files
        part.counts = {} if part.unique_units() == part.records else multi_counts(keys)
    return read


def may_fork() -> bool:
    """Whether a second process may read: Linux (``/proc``), two cores for us, and no other thread
    in this process (a fork copies only the calling thread, and locks other threads held)."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork") and len(os.sched_getaffinity(0)) >= 2
            and threading.active_count() == 1)


def _line_start_after(f: IO[bytes], pos: int, look: int = 1 << 20) -> int | None:
    """The offset of the first line that starts after ``pos`` (within ``look`` bytes), or None."""
    f.seek(pos)
    at = f.read(look).find(b"\n")
    return None if at < 0 else pos + at + 1


def _read_in_two(f: IO[bytes], start: int, first_line: int, middle: int) -> FileRead:
    """:func:`read_results` with the lines from ``middle`` on read by a forked child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: sum up the second half, send it, and leave without running anything else
        code = 1
        try:
            # Its own file offset (a reopened descriptor, not the shared one), and no other file:
            # a copy of the writer's lock descriptors would keep the lock held if this process died.
            mine = open(f"/proc/self/fd/{f.fileno()}", "rb")
            close_all_but(mine.fileno(), w)
            with mine, os.fdopen(w, "wb") as out:
                out.write(_encode(_read_range(mine, middle, 1)))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        first = _read_range(f, start, first_line, stop=middle)
    finally:
        with os.fdopen(r, "rb") as inp:
            sent = inp.read()
        _, status = os.waitpid(pid, 0)
    second = _decode(sent, middle) if os.waitstatus_to_exitcode(status) == 0 else None
    if second is None:  # the child failed: read its half here
        second = _read_range(f, middle, 1)
    shift = first_line + first.lines - 1  # the child numbered its lines from 1
    return FileRead(first.part.then(second.part), second.end, start, first_line,
                    first.garbage + [n + shift for n in second.garbage], first.lines + second.lines)


def close_all_but(*keep: int) -> None:
    """Close every file descriptor above stderr except ``keep``."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _encode(read: FileRead) -> bytes:
    """A :class:`FileRead` as bytes for the pipe: a JSON header, then the ids one per line."""
    part = read.part
    correct, other = map(list, part.ok_ids())
    blobs: list[bytes] = []
    for ids in (correct, other, sorted(part.errored)):
        blob = cachefile.join_ids(ids)
        if blob is None:
            raise ValueError("an id that cannot be sent one per line")
        blobs.append(blob)
    header = {"end": read.end, "lines": read.lines, "garbage_lines": read.garbage, "counts": part.counts,
              "blobs": [len(b) for b in blobs], **{name: getattr(part, name) for name in SUMS}}
    return json.dumps(header).encode() + b"\n" + b"".join(blobs)


def _decode(data: bytes, start: int) -> FileRead | None:
    """What :func:`_encode` sent of the lines from ``start``, or None if it is not whole."""
    try:
        cut = data.index(b"\n") + 1
        header = json.loads(data[:cut])
        blobs, at = [], cut
        for n in header["blobs"]:
            blobs.append(data[at:at + n])
            at += n
        if at != len(data):
            return None
        correct, other, errored = (cachefile.split_ids(b) for b in blobs)
        part = FilePart({}, set(errored), {str(k): int(v) for k, v in header["counts"].items()},
                        ok_lists=(correct, other))
        for name in SUMS:
            setattr(part, name, float(header[name]) if name == "billed_cost" else int(header[name]))
        garbage = [int(n) for n in header["garbage_lines"]]
        return FileRead(part, int(header["end"]), start, 1, garbage, int(header["lines"]))
    except (ValueError, KeyError, TypeError):
        return None


def joined(cached: FilePart | None, read: FileRead) -> FilePart:
    """The whole file's part: an index's part (None: no index, ``read`` began at 0) followed by ``read``'s."""
    if cached is None:
        return read.part
    return cached if not (read.part.records or read.part.garbage) else cached.then(read.part)


def add_records(part: FilePart, keys: list[str], col: dict[str, Sequence[Any]]) -> None:
    """Add records (each one :func:`evalledger.ledger.is_record`) to ``part`` and their unit keys to
    ``keys``: what a loop of :func:`evalledger.records.unit_key`, :func:`evalledger.records.count_of`
    and :func:`evalledger.records.bill_of` over them would add, in C-level loops when the values
    have the usual types, record by record otherwise. ``col``: the records' values of
    :data:`evalledger.records.LEAD_KEYS`, all these rules read (:meth:`evalledger.ledger.lines.Block.lead`,
    :func:`lead_columns`)."""
    # Hot path: no per-record Python call when the values have the types our writer writes.
    if not col["sample_id"]:
        return
    units = unit_keys(col["sample_id"], col[EPOCH_FIELD])
    is_ok = list(map(eq, col["status"], repeat("ok")))
    # the last ok record of a unit decides whether it is correct, as in the merged view
    part.last_ok.update(zip(compress(units, is_ok), map(is_, compress(col["correct"], is_ok), repeat(True))))
    part.errored.update(compress(units, map(not_, is_ok)))
    keys += units
    n, ok = len(col["sample_id"]), is_ok.count(True)
    part.records += n
    part.ok_records += ok
    part.error_records += n - ok
    part.requests += _count_sum(col["attempts"])
    ok_usages = list(compress(col["usage"], is_ok))
    if set(map(type, ok_usages)) != {dict}:
        ok_usages = [u for u in ok_usages if type(u) is dict]  # only objects count
    if ok_usages:
        tokens_in, tokens_out = columns(ok_usages, TOKEN_FIELDS)
        part.input_tokens += _count_sum(tokens_in)
        part.output_tokens += _count_sum(tokens_out)
    part.billed_cost += _bill_cost(col["paid"], col["usage"], col["cost_usd"])


def unit_keys(sample_ids: Sequence[str], epochs: Sequence[Any]) -> Sequence[str]:
    """The unit key of each (sample id, ``epoch`` value as read) pair, as
    ``unit_key(sample_id, epoch_of(record))``: the bare id unless the epoch is an int of 2 or more."""
    try:
        if not set(epochs) - _EPOCH_ONE:  # no repeats: every epoch absent or 1 (1.0 and true read as 1 too)
            return sample_ids
    except TypeError:  # an unhashable epoch (a list): no epoch, record by record below
        pass
    return [s if type(e) is not int or e < 2 else f"{s}{UNIT_SEPARATOR}{e}" for s, e in zip(sample_ids, epochs)]


def _count_sum(values: Sequence[Any]) -> int:
    """``sum(map(count_of, values))``: the plain sum when every value is an int in range."""
    if not values:
        return 0
    if set(map(type, values)) == {int} and min(values) >= 0 and max(values) < COUNT_LIMIT:
        return sum(values)
    return sum(map(count_of, values))


def _bill_cost(paid: Sequence[Any], usage: Sequence[Any], cost_usd: Sequence[Any]) -> float:
    """The cost records whose ``paid``, ``usage`` and ``cost_usd`` values are these add to the bill
    (:func:`evalledger.records.bill_of`; NaN: unknown)."""
    if set(map(type, paid)) == {dict}:
        costs = list(map(_get, paid, repeat("cost_usd")))
        if set(map(type, costs)) == {float}:
            # Every record bills from a ``paid`` object holding a float cost. Each cost counts if it
            # is finite and not negative; one that is not makes the bill unknown (its object is not
            # empty), and so does a sum too large for a float.
            try:
                total = math.fsum(costs)
            except OverflowError:
                return math.nan
            return total if math.isfinite(total) and min(costs) >= 0 else math.nan
    bill = BillTotal()
    for bill_of_one in map(bill_from, paid, usage, cost_usd):
        bill.add(bill_of_one)
    return as_sum(bill.cost_usd)


def as_sum(cost: float | None) -> float:
    """A cost to add to ``billed_cost``: NaN for an unknown one, so that the sum is unknown too."""
    return math.nan if cost is None else cost
