"""The provider interface: translate a chat request for one API, and classify its errors.

Providers do not retry (the SDK clients are built with ``max_retries=0``); the runner's retry
policy is the one retry loop, driven by :class:`ErrorInfo` from :meth:`Provider.classify`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class ErrorKind(str, Enum):
    """How an error affects the run (DESIGN.md, "Errors")."""

    TRANSIENT = "transient"  # retry with backoff; when exhausted, an error record (retryable)
    FATAL = "fatal"  # stop the whole run at once: credentials, permissions, unknown model, bad URL
    SAMPLE = "sample"  # this sample cannot succeed (400, content filter); error record, run continues


@dataclass(frozen=True)
class ErrorInfo:
    """A provider error, classified."""

    kind: ErrorKind
    type: str
    message: str
    status_code: int | None = None
    retry_after: float | None = None  # seconds, from Retry-After / retry-after-ms
    request_id: str | None = None

    @property
    def retryable(self) -> bool:
        return self.kind is ErrorKind.TRANSIENT


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request, provider-neutral."""

    messages: list[dict[str, str]]
    model: str
    temperature: float
    max_tokens: int
    seed: int | None = None
    top_p: float | None = None


@dataclass(frozen=True)
class ChatResponse:
    """The parts of a provider response the ledger records."""

    text: str
    input_tokens: int
    output_tokens: int
    request_id: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the provider's rate-limit headers (x-ratelimit-* / anthropic-ratelimit-*), for pacing
    ratelimit_headers: dict[str, str] = field(default_factory=dict)


class Provider(ABC):
    """A chat model behind one API."""

    #: The full model string as given by the user, e.g. ``openai/gpt-4o-mini``.
    model: str

    async def start(self) -> None:
        """Acquire resources (e.g. start an embedded server). Called once before any request."""

    @abstractmethod
    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send one request; raise the SDK's exception on failure (no retries here)."""

    @abstractmethod
    def classify(self, exc: BaseException) -> ErrorInfo:
        """Classify an exception raised by :meth:`complete`."""

    async def aclose(self) -> None:
        """Release resources."""


# HTTP statuses worth retrying: rate limits, timeouts, conflicts, server errors, Anthropic's 529.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
# Statuses no retry or other sample can fix: wrong key, no permission, unknown model or URL.
FATAL_STATUSES = frozenset({401, 403, 404})
# Error codes that arrive with a transient-looking status but will not clear by waiting.
FATAL_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_error"})


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (preferred, as both SDKs do) or ``Retry-After``.

    ``Retry-After`` may be delta-seconds or an HTTP date; unparseable values are ignored.
    """
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is None:
        return None
    try:
        return max(float(ra), 0.0)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone

    try:
        when = parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def classify_sdk_error(exc: BaseException, sdk: Any) -> ErrorInfo:
    """Classify an exception from the ``openai`` or ``anthropic`` SDK module ``sdk``.

    Both SDKs share the same exception shapes (``APIStatusError`` with ``status_code``,
    ``response`` and ``request_id``; ``APITimeoutError`` ⊂ ``APIConnectionError``).
    """
    etype = type(exc).__name__
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        code = _error_code(exc)
        message = _status_message(exc)
        retry_after = parse_retry_after(getattr(exc.response, "headers", None))
        if code in FATAL_CODES:
            kind = ErrorKind.FATAL
        elif status in FATAL_STATUSES:
            kind = ErrorKind.FATAL
        elif status in TRANSIENT_STATUSES or status >= 500:
            kind = ErrorKind.TRANSIENT
        else:
            kind = ErrorKind.SAMPLE
        return ErrorInfo(kind, etype, message, status, retry_after, getattr(exc, "request_id", None))
    if isinstance(exc, sdk.APIConnectionError):  # includes APITimeoutError
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        if isinstance(exc, sdk.APITimeoutError) and _refused(exc):
            # The aiohttp transport reports a refused connection as a connect *timeout*; it is
            # the same failure as httpx2's ConnectError (nothing listens there), so it is named
            # like one: the runner stops at once when no request ever got through.
            etype = "APIConnectionError"
        return ErrorInfo(ErrorKind.TRANSIENT, etype, f"{exc}{detail}")
    if isinstance(exc, sdk.APIResponseValidationError):
        return ErrorInfo(ErrorKind.SAMPLE, etype, str(exc))
    # Anything else from inside the SDK call (a bug, a bad response shape) is this sample's problem.
    return ErrorInfo(ErrorKind.SAMPLE, etype, str(exc) or etype)


def _refused(exc: BaseException) -> bool:
    """Whether a connection error was caused by a refused or failed connect, not by a time-out."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return True
        if isinstance(cause, TimeoutError):  # aiohttp's real connect time-out is a TimeoutError
            return False
        cause = cause.__cause__ or cause.__context__
    return False


def _error_code(exc: Any) -> str | None:
    code = getattr(exc, "code", None) or getattr(exc, "error_code", None)
    if code:
        return str(code)
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            c = err.get("code") or err.get("type")
            return str(c) if c else None
    return None


def _status_message(exc: Any) -> str:
    msg = getattr(exc, "api_message", None)
    if not msg:
        body = getattr(exc, "body", None)
        if isinstance(body, dict):
            err = body.get("error", body)
            if isinstance(err, dict):
                msg = err.get("message")
    return f"HTTP {exc.status_code}: {msg or exc}"


def ratelimit_headers(headers: Any) -> dict[str, str]:
    """The rate-limit headers of a response, lower-cased (the rest is not worth keeping)."""
    out = {}
    for k, v in headers.items():
        k = k.lower()
        if k.startswith("x-ratelimit-") or k.startswith("anthropic-ratelimit-"):
            out[k] = v
    return out


async def parse_raw(raw: Any) -> Any:
    """``raw.parse()`` of a ``with_raw_response`` call: sync in openai's legacy wrapper, async in anthropic's."""
    parsed = raw.parse()
    if hasattr(parsed, "__await__"):
        parsed = await parsed
    return parsed


def aiohttp_client(sdk: Any, concurrency: int) -> Any | None:
    """The SDK's aiohttp transport (``sdk.DefaultAioHttpClient``), or None without ``aiohttp``.

    Why: the SDKs' default httpx2 transport costs 3-4 ms of CPU per request here, the aiohttp one
    1.9-2.8 ms (FACTS.md; measured again for issue 3), and one process's CPU is what caps
    throughput. Its pool is sized to the run's concurrency: the default keeps at most 20 (aiohttp)
    or 100 (httpx2) idle connections, so at a higher concurrency every request past them would
    open a new connection. Errors still arrive as the SDK's exceptions (the transport maps aiohttp's
    to httpx2's), so :func:`classify_sdk_error` is unchanged.
    """
    try:
        import aiohttp  # noqa: F401  # the transport needs it; without it the SDK raises on use
        import httpx2
    except ImportError:
        return None
    client_cls = getattr(sdk, "DefaultAioHttpClient", None)
    if client_cls is None:
        return None
    size = max(int(concurrency), 1) + 8  # a few spare for retries racing a closing connection
    try:
        return client_cls(limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size))
    except RuntimeError:  # the SDK's stand-in when it was installed without its aiohttp extra
        return None
