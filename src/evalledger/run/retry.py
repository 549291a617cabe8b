"""The one retry loop (tenacity): exponential backoff with full jitter, honouring Retry-After.

Providers only classify errors; this module decides whether and how long to wait. The SDK clients
are built with ``max_retries=0`` so no second, hidden retry loop multiplies attempts (and cost).

An endpoint nothing answers at is not retried for long (:meth:`RetryPolicy.unreachable`): until a
request of the run gets any HTTP response, a failure to connect (refused, DNS, connect time-out)
is fatal once ``unreachable_after`` attempts of the run failed that way, or once one sample used up
its attempts on it. After the endpoint has answered, the same failures are an outage: they are
retried, and samples whose retries run out count towards the circuit breaker.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from evalledger.providers import ErrorInfo, ErrorKind
from evalledger.run.limits import RATE_LIMIT_STATUSES

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one request."""

    max_attempts: int = 6
    max_wait: float = 120.0  # cap on one sleep, seconds
    max_total: float = 900.0  # stop retrying a request after this long in all, seconds
    base: float = 1.0  # first backoff scale, seconds
    #: failures to connect, before the endpoint ever answered, after which the run stops (fatal)
    unreachable_after: int = 3

    def unreachable(self, info: ErrorInfo, answered: bool, connect_failures: int, exhausted: bool = False) -> bool:
        """Whether ``info`` means nothing answers at the endpoint, so the run must stop: no request
        of the run got any HTTP response (``answered``), and it failed to connect as the run's
        ``connect_failures``-th such attempt, or as the last attempt a sample had (``exhausted``)."""
        return (info.cannot_connect and not answered
                and (exhausted or connect_failures >= self.unreachable_after))


class _RetryAfterOrFullJitter(wait_base):
    """Wait what the server asked (plus a little jitter so workers do not stampede), else full jitter.

    ``done_before`` attempts were made before tenacity's loop started (see :func:`call_with_retries`),
    so the backoff scale continues from there instead of starting over.
    """

    def __init__(self, classify: Callable[[BaseException], ErrorInfo], policy: RetryPolicy, done_before: int = 0) -> None:
        self.classify = classify
        self.policy = policy
        self.done_before = done_before
        self.rate_limited = False

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return self.after(exc, retry_state.attempt_number + self.done_before)

    def after(self, exc: BaseException | None, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` attempts, the last of which raised ``exc``.

        Sets ``rate_limited``: whether that wait is for a 429/529 (the sleep that follows reports it)."""
        self.rate_limited = False
        if exc is not None:
            info = self.classify(exc)
            self.rate_limited = _rate_limited(info)
            if info.retry_after is not None:
                return min(info.retry_after + random.uniform(0, 0.1 * info.retry_after + 0.05), self.policy.max_wait)
        # Full jitter (AWS architecture blog): uniform over [0, min(cap, base * 2^(n-1))].
        return random.uniform(0, min(self.policy.max_wait, self.policy.base * 2 ** min(failed_attempts - 1, 60)))


def _rate_limited(info: ErrorInfo) -> bool:
    # 429/529: the provider refused before doing (or billing) any work. Those retries do not use
    # up --max-attempts (a run over its rate limit must not turn samples into errors); they are
    # bounded by RetryPolicy.max_total instead.
    return info.status_code in RATE_LIMIT_STATUSES


class _StopAfterCountedAttempts(stop_base):
    """Stop once ``limit`` attempts failed with something other than a rate limit."""

    def __init__(self, classify: Callable[[BaseException], ErrorInfo], limit: int, counted: int) -> None:
        self.classify = classify
        self.limit = limit
        self.counted = counted

    def __call__(self, retry_state: RetryCallState) -> bool:
        # tenacity asks once per failed attempt, before deciding to retry it
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if exc is None or not _rate_limited(self.classify(exc)):
            self.counted += 1
        return self.counted >= self.limit


async def _until_set(event: asyncio.Event, nap: Awaitable[None]) -> None:
    """Await ``nap`` unless ``event`` is (or gets) set first; then ``nap`` is cancelled."""
    if event.is_set():
        if asyncio.iscoroutine(nap):
            nap.close()  # never awaited: closed, so that Python does not warn about it
        return
    sleeper = asyncio.ensure_future(nap)
    waker = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, waker):
            t.cancel()
        await asyncio.gather(sleeper, waker, return_exceptions=True)


class RetriesExhausted(Exception):
    """Raised when a transient error persisted through every attempt; wraps the last error."""

    def __init__(self, last: BaseException, info: ErrorInfo, attempts: int) -> None:
        super().__init__(info.message)
        self.last = last
        self.info = info
        self.attempts = attempts


class NonRetryable(Exception):
    """A fatal or sample error: no retry was attempted past it."""

    def __init__(self, last: BaseException, info: ErrorInfo, attempts: int) -> None:
        super().__init__(info.message)
        self.last = last
        self.info = info
        self.attempts = attempts


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    classify: Callable[[BaseException], ErrorInfo],
    policy: RetryPolicy,
    on_attempt: Callable[[], None] | None = None,
    rate_limit_sleep: Callable[[float], Awaitable[None]] | None = None,
    interrupt: asyncio.Event | None = None,
) -> tuple[T, int]:
    """Call ``fn`` until it succeeds or the policy gives up. Returns ``(result, attempts)``.

    Raises :class:`NonRetryable` for fatal/sample errors and :class:`RetriesExhausted` when
    transient errors outlast the policy. ``asyncio.CancelledError`` always propagates at once.
    ``rate_limit_sleep`` replaces ``asyncio.sleep`` for the waits after a 429/529 (the run's
    limiter counts them for progress: :meth:`evalledger.run.limits.Limits.sleep_rate_limited`).
    ``interrupt``: a wait before a retry ends early once it is set (the run stopped: ``fn`` then
    decides whether the retry still goes out), so a stopped run does not sit out a long backoff.
    """
    # Fast path: nearly every call succeeds at once, and tenacity's per-attempt machinery (it
    # inspects the callables on every attempt) cost ~0.1 ms of CPU a request, a fifth of
    # evalledger's own per-sample cost (benchmarks/README.md). The first attempt is therefore made
    # here; tenacity runs only the retries, continuing the same policy.
    started = time.monotonic()
    if on_attempt is not None:
        on_attempt()
    try:
        return await fn(), 1
    except Exception as exc:  # CancelledError is a BaseException and passes through untouched
        info = classify(exc)
        if info.kind is not ErrorKind.TRANSIENT:
            raise NonRetryable(exc, info, 1) from exc
        counted = 0 if _rate_limited(info) else 1
        if counted >= policy.max_attempts or time.monotonic() - started >= policy.max_total:
            raise RetriesExhausted(exc, info, 1) from exc
        waits = _RetryAfterOrFullJitter(classify, policy, done_before=1)
        first_wait = waits.after(exc, 1)

    async def sleep(seconds: float) -> None:
        if rate_limit_sleep is not None and waits.rate_limited:
            nap = rate_limit_sleep(seconds)
        else:
            nap = asyncio.sleep(seconds)
        await (nap if interrupt is None else _until_set(interrupt, nap))

    await sleep(first_wait)
    retrying = AsyncRetrying(
        stop=_StopAfterCountedAttempts(classify, policy.max_attempts, counted)
        | stop_after_delay(max(policy.max_total - (time.monotonic() - started), 0.0)),
        wait=waits,
        retry=retry_if_exception(lambda e: classify(e).kind is ErrorKind.TRANSIENT),
        sleep=sleep,
        reraise=True,
    )
    attempts = 1
    try:
        async for attempt in retrying:
            with attempt:
                attempts += 1
                if on_attempt is not None:
                    on_attempt()
                result = await fn()
        return result, attempts  # noqa: F821 (set inside the loop on success)
    except Exception as exc:
        info = classify(exc)
        if info.kind is ErrorKind.TRANSIENT:
            raise RetriesExhausted(exc, info, attempts) from exc
        raise NonRetryable(exc, info, attempts) from exc
