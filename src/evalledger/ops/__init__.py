"""Tools over run directories: ``verify``, ``prune``, ``merge``, ``status`` of a sharded run,
``rescore`` (a run's stored responses scored again, into a new run), and Slurm job arrays. Each
reads (and, for prune, merge and rescore, writes) runs under the ledger's rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evalledger.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first use (see evalledger.lazy)
    from evalledger.ops.merge import MergeReport, merge_run
    from evalledger.ops.prune import PrunePlan, PruneResult, execute_prune, plan_prune, prune_runs
    from evalledger.ops.rescore import RescoreReport, rescore_run
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
    "RescoreReport",
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
    "rescore_run",
    "run_status",
    "slurm_dir",
    "submit_script",
    "unit_label",
    "verify_run",
    "write_script",
]

__getattr__, __dir__ = lazy_exports(__name__, __all__, {
    "evalledger.ops.merge": ("MergeReport", "merge_run"),
    "evalledger.ops.prune": ("PrunePlan", "PruneResult", "execute_prune", "plan_prune", "prune_runs"),
    "evalledger.ops.rescore": ("RescoreReport", "rescore_run"),
    "evalledger.ops.slurm": ("DEFAULT_GRACE_SECONDS", "SlurmOptions", "log_path_pattern", "python_command",
        "record_submission", "render_script", "slurm_dir", "submit_script", "write_script"),
    "evalledger.ops.status": ("DEFAULT_STALLED_AFTER", "RunStatus", "ShardStatus", "expected_sample_ids", "run_status"),
    "evalledger.ops.units": ("expected_units", "unit_label"),
    "evalledger.ops.verify": ("VerifyReport", "verify_run"),
})
