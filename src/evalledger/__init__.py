"""evalledger: a resumable runner for LLM evaluation experiments over paid APIs.

The public API::

    from evalledger import RunConfig, run_experiment, get_stats, load_results

    summary = run_experiment(RunConfig(dataset="gsm8k", model="openai/gpt-4o-mini", limit=100))
    print(get_stats(summary.run_id))          # counts, accuracy, tokens, cost
    df = load_results(summary.run_id)         # one row per sample, all shards merged
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .errors import (  # noqa: E402
    ConfigDriftError,
    DatasetError,
    EvalLedgerError,
    FatalProviderError,
    LockHeldError,
    RunExistsError,
    UsageError,
)
from .ledger import CheckpointManager  # noqa: E402
from .lifecycle import RunLifecycle, run_lifecycle  # noqa: E402
from .prune import PrunePlan, PruneResult, plan_prune, prune_runs  # noqa: E402
from .report import get_stats, load_results, load_runs, resolve_run_dir  # noqa: E402
from .runner import RunSummary, estimate_experiment, run_experiment, run_experiment_async  # noqa: E402
from .verify import VerifyReport, verify_run  # noqa: E402

__all__ = [
    "CheckpointManager",
    "ConfigDriftError",
    "DatasetError",
    "EvalLedgerError",
    "FatalProviderError",
    "LockHeldError",
    "RunConfig",
    "RunExistsError",
    "RunSummary",
    "UsageError",
    "__version__",
    "get_stats",
    "load_results",
    "load_runs",
    "resolve_run_dir",
    "PrunePlan",
    "PruneResult",
    "RunLifecycle",
    "VerifyReport",
    "plan_prune",
    "prune_runs",
    "run_lifecycle",
    "verify_run",
    "estimate_experiment",
    "run_experiment",
    "run_experiment_async",
]
