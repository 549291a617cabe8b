"""The one retry loop (tenacity): exponential backoff with full jitter, honouring Retry-After.

Providers only classify errors; this module decides whether and how long to wait. The SDK clients
are built with ``max_retries=0`` so no second, hidden retry loop multiplies attempts (and cost).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_base, wait_random_exponential

from .providers.base import ErrorInfo, ErrorKind

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one request."""

    max_attempts: int = 6
    max_wait: float = 120.0  # cap on one sleep, seconds
    max_total: float = 900.0  # stop retrying a request after this long in all, seconds
    base: float = 1.0  # first backoff scale, seconds


class _RetryAfterOrFullJitter(wait_base):
    """Wait what the server asked (plus a little jitter so workers do not stampede), else full jitter."""

    def __init__(self, classify: Callable[[BaseException], ErrorInfo], policy: RetryPolicy) -> None:
        self.classify = classify
        self.policy = policy
        self.jitter = wait_random_exponential(multiplier=policy.base, max=policy.max_wait)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if exc is not None:
            info = self.classify(exc)
            if info.retry_after is not None:
                return min(info.retry_after + random.uniform(0, 0.1 * info.retry_after + 0.05), self.policy.max_wait)
        return self.jitter(retry_state)


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
) -> tuple[T, int]:
    """Call ``fn`` until it succeeds or the policy gives up. Returns ``(result, attempts)``.

    Raises :class:`NonRetryable` for fatal/sample errors and :class:`RetriesExhausted` when
    transient errors outlast the policy. ``asyncio.CancelledError`` always propagates at once.
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.max_total),
        wait=_RetryAfterOrFullJitter(classify, policy),
        retry=retry_if_exception(lambda e: classify(e).kind is ErrorKind.TRANSIENT),
        reraise=True,
    )
    attempts = 0
    try:
        async for attempt in retrying:
            with attempt:
                attempts += 1
                if on_attempt is not None:
                    on_attempt()
                result = await fn()
        return result, attempts  # noqa: F821 (set inside the loop on success)
    except Exception as exc:  # CancelledError is a BaseException and passes through untouched
        info = classify(exc)
        if info.kind is ErrorKind.TRANSIENT:
            raise RetriesExhausted(exc, info, attempts) from exc
        raise NonRetryable(exc, info, attempts) from exc
