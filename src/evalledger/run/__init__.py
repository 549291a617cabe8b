"""One invocation of an experiment: prepare (dataset, task, run ID, manifest), the session that
schedules samples through the task and the provider with retries, limits, the budget, progress and
signals, and how the run ended (:class:`RunSummary`)."""

from __future__ import annotations

from evalledger.run.budget import Estimate
from evalledger.run.manifest import check_manifest, check_or_create_manifest
from evalledger.run.outcome import RunSummary
from evalledger.run.prepare import PreparedRun, prepare_run, provider_for
from evalledger.run.runner import estimate_experiment, run_experiment, run_experiment_async

__all__ = [
    "Estimate",
    "PreparedRun",
    "RunSummary",
    "check_manifest",
    "check_or_create_manifest",
    "estimate_experiment",
    "prepare_run",
    "provider_for",
    "run_experiment",
    "run_experiment_async",
]
