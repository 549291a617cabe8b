"""One run session: what a single invocation does between taking a run's lock and releasing it.

The steps run in this order, and the order is what keeps the ledger's promises:

1. Open the ledger: take the run's (or shard's) lock, then repair what a crash left.
2. Check the manifest (one scan of the ledger serves it and the pending set), before any request.
   The unit of work is (sample, epoch) (:mod:`evalledger.run.units`): what is done, pending,
   budgeted, counted and shown is units, keyed by :func:`evalledger.records.unit_key`.
3. Restore the resume state (counters, RNG) if written for this config, else rebuild it from the
   results file, the source of truth.
4. Write the ``running`` status marker once the pending set is known. From then on a final marker
   is owed, written before the lock is released whether the run returns a summary or raises.
5. Dispatch: only records the group committer acknowledged (fsynced) count (:meth:`RunSession.on_commit`).
   Afterwards, whatever happened: signals restored, progress closed, resume state written (another
   file: it may still fit after a failed append), provider closed.
6. Summarise how the run ended from what the session already holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Callable, cast

from evalledger.config import RunConfig
from evalledger.errors import UsageError
from evalledger.fsio import check_free_space
from evalledger.ledger import (
    BatchJournal,
    FileCounts,
    GroupCommitter,
    LedgerScan,
    RunLedger,
    StatusWriter,
    manifest_epochs,
    save_own_index,
    scan_ledger,
)
from evalledger.providers import BatchAPI, Provider, split_model, supports_batch
from evalledger.response_cache import response_cache_for
from evalledger.run.acknowledged import AcknowledgedRecords
from evalledger.run.batching import UNITS_IN_FLIGHT, BatchQueue
from evalledger.run.budget import Budget, Estimate, estimate_pending
from evalledger.run.context import RunState, SampleContext
from evalledger.run.limits import Limits
from evalledger.run.manifest import check_or_create_manifest
from evalledger.run.outcome import (
    EXIT_OK,
    RunSummary,
    disk_space_error,
    light_stats,
    note_pending_batches,
    set_outcome,
)
from evalledger.run.prepare import PreparedRun, provider_for
from evalledger.run.progress import Progress, announce
from evalledger.run.resume_state import restore_counters
from evalledger.run.retry import RetryPolicy
from evalledger.run.scheduler import schedule
from evalledger.run.signals import install_signal_handlers
from evalledger.run.units import PendingUnits, UnitPlan, describe_extent, fewer_epochs_note, plan_units

log = logging.getLogger(__name__)

class RunSession(AcknowledgedRecords):
    """One invocation of a prepared run: open the ledger, run what is pending, say how it ended.

    Built before anything is written (the provider is made here, so a bad ``--model`` or a missing
    key is refused first; making it imports no SDK, which :meth:`dispatch` does only when something
    is pending); :meth:`run` does the rest. The attributes set by each step are what the
    later steps and the committer's callbacks share.
    """

    # Set by check_manifest (step 2).
    seen: LedgerScan
    run_epochs: int  # the epochs the run holds (its manifest's: the largest --epochs ever asked)
    # Set by restore_resume_state / plan_pending (step 3).
    counters: dict[str, int]
    completed: set[str]  # unit keys with an ok record
    plan: UnitPlan  # the selection × epochs: what is done, what is sent
    pending: PendingUnits  # possibly over LazySamples: rows are read back as they are sent
    # Set by begin (step 4).
    progress: Progress
    budget: Budget | None
    # Set by build_dispatch (step 5).
    run: RunState
    limits: Limits
    ctx: SampleContext
    committer: GroupCommitter
    batch: BatchQueue | None  # --batch: the run's provider batches

    def __init__(self, prepared: PreparedRun, t0: float) -> None:
        self.prepared = prepared
        self.config: RunConfig = prepared.config
        self.t0 = t0
        self.run_dir: Path = prepared.run_dir
        self.provider = self.build_provider()
        if self.config.batch and not supports_batch(self.provider):
            raise UsageError(f"--batch with --model {self.config.model}: this endpoint has no batch API (only "
                             "OpenAI's own API and Anthropic's have one; drop --base-url or --batch)")
        self.price = self.config.price()
        if self.config.max_cost is not None and self.price is None:
            raise UsageError(
                f"--max-cost needs a price for {self.config.model}, and the price table has none: pass "
                "--price-input/--price-output (USD per 1M tokens) or --prices FILE"
            )
        self.ledger = RunLedger(self.run_dir, self.config.shard)
        self.status = StatusWriter(self.run_dir, self.config.shard, prepared.run_id)
        # Acknowledged by this invocation (spent also counts turn-cache calls as they are appended).
        self.new_ok = 0
        self.new_errors = 0
        self.spent = 0.0
        self.requests_before = 0
        self.since_checkpoint = 0
        self.state_warned = False
        self.consecutive_errors = 0
        self.last_index_save = 0.0
        self.started = False  # the provider was started (and must be closed)

    def build_provider(self) -> Provider:
        """The provider for ``--model``: checked, but no SDK imported and no network yet."""
        return provider_for(self.config)

    # ----------------------------------------------------------------- the whole session
    async def run(self) -> RunSummary:
        """Take the lock, run what is pending, write the final status marker, release the lock.

        A full disk while setting up (nothing was sent yet) is raised as a :class:`DiskSpaceError`.
        """
        try:
            self.open_ledger()
            self.check_manifest()
            try:
                summary = await self.execute()
            except BaseException as e:
                if self.status.begun:
                    self.status.finish_failed(disk_space_error(e, self.run_dir))
                raise
            self.finish_status(summary)
        except OSError as e:
            err = disk_space_error(e, self.run_dir)
            if err is e:
                raise
            raise err from e
        finally:
            self.ledger.close()
        return summary

    def open_ledger(self) -> None:
        """Take the lock (LockHeldError, exit 2, if another process writes this run/shard) and
        repair what a crash left, saying what was repaired."""
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.open_writer()
        self.prepared.save_dataset_index()  # the dataset was validated in full: the next resume can skip that
        if self.ledger.repaired_tail is not None:
            log.warning(f"repaired a torn last line in {self.ledger.results_path.name}; the partial bytes are "
                        f"kept in {self.ledger.repaired_tail}")
        for message in self.ledger.repair_warnings:  # garbage lines and an untrusted state moved aside
            log.warning(message)

    def check_manifest(self) -> None:
        """One pass over the ledger, for the manifest check and (later) the pending set."""
        seen = scan_ledger(self.run_dir, self.prepared.dataset.all_ids, own=self.ledger.results_path)
        if seen.own_end != self.ledger.results_size:
            seen.own = None  # a torn tail the repair could not move aside: do not index this file
        self.run_epochs = manifest_epochs(check_or_create_manifest(self.prepared, seen))
        self.seen = seen

    async def execute(self) -> RunSummary:
        """Steps 3 to 6, under the lock: resume state, pending set, marker, dispatch, summary."""
        self.restore_resume_state()
        self.plan_pending()
        self.begin()
        self.build_dispatch()
        await self.dispatch()
        self.save_final_index()
        return self.summarize()

    def finish_status(self, summary: RunSummary) -> None:
        """The final status marker, before the lock is released (complete: the files fingerprinted)."""
        self.status.finish_from_summary(summary, [self.ledger.results_path, self.ledger.calls_path])

    # ----------------------------------------------------------------- before dispatch
    def restore_resume_state(self) -> None:
        """Counters and the global RNG from the resume state if it was written for this config, else
        rebuilt: the RNG from the run seed, the counters from this shard's results file."""
        own = self.seen.files.get(self.ledger.results_path, FileCounts())
        self.counters = restore_counters(self.ledger, self.prepared.config_hash, self.config.seed, own)
        self.requests_before = self.counters["requests"]

    def plan_pending(self) -> None:
        """What units of the selection × epochs are not done yet, and whether the disk can hold their results."""
        prepared, seen = self.prepared, self.seen
        self.completed = seen.completed
        self.plan = plan_units(prepared.selection, prepared.dataset.all_ids, self.config.epochs, self.completed,
                               seen.errored, self.config.retry_errors, completed_within_ids=seen.within_known)
        self.pending = self.plan.pending
        if self.pending:
            measured = self.pending.samples()[:200]
            prompt_bytes = sum(len(json.dumps(s.fields, default=str)) for s in measured) // len(measured)
            check_free_space(self.run_dir, self.ledger.results_path, len(self.pending), prompt_bytes,
                             self.config.max_tokens, self.config.min_free_mb)

    def begin(self) -> None:
        """Start progress, write the ``running`` marker, and project the cost (and the budget)."""
        config, prepared, seen = self.config, self.prepared, self.seen
        total = len(self.plan.units)
        self.start_progress()
        announce(config.quiet, f"run {prepared.run_id}: {describe_extent(len(prepared.selection), self.plan)}, "
                               f"{self.plan.skipped} already done, {len(self.pending)} to run → {prepared.run_dir}")
        if self.run_epochs > config.epochs:
            announce(config.quiet, fewer_epochs_note(self.run_epochs, config.epochs))
        previous = self.status.begin(total=total, pending=len(self.pending), command=config.resume_command(),
                                     epochs=config.epochs)
        if previous is not None and previous.get("reason") == "process gone":
            log.warning(f"the previous writer of this {'run' if config.shard is None else 'shard'} (pid "
                        f"{previous.get('pid')} on {previous.get('host')}, started {previous.get('started_at')}) "
                        "stopped without a final status; its acknowledged records are kept and this run continues it")
        estimate: Estimate = estimate_pending(prepared.task, self.pending.samples(), config.max_tokens, self.price,
                                              seen.observed, units=len(self.pending), epochs=config.epochs)
        if self.pending:
            announce(config.quiet, estimate.line())
        self.budget = None
        if config.max_cost is not None:
            # estimate_pending averages the finished samples exactly when some are pending and some finished
            observed = seen.observed[0] if self.pending else 0
            self.budget = Budget(config.max_cost, seen.billed_cost, estimate.per_sample_cost or 0.0, observed)

    def start_progress(self) -> None:
        """The progress display (a bar on a terminal, a status line every N seconds otherwise):
        done/total in units, the label saying "× K epochs" when there are repeats."""
        config, prepared = self.config, self.prepared
        label = prepared.run_id if config.shard is None else f"{prepared.run_id} [shard {config.shard[0]}/{config.shard[1]}]"
        if config.epochs > 1:
            label += f" × {config.epochs} epochs"
        total = len(self.plan.units)
        self.progress = Progress(total, total - len(self.pending), quiet=config.quiet,
                                 interval=config.progress_interval, label=label, concurrency=config.concurrency,
                                 priced=self.price is not None, unit="sample" if config.epochs == 1 else "unit")

    def build_dispatch(self) -> None:
        """The workers' shared state, the limits, what every sample shares, and the committer."""
        config, prepared, progress = self.config, self.prepared, self.progress
        self.run = RunState(stop=asyncio.Event())
        self.last_index_save = time.monotonic()
        self.limits = Limits(max_concurrency=config.concurrency, adaptive=config.adaptive_concurrency,
                             rpm=config.rpm, tpm=config.tpm,
                             on_change=lambda limit, paused: (progress.set_concurrency(limit),
                                                              progress.set_paused(paused)),
                             on_wait=progress.note_rate_limit_wait)
        multi_turn = prepared.task.multi_turn
        self.ctx = SampleContext(
            task=prepared.task, task_name=prepared.task.name or prepared.task_spec, model=config.model,
            shard=config.shard, seed=config.seed, temperature=config.temperature, max_tokens=config.max_tokens,
            top_p=config.top_p, policy=RetryPolicy(max_attempts=config.max_attempts, max_wait=config.max_retry_wait),
            provider=self.provider, run=self.run, price=self.price,
            cached_calls=self.ledger.cached_calls(self.pending.keys()) if multi_turn and self.pending else {},
            persist_call=self.persist_call if multi_turn else None, limits=self.limits,
            on_connection_error=progress.note_connection_error,
            response_cache=response_cache_for(config), endpoint=prepared.endpoint)
        self.batch = None
        if config.batch and self.pending:
            limits = cast(BatchAPI, self.provider).batch_limits  # supports_batch was checked when it was made
            self.batch = BatchQueue(self.provider, BatchJournal(self.run_dir, config.shard),
                                    api=split_model(config.model)[0], run_id=prepared.run_id, shard=config.shard,
                                    batch_size=config.batch_size or limits.max_requests, wait=not config.no_wait,
                                    price=self.price, budget=self.budget, policy=self.ctx.policy, stop=self.run.stop,
                                    max_tokens=config.max_tokens, on_change=progress.set_batches)
            self.ctx.batch = self.batch
        self.committer = GroupCommitter(self.ledger, on_commit=self.on_commit, fsync=config.fsync,
                                        max_unsynced=2 * max(config.concurrency, 1))

    # ----------------------------------------------------------------- dispatch
    async def dispatch(self) -> None:
        """Send the pending samples; whatever happens, restore the signal handlers, close progress,
        write the resume state and close the provider."""
        restore_signals: Callable[[], None] = _no_signal_handlers
        batch, closed = self.batch, False
        try:
            if self.pending:
                await self.provider.start()
                self.started = True
                self.committer.start()
                restore_signals = install_signal_handlers(self.run, self.config)
                if batch is not None:
                    await batch.start()
                await schedule(self.ctx, self.config.concurrency, self.committer, self.run, self.pending,
                               self.budget, self.on_record, workers=None if batch is None else UNITS_IN_FLIGHT)
                await self.committer.close()
                if batch is not None:
                    closed = True
                    await batch.close(self.completed, clean=self.committer.failure is None and not self.run.hard_stop)
            elif self.config.batch:  # nothing pending: say so of the batches whose records are all written
                journal = BatchJournal(self.run_dir, self.config.shard)
                journal.collect_completed(self.completed)
                journal.close()
        finally:
            if batch is not None:
                self.note_batch_outcome(batch)
                if not closed:
                    await batch.close(self.completed, clean=False)
            restore_signals()
            self.progress.close()
            self.write_state()  # even after a failed append: the state is another file and may still fit
            if self.started:
                await self.provider.aclose()

    def note_batch_outcome(self, batch: BatchQueue) -> None:
        """What the batch queue did that the run reports: the requests its batches submitted, a
        fatal create, the budget."""
        self.run.requests += batch.submitted
        if batch.fatal is not None and self.run.fatal is None:
            self.run.fatal = batch.fatal
        if batch.budget_hit:
            self.run.budget_hit = True

    # ----------------------------------------------------------------- after dispatch
    def save_final_index(self) -> None:
        """What this run appended is summed up already: index its file so the next resume skips it."""
        seen = self.seen
        if self.started and self.committer.failure is None and seen.own is not None:
            save_own_index(self.ledger.results_path, seen.own, self.ledger.results_size, seen.own_indexed_end)

    def summarize(self) -> RunSummary:
        """The run's :class:`RunSummary`: counts, how it ended, and a light summary of the run."""
        config, prepared, run, plan = self.config, self.prepared, self.run, self.plan
        remaining = len(plan.not_done.difference(self.completed))  # completed only grows
        summary = RunSummary(
            run_id=prepared.run_id, run_dir=prepared.run_dir, exit_code=EXIT_OK, status="complete",
            total_samples=len(plan.units), skipped_completed=plan.skipped, attempted=run.attempted,
            ok=self.new_ok, errors=self.new_errors, requests=run.requests, remaining=remaining,
            duration_s=time.monotonic() - self.t0, epochs=config.epochs,
        )
        set_outcome(summary, run, config, self.provider, self.budget, self.committer.failure, self.ledger, remaining)
        if self.batch is not None:
            note_pending_batches(summary, self.batch.pending_batches())
            if summary.status == "batches-pending":
                summary.resume_command = config.resume_command()
        if summary.exit_code != EXIT_OK:
            resume = config
            if summary.status == "budget" and self.budget is not None and self.budget.spent_known:
                # The same --max-cost would stop again at once: offer one that lets the rest run.
                resume = config.replace(max_cost=self.budget.enough_for(remaining))
            summary.resume_command = resume.resume_command()
        # The bill so far (None while any billed tokens had no known price), never NaN.
        known = self.price is not None and self.seen.cost_usd is not None
        cost = self.seen.cost_usd + self.spent if known else None
        summary.stats = light_stats(summary, config.shard, plan.units, self.seen, cost)
        summary.limits = {**self.limits.stats.__dict__, "final_limit": self.limits.limit}
        return summary


def _no_signal_handlers() -> None:
    """Nothing to restore: the handlers are installed only once there is something to send."""


__all__ = ["RunSession"]
