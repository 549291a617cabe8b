"""Rate limits and adaptive concurrency, shared by every worker of a run.

* ``--rpm`` / ``--tpm``: token buckets refilling continuously. A request takes one request token and
  its estimated tokens (prompt characters / 4 + ``max_tokens``) before it is sent; once the
  response reports its real usage, the difference is given back (or charged).
* Adaptive concurrency (AIMD): a 429 (or Anthropic's 529) *storm* halves the number of requests
  allowed in flight, at most once per episode, and pauses *every* worker for the server's
  ``Retry-After``; each ``limit`` successes in a row add one slot back, up to ``--concurrency``.
  A storm is a 429 when at least 3/4 of the recent responses (the last ``max(limit, 8)``; at
  least half that many seen) were 429s: the run is over the provider's limit and everyone must back off. A 429 among mostly
  successful responses (a provider shedding a few requests at random) only makes *that* request
  wait its ``Retry-After`` (retry.py): pausing everyone and halving the limit for it would cost
  far more than it saves (with 30 % of requests answered 429 and Retry-After 1, pausing everyone
  made a run 69x slower; waiting per request keeps it within 1.5x, see benchmarks/README.md).

Several processes on one host (the workers of a ``--workers`` run, or runs started with
``EVALLEDGER_HOST_LIMITER``) share the buckets, the storm's pause and its cuts of the concurrency
through one :class:`~evalledger.run.hostlimit.HostLimiter`: a storm seen by one of them pauses them
all and halves each one's limit. A process without one keeps all of it in memory, as before.

This module decides only when a request may go; retrying is ``retry.py``'s job.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import AsyncIterator, Callable

from evalledger.run.hostlimit import (
    HostLimiter,
    SharedBucket,
    capacity_for,
    host_limiter_from_env,
    refill,
    rpm_bucket,
    tpm_bucket,
    wait_for,
)

RATE_LIMIT_STATUSES = frozenset({429, 529})
DEFAULT_PAUSE = 1.0  # seconds, when a 429 carries no Retry-After


class TokenBucket:
    """``per_minute`` tokens a minute, refilled continuously; holds at most ``capacity``.

    A request larger than the capacity waits for a full bucket and then takes it into debt, so it
    is delayed rather than refused.
    """

    def __init__(self, per_minute: float, capacity: float | None = None, clock: Callable[[], float] = time.monotonic):
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else capacity_for(per_minute)
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = asyncio.Lock()  # waiters are served in arrival order

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = refill(self.tokens, now - self._last, self.rate, self.capacity)
        self._last = now

    def wait_time(self, n: float) -> float:
        self._refill()
        return wait_for(self.tokens, n, self.capacity, self.rate)

    def try_take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens now if they are there and nobody is waiting for them (arrival order)."""
        if self._lock.locked() or self.wait_time(n) > 0:
            return False
        self.tokens -= n
        return True

    async def acquire(self, n: float = 1.0) -> float:
        """Take ``n`` tokens, sleeping until they are there. Returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            while (delay := self.wait_time(n)) > 0:
                await asyncio.sleep(delay)
                waited += delay
            self.tokens -= n
        return waited

    def adjust(self, delta: float) -> None:
        """Give back (``delta`` > 0) or charge (< 0) tokens after the real usage is known."""
        self._refill()
        self.tokens = min(self.capacity, self.tokens + delta)


@dataclass
class LimitStats:
    """What the limiter did, for progress and the run summary."""

    rate_limited: int = 0  # 429/529 responses seen
    storms: int = 0  # 429s that paused everyone (at least half the recent responses were 429s)
    decreases: int = 0
    paused_s: float = 0.0  # total seconds requests waited on a storm's pause or their own 429's Retry-After
    throttled_s: float = 0.0  # total seconds requests waited on --rpm/--tpm
    min_limit: int = 0
    paced: int = 0  # pauses taken because rate-limit headers said the window was nearly used up


@dataclass
class Limits:
    """Everything that gates one request: concurrency slots, the shared pause, RPM and TPM."""

    max_concurrency: int
    adaptive: bool = True
    rpm: float | None = None
    tpm: float | None = None
    on_change: Callable[[int, int], None] | None = None  # (current limit, requests waiting on a rate limit)
    on_wait: Callable[[float], None] | None = None  # a wait of so many seconds for a rate limit starts
    stats: LimitStats = field(default_factory=LimitStats)
    #: shared with the other processes of the host (None: $EVALLEDGER_HOST_LIMITER's, if set, else none)
    host: HostLimiter | None = None

    def __post_init__(self) -> None:
        self.limit = self.max_concurrency
        self.stats.min_limit = self.limit
        self.in_use = 0
        self.waiting_on_pause = 0
        self.pause_until = 0.0
        self._successes = 0
        self._episode_end = 0.0
        self._cond = asyncio.Condition()
        # The last responses, True for a 429/529: a storm is a 429 when half of them are.
        self._recent: deque[bool] = deque(maxlen=max(self.max_concurrency, 8))
        self._recent_429 = 0
        self._last_estimate = 0
        if self.host is None:
            self.host = host_limiter_from_env(self.rpm, self.tpm)
        host = self.host
        self._rpm: TokenBucket | SharedBucket | None = None
        self._tpm: TokenBucket | SharedBucket | None = None
        if self.rpm:
            self._rpm = TokenBucket(self.rpm) if host is None else rpm_bucket(host)
        if self.tpm:
            self._tpm = TokenBucket(self.tpm) if host is None else tpm_bucket(host)
        # The host's cuts made before this process joined are not this process's to take.
        self._cuts_seen = 0 if host is None else host.read()[1]

    def _notify_change(self) -> None:
        if self.on_change is not None:
            self.on_change(self.limit, self.waiting_on_pause)

    @asynccontextmanager
    async def request(self, estimated_tokens: int) -> AsyncIterator["_Slot"]:
        """Hold a slot for one HTTP request: waits for concurrency, the shared pause, RPM and TPM."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_use < self.limit)
            self.in_use += 1
        slot = _Slot(self, estimated_tokens)
        self._last_estimate = estimated_tokens
        try:
            await self._wait_for_pause()
            for bucket, n in ((self._rpm, 1), (self._tpm, estimated_tokens)):
                if bucket is not None:
                    await self._take(bucket, n)
            yield slot
        finally:
            async with self._cond:
                self.in_use -= 1
                # One waiter per freed slot: waking all of them (there can be several times
                # --concurrency samples waiting, see scheduler.schedule) cost O(waiters) a request.
                self._cond.notify(1)

    async def _wait_for_pause(self) -> None:
        if self.host is not None:
            self._follow_host()
        while (delay := self.pause_until - time.monotonic()) > 0:
            async with self._waiting(delay):
                await asyncio.sleep(delay)
            self.stats.paused_s += delay
            if self.host is not None:
                self._follow_host()

    def _follow_host(self) -> None:
        """Take on what the other processes of the host decided: their pause, their cuts."""
        assert self.host is not None
        pause_until, cuts = self.host.read()
        self.pause_until = max(self.pause_until, pause_until)
        self._apply_cuts(cuts)

    def _apply_cuts(self, cuts: int) -> None:
        """Halve the limit once for each of the host's cuts this process has not taken yet."""
        new = cuts - self._cuts_seen
        if new <= 0:
            return
        self._cuts_seen = cuts
        self._successes = 0
        if self.adaptive:
            for _ in range(new):
                self._halve()
            self._notify_change()

    def _halve(self) -> None:
        self.limit = max(1, math.floor(self.limit / 2))
        self.stats.decreases += 1
        self.stats.min_limit = min(self.stats.min_limit, self.limit)

    async def _take(self, bucket: TokenBucket | SharedBucket, n: float) -> None:
        """Take ``n`` of ``bucket``'s tokens (--rpm/--tpm); a wait for them shows like any rate-limit wait."""
        if bucket.try_take(n):  # the common case: no wait, no bookkeeping
            return
        async with self._waiting(bucket.wait_time(n)):
            # (not `x += await …`: that reads x before awaiting and loses other coroutines' updates)
            waited = await bucket.acquire(n)
        self.stats.throttled_s += waited

    async def sleep_rate_limited(self, seconds: float) -> None:
        """A request that got a 429/529 waits out its ``Retry-After`` before its retry (retry.py):
        counted and shown like the shared pause, so a run whose requests all wait never looks stuck."""
        async with self._waiting(seconds):
            await asyncio.sleep(seconds)
        self.stats.paused_s += seconds

    @asynccontextmanager
    async def _waiting(self, seconds: float) -> AsyncIterator[None]:
        """Count a request as waiting on a rate limit (progress shows how many) while inside."""
        self.waiting_on_pause += 1
        if self.on_wait is not None:
            self.on_wait(seconds)
        self._notify_change()
        try:
            yield
        finally:
            self.waiting_on_pause -= 1
            self._notify_change()

    def _observe(self, was_429: bool) -> None:
        window = max(self.limit, 8)
        if self._recent.maxlen != window:  # the window follows the current limit
            self._recent = deque(self._recent, maxlen=window)
            self._recent_429 = sum(self._recent)
        if len(self._recent) == self._recent.maxlen:
            self._recent_429 -= self._recent[0]
        self._recent.append(was_429)
        self._recent_429 += was_429

    def is_storm(self) -> bool:
        """Were at least 3/4 of the recent responses 429s, with the window at least half full?

        3/4, not 1/2: rate limiters answer 429 at once while answers take the full latency, so
        right after a pause (all slots sent together) the first responses back are all the 429s
        of that round; with 30 % of requests shed at random that alone made half the window 429s."""
        seen = len(self._recent)
        return seen >= max(3, (self._recent.maxlen or 0) // 2) and 4 * self._recent_429 >= 3 * seen

    def rate_limited(self, retry_after: float | None) -> None:
        """A 429/529. In a storm: pause everyone for Retry-After and halve the limit once per
        episode. Otherwise only the request that got it waits (its retry honours Retry-After)."""
        now = time.monotonic()
        pause = retry_after if retry_after is not None else DEFAULT_PAUSE
        self.stats.rate_limited += 1
        self._observe(True)
        if not self.is_storm():
            return
        self.stats.storms += 1
        self.pause_until = max(self.pause_until, now + pause)
        self._successes = 0
        # One episode = the 429s that arrive while the requests in flight at the first one drain:
        # they all reflect the same overload, so only the first one cuts the limit.
        if self.host is not None:
            self.pause_until = self.host.pause_until(self.pause_until)
            if self.adaptive:
                self._follow_host()
                cuts = self.host.cut(now, pause + 1.0)
                if cuts is not None:
                    self._apply_cuts(cuts)
        elif self.adaptive and now >= self._episode_end:
            self._halve()
            self._episode_end = now + pause + 1.0
        self._notify_change()

    def observe_headers(self, headers: dict[str, str]) -> None:
        """Pace before the wall: when the provider says fewer requests (or tokens) remain in its
        window than could be in flight, pause everyone until that window resets."""
        if not headers:
            return
        now = time.monotonic()
        pause = 0.0
        for kind, need in (("requests", self.in_use), ("tokens", self._tokens_in_flight_estimate())):
            remaining, reset = _remaining_and_reset(headers, kind)
            if remaining is not None and reset is not None and remaining <= need:
                pause = max(pause, reset)
        if pause > 0:
            self.stats.paced += 1
            self.pause_until = max(self.pause_until, now + pause)
            if self.host is not None:
                self.pause_until = self.host.pause_until(self.pause_until)
            self._notify_change()

    def _tokens_in_flight_estimate(self) -> int:
        return self.in_use * self._last_estimate

    def succeeded(self) -> None:
        """Additive increase: one more slot after ``limit`` successes in a row."""
        self._observe(False)
        if not self.adaptive or self.limit >= self.max_concurrency:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit += 1
            self._notify_change()
            asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._cond:
            self._cond.notify(1)  # the one slot just added


class _Slot:
    def __init__(self, limits: Limits, estimated_tokens: int) -> None:
        self.limits = limits
        self.estimated = estimated_tokens

    def used(self, actual_tokens: int) -> None:
        """Correct the TPM bucket with the usage the response reported."""
        if self.limits._tpm is not None:
            self.limits._tpm.adjust(self.estimated - actual_tokens)


CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3  # role and separators; OpenAI counts 3-4 per message


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> float:
    """Prompt tokens before sending: about four characters a token, plus a few per message."""
    return sum(len(m.get("content") or "") for m in messages) / CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(messages)


def estimate_request_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """Tokens a request may use, before sending it: the prompt estimate plus ``max_tokens``."""
    return int(estimate_prompt_tokens(messages)) + max_tokens


def _remaining_and_reset(headers: dict[str, str], kind: str) -> tuple[int | None, float | None]:
    """(remaining, seconds until reset) for ``requests`` or ``tokens`` from OpenAI's or Anthropic's headers."""
    for remaining_key, reset_key in (
        (f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}"),  # OpenAI: "1s", "6m0s", "20ms"
        (f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset"),  # RFC 3339 time
    ):
        if remaining_key in headers:
            try:
                remaining = int(float(headers[remaining_key]))
            except ValueError:
                return None, None
            return remaining, parse_reset(headers.get(reset_key))
    return None, None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None) -> float | None:
    """Seconds until a rate-limit window resets: ``"6m0s"``, ``"1.5s"``, ``"20ms"`` or an RFC 3339 time."""
    if not value:
        return None
    value = value.strip()
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        return sum(float(n) * scale[u] for n, u in parts)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            return max(float(value), 0.0)
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)
