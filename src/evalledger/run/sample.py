"""One unit of work, (sample, epoch), through the task: the model calls (with retries), the turn
cache, and its record.

Each epoch of a sample sends its own seed (:func:`evalledger.samples.epoch_seed`) and gives the task
its own RNG (:func:`evalledger.samples.sample_rng`), both derived from (run seed, sample id,
epoch) only, so any order, shard or resume gives a unit the same ones. Epoch 1 sends the run seed
itself, as every run did before repeats.

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
import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from evalledger.fsio import utc_now
from evalledger.pricing import Price
from evalledger.providers import ChatRequest, ChatResponse, ErrorInfo, ErrorKind, Provider
from evalledger.records import BATCH_IDS_FIELD, CACHED_FIELD, SAVED_FIELD, unit_key
from evalledger.response_cache import ResponseCache
from evalledger.run.batching import BatchItemError, BatchQueue
from evalledger.run.limits import RATE_LIMIT_STATUSES, Limits, estimate_request_tokens
from evalledger.run.replay import answer_of, cache_key, call_key, response_of
from evalledger.run.retry import NonRetryable, RetriesExhausted, RetryPolicy, call_with_retries
from evalledger.run.stops import LeftPending, NotStarted, StopRun
from evalledger.samples import Sample, epoch_seed, sample_rng
from evalledger.tasks import Task, TaskOutput


@dataclass
class RunState:
    """Shared, mutable state of one invocation's workers."""

    stop: asyncio.Event
    fatal: ErrorInfo | None = None
    outage: dict[str, Any] | None = None  # the last error when the circuit breaker tripped
    budget_hit: bool = False
    signal_received: int | None = None
    hard_stop: bool = False  # the workers were cancelled (second Ctrl-C, grace period over)
    requests: int = 0  # HTTP requests sent
    requests_in_flight: int = 0  # sent and not answered (nor failed) yet
    answered: bool = False  # some request of this run got an HTTP response, whatever its status
    connect_failures: int = 0  # requests that could not connect before the endpoint ever answered
    connection_errors: int = 0  # requests that got no HTTP response at all (refused, reset, time-out)
    #: Answered (paid) requests whose answer is in no file yet: not in an acknowledged record, nor in
    #: the turn cache. Once the run is over, those a hard stop or a failed write lost: paid again on resume.
    answered_unrecorded: int = 0
    cancelled_requests: int = 0  # requests cancelled while waiting for their answer (the hard stop)
    attempted: int = 0
    in_flight: int = 0  # samples taken by a worker whose record is not acknowledged yet (the budget's count)
    workers: list[asyncio.Task[Any]] = field(default_factory=list)


@dataclass
class SampleContext:
    """What every sample of the run shares."""

    task: Task
    task_name: str
    model: str
    shard: tuple[int, int] | None
    seed: int  # the run's seed; each unit sends its own (epoch_seed)
    temperature: float
    max_tokens: int
    top_p: float | None
    policy: RetryPolicy
    provider: Provider
    run: RunState
    price: Price | None
    #: unit key → call key → cached call record (multi-turn tasks only)
    cached_calls: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: durably appends one call record (multi-turn tasks only)
    persist_call: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    #: concurrency slots, the shared rate-limit pause, RPM/TPM (None: workers only)
    limits: Limits | None = None
    #: told of every request that got no HTTP response (progress shows them)
    on_connection_error: Callable[[], None] | None = None
    #: the response cache shared across runs (None: --no-cache) and the endpoint that is part of its keys
    response_cache: ResponseCache | None = None
    endpoint: str = ""
    #: --batch: the run's provider batches (None: every call is its own request)
    batch: BatchQueue | None = None

    @property
    def multi_turn(self) -> bool:
        return bool(self.task.multi_turn)

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        return None if self.price is None else round(self.price.cost(input_tokens, output_tokens), 10)


def input_hash(sample: Sample) -> str:
    body = json.dumps(sample.fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class SampleResult:
    """A finished sample: its record, and how many answered requests only that record holds (they
    are paid again if it is never acknowledged; answers in the turn cache are not)."""

    record: dict[str, Any]
    unrecorded: int


class _SampleCalls:
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
        # asked: an answer from a batch an earlier run submitted was not sent by this one.
        self.attempts += 1
        try:
            resp, batch_id = await batch.ask(self.sample.id, self.epoch, key, request)
        except LeftPending:
            self.attempts -= 1  # still pending in its batch
            raise
        except BatchItemError as e:
            self.batch_ids.append("")
            raise NonRetryable(e, e.info, 0) from None
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


async def run_sample(ctx: SampleContext, sample: Sample, epoch: int = 1) -> SampleResult:
    """Run one unit, ``sample``'s ``epoch``-th ask, through the task; return its record (ok or
    error). Raises StopRun on fatal.

    The record's ``started_at`` and ``latency_s`` count from its first request (retries, rate-limit
    waits and later turns included); ``queued_s`` is how long it waited in the client before that
    request went out (a request slot, a rate limit). A sample that sent nothing counts from when a
    worker took it.
    """
    run = ctx.run
    taken_at = utc_now()
    taken = time.monotonic()
    run.attempted += 1
    shard = None if ctx.shard is None else f"{ctx.shard[0]}/{ctx.shard[1]}"
    calls = _SampleCalls(ctx, sample, epoch, shard)
    record: dict[str, Any] = {
        "sample_id": sample.id,
        "epoch": epoch,
        "status": "ok",
        "attempts": 0,
        "shard": shard,
        "model": ctx.model,
        "task": ctx.task_name,
        "input_hash": input_hash(sample),
        "seed": calls.seed,
    }
    if sample.fewshot:
        record["fewshot_ids"] = [exemplar.id for exemplar in sample.fewshot]
    error: dict[str, Any] | None = None
    output: TaskOutput | None = None
    try:
        output = await ctx.task.run(sample, calls.generate, sample_rng(ctx.seed, sample.id, epoch))
    except NotStarted:
        run.attempted -= 1  # dropped before it got anything: not attempted by this invocation
        raise
    except (NonRetryable, RetriesExhausted) as e:
        error = _provider_error(ctx, e)
    except asyncio.CancelledError:
        raise  # its answers stay counted in run.answered_unrecorded: lost, paid again on resume
    except Exception as e:  # a task or scorer bug for this sample: record it, keep going
        error = {"type": type(e).__name__, "message": str(e) or type(e).__name__, "retryable": False,
                 "status_code": None}
    _fill_record(record, ctx, calls, output, error)
    began = taken if calls.first_sent is None else calls.first_sent
    record.update(latency_s=round(time.monotonic() - began, 4), queued_s=round(began - taken, 4),
                  request_ids=[r.request_id for r in calls.responses], error=error,
                  started_at=calls.first_sent_at or taken_at, finished_at=utc_now())
    if calls.batch_ids:
        record[BATCH_IDS_FIELD] = calls.batch_ids
    return SampleResult(record, calls.unrecorded)


def _provider_error(ctx: SampleContext, e: NonRetryable | RetriesExhausted) -> dict[str, Any]:
    """The record's ``error`` for a call that failed for good; StopRun if the whole run must stop."""
    info, run = e.info, ctx.run
    if info.kind is ErrorKind.FATAL or (isinstance(e, RetriesExhausted) and ctx.policy.unreachable(
            info, run.answered, run.connect_failures, exhausted=True)):
        # Fatal: stop the whole run at once; no error record (no flood of identical errors).
        if run.fatal is None:
            run.fatal = info
        run.stop.set()
        raise StopRun() from None
    return {"type": info.type, "message": info.message, "retryable": info.retryable,
            "status_code": info.status_code}


def _fill_record(record: dict[str, Any], ctx: SampleContext, calls: _SampleCalls, output: TaskOutput | None,
                 error: dict[str, Any] | None) -> None:
    """The task's output (or its absence), the turns, the status, usage and bill of ``record``, in
    the order its keys are written."""
    responses, replayed, cached = calls.responses, calls.replayed, calls.cached
    in_tok = sum(r.input_tokens for r in responses)
    out_tok = sum(r.output_tokens for r in responses)
    paid_in, paid_out = calls.paid_tokens()
    if output is not None:
        record.update(
            prompt=output.messages,
            response=output.responses[0] if len(output.responses) == 1 else output.responses,
            prediction=output.score.prediction,
            target=output.score.target,
            score=output.score.score,
            correct=bool(output.score.correct),
        )
        if output.extra:
            record["extra"] = output.extra
    else:
        record.update(prompt=None, response=[r.text for r in responses] or None, prediction=None,
                      target=None, score=None, correct=None)
    if len(responses) > 1 or any(replayed):
        record["turn_usage"] = [{"input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "replayed": rep,
                                 **({CACHED_FIELD: True} if hit else {})}
                                for r, rep, hit in zip(responses, replayed, cached)]
    record.update(
        status="ok" if error is None else "error",
        attempts=calls.attempts,
        usage={"input_tokens": in_tok, "output_tokens": out_tok},
        cost_usd=ctx.cost(in_tok, out_tok),  # None: the model has no known price (unknown, not zero)
        paid={"input_tokens": paid_in, "output_tokens": paid_out, "cost_usd": ctx.cost(paid_in, paid_out)},
    )
    if any(cached):
        saved_in, saved_out = calls.saved_tokens()
        record[CACHED_FIELD] = True
        record[SAVED_FIELD] = {"input_tokens": saved_in, "output_tokens": saved_out,
                               "cost_usd": ctx.cost(saved_in, saved_out)}
