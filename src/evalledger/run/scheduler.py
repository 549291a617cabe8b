"""Feeding units of work, (sample, epoch), to the workers: a bounded queue, worker coroutines,
hand-off to the group commit."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection
from typing import Any, Callable

from evalledger.ledger import GroupCommitter
from evalledger.run.budget import Budget
from evalledger.run.context import RunState, SampleContext
from evalledger.run.sample import run_sample
from evalledger.run.stops import LeftPending, NotStarted, StopRun
from evalledger.run.units import Unit

#: Samples under way per request slot (see :func:`schedule`).
WORKERS_PER_SLOT = 4


async def schedule(ctx: SampleContext, concurrency: int, committer: GroupCommitter, run: RunState,
                    pending: Collection[Unit], budget: Budget | None,
                    on_record: Callable[[dict[str, Any]], None], workers: int | None = None) -> None:
    """Feed units through a bounded queue to ``concurrency`` × WORKERS_PER_SLOT workers (no task
    per unit), or to ``workers`` of them (a batch run: each waits for its batch, not a request slot).

    ``pending`` may read its rows back from the dataset file as it is iterated (a PendingUnits
    over LazySamples); if
    that fails (the file changed), dispatching stops, the workers finish what they hold, and the
    error is raised here.
    """
    # More workers than request slots (Limits holds in-flight requests to the concurrency): a
    # sample waiting out a Retry-After holds a worker, not a slot, so other samples use the slot
    # meanwhile. With one worker per slot, 30 % of requests answered 429 + Retry-After: 1 at
    # L = 0.2 s left slots idle most of the time. A sample that has no answer yet when the run is
    # stopped is dropped before its next request (NotStarted), so after a stop only the requests
    # already on the wire and later turns of samples with a paid answer are sent.
    n_workers = min(concurrency * WORKERS_PER_SLOT if workers is None else workers, len(pending))
    feeder = _Feeder(ctx, committer, run, pending, budget, on_record, n_workers)
    prod = asyncio.create_task(feeder.produce(), name="evalledger-producer")
    run.workers = [asyncio.create_task(feeder.work(), name=f"evalledger-worker-{i}") for i in range(n_workers)]
    try:
        await asyncio.gather(*run.workers, return_exceptions=True)
    finally:
        prod.cancel()
        await asyncio.gather(prod, return_exceptions=True)
    if feeder.failure:
        raise feeder.failure[0]


class _Feeder:
    """One :func:`schedule` call: its bounded queue, the producer that fills it and the workers."""

    def __init__(self, ctx: SampleContext, committer: GroupCommitter, run: RunState, pending: Collection[Unit],
                 budget: Budget | None, on_record: Callable[[dict[str, Any]], None], n_workers: int) -> None:
        self.ctx = ctx
        self.committer = committer
        self.run = run
        self.pending = pending
        self.budget = budget
        self.on_record = on_record
        self.n_workers = n_workers
        self.queue: asyncio.Queue[Unit | None] = asyncio.Queue(maxsize=n_workers * 2)
        self.failure: list[BaseException] = []  # what stopped the producer, raised once the workers are done

    async def produce(self) -> None:
        """Feed the queue, then tell every worker there is nothing more."""
        try:
            await self._feed()
        except Exception as e:  # noqa: BLE001 - re-raised by schedule(), once the workers are done
            self.failure.append(e)
            self.run.stop.set()
        for _ in range(self.n_workers):
            await self.queue.put(None)

    async def _feed(self) -> None:
        run = self.run
        for unit in self.pending:
            if run.stop.is_set():
                break
            await self._wait_for_budget()
            if run.budget_hit or run.stop.is_set():
                break  # queued units still run: they were admitted
            await self.queue.put(unit)

    async def _wait_for_budget(self) -> None:
        """Admit a sample only if the budget covers it and everything queued or in flight. The
        projection shrinks as samples finish (max_tokens is an upper bound), so while others are
        still running, wait for them and ask again before giving up (``run.budget_hit``)."""
        run, budget, queue = self.run, self.budget, self.queue
        while budget is not None and not budget.admits(run.in_flight + queue.qsize()):
            if run.in_flight + queue.qsize() == 0 or run.stop.is_set():
                run.budget_hit = not run.stop.is_set()
                break
            budget.changed.clear()
            await budget.changed.wait()

    def _settled(self, unrecorded: int, fut: "asyncio.Future[None]") -> None:
        # The record is on disk (or its write failed): only now is it out of flight, its cost in
        # the budget's spend (on_commit ran just before), its answers recorded, and a failed
        # write stops dispatching (its answers stay unrecorded: they are paid again on resume).
        self.run.in_flight -= 1
        if fut.cancelled() or fut.exception() is not None:
            self.run.stop.set()
        else:
            self.run.answered_unrecorded -= unrecorded
        if self.budget is not None:
            self.budget.changed.set()

    async def work(self) -> None:
        """One worker: take units from the queue until it ends or the run stops."""
        while not self.run.stop.is_set():
            unit = await self.queue.get()
            if unit is None or self.run.stop.is_set():
                return
            if not await self._run_one(unit):
                return

    async def _run_one(self, unit: Unit) -> bool:
        """Run one unit and hand its record to the committer; False: this worker stops."""
        run, committer = self.run, self.committer
        # In flight until its record is committed: until then its cost is not in the budget's
        # spend, so the producer must keep counting it.
        run.in_flight += 1
        handed = False
        try:
            try:
                result = await run_sample(self.ctx, unit.sample, unit.epoch)
            except StopRun:
                return False
            except LeftPending:  # its request waits in a provider batch: it stays pending, on to the next
                return True
            except NotStarted:  # stopped before it got any answer: it stays pending
                return False
            self.on_record(result.record)
            try:
                handed_in = committer.submit(result.record)
            except Exception:
                run.stop.set()  # the ledger cannot take more: stop dispatching
                return False
            handed_in.synced.add_done_callback(functools.partial(self._settled, result.unrecorded))
            handed = True
            # On to the next sample once the record is written (a kill can no longer lose it),
            # without waiting for its fsync: the committer acknowledges it after that. Unless
            # too many records wait for their fsync (a slow disk).
            try:
                await asyncio.shield(handed_in.written)
            except Exception:
                return False  # the write failed: _settled() stops the run
            await committer.room()
            return True
        finally:
            if not handed:
                run.in_flight -= 1
                if self.budget is not None:
                    self.budget.changed.set()
