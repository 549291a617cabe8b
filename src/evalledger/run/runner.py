"""Scheduling: a bounded queue, N workers, retries, group commit, signals, progress, exit codes.

``run_experiment(config)`` is the whole of ``evalledger run``; the CLI only parses flags.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

from evalledger.config import RunConfig
from evalledger.datasets import sample_ids, with_ids, without_ids
from evalledger.errors import DiskSpaceError, EvalLedgerError, FatalProviderError, RunExistsError, UsageError
from evalledger.fsio import check_free_space, describe_free, human_bytes, is_disk_error
from evalledger.ledger import (
    FileCounts,
    GroupCommitter,
    LedgerScan,
    RunLedger,
    StatusWriter,
    move_run_aside,
    note_committed,
    results_files,
    save_own_index,
    scan_ledger,
)
from evalledger.ops import execute_prune, plan_prune
from evalledger.pricing import Price
from evalledger.providers import Provider, make_provider
from evalledger.run.budget import Budget, Estimate, estimate_pending
from evalledger.run.limits import Limits
from evalledger.run.manifest import check_or_create_manifest
from evalledger.run.outcome import EXIT_OK, RunSummary, set_outcome
from evalledger.run.prepare import PreparedRun, prepare_run
from evalledger.run.progress import Progress
from evalledger.run.retry import RetryPolicy
from evalledger.run.sample import RunState, SampleContext
from evalledger.run.scheduler import schedule
from evalledger.run.signals import install_signal_handlers

log = logging.getLogger(__name__)


def run_experiment(config: RunConfig) -> RunSummary:
    """Run (or resume) an experiment to completion or interruption. Blocking.

    Raises :class:`EvalLedgerError` subclasses for usage, dataset, drift and lock problems
    (before any request is sent); provider fatals, signals and disk errors are reported in the
    returned :class:`RunSummary` (``exit_code`` 2, 130/143, 4).
    """
    return asyncio.run(run_experiment_async(config))


def estimate_experiment(config: RunConfig) -> Estimate:
    """Projected tokens and cost of the samples ``run`` would send now (nothing is sent or written).

    Uses the run's finished samples' average usage once there are any, else prompt lengths and
    ``max_tokens``. ``cost_usd`` is None when the model has no known price.
    """
    # Estimating sends nothing and runs nothing: the code-execution and output-dir gates do not apply.
    prepared = prepare_run(config, check_output_dir=False, check_code_execution=False)
    price = config.price()
    seen = scan_ledger(prepared.run_dir)
    done = seen.completed if config.retry_errors else seen.completed | seen.errored
    pending = without_ids(prepared.selection, done)
    return estimate_pending(prepared.task, pending, config.max_tokens, price, seen.observed)


async def run_experiment_async(config: RunConfig) -> RunSummary:
    """The async form of :func:`run_experiment`, for callers that already run an event loop."""
    t0 = time.monotonic()
    prepared = prepare_run(config)
    # Built now (no network yet) so a bad --model or a missing key is refused before anything is written.
    provider = make_provider(config.model, base_url=config.base_url, api_key=config.resolved_api_key(),
                             timeout=config.request_timeout, concurrency=config.concurrency)
    price = config.price()
    if config.max_cost is not None and price is None:
        raise UsageError(
            f"--max-cost needs a price for {config.model}, and the price table has none: pass "
            "--price-input/--price-output (USD per 1M tokens) or --prices FILE"
        )
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
    ledger = RunLedger(run_dir, config.shard)
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        ledger.open_writer()  # LockHeldError (exit 2) if another process writes this run/shard
        prepared.save_dataset_index()  # the dataset was validated in full: the next resume can skip that
        if ledger.repaired_tail is not None:
            log.warning(f"repaired a torn last line in {ledger.results_path.name}; the partial bytes are kept in {ledger.repaired_tail}")
        for message in ledger.repair_warnings:  # garbage lines moved aside (item 5 of issue 4)
            log.warning(message)
        # One pass over the ledger serves the manifest check and the pending set.
        seen = scan_ledger(run_dir, prepared.dataset.all_ids, own=ledger.results_path)
        if seen.own_end != ledger.results_size:
            seen.own = None  # a torn tail the repair could not move aside: do not index this file
        check_or_create_manifest(prepared, seen)
        # The status marker is written while we hold the lock: `running` once the pending set is
        # known, the final state before the lock is released (see lifecycle.py).
        status = StatusWriter(run_dir, config.shard, prepared.run_id)
        try:
            summary = await _execute(prepared, ledger, provider, price, t0, seen, status)
        except BaseException as e:
            if status.begun:
                status.finish_failed(_disk_error(e, run_dir))
            raise
        status.finish_from_summary(summary, [ledger.results_path, ledger.calls_path])
    except OSError as e:
        err = _disk_error(e, run_dir)
        if err is e:
            raise
        raise err from e
    finally:
        ledger.close()
    summary.moved_aside = moved_aside
    return summary


def _prune_old_copies(config: RunConfig, run_id: str) -> None:
    """``--keep-old N``: remove this run's moved-aside copies beyond the newest N, as ``prune`` does."""
    plan = plan_prune(config.output_dir, keep=config.keep_old or 0, run_id=run_id, corrupt=False)
    result = execute_prune(plan)
    for item in result.removed:
        log.warning(f"--keep-old {config.keep_old}: removed {item.path} ({human_bytes(item.bytes)})")
    for kept in plan.kept + result.skipped + result.failed:
        if not kept.by_keep:
            log.warning(f"--keep-old {config.keep_old}: kept {kept.path}: {kept.reason}")


def _disk_error(e: BaseException, run_dir: Path) -> BaseException:
    """A full disk while setting up (nothing was sent yet) as a clear DiskSpaceError; others as they are."""
    if isinstance(e, OSError) and is_disk_error(e):
        return DiskSpaceError(f"cannot write to {run_dir}: {e}; {describe_free(run_dir)}")
    return e


async def _execute(prepared: PreparedRun, ledger: RunLedger, provider: Provider, price: Price | None,
                   t0: float, seen: LedgerScan, status: StatusWriter) -> RunSummary:
    config = prepared.config
    state_doc, problem = ledger.read_resume_state()
    had_results = ledger.results_path.exists() and ledger.results_path.stat().st_size > 0
    if state_doc is not None and state_doc.get("config_hash") == prepared.config_hash:
        ledger.restore_random_state(state_doc)
        counters = {k: int(state_doc.get("counters", {}).get(k, 0)) for k in _COUNTERS}
    else:
        if had_results and problem:
            log.warning(f"{problem}; rebuilding the resume state from the results file")
        # A fresh run (or a rebuilt state) starts the global RNG from the run seed; the counters
        # are recounted from this shard's results file, the source of truth.
        random.seed(config.seed)
        own = seen.files.get(ledger.results_path, FileCounts())
        counters = {"ok_records": own.ok_records, "error_records": own.error_records, "requests": own.requests}

    completed = seen.completed
    # By ids: the selection may be a LazySamples, whose rows are read back only when sent. Ids are
    # unique, so a selection of every row is the dataset's own id set (no second copy of it).
    all_ids = prepared.dataset.all_ids
    whole = len(prepared.selection) == len(all_ids)
    selection_set = all_ids if whole else set(sample_ids(prepared.selection))
    # The one pass over the selection: what is not done yet (on a resume, a small set).
    not_done = selection_set.difference(completed)
    skipped = len(selection_set) - len(not_done)
    pending = with_ids(prepared.selection, not_done if config.retry_errors else not_done.difference(seen.errored))
    if pending:
        prompt_bytes = sum(len(json.dumps(s.fields, default=str)) for s in pending[:200]) // min(len(pending), 200)
        check_free_space(prepared.run_dir, ledger.results_path, len(pending), prompt_bytes, config.max_tokens,
                         config.min_free_mb)

    label = prepared.run_id if config.shard is None else f"{prepared.run_id} [shard {config.shard[0]}/{config.shard[1]}]"
    progress = Progress(len(prepared.selection), len(prepared.selection) - len(pending), quiet=config.quiet,
                        interval=config.progress_interval, label=label, concurrency=config.concurrency)
    _info(config, f"run {prepared.run_id}: {len(prepared.selection)} samples, {skipped} already done, "
                  f"{len(pending)} to run → {prepared.run_dir}")
    previous = status.begin(total=len(prepared.selection), pending=len(pending), command=config.resume_command())
    if previous is not None and previous.get("reason") == "process gone":
        log.warning(f"the previous writer of this {'run' if config.shard is None else 'shard'} (pid "
                      f"{previous.get('pid')} on {previous.get('host')}, started {previous.get('started_at')}) "
                      "stopped without a final status; its acknowledged records are kept and this run continues it")
    estimate = estimate_pending(prepared.task, pending, config.max_tokens, price, seen.observed)
    if pending:
        _info(config, estimate.line())
    budget = None
    if config.max_cost is not None:
        budget = Budget(config.max_cost, seen.billed_cost, estimate.per_sample_cost or 0.0)

    run = RunState(stop=asyncio.Event())
    new: dict[str, Any] = {"ok": 0, "error": 0, "spent": 0.0}  # acknowledged by this invocation
    requests_before = counters["requests"]
    since_checkpoint = 0

    state_warned = False
    consecutive_errors = 0

    def write_state() -> None:
        nonlocal state_warned
        counters["requests"] = requests_before + run.requests
        try:
            ledger.write_resume_state({**counters, "completed_samples": len(completed)}, prepared.config_hash)
        except OSError as e:
            # The JSONL is the source of truth and the state is rebuilt from it; never stop for this.
            if not state_warned:
                state_warned = True
                log.warning(f"could not write {ledger.state_path.name}: {e} (it will be rebuilt from the results)")

    def on_record(r: dict[str, Any]) -> None:
        """Every finished record, as its worker hands it to the committer (before its fsync)."""
        nonlocal consecutive_errors
        if r["status"] == "ok":
            consecutive_errors = 0
            return
        consecutive_errors += 1
        if config.max_consecutive_errors and consecutive_errors >= config.max_consecutive_errors \
                and run.outage is None:
            # Circuit breaker: the API looks down; stop paying for requests that fail. Decided
            # here, not on commit: a worker does not wait for its fsync before its next request.
            run.outage = r.get("error") or {}
            run.stop.set()

    def on_commit(records: list[dict[str, Any]]) -> None:
        nonlocal since_checkpoint
        for r in records:
            if budget is not None:
                budget.add((r.get("paid") or {}).get("cost_usd") or 0.0, True, r.get("cost_usd"))
            if r["status"] == "ok":
                new["ok"] += 1
                counters["ok_records"] += 1
                completed.add(r["sample_id"])
                (seen.correct.add if r.get("correct") is True else seen.correct.discard)(r["sample_id"])
                seen.errored.discard(r["sample_id"])
                new["spent"] += (r.get("paid") or {}).get("cost_usd") or 0.0
            else:
                new["error"] += 1
                counters["error_records"] += 1
                if r["sample_id"] not in completed:
                    seen.errored.add(r["sample_id"])
                new["spent"] += (r.get("paid") or {}).get("cost_usd") or 0.0
        progress.update(records)
        since_checkpoint += len(records)
        if since_checkpoint >= config.checkpoint_every:
            since_checkpoint = 0
            write_state()  # small file, atomic; cheap next to the appends it follows

    last_index_save = time.monotonic()

    def on_commit_indexed(records: list[dict[str, Any]]) -> None:
        nonlocal last_index_save
        if seen.own is not None:
            note_committed(seen.own, records)
            # Also while running, not only when the writer stops: after a kill -9 the next resume
            # then parses only what was appended since (a million records cost ~17 s to parse).
            # At most every INDEX_EVERY_S and once the file grew by the index's rewrite fraction.
            if time.monotonic() - last_index_save >= INDEX_EVERY_S and committer.failure is None:
                last_index_save = time.monotonic()
                end = committer.acknowledged_end
                if save_own_index(ledger.results_path, seen.own, end, seen.own_indexed_end):
                    seen.own_indexed_end = end
        on_commit(records)

    async def persist_call(rec: dict[str, Any]) -> None:
        await asyncio.to_thread(ledger.append_calls, [rec])
        new["spent"] += rec.get("cost_usd") or 0.0
        if budget is not None:
            budget.add(rec.get("cost_usd") or 0.0, False)

    limits = Limits(max_concurrency=config.concurrency, adaptive=config.adaptive_concurrency, rpm=config.rpm,
                    tpm=config.tpm, on_change=lambda limit, paused: (progress.set_concurrency(limit),
                                                                     progress.set_paused(paused)),
                    on_wait=progress.note_rate_limit_wait)
    multi_turn = prepared.task.multi_turn
    ctx = SampleContext(
        task=prepared.task, task_name=prepared.task.name or prepared.task_spec, model=config.model,
        shard=config.shard, seed=config.seed, temperature=config.temperature, max_tokens=config.max_tokens,
        top_p=config.top_p, policy=RetryPolicy(max_attempts=config.max_attempts, max_wait=config.max_retry_wait),
        provider=provider, run=run, price=price,
        cached_calls=ledger.cached_calls(set(sample_ids(pending))) if multi_turn and pending else {},
        persist_call=persist_call if multi_turn else None, limits=limits,
    )
    started = False
    committer = GroupCommitter(ledger, on_commit=on_commit_indexed, fsync=config.fsync,
                               max_unsynced=2 * max(config.concurrency, 1))
    restore_signals = lambda: None  # noqa: E731
    try:
        if pending:
            await provider.start()
            started = True
            committer.start()
            restore_signals = install_signal_handlers(run, config)
            await schedule(ctx, config.concurrency, committer, run, pending, budget, on_record)
            await committer.close()
    finally:
        restore_signals()
        progress.close()
        write_state()  # even after a failed append: the state is another file and may still fit
        if started:
            await provider.aclose()

    if started and committer.failure is None and seen.own is not None:
        # What this run appended is summed up already: index its file so the next resume skips it.
        save_own_index(ledger.results_path, seen.own, ledger.results_size, seen.own_indexed_end)
    remaining = len(not_done.difference(completed))  # completed only grows
    summary = RunSummary(
        run_id=prepared.run_id,
        run_dir=prepared.run_dir,
        exit_code=EXIT_OK,
        status="complete",
        total_samples=len(prepared.selection),
        skipped_completed=skipped,
        attempted=run.attempted,
        ok=new["ok"],
        errors=new["error"],
        requests=run.requests,
        remaining=remaining,
        duration_s=time.monotonic() - t0,
    )
    set_outcome(summary, run, config, provider, budget, committer.failure, ledger, remaining)
    if summary.exit_code != EXIT_OK:
        summary.resume_command = config.resume_command()
    # A light summary from what the run already holds: the full get_stats() re-reads every file,
    # ~35 s on a million records, too slow for a Slurm pre-emption window.
    n_done = len(selection_set) - remaining
    if whole:  # every correct id is a dataset id or one of the (few) foreign ones
        n_correct = len(seen.correct) - len(seen.correct.intersection(seen.foreign))
    else:
        n_correct = len(seen.correct) - len(seen.correct.difference(selection_set))
    summary.stats = {
        "run_id": prepared.run_id, "run_dir": str(prepared.run_dir), "shard": config.shard,
        "total_samples": len(selection_set), "completed_samples": n_done,
        "error_count": len(selection_set & seen.errored), "pending_samples": remaining,
        "correct_count": n_correct, "accuracy": n_correct / n_done if n_done else None,
        "cost_usd": (seen.billed_cost + new["spent"]) if price is not None else None,
    }
    summary.limits = {**limits.stats.__dict__, "final_limit": limits.limit}
    return summary


_COUNTERS = ("ok_records", "error_records", "requests")
#: Seconds between saves of the writer's ledger index during a run (see on_commit_indexed).
INDEX_EVERY_S = 120.0


def _has_results(run_dir: Path) -> bool:
    return any(p.stat().st_size > 0 for p in results_files(run_dir))


def _info(config: RunConfig, msg: str) -> None:
    if not config.quiet:
        print(msg, file=sys.stderr, flush=True)



__all__ = ["RunSummary", "run_experiment", "run_experiment_async", "EvalLedgerError", "FatalProviderError"]
