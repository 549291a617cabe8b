"""Injected failures of the loopback fake: faults, their error bodies, and the rules that pick them.

A ``Fault`` is answered with the error body its API sends for its status (``error_payload``).
``FaultInjection`` holds the rules (``fail_next``, ``fail_when``, ``fail_always``, ``fail_rate``) and
the lock that guards them; ``FakeServer`` is one, and guards its own shared state with the same lock.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, get_args

from fakebatch import ItemFailure
from fakewire import OPENAI_PATH

FaultKind = Literal["status", "hang", "reset", "garbage"]
_FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    kind ``"status"`` answers with an error status and the API's error body; ``"hang"`` sends
    nothing for ``hang_seconds`` (then answers normally, unless the client gave up first);
    ``"reset"`` drops the TCP connection without any response; ``"garbage"`` answers HTTP 200
    with a body that is not JSON (``message``, default an HTML proxy page), as a broken proxy does.
    """

    kind: FaultKind = "status"
    status: int = 500
    retry_after: float | None = None
    retry_after_ms: int | None = None
    hang_seconds: float = 3600.0
    message: str | None = None
    """Error message; a realistic default per status when None."""
    error_type: str | None = None
    """``error.type`` in the body; a realistic default per status and API when None."""
    code: str | None = None
    """OpenAI's ``error.code`` (e.g. ``"insufficient_quota"``); ignored for Anthropic."""


@dataclass
class _MatchRule:
    substring: str
    fault: Fault
    remaining: int | None  # None: forever


@dataclass
class _RateRule:
    probability: float
    fault: Fault
    rng: random.Random


# status -> (error.type, error.code, message), modelled on what api.openai.com returns.
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Permission denied."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", None, "Conflict."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}

# status -> (error.type, message), modelled on what api.anthropic.com returns.
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: {model}"),
    408: ("timeout_error", "Request timed out."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Gateway timeout"),
    529: ("overloaded_error", "Overloaded"),
}


def _openai_error_body(fault: Fault, model: str) -> dict[str, Any]:
    fallback_type = "server_error" if fault.status >= 500 else "invalid_request_error"
    error_type, code, message = _OPENAI_ERRORS.get(
        fault.status, (fallback_type, None, f"HTTP {fault.status}")
    )
    return {
        "error": {
            "message": fault.message or message.format(model=model),
            "type": fault.error_type or error_type,
            "param": None,
            "code": fault.code if fault.code is not None else code,
        }
    }


def _anthropic_error_body(fault: Fault, model: str, request_id: str) -> dict[str, Any]:
    fallback_type = "api_error" if fault.status >= 500 else "invalid_request_error"
    error_type, message = _ANTHROPIC_ERRORS.get(fault.status, (fallback_type, f"HTTP {fault.status}"))
    return {
        "type": "error",
        "error": {
            "type": fault.error_type or error_type,
            "message": fault.message or message.format(model=model),
        },
        "request_id": request_id,
    }


def error_payload(path: str, fault: Fault, model: str, request_id: str) -> dict[str, Any]:
    """The error body the API at ``path`` answers ``fault`` with."""
    if path == OPENAI_PATH:
        return _openai_error_body(fault, model)
    return _anthropic_error_body(fault, model, request_id)


def fault_of(failure: ItemFailure) -> Fault:
    """The ``Fault`` that answers a batch item's (or batch endpoint's) ``failure``."""
    return Fault(status=failure.status, message=failure.message, error_type=failure.error_type, code=failure.code)


def _make_fault(
    kind: str,
    status: int,
    retry_after: float | None,
    retry_after_ms: int | None,
    hang_seconds: float,
    message: str | None,
    error_type: str | None,
    code: str | None,
) -> Fault:
    if kind not in _FAULT_KINDS:
        raise ValueError(f"kind must be one of {sorted(_FAULT_KINDS)}, got {kind!r}")
    if kind == "status" and not 400 <= status <= 599:
        raise ValueError(f"an injected error status must be 4xx or 5xx, got {status}")
    return Fault(
        kind=kind,  # type: ignore[arg-type]  # checked against _FAULT_KINDS above
        status=status,
        retry_after=retry_after,
        retry_after_ms=retry_after_ms,
        hang_seconds=hang_seconds,
        message=message,
        error_type=error_type,
        code=code,
    )


class FaultInjection:
    """Fault rules, changeable from any thread while requests are being answered.

    ``_lock`` guards the rules; a subclass guards its own state shared between threads with it too.
    """

    def __init__(self) -> None:
        """Start with no rules: every request is served normally."""
        self._lock = threading.Lock()
        self._next_faults: deque[Fault] = deque()
        self._match_rules: list[_MatchRule] = []
        self._always: Fault | None = None
        self._rate: _RateRule | None = None

    def fail_next(
        self,
        n: int,
        status: int = 429,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        kind: FaultKind = "status",
        *,
        hang_seconds: float = 3600.0,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
    ) -> None:
        """Make the next ``n`` requests fail (queued after any earlier ``fail_next``).

        ``retry_after`` sets the ``Retry-After`` header (seconds) and ``retry_after_ms`` the
        ``retry-after-ms`` header. Takes precedence over every other kind of rule.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        fault = _make_fault(kind, status, retry_after, retry_after_ms, hang_seconds, message, error_type, code)
        with self._lock:
            self._next_faults.extend([fault] * n)

    def fail_when(
        self,
        substring: str,
        status: int = 400,
        times: int | None = None,
        *,
        kind: FaultKind = "status",
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        hang_seconds: float = 3600.0,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
    ) -> None:
        """Fail requests whose message text contains ``substring``.

        ``times`` bounds how many matching requests fail (None: all of them). Rules are tried in
        the order they were added, after ``fail_next`` and before ``fail_always``/``fail_rate``.
        """
        if times is not None and times < 0:
            raise ValueError(f"times must be >= 0 or None, got {times}")
        fault = _make_fault(kind, status, retry_after, retry_after_ms, hang_seconds, message, error_type, code)
        with self._lock:
            self._match_rules.append(_MatchRule(substring, fault, times))

    def fail_always(
        self,
        status: int = 401,
        *,
        kind: FaultKind = "status",
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        hang_seconds: float = 3600.0,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
    ) -> None:
        """Fail every request (until ``clear_faults``); replaces an earlier ``fail_always``."""
        fault = _make_fault(kind, status, retry_after, retry_after_ms, hang_seconds, message, error_type, code)
        with self._lock:
            self._always = fault

    def fail_rate(
        self,
        p: float,
        status: int = 500,
        seed: int = 0,
        *,
        kind: FaultKind = "status",
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        hang_seconds: float = 3600.0,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
    ) -> None:
        """Fail each request with probability ``p``, drawn from an RNG seeded with ``seed``.

        Checked last, and only for requests no other rule failed. Replaces an earlier rate.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        fault = _make_fault(kind, status, retry_after, retry_after_ms, hang_seconds, message, error_type, code)
        with self._lock:
            self._rate = _RateRule(p, fault, random.Random(seed))

    def clear_faults(self) -> None:
        """Remove every fault rule; requests already being answered are unaffected."""
        with self._lock:
            self._next_faults.clear()
            self._match_rules.clear()
            self._always = None
            self._rate = None

    def _pick_fault_locked(self, text: str) -> Fault | None:
        """The fault for a request whose message text is ``text``, or None; the caller holds ``_lock``."""
        if self._next_faults:
            return self._next_faults.popleft()
        for rule in self._match_rules:
            if rule.remaining != 0 and rule.substring in text:
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule.fault
        if self._always is not None:
            return self._always
        if self._rate is not None and self._rate.rng.random() < self._rate.probability:
            return self._rate.fault
        return None
