"""File-system helpers: atomic and durable writes, checksummed cache files, disk space, and a GC
pause for bulk loads. Knows nothing about runs."""

from __future__ import annotations

from evalledger.fsio import cachefile
from evalledger.fsio.atomic import (
    canonical_json,
    create_json_exclusive,
    file_timestamp,
    fsync_dir,
    hostname,
    leftover_temps,
    sha256_file,
    switch_on,
    user_cache_home,
    utc_now,
    write_bytes_atomic,
    write_file_atomically,
    write_json_atomic,
)
from evalledger.fsio.diskspace import (
    check_free_space,
    describe_free,
    dir_size,
    disk_failure_message,
    human_bytes,
    is_disk_error,
    node_local_reason,
)
from evalledger.fsio.gcpause import paused_gc

__all__ = [
    "cachefile",
    "canonical_json",
    "check_free_space",
    "create_json_exclusive",
    "describe_free",
    "dir_size",
    "disk_failure_message",
    "file_timestamp",
    "fsync_dir",
    "hostname",
    "human_bytes",
    "node_local_reason",
    "is_disk_error",
    "paused_gc",
    "sha256_file",
    "switch_on",
    "user_cache_home",
    "utc_now",
    "leftover_temps",
    "write_bytes_atomic",
    "write_file_atomically",
    "write_json_atomic",
]
