"""Disk space: free-space checks for the output filesystem, the messages for a disk that refuses writes, and sizes on disk."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from evalledger.errors import DiskSpaceError

#: errno values that mean "the disk cannot take this write", as opposed to a bug or a bad path.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})

# Per-record overhead besides prompt and response text: ids, usage, timestamps, JSON punctuation.
_RECORD_OVERHEAD = 1500
# A token is about four bytes of text; responses are budgeted at their max_tokens.
_BYTES_PER_TOKEN = 4


def free_bytes(path: Path) -> int:
    """Bytes available to this user on the filesystem holding ``path`` (or its nearest parent)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def describe_free(path: Path) -> str:
    try:
        return f"{free_bytes(path) / 1e6:.1f} MB free on the filesystem of {path}"
    except OSError:
        return f"free space on the filesystem of {path} unknown"


def estimate_record_bytes(results_path: Path, prompt_bytes: int, max_tokens: int) -> int:
    """Average bytes per record: measured from the run's own file when it has records, else budgeted."""
    try:
        size = results_path.stat().st_size
        if size > 0:
            with open(results_path, "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            if lines:
                return size // lines + 1
    except OSError:
        pass
    return _RECORD_OVERHEAD + 2 * prompt_bytes + _BYTES_PER_TOKEN * max_tokens


def check_free_space(run_dir: Path, results_path: Path, pending: int, prompt_bytes: int, max_tokens: int,
                     min_free_mb: float) -> None:
    """Refuse to start when the output filesystem cannot hold the run's estimated output plus headroom.

    Raises :class:`DiskSpaceError` (exit 4) naming the path, the free space and the estimate.
    """
    if pending <= 0:
        return
    per_record = estimate_record_bytes(results_path, prompt_bytes, max_tokens)
    # 1.2: error records, errors.log and resume-state rewrites on top of the records themselves
    needed = int(pending * per_record * 1.2) + int(min_free_mb * 1e6)
    free = free_bytes(run_dir)
    if free < needed:
        raise DiskSpaceError(
            f"not enough free space for this run in {run_dir}: {free / 1e6:.1f} MB free, about "
            f"{needed / 1e6:.1f} MB needed ({pending} pending samples × ~{per_record / 1e3:.1f} KB, plus "
            f"--min-free-mb {min_free_mb:g}). Free some space, point --output-dir elsewhere, or lower --min-free-mb."
        )


def disk_failure_message(path: Path, exc: BaseException) -> str:
    """The exit-4 message after a write was refused mid-run."""
    return (f"stopped: writing {path} failed ({exc}); {describe_free(path.parent)}. Records written "
            "before are intact and the partial one was not kept; free some space and run the same "
            "command again to resume.")


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def dir_size(path: Path) -> int:
    """Bytes on disk (allocated blocks) under ``path``, not following symlinks."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_blocks * 512
    total = st.st_blocks * 512
    for root, dirs, files in os.walk(path, onerror=lambda e: None):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def human_bytes(n: float) -> str:
    """``1.2 GB`` style (powers of 1024, as ``du -h``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# Where a path is private to this machine: a job on another node of a cluster cannot see it.
_NODE_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/scratch/local", "/local")
_NODE_LOCAL_FS = {"tmpfs", "ramfs", "devtmpfs", "overlay"}


def _mount_of(path: Path) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount that holds ``path``, from /proc/mounts."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best: tuple[str, str] | None = None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, parts[2])
    return best


def node_local_reason(path: str | Path) -> str | None:
    """Why ``path`` is likely visible on this machine only (None when nothing says so): it lies
    under a temporary directory, or on a memory-backed filesystem."""
    p = Path(path).expanduser().resolve()
    for d in _NODE_LOCAL_DIRS:
        if p == Path(d) or Path(d) in p.parents:
            return f"{p} is under {d}, which is usually local to each node"
    mount = _mount_of(p)
    if mount is not None and mount[1] in _NODE_LOCAL_FS and mount[0] != "/":
        return f"{p} is on a {mount[1]} filesystem ({mount[0]}), which exists on this node only"
    return None

