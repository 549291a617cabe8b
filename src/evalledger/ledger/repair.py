"""Repairs a writer makes before appending: a torn tail, garbage lines, a whole run moved aside.

Nothing is ever deleted: torn bytes and garbage lines go to ``<file>.corrupt-<timestamp>``, an
overwritten run to ``<run>.old-<timestamp>``. Re-exported by :mod:`evalledger.ledger`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import filelock

from evalledger.errors import LockHeldError
from evalledger.fsio import file_timestamp, fsync_dir, write_file_atomically
from evalledger.ledger.layout import RunPaths, clean_copy, corrupt_aside, moved_aside_dir, writer_locks
from evalledger.ledger.lines import iter_blocks


def repair_torn_tail(path: Path) -> Path | None:
    """Move bytes after the last newline to ``<path>.corrupt-<timestamp>``; truncate. Returns the aside file.

    The aside copy is fsynced before the truncate, so a crash during repair loses nothing (at
    worst the next open makes a second copy of the same bytes).
    """
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return None
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        cut = _last_newline_end(f, size)
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
    # A tail still being written is not ours to judge (repair_torn_tail's job): iter_blocks leaves
    # it out. Blocks our writer wrote are cleared by their prefixes, the rest line by line.
    bad = [number for block in iter_blocks(path) for number in block.garbage]
    if not bad:
        return None, []
    stamp = file_timestamp()
    aside = corrupt_aside(path, stamp)
    bad_set = set(bad)

    def split(tmp: Path) -> None:
        with open(path, "rb") as src, open(aside, "xb") as out_bad, open(tmp, "xb") as out_good:
            os.chmod(tmp, os.fstat(src.fileno()).st_mode & 0o777)
            for number, raw in enumerate(src, start=1):
                if not raw.endswith(b"\n"):
                    out_good.write(raw)  # cannot happen under the lock after repair_torn_tail; keep it anyway
                    continue
                (out_bad if number in bad_set else out_good).write(raw)
            out_bad.flush()
            os.fsync(out_bad.fileno())
            fsync_dir(path.parent)  # the aside file exists for good before the results shrink

    # The original is untouched until the clean copy, fsynced, is renamed over it.
    write_file_atomically(path, split, tmp=clean_copy(path, stamp))
    return aside, bad


def _last_newline_end(f: Any, size: int, chunk: int = 1 << 16) -> int:
    """Offset just after the last b'\\n' in the file (0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        block = f.read(pos - start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


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
