"""Small durable-file helpers: atomic JSON writes and directory fsync."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


def utc_now() -> str:
    """ISO-8601 UTC timestamp with milliseconds, e.g. ``2026-11-23T15:59:36.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def file_timestamp() -> str:
    """A timestamp safe in file names and sortable: ``20261123T155936.123456Z``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def hostname() -> str:
    return socket.gethostname()


def switch_on(variable: str) -> bool:
    """Whether the on/off switch in environment variable ``variable`` is on: unset or anything but
    ``0``, ``off``, ``no`` or ``false`` (any case)."""
    return os.environ.get(variable, "").strip().lower() not in ("0", "off", "no", "false")


def user_cache_home() -> Path:
    """The user's cache directory: ``$XDG_CACHE_HOME`` when it is absolute (as the XDG spec says),
    else ``~/.cache``. evalledger's caches live under ``<it>/evalledger/``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path("~/.cache").expanduser()


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or a new file in it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_file_atomically(path: Path, write_to: Callable[[Path], None], *, durable: bool = True,
                          exclusive: bool = False, tmp: Path | None = None) -> bool:
    """The one way a file is replaced (or created) in one step: ``write_to`` fills a temporary file
    beside ``path``, which is then renamed over it (``exclusive``: linked to it only if ``path``
    does not exist yet, for files that several writers may race to create).

    A crash at any instant leaves the old file or the new one, never a mix. ``durable`` fsyncs the
    new file before it is published and the directory after (so that both survive a power loss);
    caches, which can always be rebuilt, skip it. ``tmp`` names the temporary file (default
    ``.<name>.<pid>-<random>.tmp``, which a later writer may sweep up after a crash). Returns False
    only when ``exclusive`` and ``path`` already existed; any failure removes the temporary file
    and raises.
    """
    path = Path(path)
    tmp = tmp or path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write_to(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if exclusive:
            try:
                os.link(tmp, path)  # atomic create-if-absent, unlike rename
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def leftover_temps(path: Path) -> list[Path]:
    """Temporary files that :func:`write_file_atomically` left beside ``path`` when its process was
    killed mid-write (``path`` may be a directory's ``*``: every target in it)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see :func:`write_file_atomically`)."""
    write_file_atomically(path, lambda tmp: tmp.write_bytes(data))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_bytes_atomic(path, _json_bytes(obj))


def create_json_exclusive(path: Path, obj: Any) -> bool:
    """Create ``path`` with ``obj`` only if it does not exist yet, atomically.

    Returns False if another writer created it first. Used for the manifest, which shards started
    at the same moment on different machines may race to create.
    """
    data = _json_bytes(obj)
    return write_file_atomically(path, lambda tmp: tmp.write_bytes(data), exclusive=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
