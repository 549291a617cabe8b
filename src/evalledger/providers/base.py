"""The provider interface: translate a chat request for one API, and classify its errors.

Providers do not retry (the SDK clients are built with ``max_retries=0``); the runner's retry
policy is the one retry loop, driven by :class:`ErrorInfo` from :meth:`Provider.classify`.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any

import orjson


class ErrorKind(str, Enum):
    """How an error affects the run (see docs/architecture.md, "Errors and exit codes")."""

    TRANSIENT = "transient"  # retry with backoff; when exhausted, an error record (retryable)
    FATAL = "fatal"  # stop the whole run at once: credentials, permissions, unknown model, bad URL
    SAMPLE = "sample"  # this sample cannot succeed (400, content filter); error record, run continues


class NetworkFault(str, Enum):
    """What went wrong below HTTP when a request got no response at all (:attr:`ErrorInfo.network`)."""

    REFUSED = "refused"  # nothing listens at that host and port
    DNS = "dns"  # the host name does not resolve
    CONNECT_TIMEOUT = "connect-timeout"  # the connection attempt itself got no answer in time
    TIMEOUT = "timeout"  # connected, but the response did not come in time
    LOST = "lost"  # the connection broke (reset, closed) before the response

    @property
    def cannot_connect(self) -> bool:
        """The request never reached a server: no connection could be made."""
        return self in (NetworkFault.REFUSED, NetworkFault.DNS, NetworkFault.CONNECT_TIMEOUT)


#: How each fault reads in a message (``connection refused: <the transport's words>``).
NETWORK_FAULT_TEXT = {
    NetworkFault.REFUSED: "connection refused",
    NetworkFault.DNS: "DNS lookup failed",
    NetworkFault.CONNECT_TIMEOUT: "timed out connecting",
    NetworkFault.TIMEOUT: "timed out waiting for the response",
    NetworkFault.LOST: "connection lost",
}


@dataclass(frozen=True)
class ErrorInfo:
    """A provider error, classified."""

    kind: ErrorKind
    type: str
    message: str
    status_code: int | None = None
    retry_after: float | None = None  # seconds, from Retry-After / retry-after-ms
    request_id: str | None = None
    #: Set when no HTTP response arrived (a connection error or a time-out): what went wrong.
    network: NetworkFault | None = None

    @property
    def retryable(self) -> bool:
        return self.kind is ErrorKind.TRANSIENT

    @property
    def cannot_connect(self) -> bool:
        """No connection could be made (refused, DNS, connect time-out): the server never saw it."""
        return self.network is not None and self.network.cannot_connect


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


def is_transient_status(status: int) -> bool:
    """An HTTP status that waiting may clear (rate limit, time-out, server error): the same rule
    for an online reply and for one request's outcome inside a provider batch."""
    return status in TRANSIENT_STATUSES or status >= 500


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
        elif is_transient_status(status):
            kind = ErrorKind.TRANSIENT
        else:
            kind = ErrorKind.SAMPLE
        return ErrorInfo(kind, etype, message, status, retry_after, getattr(exc, "request_id", None))
    if isinstance(exc, sdk.APIConnectionError):  # includes APITimeoutError
        fault = network_fault(exc, timed_out=isinstance(exc, sdk.APITimeoutError))
        if fault not in (NetworkFault.TIMEOUT, NetworkFault.CONNECT_TIMEOUT):
            # The aiohttp transport reports most connection failures (refused, reset) as a connect
            # *time-out*, and the SDK then says "Request timed out.": name them for what they are.
            etype = "APIConnectionError"
        cause = exc.__cause__ or exc.__context__
        detail = str(cause) if cause is not None and str(cause) else str(exc)
        return ErrorInfo(ErrorKind.TRANSIENT, etype, f"{NETWORK_FAULT_TEXT[fault]}: {detail}", network=fault)
    if isinstance(exc, sdk.APIResponseValidationError):
        return ErrorInfo(ErrorKind.SAMPLE, etype, str(exc))
    # Anything else from inside the SDK call (a bug, a bad response shape) is this sample's problem.
    return ErrorInfo(ErrorKind.SAMPLE, etype, str(exc) or etype)


def network_fault(exc: BaseException, timed_out: bool = False) -> NetworkFault:
    """What a connection error from an SDK was, from its chain of causes (``timed_out``: the SDK
    itself called it a time-out, which its aiohttp transport also does for refusals and resets)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and all(cause is not c for c in chain):
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ConnectionRefusedError) for c in chain):
        return NetworkFault.REFUSED
    if any(isinstance(c, socket.gaierror) for c in chain):
        return NetworkFault.DNS
    if any(isinstance(c, ConnectionError) for c in chain):  # reset, aborted, broken pipe
        return NetworkFault.LOST
    names = {type(c).__name__ for c in chain}
    via_aiohttp = any(type(c).__module__.startswith("aiohttp") for c in chain)
    # aiohttp's own connect time-out; httpx2's ConnectTimeout means one only without aiohttp
    # beneath it (the aiohttp transport maps every aiohttp connection error to ConnectTimeout).
    if "ConnectionTimeoutError" in names or ("ConnectTimeout" in names and not via_aiohttp):
        return NetworkFault.CONNECT_TIMEOUT
    if any(isinstance(c, TimeoutError) for c in chain) or (timed_out and not via_aiohttp):
        return NetworkFault.TIMEOUT
    return NetworkFault.LOST  # e.g. aiohttp's ServerDisconnectedError, reported as a time-out


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


async def post_json(client: Any, sdk: Any, path: str, body: dict[str, Any],
                    options: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """POST ``body`` through the SDK client's low-level ``post``; the JSON object and the response.

    Why not the typed method (``chat.completions.create``): for a plain chat request its work is
    pure overhead here. It runs the body through the SDK's type-driven ``transform`` (0.66 ms of CPU
    a request on this machine, and a no-op for our string-only messages: a test pins that) and builds
    pydantic models of the reply we only read five fields of (anthropic's ``messages.create`` does
    no transform, but the models and its tracing span are there too); together about 60 % of a request's
    CPU at L = 0 with openai (2.0 vs 0.8 ms/request, benchmarks/README.md), and one process's CPU is what caps
    throughput. What matters is unchanged: the same client, auth headers, time-out, transport and
    connection pool, and non-2xx replies still raise the SDK's own exceptions (``APIStatusError``
    and subclasses) inside ``post``, so :func:`classify_sdk_error` is unchanged. A 2xx reply whose
    body is not a JSON object raises ``sdk.APIResponseValidationError`` (a sample error).
    """
    import httpx2  # the SDKs' HTTP layer; imported here so the module loads without it

    raw = await client.post(path, body=body, cast_to=httpx2.Response, options=options or {})
    content = await raw.aread()
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise sdk.APIResponseValidationError(
            raw, content[:200], message=f"HTTP {raw.status_code} reply to {path} is not JSON ({exc}): {content[:80]!r}"
        ) from None
    if not isinstance(data, dict):
        raise sdk.APIResponseValidationError(
            raw, data, message=f"HTTP {raw.status_code} reply to {path} is JSON but not an object: {content[:80]!r}")
    return data, raw


def as_count(value: Any) -> int:
    """A token count from a reply: a non-negative int, else 0 (servers send null or omit it)."""
    return value if type(value) is int and value >= 0 else 0


def as_text(value: Any) -> str | None:
    """A string field of a reply, or None when absent or of another type."""
    return value if isinstance(value, str) else None


def aiohttp_client(sdk: Any, concurrency: int) -> Any | None:
    """The SDK's aiohttp transport (``sdk.DefaultAioHttpClient``), or None without ``aiohttp``.

    Why: the SDKs' default httpx2 transport costs 3-4 ms of CPU per request here, the aiohttp one
    1.9-2.8 ms (see benchmarks/README.md), and one process's CPU is what caps
    throughput. Its pool is sized to the run's concurrency: the default keeps at most 20 (aiohttp)
    or 100 (httpx2) idle connections, so at a higher concurrency every request past them would
    open a new connection. Errors still arrive as the SDK's exceptions (the transport maps aiohttp's
    to httpx2's), so :func:`classify_sdk_error` handles both transports.
    """
    try:
        import aiohttp  # noqa: F401  # the transport needs it; without it the SDK raises on use
        import httpx2  # comes with the SDK: only once a client is built
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


class SDKProvider(Provider):
    """A provider over an official SDK's async client (``openai``, ``anthropic``).

    The SDK is imported, and its client built, only when requests are about to be sent
    (:meth:`start`, or the first use of ``_client``): importing an SDK takes about half a second,
    and a resume with nothing pending, ``estimate`` and ``study``'s checks need none of it. What can
    be checked without it (the model string, that a key is there) is checked when the provider is
    made, so a bad ``--model`` or a missing key is still refused before anything is written.
    """

    model: str
    base_url: str | None
    concurrency: int
    _built: Any = None

    @property
    @abstractmethod
    def _sdk(self) -> Any:
        """The SDK module (imported on first use)."""

    @abstractmethod
    def build_client(self, sdk: Any, http_client: Any | None) -> Any:
        """The SDK's async client, with ``max_retries=0``, over ``http_client`` unless it is None."""

    @property
    def _client(self) -> Any:
        """The SDK client, built on first use."""
        return self._built if self._built is not None else self._build()

    def _build(self) -> Any:
        sdk = self._sdk
        self._built = self.build_client(sdk, aiohttp_client(sdk, self.concurrency))
        return self._built

    async def start(self) -> None:
        """Import the SDK and build the client now, before the first request (no network I/O)."""
        if self._built is None:
            self._build()

    def classify(self, exc: BaseException) -> ErrorInfo:
        return classify_sdk_error(exc, self._sdk)

    async def aclose(self) -> None:
        if self._built is not None:
            client, self._built = self._built, None
            await client.close()
