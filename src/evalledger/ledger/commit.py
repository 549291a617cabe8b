"""Group commit: records finished in the same moment share one fsync.

Two stages, so that neither the workers nor the disk wait on each other more than they must:

1. **write**: a record handed to :meth:`GroupCommitter.submit` is written at once, in the event
   loop's thread (a small append to the page cache), or, while a write or a rollback is running in
   a thread, with the records waiting behind it (one ``write`` for all of them). Its ``written`` future then resolves and
   the worker goes on to its next sample: a written line survives the process being killed
   (kill -9, OOM), so at most one paid sample per worker is ever lost that way.
2. **sync**: meanwhile, one ``fsync`` covers every line written before it started. Only after it do
   the records count as done (``on_commit``: progress, counters, budget spend) and their ``synced``
   future resolves (nothing is acknowledged before its fsync).

Why: a worker that waited for its own fsync would make its cycle the request plus up to two fsyncs
(the batch being synced and its own), 3-10 % of the throughput at L = 0.2 s. :meth:`room`
bounds the records written but not yet synced, so a slow disk slows the workers down instead of
letting acknowledgements fall far behind.

``--fsync always`` writes and fsyncs each record on its own before its worker goes on; ``off``
acknowledges after the write (safe against kill -9, not against power loss).

Failures: a failed write truncates back to before that write; a failed fsync truncates back to the
last successful one (none of those lines may count). Either way every record not yet acknowledged
fails with the error, :attr:`failure` is set, and nothing more is written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from evalledger.ledger.run_ledger import RunLedger


@dataclass
class Handed:
    """One record handed in: ``written`` resolves after its write, ``synced`` after its fsync."""

    record: dict[str, Any]
    written: "asyncio.Future[None]"
    synced: "asyncio.Future[None]"
    end: int = 0  # where its line ends in the results file, once written


@dataclass
class _Queue:
    items: list[Handed] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class GroupCommitter:
    """Batches appends to a :class:`RunLedger` from many asyncio workers."""

    def __init__(self, ledger: RunLedger, on_commit: Callable[[list[dict[str, Any]]], None] | None = None,
                 fsync: str = "batch", max_unsynced: int = 64) -> None:
        """``fsync``: ``batch`` (records written together share one fsync), ``always`` (one write and
        one fsync per record) or ``off`` (whole-line writes, no fsync: safe against kill -9 because
        the kernel keeps written data, not against power loss). ``max_unsynced``: how many records
        may be handed in and not yet fsynced before :meth:`room` makes workers wait."""
        self.ledger = ledger
        self.fsync = fsync
        self.on_commit = on_commit
        self.max_unsynced = max(int(max_unsynced), 1)
        self.unsynced = 0  # handed in, not yet acknowledged (or failed)
        self._room = asyncio.Event()
        self._room.set()
        self._to_write = _Queue()
        self._to_sync = _Queue()
        self._io = asyncio.Lock()  # a write and a rollback never overlap
        self._closing = False
        self._writer_finished = False
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None
        self.batches = 0  # fsyncs (or, with fsync off, writes) that acknowledged records
        self.committed = 0
        #: Where the acknowledged records end in the results file: the bytes before it are exactly
        #: the records acknowledged so far (plus what the file held before), for the ledger index.
        self.acknowledged_end = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._guarded(self._write_loop()), name="evalledger-writer")]
        if self.fsync != "off":
            self._tasks.append(asyncio.create_task(self._guarded(self._sync_loop()), name="evalledger-syncer"))

    async def _guarded(self, loop: Any) -> None:
        """Run a stage; if it dies (a bug, e.g. in ``on_commit``), fail everything still waiting
        instead of leaving workers blocked on futures no one will resolve."""
        try:
            await loop
        except BaseException as exc:
            self._writer_finished = True
            self._failed(exc, self._to_write.items + self._to_sync.items)
            self._to_write.items, self._to_sync.items = [], []
            self._to_sync.wake.set()
            raise

    def submit(self, record: dict[str, Any]) -> Handed:
        """Hand ``record`` in; see :class:`Handed`. Raises at once if an earlier write or fsync failed."""
        if self.failure is not None:
            raise self.failure
        loop = asyncio.get_running_loop()
        h = Handed(record, loop.create_future(), loop.create_future())
        self.unsynced += 1
        if self.unsynced >= self.max_unsynced:
            self._room.clear()
        if self.fsync != "always" and not self._to_write.items and not self._io.locked():
            # Write it now, in this thread: one small append to the page cache takes microseconds,
            # and a thread hand-off would leave paid answers unwritten meanwhile (with several
            # samples per request slot, more of them than there are slots), all lost to a kill.
            try:
                self.ledger.write_records([record])
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                self._failed(exc, [h])
                return h
            h.end = self.ledger.results_size
            self._written([h])
            return h
        self._to_write.items.append(h)
        self._to_write.wake.set()
        return h

    def _written(self, batch: list[Handed]) -> None:
        for h in batch:
            _resolve(h.written)
        if self.fsync == "batch":
            self._to_sync.items.extend(batch)
            self._to_sync.wake.set()
        else:
            self._acknowledge(batch)

    async def room(self) -> None:
        """Wait until fewer than ``max_unsynced`` records wait for their fsync (backpressure)."""
        while self.unsynced >= self.max_unsynced and self.failure is None:
            await self._room.wait()

    async def commit(self, record: dict[str, Any]) -> None:
        """Append ``record`` durably; returns after its fsync. Raises the write error if it failed."""
        # shield: a caller cancelled while waiting must not lose a record that is being written
        await asyncio.shield(self.submit(record).synced)

    async def close(self) -> None:
        """Write and sync everything handed in so far, then stop."""
        self._closing = True
        self._to_write.wake.set()
        self._to_sync.wake.set()
        for t in self._tasks:
            await t

    # ------------------------------------------------------------------ the two stages
    async def _write_loop(self) -> None:
        q = self._to_write
        while True:
            # Look before waiting: a wake-up that came while the last batch was being written
            # must not be slept through.
            if not q.items:
                if self._closing:
                    self._writer_finished = True
                    self._to_sync.wake.set()  # let the syncer finish too
                    return
                await q.wake.wait()
                q.wake.clear()
                continue
            if self.fsync == "always":
                batch, q.items = q.items[:1], q.items[1:]
            else:
                batch, q.items = q.items, []
            if self.failure is not None:
                self._fail(batch, self.failure)
                continue
            records = [h.record for h in batch]
            try:
                async with self._io:
                    if self.fsync == "always":
                        await asyncio.to_thread(self.ledger.append_records, records, fsync=True)
                    else:
                        await asyncio.to_thread(self.ledger.write_records, records)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                self._failed(exc, batch)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for h in batch:  # one write: they end together (only the last one's end is used)
                h.end = self.ledger.results_size
            self._written(batch)

    async def _sync_loop(self) -> None:
        q = self._to_sync
        while True:
            if not q.items:  # look before waiting, as in _write_loop
                if self._writer_finished:
                    return
                await q.wake.wait()
                q.wake.clear()
                continue
            # All written already, so the fsync below covers them. Tried even after a failed
            # write: lines written before it are whole and deserve their acknowledgement.
            batch, q.items = q.items, []
            try:
                await asyncio.to_thread(self.ledger.sync, rollback=False)
            except BaseException as exc:  # noqa: BLE001
                async with self._io:  # no write may run while the unsynced lines are cut off
                    await asyncio.to_thread(self.ledger.rollback_unsynced)
                self._failed(exc, batch + q.items)
                q.items = []
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self._acknowledge(batch)

    # ------------------------------------------------------------------ outcomes
    def _acknowledge(self, batch: list[Handed]) -> None:
        self.batches += 1
        self.committed += len(batch)
        # Batches are acknowledged in the order they were written, and a batch holds every record
        # written before the last of it: so the file's bytes up to here are all acknowledged.
        self.acknowledged_end = max(self.acknowledged_end, max((h.end for h in batch), default=0))
        if self.on_commit is not None:
            self.on_commit([h.record for h in batch])
        for h in batch:
            _resolve(h.written)
            _resolve(h.synced)
        self._settled(len(batch))

    def _failed(self, exc: BaseException, batch: list[Handed]) -> None:
        if self.failure is None:
            self.failure = exc
        self._fail(batch, exc)

    def _fail(self, batch: list[Handed], exc: BaseException) -> None:
        for h in batch:
            for fut in (h.written, h.synced):
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: a cancelled waiter must not log noise
        self._settled(len(batch))

    def _settled(self, n: int) -> None:
        self.unsynced -= n
        if self.unsynced < self.max_unsynced or self.failure is not None:
            self._room.set()


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)
