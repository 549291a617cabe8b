"""The one retry loop (tenacity): growing, jittered backoff, honouring Retry-After.

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


#: Without Retry-After, each backoff wait of a request is at least this many times its previous one.
#: A server judges growth on the gap between attempts as it sees it, which also holds the client's
#: own delays (waking up on a busy machine, waiting for a request slot: tens of milliseconds), so
#: the floor keeps a wide margin over the "more than 1.1x" such judges ask for.
BACKOFF_GROWTH = 1.5


class _RetryAfterOrBackoff(wait_base):
    """Wait what the server asked (plus a little jitter so workers do not stampede), else back off.

    One instance serves one request (:func:`call_with_retries`) and remembers its previous backoff
    wait. Without Retry-After, the wait after ``n`` failed attempts is uniform over
    ``[max(top / 2, BACKOFF_GROWTH * previous), top]`` with ``top = min(max_wait, base * 2^(n-1))``:
    equal jitter (half the scale fixed, half random, so requests that failed together spread out)
    with a floor that makes each wait of the request at least ``BACKOFF_GROWTH`` times the one
    before, or times the whole gap since the failure before it when the retry went out late
    (queued for a request slot or the rate limiter): the gap the server sees is what must grow. Full jitter (uniform over ``[0, top]``) could make the second wait shorter than the
    first, which looks like no backoff at all to the provider (and to llmock's ``no_backoff``
    check). A Retry-After wait is the server's: it is neither backoff nor ``previous``.

    ``max_wait`` (--max-retry-wait) caps every sleep, so the growth ends there: once the floor
    reaches the cap, each further wait is the cap. The first backoff wait is drawn below
    ``max_wait / BACKOFF_GROWTH``, so every request retried twice has grown at least once before
    it levels off, which is what backing off means to a judge (llmock flags a request only when
    none of its successive waits grew by more than 1.1x). With the defaults (base 1 s, cap 120 s,
    6 attempts) only a request with many 429s (they do not use up attempts) reaches the cap.

    ``done_before`` attempts were made before tenacity's loop started (see :func:`call_with_retries`),
    so the backoff scale continues from there instead of starting over.
    """

    def __init__(self, classify: Callable[[BaseException], ErrorInfo], policy: RetryPolicy, done_before: int = 0) -> None:
        self.classify = classify
        self.policy = policy
        self.done_before = done_before
        self.rate_limited = False
        #: This request's last backoff gap: the wait chosen, or longer when the retry went out later.
        self.previous: float | None = None
        self._backoff_at: float | None = None  # when that wait began (the failure before it)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return self.after(exc, retry_state.attempt_number + self.done_before)

    def after(self, exc: BaseException | None, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` attempts, the last of which raised ``exc``.

        Sets ``rate_limited``: whether that wait is for a 429/529 (the sleep that follows reports it)."""
        now = time.monotonic()
        if self._backoff_at is not None and self.previous is not None:
            # The retry may have gone out well after its wait ended (it queued for a request slot
            # or the rate limiter, or the CPU was busy), so the gap the server saw since the last
            # failure can exceed the wait: the next wait grows from that gap, not only from the
            # wait, or a long queue followed by a short one would look like no backoff at all.
            self.previous = max(self.previous, now - self._backoff_at)
        self._backoff_at = None
        self.rate_limited = False
        if exc is not None:
            info = self.classify(exc)
            self.rate_limited = _rate_limited(info)
            if info.retry_after is not None:
                return min(info.retry_after + random.uniform(0, 0.1 * info.retry_after + 0.05), self.policy.max_wait)
        self.previous = self._backoff(failed_attempts)
        self._backoff_at = now
        return self.previous

    def _backoff(self, failed_attempts: int) -> float:
        cap = self.policy.max_wait
        scale = self.policy.base * 2 ** min(failed_attempts - 1, 60)
        if self.previous is None:
            top = min(scale, cap / BACKOFF_GROWTH)  # room for one growing step below the cap
            return random.uniform(top / 2, top)
        top = min(scale, cap)
        floor = BACKOFF_GROWTH * self.previous
        if floor >= cap:
            return cap  # levelled off
        if floor >= top:
            # The last gap was longer than the schedule planned (the retry queued): grow from it.
            return random.uniform(floor, min(cap, 1.25 * floor))
        # With waits that went out on time the floor is at most 3/4 of top (previous <= half of
        # top), so a jitter range remains.
        return random.uniform(max(top / 2, floor), top)


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
        waits = _RetryAfterOrBackoff(classify, policy, done_before=1)
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
