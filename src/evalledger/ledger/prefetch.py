"""Index a run's results files in a child process while this one validates the dataset.

A first resume of a large run (no resume index yet, or ``.cache`` deleted) must read every record
once, and must validate every dataset row once; neither needs the other. :func:`index_in_background`
forks a child that reads the run's results files and saves their resume index
(:func:`~evalledger.ledger.scan_ledger` does both), while this process goes on with the dataset.
When the writer then opens its file under its lock, it finds the index and reads only the bytes
after it, as on any resume.

The child takes no lock, like every reader that saves an index: an index vouches only for the
bytes it covers, and the writer trusts it only if it is still valid for the file it opened (same
device and inode, at least that long, same fingerprint: :mod:`evalledger.ledger.index`). A file
rewritten, moved aside or overwritten in between has another inode or fingerprint, and is read in
full as if there were no index. The child writes nothing else, prints nothing, and leaves with
``os._exit``; if it fails or is killed, the writer reads the file itself, as before.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import TracebackType

from evalledger.ledger import index as ledger_index
from evalledger.ledger.layout import results_files
from evalledger.ledger.resume import index_enabled, scan_ledger
from evalledger.ledger.tally import close_all_but, may_fork

#: Fork only when at least this much of the run's results is not covered by a valid index (less is
#: read in well under a second by the writer itself).
PREFETCH_BYTES = 64 << 20


class Indexing:
    """A child indexing a run's results files (or nothing: ``pid`` None). As a context manager,
    it waits for the child on a normal exit, and kills it when the block raised."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def wait(self) -> None:
        """Wait for the child (how it ended does not matter: the writer trusts only a valid index)."""
        if self.pid is not None:
            os.waitpid(self.pid, 0)
            self.pid = None

    def cancel(self) -> None:
        """Stop the child now (an index is renamed into place whole, or not at all)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()

    def __enter__(self) -> Indexing:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.wait()
        else:
            self.cancel()


def unindexed_bytes(run_dir: Path) -> int:
    """How many bytes of ``run_dir``'s results files their indexes do not claim to cover (by the
    indexes' headers alone: a resume that has its indexes reads none of them twice)."""
    total = 0
    for path in results_files(run_dir):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        total += st.st_size - ledger_index.claimed_end(path, st)
    return total


def index_in_background(run_dir: Path) -> Indexing:
    """Start indexing ``run_dir``'s results files in a forked child (see the module docstring), when
    the index is enabled, at least :data:`PREFETCH_BYTES` are not indexed, and this process may fork
    (Linux, two cores, no other thread); else a handle with nothing to wait for."""
    if not (index_enabled() and may_fork() and unindexed_bytes(run_dir) >= PREFETCH_BYTES):
        return Indexing(None)
    pid = os.fork()
    if pid == 0:  # the child: index, and leave without running anything of the parent's
        code = 1
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)  # not the parent's handlers: Ctrl-C ends it
            quiet = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(quiet, fd)
            close_all_but()  # none of the parent's files (a lock descriptor would outlive it)
            scan_ledger(run_dir)
            code = 0
        finally:
            os._exit(code)
    return Indexing(pid)
