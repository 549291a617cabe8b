"""The parent and the worker processes of a ``--workers N`` run: what they say to each other, how
the units are dealt, and the parent's handle on one worker process (:class:`WorkerProcess`).

A worker's standard streams are the link (its stderr is the parent's):

* stdin: the :class:`WorkerJob` (its length in 8 bytes, then pickled), then ``go`` once every worker
  is ready (its ledger open, its pending set known). End of file before ``go``: do nothing and
  exit; after it: the parent is gone, stop as on SIGTERM.
* stdout: JSON lines: ``ready``; ``progress`` (acknowledged records, as progress counts them, and
  the worker's limiter figures); ``done`` (how its session ended); ``failed`` (an error before or
  instead of a summary).

The worker process is a new interpreter (``WORKER_COMMAND``) in a process group of its own, so a
Ctrl-C on the terminal reaches only the parent, which forwards signals (see :mod:`evalledger.run.workers`).
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from evalledger.config import RunConfig
from evalledger.datasets import sample_ids
from evalledger.errors import EvalLedgerError
from evalledger.run.units import PendingUnits

#: How a worker process starts: a new interpreter that imports the worker module and runs it.
WORKER_COMMAND = ("-c", "from evalledger.run.worker_session import main; main()")
GO = b"go\n"
#: The longest message line a worker may send (a progress message holds at most PROGRESS_BATCH records).
MESSAGE_LIMIT = 1 << 24
PROGRESS_BATCH = 256
_LENGTH = struct.Struct("<Q")
#: What a record tells the progress display; all a worker sends of it.
PROGRESS_FIELDS = ("status", "correct", "cost_usd", "usage", "saved")
#: The limiter figures a worker reports (its Progress's), summed over the workers for the display.
SNAPSHOT_FIELDS = ("concurrency", "paused_now", "rate_limit_waits", "rate_limit_wait_s", "connection_errors")


@dataclass
class WorkerJob:
    """What one worker process is given: its config (its share of the concurrency and the budget),
    the run it writes, its slot, and its units, as (epoch, sample ids) in send order."""

    config: RunConfig
    run_id: str
    slot: int
    of: int
    parts: list[tuple[int, list[str]]]

    @property
    def units(self) -> int:
        return sum(len(ids) for _, ids in self.parts)


def encode_job(job: WorkerJob) -> bytes:
    """The job as a worker reads it from its stdin (:func:`read_job`)."""
    data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def read_job(stream: BinaryIO) -> WorkerJob:
    """The job its parent wrote on a worker's stdin."""
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise EvalLedgerError("a worker process is started by `evalledger run --workers N`, which gives it its job "
                              "on stdin; nothing came")
    job = pickle.loads(stream.read(_LENGTH.unpack(head)[0]))
    if not isinstance(job, WorkerJob):
        raise EvalLedgerError("a worker process got something else than its job on stdin")
    return job


def deal(pending: PendingUnits, n: int) -> list[list[tuple[int, list[str]]]]:
    """The pending units dealt round-robin to ``n`` workers, in the order they are sent (epoch by
    epoch), so each worker's slice is as long as the others', give or take one, and spans the run."""
    slices: list[list[tuple[int, list[str]]]] = [[] for _ in range(n)]
    dealt = 0
    for epoch, samples in pending.parts:
        ids = sample_ids(samples)
        for k in range(n):
            mine = ids[(k - dealt) % n::n]
            if mine:
                slices[k].append((epoch, mine))
        dealt += len(ids)
    return slices


def share(total: int, n: int, k: int) -> int:
    """Worker ``k``'s (0-based) share of ``total`` among ``n``: equal, the first ones one more."""
    return total // n + (1 if k < total % n else 0)


class WorkerProcess:
    """One worker process as the parent sees it: its job, its messages, how it ended."""

    def __init__(self, job: WorkerJob, proc: asyncio.subprocess.Process,
                 on_progress: Callable[["WorkerProcess", dict[str, Any]], None]) -> None:
        self.job = job
        self.proc = proc
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.report: dict[str, Any] | None = None  # its "done" message
        self.failure: dict[str, Any] | None = None  # its "failed" message
        self.snapshot: dict[str, Any] = {}
        self.acknowledged = [0, 0]  # ok and error records it reported, for a worker that never reports its end
        self.went = False
        self._on_progress = on_progress
        self.reading = asyncio.ensure_future(self._read())

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            async for line in self.proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # not a message (the worker's stdout is its messages alone; be safe anyway)
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "progress":
                    self._on_progress(self, msg)
                elif kind == "ready":
                    if not self.ready.done():
                        self.ready.set_result(True)
                elif kind == "done":
                    self.report = msg
                elif kind == "failed":
                    self.failure = msg
        finally:
            if not self.ready.done():
                self.ready.set_result(False)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.went = True
        self.proc.stdin.write(GO)

    def abort(self) -> None:
        """End of file on its stdin before ``go``: it exits without sending anything."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    def signal(self, signum: int) -> None:
        if self.alive:
            try:
                os.kill(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    async def finished(self) -> None:
        await self.reading
        await self.proc.wait()

    def ending(self) -> str:
        """How a worker that sent no summary ended, for the run's message."""
        code = self.proc.returncode
        if self.failure is not None:
            how = f"failed: {self.failure.get('message')}"
        elif code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code} without a summary"
        return f"worker {self.job.slot} of {self.job.of} (pid {self.proc.pid}) {how}"

    @classmethod
    async def start(cls, job: WorkerJob, env: dict[str, str], pass_fds: tuple[int, ...],
                    on_progress: Callable[["WorkerProcess", dict[str, Any]], None]) -> "WorkerProcess":
        """Start the worker process of ``job`` and give it its job (it waits for ``go``)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *WORKER_COMMAND, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            pass_fds=pass_fds, process_group=0, env=env, limit=MESSAGE_LIMIT)
        worker = cls(job, proc, on_progress)
        assert proc.stdin is not None
        proc.stdin.write(encode_job(job))
        await proc.stdin.drain()
        return worker


__all__ = ["GO", "MESSAGE_LIMIT", "PROGRESS_BATCH", "PROGRESS_FIELDS", "SNAPSHOT_FIELDS", "WORKER_COMMAND",
           "WorkerJob", "WorkerProcess", "deal", "encode_job", "read_job", "share"]
