"""Scheduling: a bounded queue, N workers, retries, group commit, signals, progress, exit codes.

``run_experiment(config)`` is the whole of ``evalledger run``; the CLI only parses flags.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .committer import GroupCommitter
from .config import RunConfig
from .errors import EvalLedgerError, FatalProviderError, RunExistsError
from .fsutil import utc_now
from .ledger import CheckpointManager, iter_file_records, move_run_aside, results_files
from .prepare import PreparedRun, check_or_create_manifest, prepare_run
from .progress import Progress
from .providers import make_provider
from .providers.base import ChatRequest, ChatResponse, ErrorInfo, ErrorKind, Provider
from .retry import NonRetryable, RetriesExhausted, RetryPolicy, call_with_retries
from .samples import Sample, sample_rng

EXIT_OK = 0
EXIT_ERRORS_LEFT = 1
EXIT_FATAL = 2
EXIT_DISK = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


@dataclass
class RunSummary:
    """What one ``run`` did. ``exit_code`` is what the CLI exits with."""

    run_id: str
    run_dir: Path
    exit_code: int
    status: str  # complete | errors | interrupted | fatal | disk
    total_samples: int  # in this invocation's selection (the shard, after --limit)
    skipped_completed: int  # already ok in the ledger: no request sent
    attempted: int
    ok: int  # acknowledged ok records written by this invocation
    errors: int  # acknowledged error records written by this invocation
    requests: int  # HTTP requests sent (every attempt)
    remaining: int  # samples of the selection still without an ok record
    duration_s: float
    message: str = ""
    resume_command: str | None = None
    moved_aside: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class _StopRun(Exception):
    """Raised inside a worker to end the run (fatal provider error)."""


@dataclass
class _RunState:
    stop: asyncio.Event
    fatal: ErrorInfo | None = None
    fatal_model_hint: str = ""
    signal_received: int | None = None
    requests: int = 0
    successes: int = 0
    attempted: int = 0
    in_flight: int = 0
    workers: list[asyncio.Task[Any]] = field(default_factory=list)


def run_experiment(config: RunConfig) -> RunSummary:
    """Run (or resume) an experiment to completion or interruption. Blocking.

    Raises :class:`EvalLedgerError` subclasses for usage, dataset, drift and lock problems
    (before any request is sent); provider fatals, signals and disk errors are reported in the
    returned :class:`RunSummary` (``exit_code`` 2, 130/143, 4).
    """
    return asyncio.run(run_experiment_async(config))


async def run_experiment_async(config: RunConfig) -> RunSummary:
    """The async form of :func:`run_experiment`, for callers that already run an event loop."""
    t0 = time.monotonic()
    prepared = prepare_run(config)
    # Built now (no network yet) so a bad --model or a missing key is refused before anything is written.
    provider = make_provider(config.model, base_url=config.base_url, api_key=config.resolved_api_key(),
                             timeout=config.request_timeout, concurrency=config.concurrency)
    moved_aside = None
    run_dir = prepared.run_dir
    if config.overwrite and run_dir.exists():
        moved_aside = move_run_aside(run_dir)
        _warn(config, f"moved the old run aside to {moved_aside}")
    if run_dir.exists() and not config.resume and _has_results(run_dir):
        raise RunExistsError(
            f"run {prepared.run_id} already has results in {run_dir}; --no-resume will not overwrite them. "
            "Drop --no-resume to continue it, or pass --overwrite to move it aside and start afresh."
        )
    config.output_dir.mkdir(parents=True, exist_ok=True)
    ledger = CheckpointManager(run_dir, config.shard)
    ledger.open_writer()  # LockHeldError (exit 2) if another process writes this run/shard
    try:
        if ledger.repaired_tail is not None:
            _warn(config, f"repaired a torn last line in {ledger.results_path.name}; the partial bytes are kept in {ledger.repaired_tail}")
        check_or_create_manifest(prepared)
        summary = await _execute(prepared, ledger, provider, t0)
    finally:
        ledger.close()
    summary.moved_aside = moved_aside
    return summary


async def _execute(prepared: PreparedRun, ledger: CheckpointManager, provider: Provider, t0: float) -> RunSummary:
    config = prepared.config
    state_doc, problem = ledger.read_resume_state()
    had_results = ledger.results_path.exists() and ledger.results_path.stat().st_size > 0
    if state_doc is not None and state_doc.get("config_hash") == prepared.config_hash:
        ledger.restore_random_state(state_doc)
        counters = {k: int(state_doc.get("counters", {}).get(k, 0)) for k in _COUNTERS}
    else:
        if had_results and problem:
            _warn(config, f"{problem}; rebuilding the resume state from the results file")
        # A fresh run (or a rebuilt state) starts the global RNG from the run seed; the counters
        # are recounted from this shard's results file, the source of truth.
        random.seed(config.seed)
        counters = _count_records(ledger.results_path)

    completed = ledger.completed_ids()
    excluded = set(completed)
    if not config.retry_errors:
        excluded |= {r["sample_id"] for r in ledger.iter_records() if r.get("status") == "error"}
    pending = [s for s in prepared.selection if s.id not in excluded]
    skipped = sum(1 for s in prepared.selection if s.id in completed)

    label = prepared.run_id if config.shard is None else f"{prepared.run_id} [shard {config.shard[0]}/{config.shard[1]}]"
    progress = Progress(len(prepared.selection), len(prepared.selection) - len(pending), quiet=config.quiet,
                        interval=config.progress_interval, label=label)
    _info(config, f"run {prepared.run_id}: {len(prepared.selection)} samples, {skipped} already done, "
                  f"{len(pending)} to run → {prepared.run_dir}")

    run = _RunState(stop=asyncio.Event())
    new = {"ok": 0, "error": 0}  # acknowledged by this invocation
    requests_before = counters["requests"]
    since_checkpoint = 0

    def write_state() -> None:
        counters["requests"] = requests_before + run.requests
        ledger.write_resume_state({**counters, "completed_samples": len(completed)}, prepared.config_hash)

    def on_commit(records: list[dict[str, Any]]) -> None:
        nonlocal since_checkpoint
        for r in records:
            if r["status"] == "ok":
                new["ok"] += 1
                counters["ok_records"] += 1
                completed.add(r["sample_id"])
            else:
                new["error"] += 1
                counters["error_records"] += 1
        progress.update(records)
        since_checkpoint += len(records)
        if since_checkpoint >= config.checkpoint_every:
            since_checkpoint = 0
            write_state()  # small file, atomic; cheap next to the appends it follows

    started = False
    committer = GroupCommitter(ledger, on_commit=on_commit)
    restore_signals = lambda: None  # noqa: E731
    try:
        if pending:
            await provider.start()
            started = True
            committer.start()
            restore_signals = _install_signal_handlers(run, config)
            await _schedule(prepared, provider, committer, run, pending)
            await committer.close()
    finally:
        restore_signals()
        progress.close()
        if committer.failure is None:
            try:
                write_state()
            except OSError as e:
                _warn(config, f"could not write the resume state: {e}")
        if started:
            await provider.aclose()

    remaining = sum(1 for s in prepared.selection if s.id not in completed)
    summary = RunSummary(
        run_id=prepared.run_id,
        run_dir=prepared.run_dir,
        exit_code=EXIT_OK,
        status="complete",
        total_samples=len(prepared.selection),
        skipped_completed=skipped,
        attempted=run.attempted,
        ok=new["ok"],
        errors=new["error"],
        requests=run.requests,
        remaining=remaining,
        duration_s=time.monotonic() - t0,
    )
    if committer.failure is not None:
        summary.exit_code, summary.status = EXIT_DISK, "disk"
        summary.message = _disk_message(ledger.results_path, committer.failure)
    elif run.fatal is not None:
        summary.exit_code, summary.status = EXIT_FATAL, "fatal"
        summary.message = _fatal_message(run.fatal, config, provider)
    elif run.signal_received is not None:
        summary.exit_code = EXIT_SIGINT if run.signal_received == signal.SIGINT else EXIT_SIGTERM
        summary.status = "interrupted"
        summary.message = f"interrupted by {signal.Signals(run.signal_received).name}: {remaining} sample(s) left"
    elif remaining:
        summary.exit_code, summary.status = EXIT_ERRORS_LEFT, "errors"
        summary.message = f"{remaining} sample(s) ended with errors (see {ledger.errors_path}); run again to retry them"
    if summary.exit_code != EXIT_OK:
        summary.resume_command = config.resume_command()
    summary.stats = ledger.get_stats()
    return summary


async def _schedule(prepared: PreparedRun, provider: Provider, committer: GroupCommitter,
                    run: _RunState, pending: list[Sample]) -> None:
    """Feed samples through a bounded queue to ``concurrency`` workers (no task per sample)."""
    config = prepared.config
    n_workers = min(config.concurrency, len(pending))
    queue: asyncio.Queue[Sample | None] = asyncio.Queue(maxsize=n_workers * 2)

    async def producer() -> None:
        for sample in pending:
            if run.stop.is_set():
                break
            await queue.put(sample)
        for _ in range(n_workers):
            await queue.put(None)

    async def worker() -> None:
        while not run.stop.is_set():
            sample = await queue.get()
            if sample is None or run.stop.is_set():
                return
            run.in_flight += 1
            try:
                record = await _run_sample(prepared, provider, run, sample)
            except _StopRun:
                return
            finally:
                run.in_flight -= 1
            try:
                await committer.commit(record)
            except Exception:
                run.stop.set()  # the ledger cannot take more: stop dispatching
                return

    prod = asyncio.create_task(producer(), name="evalledger-producer")
    run.workers = [asyncio.create_task(worker(), name=f"evalledger-worker-{i}") for i in range(n_workers)]
    try:
        await asyncio.gather(*run.workers, return_exceptions=True)
    finally:
        prod.cancel()
        await asyncio.gather(prod, return_exceptions=True)


async def _run_sample(prepared: PreparedRun, provider: Provider, run: _RunState, sample: Sample) -> dict[str, Any]:
    """Run one sample through the task; return its record (ok or error). Raises _StopRun on fatal."""
    config = prepared.config
    policy = RetryPolicy(max_attempts=config.max_attempts, max_wait=config.max_retry_wait)
    responses: list[ChatResponse] = []
    attempts = 0
    started_at = utc_now()
    t0 = time.monotonic()
    run.attempted += 1

    def count_request() -> None:
        run.requests += 1

    async def generate(messages: list[dict[str, str]]) -> str:
        nonlocal attempts
        request = ChatRequest(messages=messages, model=config.model, temperature=config.temperature,
                              max_tokens=config.max_tokens, seed=config.seed, top_p=config.top_p)
        try:
            resp, n = await call_with_retries(lambda: provider.complete(request), provider.classify, policy, count_request)
        except (NonRetryable, RetriesExhausted) as e:
            attempts += e.attempts
            raise
        attempts += n
        run.successes += 1
        responses.append(resp)
        return resp.text

    record: dict[str, Any] = {
        "sample_id": sample.id,
        "status": "ok",
        "attempts": 0,
        "shard": None if config.shard is None else f"{config.shard[0]}/{config.shard[1]}",
        "model": config.model,
        "task": prepared.task.name or prepared.task_spec,
        "input_hash": _input_hash(sample),
    }
    error: dict[str, Any] | None = None
    output = None
    try:
        output = await prepared.task.run(sample, generate, sample_rng(config.seed, sample.id))
    except (NonRetryable, RetriesExhausted) as e:
        info = e.info
        if info.kind is ErrorKind.FATAL or (
            isinstance(e, RetriesExhausted) and run.successes == 0 and "Connection" in info.type
        ):
            # Fatal: stop the whole run at once; no error record (no flood of identical errors).
            if run.fatal is None:
                run.fatal = info
            run.stop.set()
            raise _StopRun() from None
        error = {"type": info.type, "message": info.message, "retryable": info.retryable,
                 "status_code": info.status_code}
    except asyncio.CancelledError:
        raise
    except Exception as e:  # a task or scorer bug for this sample: record it, keep going
        error = {"type": type(e).__name__, "message": str(e) or type(e).__name__, "retryable": False,
                 "status_code": None}

    usage = {"input_tokens": sum(r.input_tokens for r in responses),
             "output_tokens": sum(r.output_tokens for r in responses)}
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
    record.update(
        status="ok" if error is None else "error",
        attempts=attempts,
        usage=usage,
        cost_usd=None,  # no price table yet: unknown, not zero
        latency_s=round(time.monotonic() - t0, 4),
        request_ids=[r.request_id for r in responses],
        error=error,
        started_at=started_at,
        finished_at=utc_now(),
    )
    return record


_COUNTERS = ("ok_records", "error_records", "requests")


def _count_records(path: Path) -> dict[str, int]:
    """Cumulative counters of one results file (used when the resume state must be rebuilt)."""
    counts = dict.fromkeys(_COUNTERS, 0)
    for rec in iter_file_records(path):
        counts["ok_records" if rec.get("status") == "ok" else "error_records"] += 1
        counts["requests"] += int(rec.get("attempts") or 0)
    return counts


def _input_hash(sample: Sample) -> str:
    body = json.dumps(sample.fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _install_signal_handlers(run: _RunState, config: RunConfig):  # type: ignore[no-untyped-def]
    """SIGINT/SIGTERM/SIGUSR1: stop dispatching, grace period, then cancel. Second SIGINT: now."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be installed from the main thread
    loop = asyncio.get_running_loop()
    grace_handle: list[asyncio.TimerHandle] = []

    def cancel_in_flight() -> None:
        for t in run.workers:
            t.cancel()

    def on_signal(signum: int) -> None:
        if run.signal_received is None:
            run.signal_received = signum
            run.stop.set()
            _warn(config, f"received {signal.Signals(signum).name}: no new samples; waiting up to "
                          f"{config.grace_seconds:g}s for {run.in_flight} in-flight sample(s)"
                          + (" (Ctrl-C again to stop now)" if signum == signal.SIGINT else ""))
            grace_handle.append(loop.call_later(config.grace_seconds, cancel_in_flight))
        elif signum == signal.SIGINT:
            _warn(config, "second SIGINT: cancelling in-flight requests now")
            cancel_in_flight()

    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1]
    for s in sigs:
        loop.add_signal_handler(s, on_signal, s)

    def restore() -> None:
        for h in grace_handle:
            h.cancel()
        for s in sigs:
            loop.remove_signal_handler(s)

    return restore


def _has_results(run_dir: Path) -> bool:
    return any(p.stat().st_size > 0 for p in results_files(run_dir))


def _fatal_message(info: ErrorInfo, config: RunConfig, provider: Provider | None) -> str:
    base = getattr(provider, "base_url", None) or "the provider's default URL"
    if info.status_code == 401:
        fix = "the API key was refused: check OPENAI_API_KEY / ANTHROPIC_API_KEY (or --api-key-env)"
    elif info.status_code == 403:
        fix = "the key has no permission for this model or endpoint"
    elif info.status_code == 404:
        fix = f"model '{config.model}' or the endpoint was not found at {base}: check --model and --base-url"
    elif info.status_code is None:
        fix = f"could not reach {base}: check --base-url and that the server is up"
    else:
        fix = "the provider refused the request in a way no retry fixes"
    return f"stopped: {fix}\n  provider said: {info.message}"


def _disk_message(path: Path, exc: BaseException) -> str:
    try:
        st = os.statvfs(path.parent)
        free = f"{st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return (f"stopped: writing {path} failed ({exc}); {free}. Records written before are intact; "
            "free some space and run the same command again to resume.")


def _info(config: RunConfig, msg: str) -> None:
    if not config.quiet:
        print(msg, file=sys.stderr, flush=True)


def _warn(config: RunConfig, msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


__all__ = ["RunSummary", "run_experiment", "run_experiment_async", "EvalLedgerError", "FatalProviderError"]
