"""``--workers N``: one run, N processes on this host.

The parent (:class:`WorkersSession`) is the run's (or shard's) own writer and does everything a run
does up to the pending set: it takes ``.lock<sfx>`` and ``.lock.run``, repairs, checks the
manifest, writes the ``running`` marker and shows the one progress display. It then deals the
pending units round-robin, in the order they would be sent, to up to N worker processes
(:mod:`evalledger.run.worker_session`), each an ordinary run session over its slice that writes
its own files (``results<sfx>.worker-W.jsonl`` ...) under its own ``.lock<sfx>.worker-W``. Each
worker inherits the descriptor that holds ``.lock.run``, so no other invocation can write the run
while any worker lives, even if the parent is killed. Dealing the pending set anew each time makes
a resume with another N (or after a worker was killed) send every unit exactly once.

Shared by the workers through one :class:`~evalledger.run.hostlimit.HostLimiter`: ``--rpm``/``--tpm``,
a storm's pause and its cuts of the concurrency (a private limiter for the run, or the one named by
``EVALLEDGER_HOST_LIMITER``). ``--concurrency C`` is the run's: worker W gets its share of C.
``--max-cost`` is shared the same way: each worker gets what the run had left times its share of
the pending units, so together they never spend more.

The parent and a worker talk over the worker's standard streams (:mod:`evalledger.run.worker_link`).

Signals: SIGINT, SIGTERM and SIGUSR1 reach the parent (the workers have their own process group,
so a Ctrl-C on the terminal does not reach them twice); it forwards the first of them, and a
second SIGINT, to every worker, which stops as a single run does. The run ends with one exit
code and one resume command: the same command, with the same ``--workers``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from evalledger.errors import EvalLedgerError
from evalledger.ledger import (
    CALLS,
    ERRORS,
    RESULTS,
    GroupCommitter,
    RunLedger,
    scan_ledger,
    unit_noun,
    worker_files,
    worker_glob,
)
from evalledger.run.budget import Budget
from evalledger.run.context import RunState
from evalledger.run.hostlimit import HOST_LIMITER_ENV, HostLimiter, host_limiter_from_env
from evalledger.run.limits import Limits
from evalledger.run.outcome import EXIT_ERRORS_LEFT, EXIT_OK, RunSummary
from evalledger.run.prepare import PreparedRun
from evalledger.run.progress import announce
from evalledger.run.session import RunSession
from evalledger.run.worker_link import SNAPSHOT_FIELDS, WorkerJob, WorkerProcess, deal, share

log = logging.getLogger(__name__)

#: How workers' outcomes rank, as :func:`~evalledger.run.outcome.set_outcome` ranks a run's causes.
_WORST_FIRST = ("disk", "fatal", "budget", "outage")
#: Status of a run that lost a worker process (killed, or crashed) with units left: exit 1, run again.
WORKER_LOST = "worker lost"


class WorkersSession(RunSession):
    """The parent of a ``--workers N`` run: a run session whose dispatch is N worker processes."""

    def __init__(self, prepared: PreparedRun, t0: float) -> None:
        super().__init__(prepared, t0)
        # The run's (or shard's) own writer: it holds the locks and repairs, and appends nothing.
        self.ledger = RunLedger(self.run_dir, self.config.shard, appends=False)
        self.workers: list[WorkerProcess] = []
        self.host_limiter: HostLimiter | None = None
        self._started = False  # the workers were told to go
        self._startup_abort = asyncio.Event()
        # The workers write the error logs: the summary's "see …" names them.
        self.ledger.errors_path = self.run_dir / worker_glob(ERRORS, self.config.shard)

    # ----------------------------------------------------------------- what the parent does not do
    def build_dispatch(self) -> None:
        """The run's state and limiter; the parent sends nothing, so no sample context or committer of its own."""
        config = self.config
        self.run = RunState(stop=asyncio.Event())
        self.batch = None
        if self.pending:
            self.host_limiter = host_limiter_from_env(config.rpm, config.tpm) or HostLimiter.private(config.rpm,
                                                                                                     config.tpm)
        self.limits = Limits(max_concurrency=config.concurrency, adaptive=config.adaptive_concurrency,
                             rpm=config.rpm, tpm=config.tpm, host=self.host_limiter)
        self.committer = GroupCommitter(self.ledger, fsync=config.fsync)

    def write_state(self) -> None:
        """The workers keep their own resume states."""

    def finish_status(self, summary: RunSummary) -> None:
        """The final marker, vouching for the run's (or shard's) own files and its workers'."""
        shard = self.config.shard
        files = [self.ledger.results_path, self.ledger.calls_path, *worker_files(self.run_dir, RESULTS, shard),
                 *worker_files(self.run_dir, CALLS, shard)]
        self.status.finish_from_summary(summary, files)

    # ----------------------------------------------------------------- dispatch: the workers
    async def dispatch(self) -> None:
        """Run the workers over the pending units; whatever happens, stop those still running,
        close progress and the limiter."""
        restore: Callable[[], None] = _nothing
        try:
            if self.pending:
                restore = self._forward_signals()
                await self._run_workers()
        finally:
            restore()
            await self._stop_leftovers()
            self.progress.close()
            if self.host_limiter is not None:
                self.host_limiter.close()

    def _how_many(self) -> int:
        """``--workers``, or fewer: no more than the pending units, the request slots, and (with
        ``--max-cost``) the samples the budget left admits, so each worker can send one."""
        config, budget = self.config, self.budget
        limits = [(len(self.pending), f"{len(self.pending)} unit(s) are pending"),
                  (config.concurrency, f"--concurrency {config.concurrency} gives each at least one request slot")]
        if budget is not None and budget.spent_known and budget.per_sample > 0:
            affordable = int((budget.max_cost - budget.spent_before) // budget.per_sample)
            limits.append((max(1, affordable), f"--max-cost leaves room for {affordable} sample(s) at the "
                                               f"projected ${budget.per_sample:,.4f} each, and each worker gets its share"))
        n, why = min([(config.workers, ""), *limits], key=lambda x: x[0])
        if n < config.workers:
            announce(config.quiet, f"--workers {config.workers}: {n} worker process(es), as {why}")
        return n

    def _jobs(self) -> list[WorkerJob]:
        config, pending = self.config, self.pending
        n = self._how_many()
        jobs = []
        for k, parts in enumerate(deal(pending, n)):
            units = sum(len(ids) for _, ids in parts)
            child = config.replace(concurrency=share(config.concurrency, n, k), workers=1, quiet=True,
                                   overwrite=False, keep_old=None, resume=True,
                                   max_cost=self._budget_share(units / len(pending)))
            jobs.append(WorkerJob(child, self.prepared.run_id, k + 1, n, parts))
        return jobs

    def _budget_share(self, fraction: float) -> float | None:
        """A worker's ``--max-cost``: what the run spent, plus its share of what is left. Each worker
        counts the run's spend when it starts (the same for all: none of them has written yet)."""
        budget = self.budget
        if budget is None or not budget.spent_known:
            return self.config.max_cost
        return budget.spent_before + (budget.max_cost - budget.spent_before) * fraction

    async def _run_workers(self) -> None:
        jobs = self._jobs()
        assert self.host_limiter is not None
        env = {**os.environ, HOST_LIMITER_ENV: self.host_limiter.name}
        lock_fd = self.ledger.run_lock_fd
        for job in jobs:
            self.workers.append(await WorkerProcess.start(job, env, () if lock_fd is None else (lock_fd,),
                                                          self._on_progress))
        if await self._all_ready():
            self._started = True
            for w in self.workers:
                w.go()
        else:
            for w in self.workers:
                w.abort()
        await asyncio.gather(*(w.finished() for w in self.workers))
        failed = next((w for w in self.workers if not w.went and w.failure is not None), None)
        if failed is not None and self.run.signal_received is None:
            assert failed.failure is not None
            raise EvalLedgerError(failed.failure.get("message") or failed.ending(),
                                  exit_code=failed.failure.get("exit_code") or 2)
        if not self._started and self.run.signal_received is None:
            raise EvalLedgerError("; ".join(w.ending() for w in self.workers if not w.ready.result())
                                  + ": nothing was sent; run the same command again")

    async def _all_ready(self) -> bool:
        """Wait until every worker is ready (True), or one ended first or a signal came (False)."""
        waiting: set[asyncio.Future[Any]] = {w.ready for w in self.workers}
        abort = asyncio.ensure_future(self._startup_abort.wait())
        try:
            while waiting:
                done, _ = await asyncio.wait(waiting | {abort}, return_when=asyncio.FIRST_COMPLETED)
                if abort in done or any(f is not abort and not f.result() for f in done):
                    return False
                waiting -= done
            ready = [w for w in self.workers if w.ready.result()]
            return len(ready) == len(self.workers)
        finally:
            abort.cancel()

    def _on_progress(self, worker: WorkerProcess, msg: dict[str, Any]) -> None:
        """A worker's acknowledged records and limiter figures, into the one display."""
        records = msg.get("records") or []
        if records:
            self.progress.update(records)
            ok = sum(r.get("status") == "ok" for r in records)
            worker.acknowledged[0] += ok
            worker.acknowledged[1] += len(records) - ok
        worker.snapshot = msg.get("snapshot") or {}
        totals = {name: sum(w.snapshot.get(name) or 0 for w in self.workers) for name in SNAPSHOT_FIELDS}
        progress = self.progress
        progress.rate_limit_waits = totals["rate_limit_waits"]
        progress.rate_limit_wait_s = totals["rate_limit_wait_s"]
        progress.connection_errors = totals["connection_errors"]
        progress.set_concurrency(totals["concurrency"])
        progress.set_paused(totals["paused_now"])

    def _forward_signals(self) -> Callable[[], None]:
        """SIGINT/SIGTERM/SIGUSR1 to the parent: the first (and a second SIGINT) goes to every worker."""
        if threading.current_thread() is not threading.main_thread():
            return _nothing
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
        for s in sigs:
            loop.add_signal_handler(s, self._on_signal, s)

        def restore() -> None:
            for s in sigs:
                loop.remove_signal_handler(s)

        return restore

    def _on_signal(self, signum: int) -> None:
        run = self.run
        if run.signal_received is None:
            run.signal_received = signum
            run.stop.set()
            live = sum(w.alive for w in self.workers)
            log.warning(f"received {signal.Signals(signum).name}: stopping the {live} worker process(es)"
                        + (" (Ctrl-C again to stop now)" if signum == signal.SIGINT and self._started else ""))
        elif signum != signal.SIGINT:
            return
        if not self._started:
            self._startup_abort.set()  # nothing was sent yet: the workers are told to exit
            return
        for w in self.workers:
            w.signal(signum)

    async def _stop_leftovers(self) -> None:
        """Workers still running when the parent leaves early (an error): stopped as by SIGTERM,
        killed if they do not end within their grace period."""
        live = [w for w in self.workers if w.alive]
        for w in live:
            if w.went:
                w.signal(signal.SIGTERM)
            else:
                w.abort()
        if live:
            try:
                await asyncio.wait_for(asyncio.gather(*(w.proc.wait() for w in live)),
                                       self.config.grace_seconds + 10)
            except asyncio.TimeoutError:
                for w in live:
                    w.signal(signal.SIGKILL)
                await asyncio.gather(*(w.proc.wait() for w in live))
        for w in self.workers:
            w.abort()
            w.reading.cancel()

    # ----------------------------------------------------------------- after dispatch
    def summarize(self) -> RunSummary:
        """The run's summary from the ledger as the workers left it and what they reported."""
        if self.workers:
            self._absorb_reports()
        summary = super().summarize()
        if self.workers:
            self._apply_worker_outcomes(summary)
        return summary

    def _absorb_reports(self) -> None:
        """Read the ledger again (the workers' records) and add up what the workers reported."""
        self.seen = scan_ledger(self.run_dir, self.prepared.dataset.all_ids)
        self.completed = self.seen.completed
        run = self.run
        budgets = []
        for w in self.workers:
            r = w.report
            if r is None:  # killed: what it acknowledged is all that is known
                self.new_ok += w.acknowledged[0]
                self.new_errors += w.acknowledged[1]
                continue
            self.new_ok += r["ok"]
            self.new_errors += r["errors"]
            run.requests += r["requests"]
            run.attempted += r["attempted"]
            run.answered_unrecorded += r["answered_unrecorded"]
            run.cancelled_requests += r["cancelled_requests"]
            run.hard_stop = run.hard_stop or r["hard_stop"]
            if run.signal_received is None and r["signal"] is not None:
                run.signal_received = r["signal"]  # a signal sent to the workers themselves
            if r["budget"] is not None:
                budgets.append(r["budget"])
            if r["status"] == "budget":
                run.budget_hit = True
        if run.budget_hit and self.config.max_cost is not None and budgets:
            # The run's budget as the workers left it: what the run spent, their projections.
            budget = Budget(self.config.max_cost, self.seen.billed_cost,
                            sum(b["average"] for b in budgets) / len(budgets), observed=1)
            budget.per_sample = max(b["per_sample"] for b in budgets)
            self.budget = budget

    def _apply_worker_outcomes(self, summary: RunSummary) -> None:
        """What the workers' own outcomes add to the run's: the worst cause a worker stopped for,
        or a worker lost with units left; then the one resume command."""
        reports = [w.report for w in self.workers if w.report is not None]
        worst = next(((status, r) for status in _WORST_FIRST for r in reports if r["status"] == status), None)
        endings = "; ".join(w.ending() for w in self.workers if w.report is None)
        if worst is not None and worst[0] != "budget":  # the budget's message is the run's (super().summarize)
            summary.exit_code, summary.status, summary.message = worst[1]["exit_code"], worst[0], worst[1]["message"]
        if endings and summary.remaining and summary.status in ("complete", "errors"):
            summary.exit_code, summary.status = EXIT_ERRORS_LEFT, WORKER_LOST
            summary.message = (f"{endings}: {summary.remaining} {unit_noun(self.config.epochs)} left, the same "
                               "command sends them")
        elif endings:
            summary.message = f"{summary.message}\n  {endings}" if summary.message else endings
        if summary.exit_code != EXIT_OK and summary.resume_command is None:
            summary.resume_command = self.config.resume_command()
        reported = [r["limits"] for r in reports if r.get("limits")]
        if reported:
            summary.limits = {name: sum(lim.get(name) or 0 for lim in reported)
                              for name in ("rate_limited", "storms", "decreases", "paused_s", "throttled_s",
                                           "min_limit", "paced", "final_limit")}
        summary.limits["workers"] = len(self.workers)


def _nothing() -> None:
    """Nothing to restore."""


__all__ = ["WORKER_LOST", "WorkersSession"]
