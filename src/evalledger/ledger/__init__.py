"""One run directory on disk: its file layout, the record lines, the writer (:class:`RunLedger`) and
its locks, read-only lock probes, repairs, resume state, group commit, status markers and the resume
index. Knows nothing about models, tasks or datasets: records are plain dicts.

The durability protocol is described in ``docs/architecture.md``.
"""

from __future__ import annotations

from evalledger.ledger.commit import GroupCommitter
from evalledger.ledger.files import (
    ReadReport,
    calls_bill,
    is_record,
    iter_file_records,
    iter_run_records,
    latest_records,
    parse_record_line,
)
from evalledger.ledger.layout import (
    CACHE_DIR,
    MANIFEST,
    RUN_LOCK,
    RunPaths,
    calls_files,
    is_run_dir,
    lock_name,
    owner_path,
    results_files,
    shard_files,
    shard_in_name,
    shard_of_file,
    shard_suffix,
    writer_locks,
)
from evalledger.ledger.locks import WriterLocks, describe_owner
from evalledger.ledger.probe import (
    flock_held,
    held_lock_inodes,
    lock_key,
    lock_state,
    lock_status,
    locks_held,
)
from evalledger.ledger.repair import move_garbage_lines_aside, move_run_aside, repair_torn_tail
from evalledger.ledger.resume import FileCounts, LedgerScan, note_committed, save_own_index, scan_ledger
from evalledger.ledger.run_ledger import RunLedger, encode_lines
from evalledger.ledger.status import (
    COMPLETE,
    INCOMPLETE,
    INTERRUPTED,
    PROCESS_GONE,
    RUNNING,
    UNKNOWN,
    MarkerState,
    RunLifecycle,
    StatusWriter,
    file_fingerprint,
    marker_state,
    read_status,
    run_lifecycle,
    shard_of_status,
    status_files,
    status_path,
)

__all__ = [
    "CACHE_DIR",
    "COMPLETE",
    "FileCounts",
    "GroupCommitter",
    "INCOMPLETE",
    "INTERRUPTED",
    "LedgerScan",
    "MANIFEST",
    "MarkerState",
    "PROCESS_GONE",
    "RUNNING",
    "RUN_LOCK",
    "ReadReport",
    "RunLedger",
    "RunLifecycle",
    "RunPaths",
    "StatusWriter",
    "UNKNOWN",
    "WriterLocks",
    "calls_bill",
    "calls_files",
    "describe_owner",
    "encode_lines",
    "file_fingerprint",
    "flock_held",
    "held_lock_inodes",
    "is_record",
    "is_run_dir",
    "iter_file_records",
    "iter_run_records",
    "latest_records",
    "lock_key",
    "lock_name",
    "lock_state",
    "lock_status",
    "locks_held",
    "marker_state",
    "move_garbage_lines_aside",
    "move_run_aside",
    "note_committed",
    "owner_path",
    "parse_record_line",
    "read_status",
    "repair_torn_tail",
    "results_files",
    "run_lifecycle",
    "save_own_index",
    "scan_ledger",
    "shard_files",
    "shard_in_name",
    "shard_of_file",
    "shard_of_status",
    "shard_suffix",
    "status_files",
    "status_path",
    "writer_locks",
]
