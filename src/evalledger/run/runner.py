"""The public entry points of one invocation: ``run_experiment`` (the whole of ``evalledger run``; the
CLI only parses flags), its async form, and ``estimate_experiment``.

What happens to an existing run directory (``--overwrite``, ``--keep-old``, ``--no-resume``) is
decided here; everything done under the run's lock is a :class:`~evalledger.run.session.RunSession`
(with ``--workers N``, a :class:`~evalledger.run.workers.WorkersSession` and its worker processes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

from evalledger.config import RunConfig
from evalledger.errors import EvalLedgerError, FatalProviderError, RunExistsError
from evalledger.fsio import human_bytes
from evalledger.ledger import RunLedger, move_run_aside, results_files, scan_ledger
from evalledger.ops import execute_prune, plan_prune
from evalledger.readers import note_run_dir
from evalledger.run.budget import Estimate, estimate_pending
from evalledger.run.outcome import RunSummary
from evalledger.run.prepare import PreparedRun, prepare_run
from evalledger.run.session import RunSession
from evalledger.run.units import plan_units
from evalledger.run.workers import WorkersSession

log = logging.getLogger(__name__)


def run_experiment(config: RunConfig) -> RunSummary:
    """Run (or resume) an experiment to completion or interruption. Blocking.

    Raises :class:`EvalLedgerError` subclasses for usage, dataset, drift and lock problems
    (before any request is sent); provider fatals, signals and disk errors are reported in the
    returned :class:`RunSummary` (``exit_code`` 2, 130/143, 4).
    """
    return asyncio.run(run_experiment_async(config))


def estimate_experiment(config: RunConfig) -> Estimate:
    """Projected tokens and cost of the units of work ((sample, epoch): samples × ``--epochs``)
    ``run`` would send now (nothing is sent or written).

    Uses the run's finished samples' average usage once there are any (and only when they came
    from the same endpoint), else prompt lengths and ``max_tokens``. ``cost_usd`` is None when the
    model has no known price.
    """
    # Estimating sends nothing and runs nothing: the code-execution and output-dir gates do not apply.
    prepared = prepare_run(config, check_output_dir=False, check_code_execution=False)
    price = config.price()
    seen = scan_ledger(prepared.run_dir)
    pending = plan_units(prepared.selection, prepared.dataset.all_ids, config.epochs, seen.completed, seen.errored,
                         config.retry_errors).pending
    recorded = (RunLedger(prepared.run_dir).read_manifest() or {}).get("endpoint")
    other_endpoint = isinstance(recorded, str) and recorded != prepared.endpoint
    # Another server's answers say nothing about how long this one's will be.
    est = estimate_pending(prepared.task, pending.samples(), config.max_tokens, price,
                           (0, 0, 0) if other_endpoint else seen.observed, units=len(pending), epochs=config.epochs)
    if other_endpoint:
        return dataclasses.replace(est, basis=f"{est.basis}; the finished samples came from {recorded}, "
                                              "another endpoint, and are not used")
    return est


async def run_experiment_async(config: RunConfig) -> RunSummary:
    """The async form of :func:`run_experiment`, for callers that already run an event loop."""
    t0 = time.monotonic()
    # A resume's results are indexed by a child process while the dataset is checked.
    prepared = prepare_run(config, index_ledger=config.resume and not config.overwrite)
    note_run_dir(prepared.run_dir)  # get_stats(run_id) in this process means this run
    # Built before anything is written: a bad --model, a missing key or --max-cost without a price
    # is refused while the run directory is still as it was. With --workers N the session is the
    # parent of N worker processes (run/workers.py).
    session = RunSession(prepared, t0) if config.workers == 1 else WorkersSession(prepared, t0)
    moved_aside = _make_room(config, prepared)
    summary = await session.run()
    summary.moved_aside = moved_aside
    return summary


def _make_room(config: RunConfig, prepared: PreparedRun) -> Path | None:
    """``--overwrite``: move the old run aside (pruning old copies with ``--keep-old``); ``--no-resume``:
    refuse a run that already has results. Returns where the old run went, if it was moved."""
    moved_aside = None
    run_dir = prepared.run_dir
    if config.overwrite and run_dir.exists():
        moved_aside = move_run_aside(run_dir)
        log.warning(f"moved the old run aside to {moved_aside}")
        if config.keep_old is not None:
            _prune_old_copies(config, prepared.run_id)
    if run_dir.exists() and not config.resume and _has_results(run_dir):
        raise RunExistsError(
            f"run {prepared.run_id} already has results in {run_dir}; --no-resume will not overwrite them. "
            "Drop --no-resume to continue it, or pass --overwrite to move it aside and start afresh."
        )
    return moved_aside


def _prune_old_copies(config: RunConfig, run_id: str) -> None:
    """``--keep-old N``: remove this run's moved-aside copies beyond the newest N, as ``prune`` does."""
    plan = plan_prune(config.output_dir, keep=config.keep_old or 0, run_id=run_id, corrupt=False)
    result = execute_prune(plan)
    for item in result.removed:
        log.warning(f"--keep-old {config.keep_old}: removed {item.path} ({human_bytes(item.bytes)})")
    for kept in plan.kept + result.skipped + result.failed:
        if not kept.by_keep:
            log.warning(f"--keep-old {config.keep_old}: kept {kept.path}: {kept.reason}")


def _has_results(run_dir: Path) -> bool:
    return any(p.stat().st_size > 0 for p in results_files(run_dir))


__all__ = ["RunSummary", "run_experiment", "run_experiment_async", "EvalLedgerError", "FatalProviderError"]
