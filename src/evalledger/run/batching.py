"""``--batch``: the run's model calls go to the provider's batch API instead of one request each.

The task still runs one unit at a time and calls ``generate``; in a batch run that call lands here
(:meth:`BatchQueue.ask`) and waits for its answer. Requests are gathered into provider batches of
up to ``--batch-size`` (within the provider's request and byte limits), sent when the batch is
full or when no new request came for a moment, polled with backoff, and their results handed back
to the waiting units, which write ordinary records. A multi-turn task's next turn is asked as its
first turn's answer arrives, so it goes into a later batch.

Never submitted twice (see :mod:`evalledger.ledger.batches`): a batch's intent (its items) is
journaled and fsynced before it is created, its id the moment the create call returns. A later run
of the same command re-attaches to every open batch: a unit whose request a journaled batch holds
waits for that batch instead of asking again. An intent with no id (killed between the provider's
reply and the journal's fsync, or a create whose reply was lost) is looked for on the provider
before anything is submitted again (:mod:`evalledger.run.batch_recovery`).

A batch is marked collected only once every item was handed over and the run ended without a lost
write, so a crash at any point leaves it open and the next run downloads its results again (the
provider keeps them for weeks) rather than paying for them twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from evalledger.ledger import BatchJournal, JournaledBatch, JournalItem
from evalledger.pricing import Price
from evalledger.providers import (
    BatchInfo,
    BatchItem,
    BatchResult,
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    ErrorKind,
)
from evalledger.records import unit_key
from evalledger.run.batch_items import (
    BATCH_UNREADABLE,
    POLL_FIRST_S,
    POLL_MAX_S,
    BatchItemError,
    OpenBatch,
    PendingAsk,
    counts_of,
    custom_id_for,
    describe_batches,
    missing_result,
)
from evalledger.run.batch_recovery import find_created
from evalledger.run.budget import Budget
from evalledger.run.limits import estimate_prompt_tokens
from evalledger.run.retry import NonRetryable, RetriesExhausted, RetryPolicy, call_with_retries
from evalledger.run.stops import LeftPending

log = logging.getLogger(__name__)

#: Seconds without a new request before a partly filled batch is sent.
GATHER_S = 0.25
#: Units a batch run keeps under way at once (each waits for its batch, holding no request slot).
UNITS_IN_FLIGHT = 50_000
#: How often an item that expired or was cancelled in its batch is put into a new one in the same run.
MAX_RESUBMITS = 2


class BatchQueue:
    """The batches of one run session: gathering, journaling, creating, polling, handing back."""

    def __init__(self, provider: Any, journal: BatchJournal, *, api: str, run_id: str,
                 shard: tuple[int, int] | None, batch_size: int, wait: bool, price: Price | None,
                 budget: Budget | None, policy: RetryPolicy, stop: asyncio.Event, max_tokens: int,
                 on_change: Callable[[str], None] = lambda text: None) -> None:
        self.provider = provider  # a Provider that is also a BatchAPI (supports_batch)
        self.journal = journal
        self.api = api
        self.run_id, self.shard = run_id, shard
        limits = provider.batch_limits
        self.batch_size = min(batch_size, limits.max_requests)
        self.max_bytes = limits.max_bytes
        self.wait = wait
        self.price = price
        self.budget = budget
        self.policy = policy
        self.stop = stop
        self.max_tokens = max_tokens
        self.on_change = on_change
        self.gathering: list[PendingAsk] = []
        self.open: dict[str, OpenBatch] = {}  # intent → batch
        self.holder: dict[str, OpenBatch] = {}  # custom id → the open batch holding it
        self.ready: dict[str, tuple[BatchResult, str]] = {}  # results no unit has asked for yet
        self.handed: set[str] = set()  # custom ids whose result a unit took
        self.ended: list[JournaledBatch] = []
        self.unresolved: set[str] = set()  # custom ids of intents the provider could not be asked about
        self.unresolved_batches = 0  # those intents
        self.submitted = 0  # requests submitted in batches by this run
        self.budget_hit = False
        self.fatal: ErrorInfo | None = None
        self._reserved = 0.0
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ----------------------------------------------------------------- life cycle
    async def start(self) -> None:
        """Re-attach to the journal's open batches (finding those whose id was never journaled),
        then start gathering and polling."""
        for batch in self.journal.open_batches():
            if batch.batch_id is None:
                try:
                    found = await find_created(self.provider, batch, self.journal.batches.values())
                except Exception as e:  # noqa: BLE001 - whatever the SDK raised: the provider could not say
                    # Unknown whether it was created: its units wait (never sent again) until a run can tell.
                    self.unresolved.update(batch.custom_ids)
                    self.unresolved_batches += 1
                    log.warning(f"could not ask the provider whether the batch of intent {batch.intent} was "
                                f"created ({self.provider.classify(e).message}); its {len(batch.items)} "
                                "request(s) stay pending until a later run can tell")
                    continue
                if found is None:
                    self.journal.abandoned(batch, "not created: the provider has no batch for this intent")
                    continue
                log.warning(f"found batch {found} on the provider for intent {batch.intent}, whose id the "
                            "journal missed (the run stopped right after creating it); re-attached")
                self.journal.created(batch, found)
            self._attach(batch)
        self._tasks = [asyncio.create_task(self._gather(), name="evalledger-batch-gather"),
                       asyncio.create_task(self._poll(), name="evalledger-batch-poll")]
        self._show()

    def _attach(self, batch: JournaledBatch) -> OpenBatch:
        entry = OpenBatch(batch, next_poll=time.monotonic())
        self.open[batch.intent] = entry
        for item in batch.items:
            self.holder[item.custom_id] = entry
        if self.budget is not None and batch.worst_cost:
            self._reserved += batch.worst_cost
        return entry

    async def close(self, completed: set[str], clean: bool) -> None:
        """Stop the background tasks; with ``clean`` (every record acknowledged, nothing cut short),
        journal as collected each ended batch whose items were all handed over or whose units are done."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._release_all()
        if clean:
            for batch in self.ended:
                if all(i.custom_id in self.handed or unit_key(i.sample_id, i.epoch) in completed for i in batch.items):
                    self.journal.collected(batch)
        self.journal.close()

    def pending_batches(self) -> int:
        """Batches submitted (by this run or an earlier one) that have not ended, and intents the
        provider could not be asked about."""
        return len(self.open) + self.unresolved_batches

    # ----------------------------------------------------------------- asking
    async def ask(self, sample_id: str, epoch: int, call_key: str, request: ChatRequest) -> tuple[ChatResponse, str]:
        """The answer to one model call (``call_key``) of unit (``sample_id``, ``epoch``) and the
        id of the batch it came in; raises :class:`BatchItemError` if it failed inside its batch,
        :class:`LeftPending` if the unit is to stay pending (its batch has not ended and the run
        leaves, or the run stopped)."""
        cid = custom_id_for(self.run_id, self.shard, sample_id, epoch, call_key)
        item = JournalItem(cid, sample_id, epoch, call_key)
        if cid in self.ready:
            result, batch_id = self.ready.pop(cid)
            return self._take(result, batch_id)
        if self.stop.is_set() or self.budget_hit or cid in self.unresolved:
            raise LeftPending()
        future: asyncio.Future[tuple[BatchResult, str] | None] = asyncio.get_running_loop().create_future()
        ask = PendingAsk(item, request, future)
        entry = self.holder.get(cid)
        if entry is not None:  # a journaled batch holds this very call: wait for it
            if not self.wait and entry.info is not None and not entry.info.ended:
                raise LeftPending()
            entry.asks[cid] = ask
        else:
            self.gathering.append(ask)
            self._kick.set()
        answer = await future
        if answer is None:
            raise LeftPending()
        return self._take(*answer)

    def _take(self, result: BatchResult, batch_id: str) -> tuple[ChatResponse, str]:
        self.handed.add(result.custom_id)
        if result.response is not None:
            return result.response, batch_id
        raise BatchItemError(result.error or ErrorInfo(ErrorKind.SAMPLE, "BatchError", "failed inside its batch"))

    # ----------------------------------------------------------------- gathering and submitting
    async def _gather(self) -> None:
        """Send a batch when ``batch_size`` requests wait, or when no new one came for GATHER_S."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            while len(self.gathering) < self.batch_size:
                before = len(self.gathering)
                await asyncio.sleep(GATHER_S)
                if len(self.gathering) == before:
                    break
            while self.gathering:
                chunk = self._take_chunk()
                await self._submit(chunk)

    def _take_chunk(self) -> list[PendingAsk]:
        """The next batch: up to batch_size requests and the provider's byte limit."""
        chunk: list[PendingAsk] = []
        size = 0
        for ask in self.gathering:
            n = self.provider.batch_item_bytes(BatchItem(ask.item.custom_id, ask.request))
            if chunk and (len(chunk) >= self.batch_size or size + n > self.max_bytes):
                break
            chunk.append(ask)
            size += n
        del self.gathering[:len(chunk)]
        return chunk

    def _worst_costs(self, chunk: Sequence[PendingAsk]) -> list[float] | None:
        """What each request of ``chunk`` costs at most: its prompt's estimate plus max_tokens, at the
        batch price (None: no known price)."""
        if self.price is None:
            return None
        return [self.price.cost(int(estimate_prompt_tokens(a.request.messages)), self.max_tokens) for a in chunk]

    def _admit(self, chunk: list[PendingAsk]) -> tuple[list[PendingAsk], float | None]:
        """The part of ``chunk`` the budget admits at its worst case (halved until it fits), and that
        worst case; the rest stays pending."""
        costs = self._worst_costs(chunk)
        n = len(chunk)
        if self.budget is not None:
            while n and not self.budget.fits(self._reserved + (sum(costs[:n]) if costs else 0.0)):
                n = n // 2 if n > 1 else 0
        return chunk[:n], None if costs is None else sum(costs[:n])

    async def _submit(self, chunk: list[PendingAsk]) -> None:
        if self.stop.is_set() or self.budget_hit:
            self._leave(chunk)
            return
        admitted, worst = self._admit(chunk)
        if len(admitted) < len(chunk):
            self.budget_hit = True
            self._leave(chunk[len(admitted):] + self.gathering)
            self.gathering.clear()
        if not admitted:
            return
        batch = self.journal.intend(self.api, [a.item for a in admitted], worst)
        info = await self._create(batch, admitted)
        if info is None:
            return
        self.journal.created(batch, info.id)
        self.submitted += len(admitted)
        entry = self._attach(batch)
        entry.info = info
        entry.asks = {a.item.custom_id: a for a in admitted}
        self.journal.state(batch, info.status, counts_of(info))
        if not self.wait:
            self._leave(list(entry.asks.values()))
            entry.asks.clear()
        self._show()

    async def _create(self, batch: JournaledBatch, asks: list[PendingAsk]) -> BatchInfo | None:
        """Create the batch (retrying as any request is retried); before each retry, look for it on
        the provider: a create whose reply was lost may have happened."""
        items = [BatchItem(a.item.custom_id, a.request) for a in asks]
        metadata = {"evalledger_run": self.run_id[:512], "evalledger_intent": batch.intent}
        if self.shard is not None:
            metadata["evalledger_shard"] = f"{self.shard[0]}/{self.shard[1]}"
        tried = False

        async def attempt() -> BatchInfo:
            nonlocal tried
            if tried:
                found = await find_created(self.provider, batch, self.journal.batches.values())
                if found is not None:
                    return await self.provider.retrieve_batch(found)
            tried = True
            return await self.provider.create_batch(items, metadata)

        try:
            info, _ = await call_with_retries(attempt, self.provider.classify, self.policy)
            return info
        except (NonRetryable, RetriesExhausted) as e:
            if e.info.kind is ErrorKind.FATAL:
                self.fatal = e.info
                self.stop.set()
                self.journal.abandoned(batch, f"create failed: {e.info.message}")
                self._leave(asks)
                return None
            self.journal.abandoned(batch, f"create failed: {e.info.message}")
            for ask in asks:
                self._resolve(ask, BatchResult(ask.item.custom_id, error=e.info), "")
            return None

    # ----------------------------------------------------------------- polling and handing back
    async def _poll(self) -> None:
        """Poll each open batch when due (its wait grows by half up to POLL_MAX_S); hand back the
        results of those that ended; when the run stops, release every waiting unit."""
        while True:
            if self.stop.is_set():
                self._release_all()
            now = time.monotonic()
            due = [e for e in self.open.values() if e.next_poll <= now]
            for entry in due:
                await self._poll_one(entry)
            nearest = min((e.next_poll for e in self.open.values()), default=now + POLL_FIRST_S)
            await asyncio.sleep(max(0.05, min(nearest - time.monotonic(), POLL_FIRST_S)))

    async def _poll_one(self, entry: OpenBatch) -> None:
        batch = entry.batch
        assert batch.batch_id is not None
        try:
            info, _ = await call_with_retries(lambda: self.provider.retrieve_batch(batch.batch_id),
                                              self.provider.classify, self.policy)
        except (NonRetryable, RetriesExhausted) as e:
            self._poll_failed(entry, f"could not poll batch {batch.batch_id}", e.info)
            return
        entry.info = info
        self.journal.state(batch, info.status, counts_of(info))
        if info.ended:
            await self._collect(entry, info)
        else:
            entry.next_poll = time.monotonic() + entry.wait
            entry.wait = min(entry.wait * 1.5, POLL_MAX_S)
            if not self.wait:
                self._leave(list(entry.asks.values()))
                entry.asks.clear()
        self._show()

    def _poll_failed(self, entry: OpenBatch, what: str, info: ErrorInfo) -> None:
        """A poll or a download that failed for good: a fatal error (a refused key, a batch this key
        cannot see) stops the run and leaves the batch in the journal, never submitted again; anything
        else is tried again later."""
        if info.kind is ErrorKind.FATAL:
            if self.fatal is None:
                self.fatal = dataclasses.replace(info, type=BATCH_UNREADABLE, message=(
                    f"{what}: {info.message} (it stays in the journal: the same command, with the key that "
                    "made it, collects it)"))
            self.stop.set()
            self._release_all()
            return
        log.warning(f"{what}: {info.message} (trying again later)")
        entry.next_poll = time.monotonic() + POLL_MAX_S

    async def _collect(self, entry: OpenBatch, info: BatchInfo) -> None:
        """An ended batch: download its results and hand each to its unit (or keep it until asked)."""
        try:
            results, _ = await call_with_retries(lambda: self.provider.batch_results(info),
                                                 self.provider.classify, self.policy)
        except (NonRetryable, RetriesExhausted) as e:
            self._poll_failed(entry, f"could not download the results of batch {info.id}", e.info)
            return
        by_id = {r.custom_id: r for r in results}
        batch = entry.batch
        del self.open[batch.intent]
        if self._reserved and batch.worst_cost:
            self._reserved = max(0.0, self._reserved - batch.worst_cost)
        for item in batch.items:
            cid = item.custom_id
            if self.holder.get(cid) is entry:
                del self.holder[cid]
            result = by_id.get(cid) or missing_result(cid, info)
            ask = entry.asks.pop(cid, None)
            if result.unfinished:
                if ask is not None and ask.resubmits < MAX_RESUBMITS and not self.stop.is_set():
                    ask.resubmits += 1
                    self.gathering.append(ask)
                    self._kick.set()
                    self.handed.add(cid)  # handed on to a new batch
                elif ask is not None:
                    self._resolve(ask, None, "")
                continue
            if ask is not None:
                self._resolve(ask, result, info.id)
            else:
                self.ready[cid] = (result, info.id)
        self.ended.append(batch)

    def _resolve(self, ask: PendingAsk, result: BatchResult | None, batch_id: str) -> None:
        if not ask.future.done():
            ask.future.set_result(None if result is None else (result, batch_id))

    def _leave(self, asks: Sequence[PendingAsk]) -> None:
        for ask in asks:
            self._resolve(ask, None, "")

    def _release_all(self) -> None:
        """Every waiting unit stays pending (its batch stays in the journal for the next run)."""
        self._leave(self.gathering)
        self.gathering.clear()
        for entry in self.open.values():
            self._leave(list(entry.asks.values()))
            entry.asks.clear()

    def _show(self) -> None:
        # Never empty: a batch run's progress line shows its batches, not request slots it has none of.
        infos = [e.info for e in self.open.values() if e.info is not None]
        self.on_change(describe_batches(infos) or "batches: none open")


__all__ = ["UNITS_IN_FLIGHT", "BatchItemError", "BatchQueue"]
