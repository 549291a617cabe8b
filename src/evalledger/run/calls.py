"""The model calls of one unit of work, (sample, epoch): its task's ``generate``.

Turn cache: for a multi-turn task (``task.multi_turn``) every model call that succeeds is appended
to ``calls….jsonl`` (with its sample id and epoch) before the task goes on. On resume, a call of
the same unit whose request is identical (same messages and generation parameters) is answered
from there instead of being paid for again, so a crash between turn 1 and turn 2 costs only turn
2. Two epochs of a sample never share a call.

Response cache: before a call is sent (and after the turn cache), the response cache shared across
runs is asked for an answer to the identical request (:mod:`evalledger.run.replay`). A hit sends
nothing: it takes no request slot and no rate-limit budget, and is not paid. A paid answer is stored
there as soon as it arrives (a failed one never is), so a rerun after ``--overwrite``, under another
``--run-id``, or a resume after a crash that lost the record, gets it back without paying.

Billing: each results record carries ``paid`` = what that record adds to the run's bill. For a
single-turn task that is its usage, less the calls the response cache answered; for a multi-turn
task the calls file is the bill (every paid call is there once) and the record's ``paid`` is zero,
while its ``usage`` is the sample's total. A record with a call from the response cache says so
(``cached``) and what those calls would have cost (``saved``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import nullcontext
from typing import Any

from evalledger.fsio import utc_now
from evalledger.providers import ChatRequest, ChatResponse, ErrorInfo, ErrorKind
from evalledger.records import unit_key
from evalledger.run.batching import BatchItemError, BatchQueue
from evalledger.run.context import SampleContext
from evalledger.run.limits import RATE_LIMIT_STATUSES, estimate_request_tokens
from evalledger.run.replay import answer_of, cache_key, call_key, response_of
from evalledger.run.retry import NonRetryable, RetriesExhausted, call_with_retries
from evalledger.run.stops import NotStarted
from evalledger.samples import Sample, epoch_seed


class SampleCalls:
    """The model calls of one unit (sample, epoch): the task's ``generate``, the answers it got (paid,
    replayed from the turn cache or answered by the response cache) and the HTTP requests they took."""

    def __init__(self, ctx: SampleContext, sample: Sample, epoch: int, shard: str | None) -> None:
        self.ctx = ctx
        self.sample = sample
        self.epoch = epoch
        self.seed = epoch_seed(ctx.seed, sample.id, epoch)
        self.shard = shard
        self.cache = ctx.cached_calls.get(unit_key(sample.id, epoch), {})
        self.responses: list[ChatResponse] = []
        self.replayed: list[bool] = []  # from the turn cache (paid by an earlier attempt of this run)
        self.cached: list[bool] = []  # from the response cache (not paid by this run)
        self.attempts = 0
        # When the first request went out: the sample's latency counts from there, and the time
        # before it (waiting for a request slot or a rate limit) is the record's queued_s.
        self.first_sent: float | None = None
        self.first_sent_at: str | None = None
        self.unrecorded = 0  # answers paid for that are in no file yet (see RunState.answered_unrecorded)
        self.batch_ids: list[str] = []  # --batch: the provider batch each answer came in

    async def generate(self, messages: list[dict[str, str]]) -> str:
        """One model call for the task: replayed from the turn cache if paid for already, else sent."""
        ctx = self.ctx
        request = ChatRequest(messages=messages, model=ctx.model, temperature=ctx.temperature,
                              max_tokens=ctx.max_tokens, seed=self.seed, top_p=ctx.top_p)
        key = call_key(request) if ctx.multi_turn else ""
        hit = self.cache.get(key) if key else None
        if hit is not None:  # paid for by an earlier, interrupted attempt: replay, do not pay again
            return self._replay(hit)
        shared = ctx.response_cache  # the response cache (self.cache is this unit's turn cache)
        stored_key = cache_key(ctx.endpoint, self.epoch, request) if shared is not None else ""
        answer = shared.get(stored_key) if shared is not None else None
        if answer is not None:  # an identical request was paid for before: nothing is sent
            self.responses.append(response_of(answer))
            self.replayed.append(False)
            self.cached.append(True)
            return answer.text
        if ctx.batch is not None:
            resp = await self._from_batch(ctx.batch, key or call_key(request), request)
        else:
            resp = await self._send(request)
        self.responses.append(resp)
        self.replayed.append(False)
        self.cached.append(False)
        # Stored in the response cache, the answer is no longer lost with this sample's record: the
        # next run of the same command gets it from there.
        stored = shared is not None and shared.put(stored_key, answer_of(resp), model=ctx.model,
                                                   endpoint=ctx.endpoint, epoch=self.epoch)
        counted = ctx.batch is None  # a batch's answers are downloaded again until its records are written
        if stored and counted:
            self._count_unrecorded(-1)
        if key and ctx.persist_call is not None:
            # Recorded from here on: the line is appended in a thread that finishes even if this
            # sample is cancelled meanwhile.
            if counted and not stored:
                self._count_unrecorded(-1)
            try:
                await ctx.persist_call(self._call_record(key, resp))
            except Exception:
                if counted and not stored:
                    self._count_unrecorded(1)
                raise
        return resp.text

    async def _send(self, request: ChatRequest) -> ChatResponse:
        """One model call as its own request(s), retried by the run's policy."""
        ctx = self.ctx
        droppable = not self.responses  # no answer yet (earlier turns would be paid for: finish those)
        try:
            resp, n = await call_with_retries(
                lambda: self._attempt(request, droppable), self._classify, ctx.policy,
                rate_limit_sleep=None if ctx.limits is None else ctx.limits.sleep_rate_limited,
                # a sample with no answer yet does not sit out a backoff once the run stopped: it is dropped
                interrupt=ctx.run.stop if droppable else None)
        except (NonRetryable, RetriesExhausted) as e:
            self.attempts += e.attempts
            raise
        self.attempts += n
        return resp

    async def _from_batch(self, batch: BatchQueue, key: str, request: ChatRequest) -> ChatResponse:
        """One model call through the run's provider batches: asked, and waited for."""
        if self.first_sent is None:
            self.first_sent, self.first_sent_at = time.monotonic(), utc_now()
        # The run's request count is what its batches submitted (BatchQueue.submitted), not what it
        # asked: an answer from a batch an earlier run submitted was not sent by this one. A unit left
        # pending in its batch (LeftPending) made no attempt yet.
        try:
            resp, batch_id = await batch.ask(self.sample.id, self.epoch, key, request)
        except BatchItemError as e:
            self.attempts += 1
            self.batch_ids.append("")
            raise NonRetryable(e, e.info, 0) from None
        self.attempts += 1
        self.ctx.run.answered = True
        self.batch_ids.append(batch_id)
        return resp

    async def _attempt(self, request: ChatRequest, droppable: bool) -> ChatResponse:
        """One HTTP request, gated by the run's limits; 429/529 feed back into them. ``droppable``: the
        sample has no answer yet, so if the run was stopped while it waited (for a slot or to retry)
        it is dropped (NotStarted)."""
        ctx, run, limits = self.ctx, self.ctx.run, self.ctx.limits
        gate = nullcontext() if limits is None else limits.request(
            estimate_request_tokens(request.messages, request.max_tokens))
        async with gate as slot:
            if droppable and run.stop.is_set():
                raise NotStarted()
            if self.first_sent is None:
                self.first_sent, self.first_sent_at = time.monotonic(), utc_now()
            run.requests += 1  # counted as it goes out: a dropped sample's request never does
            run.requests_in_flight += 1
            try:
                resp = await ctx.provider.complete(request)
            except asyncio.CancelledError:
                run.cancelled_requests += 1  # the provider may have answered it (and billed it) meanwhile
                raise
            except Exception as e:
                self._failed(ctx.provider.classify(e))
                raise
            finally:
                run.requests_in_flight -= 1
            run.answered = True
            self._count_unrecorded(1)
            if limits is not None and slot is not None:
                slot.used(resp.input_tokens + resp.output_tokens)
                limits.observe_headers(resp.ratelimit_headers)
                limits.succeeded()
            return resp

    def _failed(self, info: ErrorInfo) -> None:
        """Count a request that failed: what it says about the endpoint, the rate limit and the network."""
        ctx, run = self.ctx, self.ctx.run
        if info.status_code is not None:
            run.answered = True  # an HTTP response, whatever its status: something answers there
            if ctx.limits is not None and info.status_code in RATE_LIMIT_STATUSES and info.kind is ErrorKind.TRANSIENT:
                ctx.limits.rate_limited(info.retry_after)
        elif info.network is not None:
            run.connection_errors += 1
            if ctx.on_connection_error is not None:
                ctx.on_connection_error()
            if info.cannot_connect and not run.answered:
                run.connect_failures += 1

    def _classify(self, exc: BaseException) -> ErrorInfo:
        """The provider's classification, except that failing to connect to an endpoint that never
        answered is fatal once the run's policy says nothing answers there (RetryPolicy.unreachable)."""
        info = self.ctx.provider.classify(exc)
        run = self.ctx.run
        if info.kind is ErrorKind.TRANSIENT and self.ctx.policy.unreachable(info, run.answered, run.connect_failures):
            return dataclasses.replace(info, kind=ErrorKind.FATAL)
        return info

    def _count_unrecorded(self, delta: int) -> None:
        self.unrecorded += delta
        self.ctx.run.answered_unrecorded += delta

    def _replay(self, hit: dict[str, Any]) -> str:
        usage = hit.get("usage") or {}
        self.responses.append(ChatResponse(text=hit["response"], input_tokens=int(usage.get("input_tokens") or 0),
                                           output_tokens=int(usage.get("output_tokens") or 0),
                                           request_id=hit.get("request_id")))
        self.replayed.append(True)
        self.cached.append(False)
        return hit["response"]

    def _call_record(self, key: str, resp: ChatResponse) -> dict[str, Any]:
        """The turn cache's line for one paid call."""
        ctx = self.ctx
        return {
            "sample_id": self.sample.id, "epoch": self.epoch, "call_key": key, "turn": len(self.responses) - 1,
            "shard": self.shard, "model": ctx.model, "response": resp.text, "request_id": resp.request_id,
            "usage": {"input_tokens": resp.input_tokens, "output_tokens": resp.output_tokens},
            "cost_usd": ctx.cost(resp.input_tokens, resp.output_tokens), "finished_at": utc_now(),
        }

    def paid_tokens(self) -> tuple[int, int]:
        """Input and output tokens this sample adds to the bill in its results record: none for a
        multi-turn task (every paid call is in the calls file already), else the calls sent (not
        replayed from the turn cache, not answered by the response cache)."""
        if self.ctx.multi_turn:
            return 0, 0
        paid = [r for r, rep, hit in zip(self.responses, self.replayed, self.cached) if not (rep or hit)]
        return sum(r.input_tokens for r in paid), sum(r.output_tokens for r in paid)

    def saved_tokens(self) -> tuple[int, int]:
        """Input and output tokens of the calls the response cache answered."""
        hits = [r for r, hit in zip(self.responses, self.cached) if hit]
        return sum(r.input_tokens for r in hits), sum(r.output_tokens for r in hits)


__all__ = ["SampleCalls"]
