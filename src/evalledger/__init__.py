"""evalledger: a resumable runner for LLM evaluation experiments over paid APIs.

The public API::

    from evalledger import RunConfig, run_experiment, get_stats, load_results

    summary = run_experiment(RunConfig(dataset="gsm8k", model="openai/gpt-4o-mini", limit=100))
    print(get_stats(summary.run_id))          # counts, accuracy, tokens, cost
    df = load_results(summary.run_id)         # one row per sample, all shards merged

The parts, from the top down (each imports only those below it; see ``docs/architecture.md``):
``cli`` → ``study`` → ``run`` → ``ops`` → ``readers`` → ``ledger`` | ``datasets`` | ``tasks`` |
``providers`` → the leaf modules (``errors``, ``config``, ``records``, ``pricing``, ``samples``,
``sandbox``, ``fsio``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evalledger._version import __version__
from evalledger.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first use (see evalledger.lazy)
    from evalledger.config import RunConfig
    from evalledger.configfile import load_run_config, load_study_config, run_config_toml, study_config_toml
    from evalledger.errors import (
        ConfigDriftError,
        DatasetError,
        EvalLedgerError,
        FatalProviderError,
        LockHeldError,
        RunExistsError,
        UsageError,
    )
    from evalledger.ledger import RunLifecycle, run_lifecycle
    from evalledger.ops import (
        PrunePlan,
        PruneResult,
        RescoreReport,
        VerifyReport,
        plan_prune,
        prune_runs,
        rescore_run,
        verify_run,
    )
    from evalledger.readers import (
        CheckpointManager,
        Comparison,
        ComparisonReport,
        compare_runs,
        get_stats,
        load_results,
        load_runs,
        resolve_run_dir,
    )
    from evalledger.response_cache import CachePrune, CacheStats, cache_stats, prune_cache
    from evalledger.run import RunSummary, estimate_experiment, run_experiment, run_experiment_async

__all__ = [
    "CachePrune",
    "CacheStats",
    "CheckpointManager",
    "Comparison",
    "ComparisonReport",
    "ConfigDriftError",
    "DatasetError",
    "EvalLedgerError",
    "FatalProviderError",
    "LockHeldError",
    "PrunePlan",
    "PruneResult",
    "RescoreReport",
    "RunConfig",
    "RunExistsError",
    "RunLifecycle",
    "RunSummary",
    "UsageError",
    "VerifyReport",
    "__version__",
    "cache_stats",
    "compare_runs",
    "estimate_experiment",
    "get_stats",
    "load_results",
    "load_run_config",
    "load_runs",
    "load_study_config",
    "plan_prune",
    "prune_cache",
    "prune_runs",
    "rescore_run",
    "resolve_run_dir",
    "run_config_toml",
    "run_experiment",
    "run_experiment_async",
    "run_lifecycle",
    "study_config_toml",
    "verify_run",
]

__getattr__, __dir__ = lazy_exports(__name__, __all__, {
    "evalledger.config": ("RunConfig",),
    "evalledger.configfile": ("load_run_config", "load_study_config", "run_config_toml", "study_config_toml"),
    "evalledger.errors": ("ConfigDriftError", "DatasetError", "EvalLedgerError", "FatalProviderError",
        "LockHeldError", "RunExistsError", "UsageError"),
    "evalledger.ledger": ("RunLifecycle", "run_lifecycle"),
    "evalledger.ops": ("PrunePlan", "PruneResult", "RescoreReport", "VerifyReport", "plan_prune", "prune_runs",
        "rescore_run", "verify_run"),
    "evalledger.readers": ("CheckpointManager", "Comparison", "ComparisonReport", "compare_runs", "get_stats",
        "load_results", "load_runs", "resolve_run_dir"),
    "evalledger.response_cache": ("CachePrune", "CacheStats", "cache_stats", "prune_cache"),
    "evalledger.run": ("RunSummary", "estimate_experiment", "run_experiment", "run_experiment_async"),
})
