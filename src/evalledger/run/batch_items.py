"""What one request and one batch are to a ``--batch`` run: a call's custom id, an item that failed
inside its batch, what an ended batch reports for an item it lists nowhere, and a batch's state in
words (the progress line, the journal's counts)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from evalledger.ledger import JournaledBatch, JournalItem
from evalledger.providers import BatchInfo, BatchResult, ChatRequest, ErrorInfo, ErrorKind
from evalledger.records import unit_key

#: The error type of a batch the provider refuses to show this run (a key that cannot see it): the
#: run stops and the batch stays in the journal.
BATCH_UNREADABLE = "BatchUnreadable"


#: The first wait before polling a batch again, and the longest (the wait grows by half each poll).
POLL_FIRST_S, POLL_MAX_S = 1.0, 60.0


@dataclass
class PendingAsk:
    """A unit waiting for one answer."""

    item: JournalItem
    request: ChatRequest
    future: asyncio.Future[tuple[BatchResult, str] | None]  # (result, batch id); None: leave it pending
    resubmits: int = 0


@dataclass
class OpenBatch:
    """A submitted batch not ended yet, and when to poll it next."""

    batch: JournaledBatch
    next_poll: float
    wait: float = POLL_FIRST_S
    info: BatchInfo | None = None
    asks: dict[str, PendingAsk] = field(default_factory=dict)  # custom id → the unit waiting for it


class BatchItemError(Exception):
    """A request failed inside its batch: the unit gets an error record (sent again on resume)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def custom_id_for(run_id: str, shard: tuple[int, int] | None, sample_id: str, epoch: int, call_key: str) -> str:
    """The ``custom_id`` of one model call of one unit: the same call always gets the same id
    (``[A-Za-z0-9_-]``, 42 characters: both providers' rules)."""
    text = "\x1f".join([run_id, "" if shard is None else f"{shard[0]}/{shard[1]}", unit_key(sample_id, epoch), call_key])
    return "el-" + hashlib.sha256(text.encode()).hexdigest()[:39]


def counts_of(info: BatchInfo) -> dict[str, int]:
    """A batch's request counts as the journal keeps them."""
    c = info.counts
    return {"total": c.total, "succeeded": c.succeeded, "failed": c.failed, "processing": c.processing,
            "expired": c.expired, "canceled": c.canceled}


def missing_result(custom_id: str, info: BatchInfo) -> BatchResult:
    """An item an ended batch reports nothing for: an error if the whole batch failed (its reason),
    else unfinished (it goes back to pending)."""
    if info.status == "failed":
        return BatchResult(custom_id, error=ErrorInfo(ErrorKind.SAMPLE, "BatchFailed",
                                                      f"batch {info.id} failed: {info.error or 'no reason given'}"))
    return BatchResult(custom_id, unfinished=True)


def describe_batches(infos: Sequence[BatchInfo]) -> str:
    """``batches: 2 in_progress 340/1000, 1 validating`` (empty when none is open)."""
    if not infos:
        return ""
    by_status: dict[str, list[BatchInfo]] = {}
    for info in infos:
        by_status.setdefault(info.status, []).append(info)
    parts = []
    for status, group in by_status.items():
        total = sum(i.counts.total for i in group)
        done = sum(i.counts.succeeded + i.counts.failed for i in group)
        parts.append(f"{len(group)} {status} {done}/{total}" if total else f"{len(group)} {status}")
    return "batches: " + ", ".join(parts)


__all__ = ["BATCH_UNREADABLE", "POLL_FIRST_S", "POLL_MAX_S", "BatchItemError", "OpenBatch", "PendingAsk", "counts_of", "custom_id_for", "describe_batches", "missing_result"]
