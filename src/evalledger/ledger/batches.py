"""The batch journal: what a ``--batch`` run has submitted to a provider's batch API, so that no
request is ever submitted twice, whatever stops the process.

One JSON object a line, appended with one ``write`` and, for the lines the promise rests on, an
fsync before the call that follows them:

- ``intent``: written and fsynced *before* the batch is created: a fresh ``intent`` id, when, the
  provider API, the worst case it may cost, and its items (``custom_id``, ``sample_id``, ``epoch``,
  ``call_key``). A batch the provider holds always has its intent here.
- ``created``: the provider's batch id, written and fsynced the moment the create call returns.
  A kill between the two leaves an intent without an id; the run then looks for the batch on the
  provider (:mod:`evalledger.run.batching`) before it submits anything again.
- ``state``: the provider's status and counts, written when they change (no fsync: it is for
  ``stats`` and ``status``, never for a decision).
- ``collected``: every item of the batch was handed over and its record (or turn-cache line)
  acknowledged; the batch needs nothing more from the provider.
- ``abandoned``: the batch was never created (its create failed for good, or the provider has no
  batch for that intent); its items go back to pending.

A line that is not whole JSON (a torn tail after a kill, damage) is skipped, never trusted; the
writer starts its next line on a fresh line. The journal is per writer (the run, or one shard)
and written only under that writer's lock.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalledger.fsio import fsync_dir, utc_now
from evalledger.ledger.layout import RunPaths, batch_journal_files
from evalledger.records import unit_key

#: The phases a journaled batch goes through, as ``stats`` and ``status`` show them.
OPEN, COLLECTED, ABANDONED = "open", "collected", "abandoned"


@dataclass(frozen=True)
class JournalItem:
    """One request of a batch: its ``custom_id`` and the (sample, epoch) and model call it answers."""

    custom_id: str
    sample_id: str
    epoch: int
    call_key: str

    def to_json(self) -> dict[str, Any]:
        return {"custom_id": self.custom_id, "sample_id": self.sample_id, "epoch": self.epoch,
                "call_key": self.call_key}

    @staticmethod
    def from_json(obj: Any) -> "JournalItem | None":
        if not isinstance(obj, dict):
            return None
        cid, sid, epoch, key = obj.get("custom_id"), obj.get("sample_id"), obj.get("epoch"), obj.get("call_key")
        if not (isinstance(cid, str) and isinstance(sid, str) and type(epoch) is int and isinstance(key, str)):
            return None
        return JournalItem(cid, sid, epoch, key)


@dataclass
class JournaledBatch:
    """What the journal says about one batch (one ``intent``)."""

    intent: str
    api: str
    intended_at: float  # unix seconds, before the create call
    items: list[JournalItem]
    worst_cost: float | None = None
    batch_id: str | None = None
    status: str | None = None  # the provider's last status seen
    counts: dict[str, int] = field(default_factory=dict)
    phase: str = OPEN
    reason: str | None = None  # why it was abandoned

    @property
    def custom_ids(self) -> list[str]:
        return [item.custom_id for item in self.items]


def new_intent_id() -> str:
    """A fresh intent id (also sent as the OpenAI batch's metadata, to find it after a lost reply)."""
    return uuid.uuid4().hex[:20]


def read_journal(path: Path) -> dict[str, JournaledBatch]:
    """Every batch of one journal file by intent id, in the order they were intended; lines that
    are not whole JSON or not a known event are skipped (never trusted)."""
    batches: dict[str, JournaledBatch] = {}
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return batches
    for line in data.split(b"\n"):
        if line.strip():
            _apply(batches, line)
    return batches


def read_run_journals(run_dir: Path) -> dict[Path, dict[str, JournaledBatch]]:
    """Every batch journal of a run directory (one per writer), read."""
    return {path: read_journal(path) for path in batch_journal_files(run_dir)}


def batch_summary(run_dir: Path) -> dict[str, Any]:
    """What a run's batch journals say, for ``stats`` and ``status``: ``batches`` (one dict per
    batch: intent, batch_id, api, phase, the provider's last status, counts, requests, journal),
    ``open`` / ``collected`` / ``abandoned`` counts and ``line``, e.g.
    ``3 batches: 1 collected, 2 open (in_progress 40/100, validating)``. Empty for a run without."""
    listed: list[dict[str, Any]] = []
    for path, batches in read_run_journals(run_dir).items():
        for b in batches.values():
            listed.append({"intent": b.intent, "batch_id": b.batch_id, "api": b.api, "phase": b.phase,
                           "status": b.status, "counts": b.counts, "requests": len(b.items),
                           "worst_cost": b.worst_cost, "journal": path.name})
    if not listed:
        return {}
    by_phase = {phase: sum(1 for b in listed if b["phase"] == phase) for phase in (OPEN, COLLECTED, ABANDONED)}
    parts = [f"{n} {phase}" for phase, n in by_phase.items() if n]
    open_states = [_state_text(b) for b in listed if b["phase"] == OPEN]
    line = f"{len(listed)} batch{'es' if len(listed) != 1 else ''}: " + ", ".join(parts)
    if open_states:
        line += f" ({', '.join(open_states)})"
    return {"batches": listed, **by_phase, "line": line}


def _state_text(b: dict[str, Any]) -> str:
    """One open batch's state: ``in_progress 40/100``, ``not created yet`` without an id."""
    if b["batch_id"] is None:
        return "id not journaled: looked for on the provider at the next run"
    counts = b["counts"]
    done = counts.get("succeeded", 0) + counts.get("failed", 0)
    return f"{b['status'] or 'submitted'} {done}/{counts.get('total') or b['requests']}"


def _apply(batches: dict[str, JournaledBatch], line: bytes) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        return
    if not isinstance(event, dict) or not isinstance(event.get("intent"), str):
        return
    kind, intent = event.get("event"), event["intent"]
    if kind == "intent":
        items = [JournalItem.from_json(o) for o in event.get("items") or []]
        at = event.get("at")
        worst = event.get("worst_cost")
        batches[intent] = JournaledBatch(
            intent=intent, api=str(event.get("api") or ""), intended_at=float(at) if isinstance(at, (int, float)) else 0.0,
            items=[i for i in items if i is not None],
            worst_cost=float(worst) if isinstance(worst, (int, float)) and not isinstance(worst, bool) else None)
        return
    batch = batches.get(intent)
    if batch is None:
        return
    if kind == "created" and isinstance(event.get("batch_id"), str):
        batch.batch_id = event["batch_id"]
    elif kind == "state":
        if isinstance(event.get("status"), str):
            batch.status = event["status"]
        counts = event.get("counts")
        if isinstance(counts, dict):
            batch.counts = {k: v for k, v in counts.items() if isinstance(k, str) and type(v) is int}
    elif kind == "collected":
        batch.phase = COLLECTED
    elif kind == "abandoned":
        batch.phase = ABANDONED
        batch.reason = event.get("reason") if isinstance(event.get("reason"), str) else None


class BatchJournal:
    """The writer's batch journal (``batches<sfx>.jsonl``): read on open, appended as batches go."""

    def __init__(self, run_dir: Path, shard: tuple[int, int] | None = None) -> None:
        self.path = RunPaths(Path(run_dir), shard).batches
        self.batches = read_journal(self.path)
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            existed = self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if not existed:
                fsync_dir(self.path.parent)
            elif self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
                os.write(self._fd, b"\n")  # a torn last line stays a line of its own, skipped when read
        return self._fd

    def _append(self, event: dict[str, Any], *, sync: bool) -> None:
        fd = self._open()
        os.write(fd, (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
        if sync:
            os.fsync(fd)

    def open_batches(self) -> list[JournaledBatch]:
        """The batches neither collected nor abandoned, in the order they were intended."""
        return [b for b in self.batches.values() if b.phase == OPEN]

    def intend(self, api: str, items: Iterable[JournalItem], worst_cost: float | None) -> JournaledBatch:
        """Journal a batch about to be created, durably (fsync), and return it."""
        batch = JournaledBatch(intent=new_intent_id(), api=api, intended_at=time.time(), items=list(items),
                               worst_cost=worst_cost)
        self._append({"event": "intent", "intent": batch.intent, "at": batch.intended_at, "when": utc_now(),
                      "api": api, "worst_cost": worst_cost, "items": [i.to_json() for i in batch.items]}, sync=True)
        self.batches[batch.intent] = batch
        return batch

    def created(self, batch: JournaledBatch, batch_id: str) -> None:
        """Journal the provider's id of ``batch``, durably, as soon as it is known."""
        self._append({"event": "created", "intent": batch.intent, "batch_id": batch_id, "when": utc_now()}, sync=True)
        batch.batch_id = batch_id

    def state(self, batch: JournaledBatch, status: str, counts: Mapping[str, int]) -> None:
        """Journal the provider's status and counts of ``batch`` when they changed."""
        counts = dict(counts)
        if status == batch.status and counts == batch.counts:
            return
        self._append({"event": "state", "intent": batch.intent, "status": status, "counts": counts,
                      "when": utc_now()}, sync=False)
        batch.status, batch.counts = status, counts

    def collected(self, batch: JournaledBatch) -> None:
        """Journal that ``batch`` needs nothing more from the provider."""
        self._append({"event": "collected", "intent": batch.intent, "when": utc_now()}, sync=True)
        batch.phase = COLLECTED

    def abandoned(self, batch: JournaledBatch, reason: str) -> None:
        """Journal that ``batch`` was never created (its items go back to pending)."""
        self._append({"event": "abandoned", "intent": batch.intent, "reason": reason, "when": utc_now()}, sync=True)
        batch.phase, batch.reason = ABANDONED, reason

    def collect_completed(self, completed: set[str]) -> None:
        """Journal as collected every open batch whose units all have their ok records (a run
        stopped after writing them, before saying so); no provider is asked."""
        for batch in self.open_batches():
            if batch.batch_id is not None and all(unit_key(i.sample_id, i.epoch) in completed for i in batch.items):
                self.collected(batch)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


__all__ = ["ABANDONED", "COLLECTED", "OPEN", "BatchJournal", "JournalItem", "JournaledBatch", "batch_summary",
           "new_intent_id",
           "read_journal", "read_run_journals"]
