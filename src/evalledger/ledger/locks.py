"""The locks a writer of a run directory holds, and the messages that name who holds them.

Two locks, both taken at once or refused (:class:`~evalledger.errors.LockHeldError`):

* ``.lock`` (unsharded) or ``.lock.shard-K-of-N``: one writer per results file (filelock);
* ``.lock.run``: an ``flock`` shared by shard writers and exclusive for an unsharded writer,
  so that an unsharded run and shards of the same run never write side by side (each would pay
  for the other's samples).

``.lock….owner`` beside the first names the holder (pid, host, since) for the messages.

A worker process of a ``--workers`` run takes only its own ``.lock….worker-W``: its parent, the
run's (or shard's) writer, holds ``.lock.run`` for it and hands the worker its descriptor, so the
run stays locked while any of its workers lives, even if the parent is killed.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import filelock

from evalledger.errors import EvalLedgerError, LockHeldError
from evalledger.ledger.layout import RunPaths, shard_owner_files, writer_of_owner


class WriterLocks:
    """The locks of one run (or shard) writer; :meth:`acquire`, then :meth:`release` (idempotent)."""

    def __init__(self, paths: RunPaths, *, under_parent: bool = False) -> None:
        """``under_parent``: a worker process, whose parent holds ``.lock.run`` (see the module doc)."""
        self.under_parent = under_parent
        self.run_dir = paths.run_dir
        self.shard = paths.shard
        self.lock_path = paths.lock
        self.owner_path = paths.owner
        self.run_lock_path = paths.run_lock
        self._lock: filelock.BaseFileLock | None = None
        self._run_lock_fd: int | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    @property
    def run_lock_fd(self) -> int | None:
        """The descriptor holding ``.lock.run`` (None unless held): a worker process inherits it."""
        return self._run_lock_fd

    def acquire(self) -> None:
        """This run's (or shard's) lock, then the run-level flock, at once or :class:`LockHeldError`
        (releasing the first if the second is refused)."""
        lock = filelock.FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockHeldError(self._held_message()) from None
        try:
            if self.under_parent:
                self._check_run_lock_held()
            else:
                self._take_run_lock()
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    def release(self, *, forget_owner: bool = False) -> None:
        """Release both locks; ``forget_owner`` also removes the owner file (a writer that wrote one)."""
        if self._lock is not None:
            if forget_owner:
                self.owner_path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None
        if self._run_lock_fd is not None:
            os.close(self._run_lock_fd)  # closing the descriptor drops the flock
            self._run_lock_fd = None

    def _take_run_lock(self) -> None:
        fd = os.open(self.run_lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if self.shard is not None else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if self.shard is not None:
                who = describe_owner(RunPaths(self.run_dir).owner)
                raise LockHeldError(
                    f"an unsharded run is writing {self.run_dir} right now ({who}); a shard would pay again "
                    "for the samples it is sending. Wait for it to finish or stop it."
                ) from None
            files = shard_owner_files(self.run_dir)
            owners = "; ".join(describe_owner(p) for p in files) or "another process"
            if files and all((writer_of_owner(p) or (None, None))[1] is not None for p in files):
                # the workers of a --workers run whose parent is gone
                raise LockHeldError(
                    f"worker processes of an earlier `run --workers` are still writing this run ({owners}): "
                    f"{self.run_dir}. Another writer would pay again for their samples; wait for them or stop them."
                ) from None
            raise LockHeldError(
                f"shards of this run are being written right now ({owners}): "
                f"{self.run_dir}. An unsharded run would pay again for their samples; wait for them or stop them."
            ) from None
        self._run_lock_fd = fd

    def _check_run_lock_held(self) -> None:
        """A worker writes only while ``.lock.run`` is held for it: if it could take it, nobody holds it."""
        fd = os.open(self.run_lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        finally:
            os.close(fd)  # drops the lock if it was taken
        raise EvalLedgerError(f"{self.lock_path.name}: a worker process writes only while its parent holds the "
                              f"run's lock, and nobody holds it: {self.run_dir}")

    def _held_message(self) -> str:
        who = describe_owner(self.owner_path)
        what = "this run" if self.shard is None else f"shard {self.shard[0]}/{self.shard[1]} of this run"
        return (
            f"{what} is already being written by {who}: {self.run_dir}\n"
            "Wait for it to finish or stop it; two writers would pay twice for the same samples."
        )


def describe_owner(owner_path: Path) -> str:
    """``pid P on host H (since T)`` from a lock's owner file, for messages."""
    try:
        owner = json.loads(owner_path.read_text())
        return f"pid {owner.get('pid')} on host {owner.get('host')} (since {owner.get('since')})"
    except (OSError, ValueError):
        return "another process"
