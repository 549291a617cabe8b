"""One unit of work, (sample, epoch), through the task: the model calls (with retries), the turn
cache, and its record.

Each epoch of a sample sends its own seed (:func:`evalledger.samples.epoch_seed`) and gives the task
its own RNG (:func:`evalledger.samples.sample_rng`), both derived from (run seed, sample id,
epoch) only, so any order, shard or resume gives a unit the same ones. Epoch 1 sends the run seed
itself, as every run did before repeats.

The model calls themselves (turn cache, response cache, batches, retries, the bill) are
:mod:`evalledger.run.calls`; what every unit shares is :mod:`evalledger.run.context`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from evalledger.fsio import utc_now
from evalledger.providers import ErrorKind
from evalledger.records import BATCH_IDS_FIELD, CACHED_FIELD, SAVED_FIELD
from evalledger.run.calls import SampleCalls
from evalledger.run.context import SampleContext
from evalledger.run.retry import NonRetryable, RetriesExhausted
from evalledger.run.stops import NotStarted, StopRun
from evalledger.samples import Sample, sample_rng
from evalledger.tasks import TaskOutput


def input_hash(sample: Sample) -> str:
    body = json.dumps(sample.fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class SampleResult:
    """A finished sample: its record, and how many answered requests only that record holds (they
    are paid again if it is never acknowledged; answers in the turn cache are not)."""

    record: dict[str, Any]
    unrecorded: int


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
    calls = SampleCalls(ctx, sample, epoch, shard)
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


def _fill_record(record: dict[str, Any], ctx: SampleContext, calls: SampleCalls, output: TaskOutput | None,
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
