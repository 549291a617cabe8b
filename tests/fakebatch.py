"""The batch endpoints of the loopback fake API: OpenAI Files + Batches and Anthropic Message Batches.

``FakeServer`` serves them beside the online endpoints and exposes the controller as
``server.batches``; the official SDKs reach them with the same ``base_url`` as the online calls
(``client.files`` / ``client.batches``, ``client.messages.batches``). Replies follow the wire
formats of ``openai.types.Batch`` / ``FileObject`` and ``anthropic.types.messages.MessageBatch``.

A batch moves on with time, one state every ``step_seconds`` (OpenAI: validating → in_progress →
finalizing → completed; Anthropic: in_progress → ended). Its items are answered by the server's
responder exactly as online requests with the same body would be (same reply, token estimate and
id scheme) but are not counted as online requests. Controls, all callable from any thread::

    server.batches.step_seconds = 0.01
    server.batches.hold()                       # no batch leaves in_progress until release()
    server.batches.fail_items("s00003", status=500)
    server.batches.expire(done_fraction=0.5)    # every open batch expires now, half of it done
    server.batches.hang_create = True           # the batch is created, its create call never answered
    assert server.batches.submitted("s00003") == 1

This module holds ``FakeBatches`` (the controls and counters) and is the batch fake's public face.
The parts: fakebatch_model.py (values and record types), fakebatch_wire.py (wire formats and
validation), fakebatch_state.py (the files and batches held, and the state machine),
fakebatch_http.py (the aiohttp handlers). None of them imports the online fake: it is reached through ``OnlineAPI``.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from fakebatch_http import BatchEndpoints
from fakebatch_model import API, BatchInfo, CallFault, CallKind, ItemAnswer, ItemFailure, ItemRule, OnlineAPI

__all__ = ["API", "BatchInfo", "CallKind", "FakeBatches", "ItemAnswer", "ItemFailure", "OnlineAPI"]


class FakeBatches(BatchEndpoints):
    """The batch endpoints' state, controls and counters (``server.batches``).

    Every public method is safe to call from any thread; items are answered on the server's
    event-loop thread. Settings are read when a batch is created (``step_seconds``,
    ``items_per_second``) or when a call arrives (limits, ``hang_*``).
    """

    # ---- controls ----------------------------------------------------------------------------

    def hold(self, substring: str | None = None) -> None:
        """Keep batches from leaving in_progress until ``release``.

        With ``substring``, only batches whose id or one of whose custom ids contains it (now or
        created later). While held, items with ``items_per_second`` still complete; without it
        none does. Cancelling and ``expire`` still end a held batch.
        """
        with self._lock:
            self._holds.append(substring)

    def release(self, substring: str | None = None) -> None:
        """Lift the ``hold(substring)`` holds; with None, every hold. Held batches then move on."""
        with self._lock:
            self._holds = [] if substring is None else [h for h in self._holds if h != substring]

    def fail_items(self, substring: str, status: int = 400, *, message: str | None = None,
                   error_type: str | None = None, code: str | None = None, times: int | None = None) -> None:
        """Items whose custom id or message text contains ``substring`` are answered with an error.

        ``status`` 400 makes a permanent failure, 429/500/529 a transient one; ``times`` bounds how
        many items fail (None: all). OpenAI puts them in the error file, Anthropic reports
        ``errored``. Rules are tried in the order they were added.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"an item's error status must be 4xx or 5xx, got {status}")
        if times is not None and times < 0:
            raise ValueError(f"times must be >= 0 or None, got {times}")
        with self._lock:
            self._item_rules.append(ItemRule(substring, ItemFailure(status, message, error_type, code), times))

    def fail_calls(self, kind: CallKind, status: int = 500, times: int = 1, *, retry_after: float | None = None,
                   message: str | None = None) -> None:
        """The next ``times`` calls of endpoint ``kind`` (either API) answer ``status`` and do nothing."""
        if not 400 <= status <= 599:
            raise ValueError(f"an injected error status must be 4xx or 5xx, got {status}")
        with self._lock:
            self._call_faults.setdefault(kind, deque()).extend(
                [CallFault(ItemFailure(status, message), retry_after)] * times)

    def fail_create(self, status: int = 500, times: int = 1, *, retry_after: float | None = None) -> None:
        """The next ``times`` batch creates answer ``status`` and create nothing."""
        self.fail_calls("create", status, times, retry_after=retry_after)

    def expire(self, batch_id: str | None = None, done_fraction: float = 0.5) -> list[str]:
        """End ``batch_id`` (or every batch still validating or in progress) by expiry, now.

        Items already done stay done; then the first ``done_fraction`` of the items are done, the
        rest expire. Returns the ids of the batches that expired.
        """
        if not 0.0 <= done_fraction <= 1.0:
            raise ValueError(f"done_fraction must be in [0, 1], got {done_fraction}")
        return self._on_loop(lambda: self._expire(batch_id, done_fraction))

    # ---- counters ----------------------------------------------------------------------------

    def created(self) -> list[BatchInfo]:
        """Every batch created so far (including ones whose create call never got its answer), oldest first.

        States are as of the server's last look: it moves open batches on every few milliseconds.
        """
        with self._lock:
            return [BatchInfo(b.id, b.api, tuple(b.custom_ids), None if b.metadata is None else dict(b.metadata),
                              b.status, b.created_at, dict(Counter(item.outcome for item in b.items)))
                    for b in self._batches.values()]

    def submitted(self, custom_id: str) -> int:
        """How many times ``custom_id`` was submitted, over every batch of either API."""
        with self._lock:
            return self._submitted[custom_id]

    def total_items(self) -> int:
        """Requests submitted in batches, all batches together."""
        with self._lock:
            return sum(self._submitted.values())

    def calls(self, kind: CallKind | None = None, api: API | None = None) -> int:
        """Calls that reached the batch endpoints of ``kind`` (None: any) of ``api`` (None: both)."""
        with self._lock:
            return sum(n for (k, a), n in self._calls.items() if kind in (None, k) and api in (None, a))

    def stats(self) -> dict[str, Any]:
        """The counters as JSON-ready values (the server's ``/_fake/stats`` reports them)."""
        with self._lock:
            statuses = Counter(b.status for b in self._batches.values())
            calls = Counter[str]()
            for (kind, _), n in self._calls.items():
                calls[kind] += n
            return {
                "created": len(self._batches),
                "items": sum(self._submitted.values()),
                "statuses": dict(statuses),
                "calls": dict(calls),
                "max_submitted": max(self._submitted.values(), default=0),
                "resubmitted": sorted(c for c, n in self._submitted.items() if n > 1),
            }
