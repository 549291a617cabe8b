"""What the units of one invocation share: the run's mutable state (:class:`RunState`, written by
its workers) and what every unit's calls need (:class:`SampleContext`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from evalledger.pricing import Price
from evalledger.providers import ErrorInfo, Provider
from evalledger.response_cache import ResponseCache
from evalledger.run.batching import BatchQueue
from evalledger.run.limits import Limits
from evalledger.run.retry import RetryPolicy
from evalledger.tasks import Task


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


__all__ = ["RunState", "SampleContext"]
