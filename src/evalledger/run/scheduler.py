"""Feeding samples to the workers: a bounded queue, worker coroutines, hand-off to the group commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Callable

from evalledger.ledger import GroupCommitter
from evalledger.run.budget import Budget
from evalledger.run.sample import NotStarted, RunState, SampleContext, StopRun, run_sample
from evalledger.samples import Sample

#: Samples under way per request slot (see :func:`schedule`).
WORKERS_PER_SLOT = 4


async def schedule(ctx: SampleContext, concurrency: int, committer: GroupCommitter, run: RunState,
                    pending: Sequence[Sample], budget: Budget | None,
                    on_record: Callable[[dict[str, Any]], None]) -> None:
    """Feed samples through a bounded queue to ``concurrency`` workers (no task per sample).

    ``pending`` may read its rows back from the dataset file as it is iterated (a LazySamples); if
    that fails (the file changed), dispatching stops, the workers finish what they hold, and the
    error is raised here.
    """
    # More workers than request slots (Limits holds in-flight requests to the concurrency): a
    # sample waiting out a Retry-After holds a worker, not a slot, so other samples use the slot
    # meanwhile. With one worker per slot, 30 % of requests answered 429 + Retry-After: 1 at
    # L = 0.2 s left slots idle most of the time. A sample that has no answer yet when the run is
    # stopped is dropped before its next request (NotStarted), so after a stop only the requests
    # already on the wire and later turns of samples with a paid answer are sent.
    n_workers = min(concurrency * WORKERS_PER_SLOT, len(pending))
    queue: asyncio.Queue[Sample | None] = asyncio.Queue(maxsize=n_workers * 2)
    failure: list[BaseException] = []

    async def producer() -> None:
        try:
            await feed()
        except Exception as e:  # noqa: BLE001 - re-raised below, once the workers are done
            failure.append(e)
            run.stop.set()
        for _ in range(n_workers):
            await queue.put(None)

    async def feed() -> None:
        for sample in pending:
            if run.stop.is_set():
                break
            # Admit a sample only if the budget covers it and everything queued or in flight. The
            # projection shrinks as samples finish (max_tokens is an upper bound), so while others
            # are still running, wait for them and ask again before giving up.
            while budget is not None and not budget.admits(run.in_flight + queue.qsize()):
                if run.in_flight + queue.qsize() == 0 or run.stop.is_set():
                    run.budget_hit = not run.stop.is_set()
                    break
                budget.changed.clear()
                await budget.changed.wait()
            if run.budget_hit or run.stop.is_set():
                break  # queued samples still run: they were admitted
            await queue.put(sample)

    def settled(fut: "asyncio.Future[None]") -> None:
        # The record is on disk (or its write failed): only now is it out of flight, its cost in
        # the budget's spend (on_commit ran just before), and a failed write stops dispatching.
        run.in_flight -= 1
        if fut.cancelled() or fut.exception() is not None:
            run.stop.set()
        if budget is not None:
            budget.changed.set()

    async def worker() -> None:
        while not run.stop.is_set():
            sample = await queue.get()
            if sample is None or run.stop.is_set():
                return
            # In flight until its record is committed: until then its cost is not in the budget's
            # spend, so the producer must keep counting it.
            run.in_flight += 1
            handed = False
            try:
                try:
                    record = await run_sample(ctx, sample)
                except StopRun:
                    return
                except NotStarted:  # stopped before it got any answer: it stays pending
                    return
                on_record(record)
                try:
                    handed_in = committer.submit(record)
                except Exception:
                    run.stop.set()  # the ledger cannot take more: stop dispatching
                    return
                handed_in.synced.add_done_callback(settled)
                handed = True
                # On to the next sample once the record is written (a kill can no longer lose it),
                # without waiting for its fsync: the committer acknowledges it after that. Unless
                # too many records wait for their fsync (a slow disk).
                try:
                    await asyncio.shield(handed_in.written)
                except Exception:
                    return  # the write failed: settled() stops the run
                await committer.room()
            finally:
                if not handed:
                    run.in_flight -= 1
                    if budget is not None:
                        budget.changed.set()

    prod = asyncio.create_task(producer(), name="evalledger-producer")
    run.workers = [asyncio.create_task(worker(), name=f"evalledger-worker-{i}") for i in range(n_workers)]
    try:
        await asyncio.gather(*run.workers, return_exceptions=True)
    finally:
        prod.cancel()
        await asyncio.gather(prod, return_exceptions=True)
    if failure:
        raise failure[0]
