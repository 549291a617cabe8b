"""Whether a process is writing a run right now, found without touching its locks.

Probing a lock by taking it, even for a microsecond, could make a writer starting at that instant
fail with "lock held". On Linux the kernel's own table (``/proc/locks``) answers read-only; the
``.lock….owner`` file beside a lock names the holder where the table cannot see it (another host
of a shared filesystem).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evalledger.fsio import hostname
from evalledger.ledger.layout import RunPaths, owner_path, writer_locks


def held_lock_inodes() -> set[tuple[int, int, int]] | None:
    """(major, minor, inode) of every file with a lock in the kernel's table; None if unknown."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    held = set()
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 22303 fe:00:2156988 0 EOF" (a "->" marks a waiter: skip it)
        if len(parts) < 6 or "->" in parts[1]:
            continue
        try:
            major, minor, inode = parts[5].split(":")
            held.add((int(major, 16), int(minor, 16), int(inode)))
        except ValueError:
            continue
    return held


def lock_key(st: os.stat_result) -> tuple[int, int, int]:
    """How /proc/locks names a file: (major, minor, inode), to look up in :func:`held_lock_inodes`."""
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def lock_status(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Locks of a run that a process holds right now: ``{lock file name: owner info}``.

    Read-only. Uses /proc/locks where it exists (local filesystems); elsewhere, and for locks
    taken on other hosts of a shared filesystem, falls back to the ``.owner`` file and whether
    its pid is alive on this host (assumed alive on another host).
    """
    run_dir = Path(run_dir)
    held_inodes = held_lock_inodes()
    out: dict[str, dict[str, Any]] = {}
    # Not the run lock: it is shared by shard writers; the per-writer locks say who is writing.
    for lock in writer_locks(run_dir):
        owner: dict[str, Any] = {}
        try:
            owner = json.loads(owner_path(lock).read_text())
        except (OSError, ValueError):
            pass
        held = False
        if held_inodes is not None:
            try:
                held = lock_key(lock.stat()) in held_inodes
            except OSError:
                held = False
        if not held and owner:
            held = _owner_alive(owner)
        if held:
            out[lock.name] = owner
    return out


def _owner_alive(owner: dict[str, Any]) -> bool:
    if owner.get("host") != hostname():
        return True  # cannot see another host's processes: trust the owner file
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def flock_held(path: Path) -> bool:
    inodes = held_lock_inodes()
    if inodes is None:
        return False
    try:
        return lock_key(path.stat()) in inodes
    except OSError:
        return False


def lock_state(lock_path: Path, owner_file: Path | None = None) -> tuple[str, dict[str, Any] | None]:
    """Whether a writer holds ``lock_path``, without taking the lock.

    Taking it, even for an instant, could make a task that starts at that instant fail with
    "lock held"; so this reads ``/proc/locks`` instead. Returns ``(state, owner)``: ``"held"``,
    ``"free"``, ``"held elsewhere"`` (the owner file names another host, whose locks this host
    cannot see, e.g. on NFS), or ``"unknown"``; ``owner`` is the owner file's content if any
    (``owner_file``, by default the one beside the lock).
    """
    owner: dict[str, Any] | None = None
    try:
        owner = json.loads((owner_path(lock_path) if owner_file is None else owner_file).read_text())
    except (OSError, ValueError):
        owner = None
    try:
        st = os.stat(lock_path)
    except FileNotFoundError:
        return "free", owner
    held = held_lock_inodes()
    if held is not None and lock_key(st) in held:
        return "held", owner
    if owner is not None and owner.get("host") not in (None, hostname()):
        return "held elsewhere", owner  # the owner file is removed on a clean close
    if held is None:
        return "unknown", owner
    return "free", owner


def locks_held(run_dir: Path) -> dict[str, dict[str, Any]]:
    """:func:`lock_status` plus the shared ``.lock.run`` when a process holds it (what ``prune``
    must not touch)."""
    held = lock_status(run_dir)
    run_lock = RunPaths(Path(run_dir)).run_lock
    if run_lock.exists() and flock_held(run_lock):
        held.setdefault(run_lock.name, {})
    return held
