"""How a unit of work leaves a worker without a record: the whole run stops, the unit was dropped
before it got any answer, or its request waits at the provider in a batch."""

from __future__ import annotations


class StopRun(Exception):
    """Raised inside a worker to end the run (fatal provider error)."""


class NotStarted(BaseException):
    """The run was told to stop before this sample got any answer: drop it instead of sending its
    first request or retrying a failed one (it stays pending; failed requests are not paid, and a
    stopped run, e.g. by the circuit breaker, should not keep calling an API that fails). A
    BaseException, like CancelledError, so that the retry loop and the task's own error handling
    let it through untouched."""


class LeftPending(NotStarted):
    """The unit's request is in a provider batch that has not ended (``--no-wait``, or the run was
    stopped while it waited): no record now; the batch journal holds it, and the next run of the
    same command collects its answer instead of sending it again. The worker goes on with the
    next unit (a batch run with ``--no-wait`` submits everything before it leaves)."""


__all__ = ["LeftPending", "NotStarted", "StopRun"]
