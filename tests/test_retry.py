"""The retry loop: attempts, waits and outcomes (first attempt on the fast path, the rest in tenacity)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from evalledger.providers import ErrorInfo, ErrorKind, NetworkFault
from evalledger.run.retry import (
    BACKOFF_GROWTH,
    NonRetryable,
    RetriesExhausted,
    RetryPolicy,
    _RetryAfterOrBackoff,
    call_with_retries,
)


class Boom(Exception):
    def __init__(self, kind: ErrorKind, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(kind.value)
        self.kind, self.retry_after, self.status = kind, retry_after, status


def classify(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, Boom):
        return ErrorInfo(exc.kind, "Boom", str(exc), status_code=exc.status, retry_after=exc.retry_after)
    return ErrorInfo(ErrorKind.SAMPLE, type(exc).__name__, str(exc))


def script(*outcomes):
    """fn failing/succeeding in order; counts its calls."""
    calls = []

    async def fn():
        calls.append(time.monotonic())
        out = outcomes[len(calls) - 1]
        if isinstance(out, BaseException):
            raise out
        return out

    return fn, calls


def run(fn, policy, on_attempt=None):
    return asyncio.run(call_with_retries(fn, classify, policy, on_attempt))


def test_success_at_once_is_one_attempt():
    fn, calls = script("ok")
    seen = []
    assert run(fn, RetryPolicy(), lambda: seen.append(1)) == ("ok", 1)
    assert len(calls) == 1 and seen == [1]


def test_transient_errors_are_retried_honouring_retry_after():
    fn, calls = script(Boom(ErrorKind.TRANSIENT, 0.2), Boom(ErrorKind.TRANSIENT, 0.2), "ok")
    seen = []
    assert run(fn, RetryPolicy(max_attempts=5, max_wait=5), lambda: seen.append(1)) == ("ok", 3)
    assert len(seen) == 3
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert all(0.2 <= g < 0.4 for g in gaps), gaps  # Retry-After plus at most 10 % + 50 ms jitter


def test_transient_errors_exhaust_the_attempts():
    fn, calls = script(*[Boom(ErrorKind.TRANSIENT, 0.0)] * 3)
    with pytest.raises(RetriesExhausted) as e:
        run(fn, RetryPolicy(max_attempts=3, max_wait=0.01))
    assert e.value.attempts == 3 and len(calls) == 3


@pytest.mark.parametrize("attempts", [1, 2])
def test_a_sample_or_fatal_error_is_not_retried(attempts):
    outcomes = [Boom(ErrorKind.TRANSIENT, 0.0)] * (attempts - 1) + [Boom(ErrorKind.FATAL)]
    fn, calls = script(*outcomes)
    with pytest.raises(NonRetryable) as e:
        run(fn, RetryPolicy(max_attempts=5, max_wait=0.01))
    assert e.value.attempts == attempts and len(calls) == attempts


def test_one_attempt_policy_does_not_retry():
    fn, calls = script(Boom(ErrorKind.TRANSIENT, 0.0), "ok")
    with pytest.raises(RetriesExhausted) as e:
        run(fn, RetryPolicy(max_attempts=1))
    assert e.value.attempts == 1 and len(calls) == 1


def test_backoff_scale_continues_across_the_fast_path(monkeypatch):
    """Without Retry-After the wait after n failed attempts is at most base * 2^(n-1), capped."""
    monkeypatch.setattr("evalledger.run.retry.random.uniform", lambda lo, hi: hi)  # the top of the range
    waiter = _RetryAfterOrBackoff(classify, RetryPolicy(base=0.5, max_wait=3.0), done_before=1)

    class State:
        attempt_number = 2  # tenacity's 2nd attempt = the 3rd in all

        class outcome:
            @staticmethod
            def exception():
                return Boom(ErrorKind.TRANSIENT)

    assert waiter.after(Boom(ErrorKind.TRANSIENT), 1) == 0.5
    assert waiter(State) == 2.0  # 0.5 * 2^(3-1)
    assert waiter.after(None, 10) == 3.0  # capped at max_wait


def backoff_waits(policy: RetryPolicy, n: int) -> list[float]:
    """The waits of one request after ``n`` failed attempts in a row, none with Retry-After."""
    waiter = _RetryAfterOrBackoff(classify, policy)
    return [waiter.after(Boom(ErrorKind.TRANSIENT, status=500), k) for k in range(1, n + 1)]


POLICIES = [RetryPolicy(), RetryPolicy(base=0.5, max_wait=3.0), RetryPolicy(base=1.0, max_wait=0.5)]


@pytest.mark.parametrize("policy", POLICIES, ids=["defaults", "cap-3s", "cap-below-base"])
def test_the_waits_of_one_request_grow_until_the_cap(monkeypatch, policy):
    """Without Retry-After each wait is more than 1.1x the one before (llmock's no_backoff), at any
    seed, until the cap; from there on it is the cap. Even a cap below the first wait's scale leaves
    one growing step, so no request retried twice has waits that never grew."""
    for seed in range(300):
        monkeypatch.setattr("evalledger.run.retry.random.uniform", random.Random(seed).uniform)
        waits = backoff_waits(policy, 12)
        assert all(0 < w <= policy.max_wait for w in waits), (seed, waits)
        assert waits[1] > 1.1 * waits[0], (seed, waits)
        for before, after in zip(waits, waits[1:]):
            if before == policy.max_wait:
                assert after == policy.max_wait, (seed, waits)  # levelled off at the cap
            else:
                assert after >= BACKOFF_GROWTH * before or after == policy.max_wait, (seed, waits)
        assert waits[-1] == policy.max_wait  # 12 attempts reach even the default 120 s
        assert waits[0] <= policy.base  # the schedule's first scale, not more


def test_a_retry_that_went_out_late_makes_the_next_wait_grow_from_the_real_gap(monkeypatch):
    """The server sees the gap from one failure to the next attempt, not the wait: when the retry
    queued (a request slot, the rate limiter) the gap was longer than the wait, and the next wait
    must grow from that gap, else a long queue then a short one looks like no backoff at all."""
    clock = [100.0]
    monkeypatch.setattr("evalledger.run.retry.time.monotonic", lambda: clock[0])
    waiter = _RetryAfterOrBackoff(classify, RetryPolicy(base=1.0, max_wait=60.0))
    first = waiter.after(Boom(ErrorKind.TRANSIENT, status=500), 1)
    assert 0.5 <= first <= 1.0
    clock[0] += 5.0  # the retry queued ~4 s after its wait ended, then failed
    second = waiter.after(Boom(ErrorKind.TRANSIENT, status=500), 2)
    assert BACKOFF_GROWTH * 5.0 <= second <= 1.25 * BACKOFF_GROWTH * 5.0  # above the schedule's 2 s top
    clock[0] += second + 0.01  # this one went out on time
    third = waiter.after(Boom(ErrorKind.TRANSIENT, status=500), 3)
    assert third >= BACKOFF_GROWTH * (second + 0.01)
    clock[0] += 200.0
    assert waiter.after(Boom(ErrorKind.TRANSIENT, status=500), 4) == 60.0  # never past the cap


def test_backoff_keeps_its_jitter(monkeypatch):
    """Two requests failing alike do not wait alike: requests that failed together spread out."""
    a, b = backoff_waits(RetryPolicy(), 5), backoff_waits(RetryPolicy(), 5)
    assert a != b
    firsts, thirds = set(), set()
    for seed in range(200):
        monkeypatch.setattr("evalledger.run.retry.random.uniform", random.Random(seed).uniform)
        waits = backoff_waits(RetryPolicy(), 3)
        firsts.add(round(waits[0], 3))
        thirds.add(round(waits[2], 3))
    assert len(firsts) > 100 and min(firsts) < 0.6 and max(firsts) > 0.9  # equal jitter over [0.5, 1] s
    assert len(thirds) > 100 and min(thirds) < 2.5 and max(thirds) > 3.8  # over [2, 4] s, above its floor


def test_retry_after_overrides_the_backoff():
    """A Retry-After wins, shorter or longer than the backoff would be (plus <= 10 % + 50 ms jitter),
    and is not backoff: the next wait without one grows from the previous backoff wait."""
    waiter = _RetryAfterOrBackoff(classify, RetryPolicy(base=1.0, max_wait=60.0))
    first = waiter.after(Boom(ErrorKind.TRANSIENT, status=500), 1)
    assert 0.5 <= first <= 1.0
    assert 0.2 <= waiter.after(Boom(ErrorKind.TRANSIENT, 0.2, status=503), 2) <= 0.2 + 0.02 + 0.05
    third = waiter.after(Boom(ErrorKind.TRANSIENT, status=500), 3)
    assert max(2.0, BACKOFF_GROWTH * first) <= third <= 4.0
    assert 30.0 <= waiter.after(Boom(ErrorKind.TRANSIENT, 30.0, status=429), 4) <= 33.05
    assert waiter.after(Boom(ErrorKind.TRANSIENT, 600.0, status=429), 5) == 60.0  # capped like any sleep
    assert waiter.after(Boom(ErrorKind.TRANSIENT, status=500), 6) >= BACKOFF_GROWTH * third


def test_each_request_backs_off_on_its_own():
    """What call_with_retries sleeps: a request's waits grow from its own previous wait, and two
    requests' waits differ (429s without Retry-After: every wait goes through rate_limit_sleep)."""

    async def waits_of_one_request() -> list[float]:
        fn, calls = script(*[Boom(ErrorKind.TRANSIENT, status=429)] * 8, "ok")
        slept: list[float] = []

        async def rate_limit_sleep(seconds: float) -> None:
            slept.append(seconds)

        out = await call_with_retries(fn, classify, RetryPolicy(max_attempts=2), rate_limit_sleep=rate_limit_sleep)
        assert out == ("ok", 9)
        return slept

    a, b = asyncio.run(waits_of_one_request()), asyncio.run(waits_of_one_request())
    assert len(a) == len(b) == 8 and a != b
    for waits in (a, b):
        assert 0.5 <= waits[0] <= 1.0 and max(waits) <= 120.0, waits
        assert all(y >= BACKOFF_GROWTH * x or y == 120.0 for x, y in zip(waits, waits[1:])), waits


def test_rate_limits_do_not_use_up_the_attempts():
    """429s (the provider did no work) are retried past --max-attempts; other errors still count."""
    r429 = Boom(ErrorKind.TRANSIENT, 0.0, status=429)
    fn, calls = script(r429, r429, Boom(ErrorKind.TRANSIENT, 0.0, status=503), r429, r429, "ok")
    assert run(fn, RetryPolicy(max_attempts=2, max_wait=0.01)) == ("ok", 6)
    fn, calls = script(r429, Boom(ErrorKind.TRANSIENT, 0.0, status=503), r429,
                       Boom(ErrorKind.TRANSIENT, 0.0, status=500), "never")
    with pytest.raises(RetriesExhausted) as e:
        run(fn, RetryPolicy(max_attempts=2, max_wait=0.01))
    assert e.value.attempts == 4 and len(calls) == 4  # the second non-429 failure ends it


def test_rate_limit_retries_are_bounded_by_the_total_time():
    fn, calls = script(*[Boom(ErrorKind.TRANSIENT, 0.05, status=429)] * 100)
    t = time.monotonic()
    with pytest.raises(RetriesExhausted):
        run(fn, RetryPolicy(max_attempts=2, max_wait=1.0, max_total=0.5))
    assert 0.4 <= time.monotonic() - t < 2.0 and 3 < len(calls) < 20


def test_waits_after_rate_limits_go_through_the_rate_limit_sleep():
    """Every wait after a 429/529 (the first, outside tenacity, and the later ones inside it) goes
    through ``rate_limit_sleep``, so the run's limiter can show it; other waits do not."""
    fn, calls = script(Boom(ErrorKind.TRANSIENT, 0.05, status=429), Boom(ErrorKind.TRANSIENT, 0.05, status=529),
                       Boom(ErrorKind.TRANSIENT, 0.05, status=503), Boom(ErrorKind.TRANSIENT, 0.05, status=429), "ok")
    slept: list[float] = []

    async def rate_limit_sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(seconds)

    out = asyncio.run(call_with_retries(fn, classify, RetryPolicy(max_attempts=5, max_wait=1.0),
                                        rate_limit_sleep=rate_limit_sleep))
    assert out == ("ok", 5)
    assert len(slept) == 3 and all(0.05 <= s < 0.2 for s in slept), slept  # the 503's wait is a plain sleep
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert all(g >= 0.05 for g in gaps), gaps  # every wait was slept, whichever way


def test_a_wait_before_a_retry_ends_when_the_run_stops():
    """``interrupt``: a sample with no answer yet does not sit out a long backoff (or Retry-After)
    once the run has stopped; the retry is tried at once, and the caller's ``fn`` decides (the runner
    drops the sample)."""

    async def main(retry_after: float | None) -> tuple[tuple[str, int], float]:
        stop = asyncio.Event()
        fn, calls = script(Boom(ErrorKind.TRANSIENT, retry_after, status=429 if retry_after else 503), "ok")
        asyncio.get_running_loop().call_later(0.1, stop.set)
        t = time.monotonic()
        out = await call_with_retries(fn, classify, RetryPolicy(max_attempts=3, max_wait=30.0, base=30.0),
                                      interrupt=stop, rate_limit_sleep=asyncio.sleep)
        return out, time.monotonic() - t

    for retry_after in (None, 30.0):  # a backoff of 10-20 s, or a 30 s Retry-After
        out, took = asyncio.run(main(retry_after))
        assert out == ("ok", 2) and took < 1.0, (retry_after, took)


def test_an_endpoint_that_never_answered_is_unreachable_after_a_few_connect_failures():
    policy = RetryPolicy(unreachable_after=3)
    refused = ErrorInfo(ErrorKind.TRANSIENT, "APIConnectionError", "connection refused", network=NetworkFault.REFUSED)
    slow = ErrorInfo(ErrorKind.TRANSIENT, "APITimeoutError", "timed out", network=NetworkFault.TIMEOUT)
    assert not policy.unreachable(refused, answered=False, connect_failures=2)
    assert policy.unreachable(refused, answered=False, connect_failures=3)
    assert policy.unreachable(refused, answered=False, connect_failures=1, exhausted=True)
    # once something answered there, it is an outage (retried, then the circuit breaker), never fatal
    assert not policy.unreachable(refused, answered=True, connect_failures=50, exhausted=True)
    # a server that accepted the connection but is slow is not unreachable
    assert not policy.unreachable(slow, answered=False, connect_failures=50, exhausted=True)
