"""What a run session does with each record: the circuit breaker as workers hand records in, and,
once the group committer acknowledged them (fsynced), the ledger index, the counters, the budget,
progress and the resume state. A part of :class:`~evalledger.run.session.RunSession`, kept apart
because it is the one path every record takes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from evalledger.config import RunConfig
from evalledger.ledger import GroupCommitter, LedgerScan, RunLedger, note_committed, save_own_index
from evalledger.records import bill_of, bill_of_call, epoch_of, unit_key
from evalledger.run.budget import Budget
from evalledger.run.context import RunState
from evalledger.run.prepare import PreparedRun
from evalledger.run.progress import Progress

log = logging.getLogger(__name__)

#: Seconds between saves of the writer's ledger index during a run (see :meth:`AcknowledgedRecords.save_index_periodically`).
INDEX_EVERY_S = 120.0


class AcknowledgedRecords:
    """The record path of a run session (a base of :class:`~evalledger.run.session.RunSession`,
    which sets these attributes)."""

    config: RunConfig
    ledger: RunLedger
    seen: LedgerScan
    run: RunState
    committer: GroupCommitter
    budget: Budget | None
    progress: Progress
    counters: dict[str, int]
    completed: set[str]
    requests_before: int
    new_ok: int
    new_errors: int
    spent: float
    since_checkpoint: int
    state_warned: bool
    consecutive_errors: int
    last_index_save: float
    prepared: PreparedRun

    def on_record(self, r: dict[str, Any]) -> None:
        """Every finished record, as its worker hands it to the committer (before its fsync)."""
        if r["status"] == "ok":
            self.consecutive_errors = 0
            return
        self.consecutive_errors += 1
        limit = self.config.max_consecutive_errors
        if limit and self.consecutive_errors >= limit and self.run.outage is None:
            # Circuit breaker: the API looks down; stop paying for requests that fail. Decided
            # here, not on commit: a worker does not wait for its fsync before its next request.
            self.run.outage = r.get("error") or {}
            self.run.stop.set()

    def on_commit(self, records: list[dict[str, Any]]) -> None:
        """Records the committer acknowledged (fsynced): index them, then count them."""
        self.save_index_periodically(records)
        self.count_committed(records)

    def save_index_periodically(self, records: list[dict[str, Any]]) -> None:
        """Add acknowledged records to the writer's ledger index, and save it now and then."""
        seen = self.seen
        if seen.own is None:
            return
        note_committed(seen.own, records)
        # Also while running, not only when the writer stops: after a kill -9 the next resume
        # then parses only what was appended since (a million records cost ~17 s to parse).
        # At most every INDEX_EVERY_S and once the file grew by the index's rewrite fraction.
        if time.monotonic() - self.last_index_save >= INDEX_EVERY_S and self.committer.failure is None:
            self.last_index_save = time.monotonic()
            end = self.committer.acknowledged_end
            if save_own_index(self.ledger.results_path, seen.own, end, seen.own_indexed_end):
                seen.own_indexed_end = end

    def count_committed(self, records: list[dict[str, Any]]) -> None:
        """Acknowledged records into the budget, the counters, the sets, progress and the resume state."""
        seen = self.seen
        for r in records:
            if self.budget is not None:
                self.budget.add(bill_of(r).cost_usd or 0.0, True, r.get("cost_usd"))
            key = unit_key(r["sample_id"], epoch_of(r))
            if r["status"] == "ok":
                self.new_ok += 1
                self.counters["ok_records"] += 1
                self.completed.add(key)
                (seen.incorrect.discard if r.get("correct") is True else seen.incorrect.add)(key)
                seen.errored.discard(key)
            else:
                self.new_errors += 1
                self.counters["error_records"] += 1
                if key not in self.completed:
                    seen.errored.add(key)
            self.spent += bill_of(r).cost_usd or 0.0
        self.progress.update(records)
        self.since_checkpoint += len(records)
        if self.since_checkpoint >= self.config.checkpoint_every:
            self.since_checkpoint = 0
            self.write_state()  # small file, atomic; cheap next to the appends it follows

    async def persist_call(self, rec: dict[str, Any]) -> None:
        """Durably append one paid model call to the turn cache (multi-turn tasks)."""
        await asyncio.to_thread(self.ledger.append_calls, [rec])
        call_cost = bill_of_call(rec).cost_usd or 0.0
        self.spent += call_cost
        if self.budget is not None:
            self.budget.add(call_cost, False)

    def write_state(self) -> None:
        """Save the resume state (counters, RNG); warn once if it cannot be written."""
        self.counters["requests"] = self.requests_before + self.run.requests
        try:
            self.ledger.write_resume_state({**self.counters, "completed_samples": len(self.completed)},
                                           self.prepared.config_hash)
        except OSError as e:
            # The JSONL is the source of truth and the state is rebuilt from it; never stop for this.
            if not self.state_warned:
                self.state_warned = True
                log.warning(f"could not write {self.ledger.state_path.name}: {e} (it will be rebuilt from the results)")


__all__ = ["INDEX_EVERY_S", "AcknowledgedRecords"]
