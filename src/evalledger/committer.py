"""Group commit: records finished in the same moment share one write and one fsync.

A worker hands its record to :meth:`GroupCommitter.commit` and waits; the record counts as done
only when that returns, i.e. after the fsync covering it (DESIGN promise 1). While one batch is
being written, new records queue up and go out together in the next write.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from .ledger import CheckpointManager


class GroupCommitter:
    """Batches appends to a :class:`CheckpointManager` from many asyncio workers."""

    def __init__(self, ledger: CheckpointManager, on_commit: Callable[[list[dict[str, Any]]], None] | None = None,
                 fsync: str = "batch") -> None:
        """``fsync``: ``batch`` (records waiting together share one fsync), ``always`` (one write and
        one fsync per record) or ``off`` (whole-line writes, no fsync: safe against kill -9 because
        the kernel keeps written data, not against power loss)."""
        self.ledger = ledger
        self.fsync = fsync
        self.on_commit = on_commit
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="evalledger-committer")

    async def commit(self, record: dict[str, Any]) -> None:
        """Append ``record`` durably; returns after its fsync. Raises the write error if it failed."""
        if self.failure is not None:
            raise self.failure
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, fut))
        self._wake.set()
        # shield: a worker cancelled while waiting must not lose a record that is being written
        await asyncio.shield(fut)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                if self._closing:
                    return
                continue
            if self.fsync == "always":
                batch, self._pending = self._pending[:1], self._pending[1:]
                if self._pending:
                    self._wake.set()
            else:
                batch, self._pending = self._pending, []
            records = [r for r, _ in batch]
            try:
                if self.failure is not None:
                    raise self.failure
                await asyncio.to_thread(self.ledger.append_records, records, fsync=self.fsync != "off")
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                if self.failure is None:
                    self.failure = exc
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                        fut.exception()  # mark retrieved: a cancelled waiter must not log noise
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.batches += 1
            self.committed += len(records)
            if self.on_commit is not None:
                self.on_commit(records)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            if self._closing and not self._pending:
                return

    async def close(self) -> None:
        """Write everything handed in so far, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
