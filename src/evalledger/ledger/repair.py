"""Repairs a writer makes before appending: a torn tail, garbage lines, a whole run moved aside.

Nothing is ever deleted: torn bytes and garbage lines go to ``<file>.corrupt-<timestamp>``, an
overwritten run to ``<run>.old-<timestamp>``. Re-exported by :mod:`evalledger.ledger`.

The writer checks its results file on every open (:func:`check_results_file`), but only the bytes
that no valid resume index covers (:mod:`evalledger.ledger.index` says what that proves): a resume
of a million records does not read them all again to find nothing. ``verify --repair`` checks
every line (:func:`move_garbage_lines_aside`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from evalledger.errors import LockHeldError
from evalledger.fsio import file_timestamp, fsync_dir, write_file_atomically
from evalledger.ledger import index as ledger_index
from evalledger.ledger.layout import RunPaths, clean_copy, corrupt_aside, moved_aside_dir, writer_locks
from evalledger.ledger.lines import iter_blocks
from evalledger.ledger.resume import index_enabled, load_index
from evalledger.ledger.tally import joined, read_results


@dataclass
class ResultsCheck:
    """What :func:`check_results_file` did to a results file."""

    torn_tail: Path | None = None  # where a torn last line went
    garbage_aside: Path | None = None  # where garbage lines went
    garbage_lines: list[int] = field(default_factory=list)  # their 1-based numbers
    checked_from: int = 0  # the byte offset from which lines were read (a valid index covers what is before)


def check_results_file(path: Path) -> ResultsCheck:
    """The writer's check of its results file on open, under its lock: move a torn tail and garbage
    lines aside (:func:`repair_torn_tail`, :func:`move_garbage_lines_aside`), looking only at the
    bytes that no valid resume index covers.

    An index covers its bytes only if it is valid (same device and inode, still that long, same
    fingerprint: :mod:`evalledger.ledger.index`) and counted no garbage line in them; then the
    lines after it are read, and a file that turns out clean is indexed up to its end, so the resume
    pass that follows (:func:`evalledger.ledger.scan_ledger`) reads nothing of it again. Without
    such an index (none yet, ``.cache`` deleted, ``EVALLEDGER_SCAN_CACHE=off``, an index that
    counted garbage) every line is read, as ``verify --repair`` does.
    """
    check = ResultsCheck()
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return check
    with f:
        st = os.fstat(f.fileno())
        cover = ledger_index.covered(path, f, st) if index_enabled() and st.st_size >= ledger_index.MIN_BYTES else None
        if cover is not None and cover.garbage:
            cover = None  # the garbage it counted is still in the file: check every line
        check.checked_from = cover.end if cover is not None else 0
        check.torn_tail = repair_torn_tail(path, floor=check.checked_from)
        read = read_results(f, check.checked_from, cover.lines + 1 if cover is not None else 1)
        if read.garbage:
            # the file is rewritten (a new inode): the next scan reads it in full and indexes it
            check.garbage_aside = _move_lines_aside(path, read.garbage, read.start, read.first_line)
            check.garbage_lines = read.garbage
        elif index_enabled() and ledger_index.should_save(read.start, read.end):
            # Index it all now, so the resume pass after the open reads none of it again.
            st = os.fstat(f.fileno())
            cached = load_index(path, f, st) if cover is not None else None
            if cover is None or (cached is not None and cached[1] == cover.end):
                ledger_index.save(path, f, st, joined(cached[0] if cached is not None else None, read), read.end)
    return check


def repair_torn_tail(path: Path, floor: int = 0) -> Path | None:
    """Move bytes after the last newline to ``<path>.corrupt-<timestamp>``; truncate. Returns the aside file.

    The aside copy is fsynced before the truncate, so a crash during repair loses nothing (at
    worst the next open makes a second copy of the same bytes). ``floor``: an offset known to
    end a line (a valid index's end): the search for the last newline stops there.
    """
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return None
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        cut = _last_newline_end(f, size, floor)
        if cut == size:
            return None
        f.seek(cut)
        tail = f.read()
        aside = corrupt_aside(path, file_timestamp())
        with open(aside, "xb") as out:
            out.write(tail)
            out.flush()
            os.fsync(out.fileno())
        fsync_dir(path.parent)
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return aside


def move_garbage_lines_aside(path: Path) -> tuple[Path | None, list[int]]:
    """Move complete lines that are not records (see :func:`parse_record_line`) to ``<path>.corrupt-<timestamp>``.

    Returns the aside file (None if the file was clean) and the 1-based numbers of the moved
    lines. Every other line is kept, byte for byte and in order. Run after
    :func:`repair_torn_tail`, so every line ends with a newline. Readers skip garbage anyway;
    moving it out keeps the file a clean ledger and puts the bytes where a person can look.

    Crash-safe, in this order: the removed lines are written to the aside file and fsynced, the
    cleaned copy is written to a temp file beside the results and fsynced, and only then is the
    temp file renamed over the results file (atomic) and the directory fsynced. A crash before
    the rename leaves the original untouched (the next open does the same again); after it, the
    garbage is already safe in the aside file. Streams twice over the file; memory stays small.
    """
    # A tail still being written is not ours to judge (repair_torn_tail's job): iter_blocks leaves it out.
    bad = [number for block in iter_blocks(path) for number in block.garbage]
    if not bad:
        return None, []
    return _move_lines_aside(path, bad), bad


def _move_lines_aside(path: Path, bad: list[int], start: int = 0, first_line: int = 1) -> Path:
    """Move the lines numbered ``bad`` (1-based) to ``<path>.corrupt-<timestamp>`` (see
    :func:`move_garbage_lines_aside`). None of them is in the first ``start`` bytes, which are
    copied as they are; the line at ``start`` is number ``first_line``."""
    stamp = file_timestamp()
    aside = corrupt_aside(path, stamp)
    bad_set = set(bad)

    def split(tmp: Path) -> None:
        with open(path, "rb") as src, open(aside, "xb") as out_bad, open(tmp, "xb") as out_good:
            os.chmod(tmp, os.fstat(src.fileno()).st_mode & 0o777)
            _copy_bytes(src, out_good, start)
            for number, raw in enumerate(src, start=first_line):
                if not raw.endswith(b"\n"):
                    out_good.write(raw)  # cannot happen under the lock after repair_torn_tail; keep it anyway
                    continue
                (out_bad if number in bad_set else out_good).write(raw)
            out_bad.flush()
            os.fsync(out_bad.fileno())
            fsync_dir(path.parent)  # the aside file exists for good before the results shrink

    # The original is untouched until the clean copy, fsynced, is renamed over it.
    write_file_atomically(path, split, tmp=clean_copy(path, stamp))
    return aside


def _copy_bytes(src: Any, dst: Any, n: int) -> None:
    """Copy the next ``n`` bytes of ``src`` to ``dst`` as they are."""
    while n > 0:
        chunk = src.read(min(n, 1 << 20))
        if not chunk:
            raise OSError(f"{src.name}: shorter than {n} more bytes while copying it")
        dst.write(chunk)
        n -= len(chunk)


def _last_newline_end(f: Any, size: int, floor: int = 0, chunk: int = 1 << 16) -> int:
    """Offset just after the last b'\\n' in the file (``floor`` if none after it; 0 if none)."""
    pos = size
    while pos > floor:
        start = max(floor, pos - chunk)
        f.seek(start)
        block = f.read(pos - start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return floor


def move_run_aside(run_dir: Path) -> Path:
    """Rename a run directory to ``<run_id>.old-<timestamp>`` (for ``--overwrite``).

    Refuses while any process holds a lock on the run or one of its shards.
    """
    run_dir = Path(run_dir)
    held = []
    # Taking each lock for an instant is the test here, not a read-only probe: a writer that starts
    # right now is refused, which is what it should be while its directory is being moved away.
    run_lock = RunPaths(run_dir).run_lock
    for lock_path in [*writer_locks(run_dir), *([run_lock] if run_lock.exists() else [])]:
        probe = filelock.FileLock(str(lock_path), timeout=0)
        try:
            probe.acquire()
        except filelock.Timeout:
            held.append(lock_path.name)
        else:
            probe.release()
    if held:
        raise LockHeldError(
            f"cannot --overwrite {run_dir}: a process is writing it right now ({', '.join(held)} held); stop it first"
        )
    aside = moved_aside_dir(run_dir, file_timestamp())
    os.rename(run_dir, aside)
    fsync_dir(run_dir.parent)
    return aside
