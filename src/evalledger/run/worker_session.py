"""One worker process of a ``--workers N`` run (see :mod:`evalledger.run.workers` for the parent and
:mod:`evalledger.run.worker_link` for the protocol between them).

A worker is an ordinary :class:`~evalledger.run.session.RunSession` over the units its parent dealt
it, with four differences: it writes its own files (``results<sfx>.worker-W.jsonl`` ...) under its
own lock, the parent holding the run's lock for it; it writes no status marker (the parent's speaks
for the run); it waits for the parent's ``go`` once its pending set is known, so every worker reads
the ledger before any of them writes; and it reports its acknowledged records and how it ended to
the parent instead of showing them. Its rate limits are the parent's host limiter
(``EVALLEDGER_HOST_LIMITER``, set by the parent), which :class:`~evalledger.run.limits.Limits` attaches to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from evalledger.datasets import with_ids
from evalledger.errors import EvalLedgerError
from evalledger.ledger import RunLedger
from evalledger.run.outcome import EXIT_SIGINT, EXIT_SIGTERM, RunSummary
from evalledger.run.prepare import PreparedRun, prepare_run
from evalledger.run.session import RunSession
from evalledger.run.units import PendingUnits, UnitPlan
from evalledger.run.worker_link import GO, PROGRESS_BATCH, PROGRESS_FIELDS, SNAPSHOT_FIELDS, WorkerJob, read_job

#: Seconds between the limiter figures a worker sends while no record is acknowledged.
HEARTBEAT_S = 0.5


class _NoGo(Exception):
    """The parent ended the start-up (a signal, or another worker failed): nothing was sent."""


class _Stopped(Exception):
    """SIGTERM/SIGUSR1 before the run's own handlers were installed: nothing was sent."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ParentLink:
    """The worker's side of the pipes: messages out on what was its stdout, ``go`` in on its stdin."""

    def __init__(self) -> None:
        # Messages go on the original stdout; anything else printed goes to stderr, the parent's.
        self.fd = os.dup(1)
        os.dup2(2, 1)
        self.gone = False  # the parent stopped reading (it died): the end of its stdin stops this worker

    def send(self, msg: dict[str, Any]) -> None:
        """One message line; never raises: a parent that is gone must not fail a commit."""
        data = memoryview((json.dumps(msg, separators=(",", ":"), default=str) + "\n").encode())
        while data and not self.gone:
            try:
                data = data[os.write(self.fd, data):]
            except OSError:
                self.gone = True

    def wait_go(self) -> bool:
        """Block until the parent says go (True) or closes the pipe (False)."""
        return sys.stdin.buffer.readline() == GO


class _NoMarker:
    """A worker writes no status marker: its parent's marker speaks for the run."""

    begun = False

    def begin(self, **_: Any) -> None:
        return None

    def finish_from_summary(self, summary: RunSummary, files: list[Any]) -> None:
        pass

    def finish_failed(self, exc: BaseException) -> None:
        pass


class WorkerSession(RunSession):
    """A run session over the units the parent dealt this worker."""

    def __init__(self, prepared: PreparedRun, t0: float, job: WorkerJob, link: ParentLink) -> None:
        super().__init__(prepared, t0)
        self.job = job
        self.link = link
        self.ledger = RunLedger(self.run_dir, self.config.shard, worker=job.slot, under_parent=True)
        self.status = _NoMarker()  # type: ignore[assignment]

    def plan_pending(self) -> None:
        """The run's pending set, cut down to this worker's units."""
        super().plan_pending()
        wanted = {epoch: set(ids) for epoch, ids in self.job.parts}
        pending = PendingUnits([(epoch, with_ids(samples, wanted[epoch]))
                                for epoch, samples in self.pending.parts if epoch in wanted])
        if len(pending) != self.job.units:
            raise EvalLedgerError(f"worker {self.job.slot}: {self.job.units} unit(s) were dealt to it, but only "
                                  f"{len(pending)} of them are pending in the ledger it reads; nothing was sent")
        keys = pending.keys()
        self.plan = UnitPlan(self.plan.epochs, keys, set(keys), pending)
        self.pending = pending

    def begin(self) -> None:
        """Ready: wait for the parent's go, then begin as a run does."""
        self.link.send({"type": "ready", "pending": len(self.pending)})
        if not self.link.wait_go():
            raise _NoGo()
        super().begin()

    async def dispatch(self) -> None:
        """Dispatch as a run does, reporting to the parent meanwhile and stopping if it goes away."""
        loop = asyncio.get_running_loop()
        loop.add_reader(0, self._parent_input)
        beat = asyncio.ensure_future(self._heartbeat())
        try:
            await super().dispatch()
        finally:
            beat.cancel()
            loop.remove_reader(0)
            self._send_progress([])

    def _parent_input(self) -> None:
        """The parent sends nothing after go: end of file means it is gone, so stop as on SIGTERM."""
        if not os.read(0, 4096):
            asyncio.get_running_loop().remove_reader(0)
            os.kill(os.getpid(), signal.SIGTERM)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self._send_progress([])

    def count_committed(self, records: list[dict[str, Any]]) -> None:
        super().count_committed(records)
        for i in range(0, len(records), PROGRESS_BATCH):
            self._send_progress(records[i:i + PROGRESS_BATCH])

    def _send_progress(self, records: list[dict[str, Any]]) -> None:
        progress = getattr(self, "progress", None)
        snapshot = {name: getattr(progress, name, 0) for name in SNAPSHOT_FIELDS}
        self.link.send({"type": "progress", "snapshot": snapshot,
                        "records": [{k: r[k] for k in PROGRESS_FIELDS if k in r} for r in records]})

    def report(self, summary: RunSummary) -> dict[str, Any]:
        """The ``done`` message: how this worker's session ended."""
        run, budget = self.run, self.budget
        return {"type": "done", "exit_code": summary.exit_code, "status": summary.status, "message": summary.message,
                "ok": summary.ok, "errors": summary.errors, "requests": summary.requests,
                "attempted": summary.attempted, "remaining": summary.remaining, "limits": summary.limits,
                "answered_unrecorded": run.answered_unrecorded, "cancelled_requests": run.cancelled_requests,
                "hard_stop": run.hard_stop, "signal": run.signal_received,
                "budget": None if budget is None else {"per_sample": budget.per_sample, "average": budget.average}}


async def _work(job: WorkerJob, link: ParentLink) -> dict[str, Any]:
    t0 = time.monotonic()
    prepared = prepare_run(job.config)
    # The parent said what preparing had to say (a dataset's warnings, code execution): from here on
    # a warning is this worker's own (a repair of its file, a signal).
    logging.getLogger("evalledger").setLevel(logging.WARNING)
    if prepared.run_id != job.run_id:
        raise EvalLedgerError(f"worker {job.slot}: the run ID is {prepared.run_id}, its parent's {job.run_id}: "
                              "the dataset changed under the run; nothing was sent")
    session = WorkerSession(prepared, t0, job, link)
    summary = await session.run()
    return session.report(summary)


def _log_as_worker(job: WorkerJob) -> None:
    """Warnings on stderr (the parent's), each line saying which worker; quiet while preparing."""
    logger = logging.getLogger("evalledger")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"worker {job.slot}/{job.of}: %(message)s"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.ERROR)


def _stop_on_early_signals() -> None:
    """Until the run's own handlers take over (once something is sent), SIGTERM/SIGUSR1 end the
    worker cleanly; SIGINT does too (KeyboardInterrupt)."""

    def handler(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, handler)


def main() -> None:
    """The worker process: read the job, run it, report, exit with its code."""
    link = ParentLink()
    try:
        job = read_job(sys.stdin.buffer)
    except EvalLedgerError as e:
        print(e.message, file=sys.stderr)
        sys.exit(e.exit_code)
    _log_as_worker(job)
    _stop_on_early_signals()
    try:
        report = asyncio.run(_work(job, link))
    except _NoGo:
        sys.exit(0)
    except EvalLedgerError as e:
        link.send({"type": "failed", "message": e.message, "exit_code": e.exit_code})
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_SIGINT)
    except _Stopped:
        sys.exit(EXIT_SIGTERM)
    link.send(report)
    sys.exit(report["exit_code"])


__all__ = ["HEARTBEAT_S", "ParentLink", "WorkerSession", "main"]
