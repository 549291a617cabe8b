"""The state of the fake batch endpoints: the files and batches they hold, and how a batch moves on.

``BatchState`` keeps the records (under one lock) and moves each open batch through its states as
time passes, answering its items through the online fake; the aiohttp handlers (fakebatch_http.py)
and the controls (``FakeBatches``) build on it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fakebatch_model import (
    API,
    OPENAI_OPEN,
    Batch,
    BatchItem,
    ItemFailure,
    ItemRule,
    OnlineAPI,
    Refused,
    StoredFile,
)
from fakebatch_wire import jsonl, openai_result_lines

_EXPIRABLE = frozenset({"validating", "in_progress"})


class BatchState:
    """The batches and files of both APIs, and the state machine that moves the batches on.

    ``_lock`` guards every record; the state machine runs on the server's event-loop thread.
    """

    def __init__(self, api: OnlineAPI, request_text: Callable[[dict[str, Any]], str]) -> None:
        """Serve batches whose items ``api`` answers; ``request_text`` is a body's message text."""
        self._api = api
        self._text_of = request_text
        #: seconds each state lasts (validating, in_progress, finalizing; cancelling)
        self.step_seconds: float = 0.05
        #: items done per second of in_progress (counts move); None: all at the end of in_progress
        self.items_per_second: float | None = None

        self._lock = threading.RLock()
        self._ids = 0
        self._batches: dict[str, Batch] = {}
        self._files: dict[str, StoredFile] = {}
        self._holds: list[str | None] = []
        self._item_rules: list[ItemRule] = []
        self._submitted: Counter[str] = Counter()

    # ---- the state machine (on the loop thread) ----------------------------------------------

    def _advance_all(self) -> None:
        now = time.monotonic()
        with self._lock:
            for batch in self._batches.values():
                if self._is_open(batch):
                    self._advance(batch, now)

    def _advance(self, b: Batch, now: float) -> None:
        """Move ``b`` through every state whose time has come."""
        while True:
            due = now >= b.since + b.step
            if b.status == "validating" and due:
                if b.errors:
                    b.items = []
                    self._move(b, "failed", "failed_at", now)
                else:
                    b.model = b.items[0].body["model"]
                    self._move(b, "in_progress", "in_progress_at", now)
            elif b.status == "in_progress":
                scheduled = len(b.items)
                if b.items_per_second is not None:
                    scheduled = math.floor((now - b.since) * b.items_per_second)
                    self._answer_first(b, scheduled)
                if not due or scheduled < len(b.items) or self._held(b):
                    return
                self._answer_first(b, len(b.items))
                if b.api == "openai":
                    self._move(b, "finalizing", "finalizing_at", now)
                else:
                    self._end(b, "ended", "ended_at", now, "")
            elif b.status == "finalizing" and due:
                self._end(b, "completed", "completed_at", now, "")
            elif b.status in ("cancelling", "canceling") and due:
                self._end(b, "cancelled" if b.api == "openai" else "ended",
                          "cancelled_at" if b.api == "openai" else "ended_at", now, "canceled")
            else:
                return

    def _expire(self, batch_id: str | None, done_fraction: float) -> list[str]:
        now = time.monotonic()
        with self._lock:
            if batch_id is not None:
                batch = self._batches.get(batch_id)
                if batch is None or batch.status not in _EXPIRABLE:
                    raise ValueError(f"no batch {batch_id!r} that is validating or in progress")
                targets = [batch]
            else:
                targets = [b for b in self._batches.values() if b.status in _EXPIRABLE]
            for b in targets:
                if b.status == "in_progress":
                    self._answer_first(b, math.floor(done_fraction * len(b.items)))
                if b.api == "openai":
                    self._end(b, "expired", "expired_at", now, "expired")
                else:
                    self._end(b, "ended", "ended_at", now, "expired")
            return [b.id for b in targets]

    def _answer_first(self, b: Batch, n: int) -> None:
        """Answer every pending item among the first ``n``."""
        while b.answered < min(n, len(b.items)):
            item = b.items[b.answered]
            item.answer = self._api.answer_item(b.api, item.body, self._item_failure(item))
            item.outcome = "succeeded" if item.answer.status == 200 else "errored"
            b.answered += 1

    def _end(self, b: Batch, status: str, stamp: str, now: float, unfinished: str) -> None:
        """End ``b``: its pending items become ``unfinished`` (expired/canceled); OpenAI writes its files."""
        for item in b.items[b.answered:]:
            item.outcome = unfinished
        self._move(b, status, stamp, now)
        if b.api == "openai":
            self._openai_files(b)

    @staticmethod
    def _move(b: Batch, status: str, stamp: str, now: float) -> None:
        b.status, b.since = status, now
        b.times[stamp] = time.time()

    def _held(self, b: Batch) -> bool:
        return any(h is None or h in b.hold_key for h in self._holds)

    def _item_failure(self, item: BatchItem) -> ItemFailure | None:
        for rule in self._item_rules:
            if rule.remaining != 0 and (rule.substring in item.custom_id or rule.substring in item.text):
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule.failure
        return None

    @staticmethod
    def _is_open(b: Batch) -> bool:
        return b.status in OPENAI_OPEN if b.api == "openai" else b.status != "ended"

    # ---- records (under the lock) --------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:08d}"

    def _new_file(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        stored = StoredFile(self._new_id("file-fake"), filename, purpose, content, time.time())
        self._files[stored.id] = stored
        return stored

    def _new_item(self, custom_id: str, body: dict[str, Any]) -> BatchItem:
        return BatchItem(custom_id, body, self._text_of(body), self._new_id("batch_req_fake"))

    def _new_batch(self, api: API, status: str, metadata: dict[str, str] | None, items: list[BatchItem],
                   custom_ids: list[str], errors: list[dict[str, Any]]) -> Batch:
        batch = Batch(self._new_id("batch_fake" if api == "openai" else "msgbatch_fake"), api, items, custom_ids,
                       metadata, self.step_seconds, self.items_per_second, time.time(), status, time.monotonic(),
                       errors=errors)
        batch.hold_key = "\n".join([batch.id, *custom_ids])
        self._batches[batch.id] = batch
        self._submitted.update(custom_ids)
        return batch

    def _find_file(self, file_id: str) -> StoredFile:
        if file_id not in self._files:
            raise Refused(404, f"No such File object: {file_id}")
        return self._files[file_id]

    def _find_batch(self, batch_id: str, api: API) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.api != api:
            raise Refused(404, f"No batch found with id '{batch_id}'.", error_type="not_found_error")
        return batch

    def _newest_first(self, api: API) -> list[Batch]:
        return [b for b in reversed(self._batches.values()) if b.api == api]

    @staticmethod
    def _position(batches: list[Batch], batch_id: str | None) -> int:
        for i, b in enumerate(batches):
            if b.id == batch_id:
                return i
        raise Refused(400, f"No batch {batch_id!r} to page from.")

    def _openai_files(self, b: Batch) -> None:
        """Write the output and error files of a batch that ended (each only if it has lines)."""
        output, failed = openai_result_lines(b)
        if output:
            b.output_file_id = self._new_file(f"{b.id}_output.jsonl", "batch_output", jsonl(output)).id
        if failed:
            b.error_file_id = self._new_file(f"{b.id}_error.jsonl", "batch_output", jsonl(failed)).id
