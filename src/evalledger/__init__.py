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

from evalledger._version import __version__
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
from evalledger.ops import PrunePlan, PruneResult, VerifyReport, plan_prune, prune_runs, verify_run
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
from evalledger.run import RunSummary, estimate_experiment, run_experiment, run_experiment_async

__all__ = [
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
    "RunConfig",
    "RunExistsError",
    "RunLifecycle",
    "RunSummary",
    "UsageError",
    "VerifyReport",
    "__version__",
    "compare_runs",
    "estimate_experiment",
    "get_stats",
    "load_results",
    "load_run_config",
    "load_runs",
    "load_study_config",
    "plan_prune",
    "prune_runs",
    "resolve_run_dir",
    "run_config_toml",
    "run_experiment",
    "run_experiment_async",
    "run_lifecycle",
    "study_config_toml",
    "verify_run",
]
