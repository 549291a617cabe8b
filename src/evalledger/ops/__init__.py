"""Tools over run directories: ``verify``, ``prune``, ``merge``, ``status`` of a sharded run, and
Slurm job arrays. Each reads (and, for prune and merge, writes) runs under the ledger's rules."""

from __future__ import annotations

from evalledger.ops.merge import MergeReport, merge_run
from evalledger.ops.prune import PrunePlan, PruneResult, execute_prune, plan_prune, prune_runs
from evalledger.ops.slurm import (
    DEFAULT_GRACE_SECONDS,
    SlurmOptions,
    log_path_pattern,
    python_command,
    record_submission,
    render_script,
    slurm_dir,
    submit_script,
    write_script,
)
from evalledger.ops.status import (
    DEFAULT_STALLED_AFTER,
    RunStatus,
    ShardStatus,
    expected_sample_ids,
    run_status,
)
from evalledger.ops.units import expected_units, unit_label
from evalledger.ops.verify import VerifyReport, verify_run

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_STALLED_AFTER",
    "MergeReport",
    "PrunePlan",
    "PruneResult",
    "RunStatus",
    "ShardStatus",
    "SlurmOptions",
    "VerifyReport",
    "execute_prune",
    "expected_sample_ids",
    "expected_units",
    "log_path_pattern",
    "merge_run",
    "plan_prune",
    "prune_runs",
    "python_command",
    "record_submission",
    "render_script",
    "run_status",
    "slurm_dir",
    "submit_script",
    "unit_label",
    "verify_run",
    "write_script",
]
