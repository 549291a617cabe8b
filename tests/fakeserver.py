"""A loopback fake of the OpenAI Chat Completions and Anthropic Messages HTTP APIs.

The official SDKs talk HTTP through ``httpx2``, so transport-level mocking (respx and friends)
cannot reach them. Instead the tests and benchmarks point the real SDK clients at this server on
127.0.0.1: every request travels the real HTTP path, real status codes and headers come back, and
the SDKs raise their real exception classes.

Two ways to use it:

* In-process (tests)::

      with FakeServer(latency=0.01) as server:
          client = openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0)
          server.fail_next(2, status=429, retry_after=1)
          ...
          assert server.count_for("sample-7", status=200) == 1

* As a separate process (benchmarks)::

      python tests/fakeserver.py --port 0 --latency 0.05
      # prints "READY http://127.0.0.1:PORT" and serves until killed;
      # GET /_fake/stats returns the request counters as JSON.

The batch endpoints (OpenAI Files + Batches, Anthropic Message Batches) are served too, controlled
through ``server.batches`` (see fakebatch.py); their items are answered by the same responder.

Fault injection (``fail_next``, ``fail_when``, ``fail_always``, ``fail_rate``) can be changed at
any moment from the test thread while the server answers requests on its own event loop thread.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Literal, get_args

from aiohttp import web
from fakebatch import API, FakeBatches, ItemAnswer, ItemFailure

__all__ = [
    "ANTHROPIC_PATH",
    "OPENAI_PATH",
    "Fault",
    "FaultKind",
    "FakeServer",
    "RecordedRequest",
    "Responder",
    "answer_from_marker",
    "estimate_tokens",
    "last_user_text",
    "message_texts",
    "reply_payload",
    "request_text",
]

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
STATS_PATH = "/_fake/stats"
_API_PATHS: dict[API, str] = {"openai": OPENAI_PATH, "anthropic": ANTHROPIC_PATH}

Responder = Callable[[dict[str, Any]], str]
"""Maps a parsed request body (either API's format) to the assistant's reply text."""

FaultKind = Literal["status", "hang", "reset", "garbage"]
_FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

# Headroom for a burst of hundreds of simultaneous connects: with the default backlog (128) the
# kernel drops SYNs beyond the queue and the client only retries after ~1 s, which would show up
# as phantom latency in concurrency benchmarks.
_LISTEN_BACKLOG = 2048


# --------------------------------------------------------------------------------------------
# Reading requests
# --------------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """Text of one message's content: a plain string or a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def message_texts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """Return ``(role, text)`` for every message of a request body in either API's format.

    Anthropic's top-level ``system`` prompt comes first with role ``"system"``, so both formats
    read the same way.
    """
    texts: list[tuple[str, str]] = []
    if body.get("system") is not None:
        texts.append(("system", _content_text(body["system"])))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            texts.append((str(message.get("role", "")), _content_text(message.get("content"))))
    return texts


def last_user_text(body: dict[str, Any]) -> str:
    """Return the text of the last ``user`` message of a request body, or ``""`` if none."""
    for role, text in reversed(message_texts(body)):
        if role == "user":
            return text
    return ""


def request_text(body: dict[str, Any]) -> str:
    """All message text of a request body joined by newlines (what ``count_for`` searches)."""
    return "\n".join(t for _, t in message_texts(body))


def estimate_tokens(text: str) -> int:
    """Deterministic token estimate: one token per four characters, at least one."""
    return max(1, math.ceil(len(text) / 4))


_ANSWER_MARKER = re.compile(r"\[\[ANSWER:(.*?)\]\]", re.DOTALL)


def answer_from_marker(body: dict[str, Any]) -> str:
    """Responder that answers whatever a ``[[ANSWER:xyz]]`` marker in the prompt says.

    The most recent user message carrying a marker wins (so follow-up turns of a multi-turn task
    still see the sample's answer). Returns ``"The answer is xyz.\\n#### xyz"``, which both a
    GSM8K-style ``####`` parser and an "answer is X" parser accept, or ``"#### 42"`` when no user
    message has a marker. This is also the server's default responder.
    """
    for role, text in reversed(message_texts(body)):
        if role != "user":
            continue
        match = _ANSWER_MARKER.search(text)
        if match:
            answer = match.group(1).strip()
            return f"The answer is {answer}.\n#### {answer}"
    return "#### 42"


def _validation_problem(path: str, body: Any) -> str | None:
    """Why a request body would be rejected with 400 by the real API, or None if it is fine."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request: expected a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages: Field required (a non-empty list)"
    if path == ANTHROPIC_PATH and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if body.get("stream"):
        # The runner never streams; failing loudly beats answering in the wrong format.
        return "stream=true is not supported by the fake server"
    return None


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


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
class RecordedRequest:
    """One POST that reached an API endpoint, as the server saw and answered it."""

    seq: int
    """1-based arrival number; the response carries request id ``req_<seq>``."""
    path: str
    body: dict[str, Any]
    """Parsed JSON body (``{}`` when it was not a JSON object)."""
    text: str
    """All message text of the request joined by newlines (what ``count_for`` searches)."""
    headers: dict[str, str]
    """Request headers with lower-cased names."""
    received_at: float
    """``time.monotonic()`` when the request arrived."""
    fault: FaultKind | None = None
    """The injected fault applied to this request, or None if it was served normally."""
    status: int | None = None
    """HTTP status sent back; None when no response was sent (reset, hang, client went away)."""

    @property
    def request_id(self) -> str:
        """The request id header value sent for this request."""
        return _request_id(self.seq)


def _request_id(seq: int) -> str:
    return f"req_{seq}"


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


# --------------------------------------------------------------------------------------------
# Error bodies
# --------------------------------------------------------------------------------------------

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


def _error_payload(path: str, fault: Fault, model: str, request_id: str) -> dict[str, Any]:
    """The error body the API at ``path`` answers ``fault`` with."""
    if path == OPENAI_PATH:
        return _openai_error_body(fault, model)
    return _anthropic_error_body(fault, model, request_id)


def reply_payload(path: str, body: dict[str, Any], reply: str, seq: int) -> dict[str, Any]:
    """The success body the API at ``path`` answers request ``body`` with when the model says ``reply``.

    Ids come from the request's arrival number ``seq``; token counts are ``estimate_tokens`` of the
    request's message text and of the reply.
    """
    model = body["model"]
    input_tokens = estimate_tokens(request_text(body))
    output_tokens = estimate_tokens(reply)
    if path == OPENAI_PATH:
        return {
            "id": f"chatcmpl-fake{seq:08d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
            "system_fingerprint": None,
        }
    return {
        "id": f"msg_fake{seq:08d}",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": reply}],
        "model": model,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def _format_seconds(seconds: float) -> str:
    """Retry-After value: an integer when whole (as servers send it), else a decimal."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeServer:
    """Fake OpenAI + Anthropic API on 127.0.0.1, served from a background thread.

    All public methods and properties are safe to call from any thread while the server runs.
    The responder runs on the server's event-loop thread, one call at a time.
    """

    def __init__(
        self,
        latency: float = 0.0,
        responder: Responder | None = None,
        *,
        port: int = 0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        """Configure (but do not start) the server.

        ``latency`` seconds pass before every answer (changeable at runtime via ``.latency``);
        ``responder`` makes the reply text (default: ``answer_from_marker``); ``port`` 0 picks a
        free port; ``shutdown_timeout`` bounds how long ``stop()`` waits for in-flight handlers.
        """
        self.latency: float = latency
        #: seconds before an injected status fault is answered; None: ``latency`` like every answer.
        #: Real rate limiters answer 429 at once, without the generation time.
        self.fault_latency: float | None = None
        self.responder: Responder = responder or answer_from_marker
        #: extra headers on successful answers, from the request's 1-based arrival number
        #: (e.g. x-ratelimit-remaining-requests for pacing tests); settable at runtime
        self.success_headers: Callable[[int], dict[str, str]] | None = None
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout

        # One lock guards every piece of state shared between the test thread and the loop thread.
        self._lock = threading.Lock()
        self._seq = 0
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._peak_in_flight = 0
        self._next_faults: deque[Fault] = deque()
        self._match_rules: list[_MatchRule] = []
        self._always: Fault | None = None
        self._rate: _RateRule | None = None
        #: the batch endpoints' controls and counters
        self.batches = FakeBatches(self, request_text)

        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeServer:
        """Start serving in a background thread; returns self once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("FakeServer already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="fakeserver", daemon=True)
        thread.start()
        try:
            self._port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread. Idempotent.

        Requests still waiting (latency or ``hang``) are cut off: their connections are dropped.
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(
                timeout=self._shutdown_timeout + 10
            )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._port is None:
            raise RuntimeError("FakeServer not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What ``openai.OpenAI(base_url=...)`` takes (the SDK appends ``/chat/completions``)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """What ``anthropic.Anthropic(base_url=...)`` takes (the SDK appends ``/v1/messages``)."""
        return self.base_url

    # ---- fault injection ---------------------------------------------------------------------

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

    # ---- observation -------------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """Number of POSTs to either API endpoint, including ones that got injected errors."""
        with self._lock:
            return len(self._requests)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every recorded request in arrival order."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._requests]

    def count_for(self, substring: str, *, status: int | None = None) -> int:
        """How many requests had message text containing ``substring``.

        Counts faulted requests too; pass ``status=200`` to count only answered (paid) ones.
        """
        with self._lock:
            return sum(
                1
                for r in self._requests
                if substring in r.text and (status is None or r.status == status)
            )

    def status_counts(self) -> dict[int | None, int]:
        """Requests per HTTP status sent (None: no response was sent)."""
        with self._lock:
            return dict(Counter(r.status for r in self._requests))

    @property
    def in_flight(self) -> int:
        """Requests currently being handled."""
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most requests ever handled at once since start (or ``clear_requests``)."""
        with self._lock:
            return self._peak_in_flight

    def clear_requests(self) -> None:
        """Forget recorded requests and the in-flight peak. Request ids keep counting up."""
        with self._lock:
            self._requests.clear()
            self._peak_in_flight = self._in_flight

    # ---- inside the server thread ------------------------------------------------------------

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> int:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(OPENAI_PATH, self._handle)
        app.router.add_post(ANTHROPIC_PATH, self._handle)
        app.router.add_get(STATS_PATH, self._handle_stats)
        self.batches.install(app)
        # handler_cancellation: when a client times out and hangs up, its handler is cancelled
        # instead of sleeping on, as a real server would stop working on a dead connection.
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._requested_port, backlog=_LISTEN_BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, returning early with True if the server is stopping."""
        assert self._stopping is not None
        if seconds <= 0:
            return self._stopping.is_set()
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return False
        return True

    def _pick_fault_locked(self, text: str) -> Fault | None:
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

    def _set_status(self, record: RecordedRequest, status: int) -> None:
        with self._lock:
            record.status = status

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        problem = _validation_problem(request.path, parsed)
        text = request_text(body)

        with self._lock:
            self._seq += 1
            record = RecordedRequest(
                seq=self._seq,
                path=request.path,
                body=body,
                text=text,
                headers={k.lower(): v for k, v in request.headers.items()},
                received_at=time.monotonic(),
            )
            self._requests.append(record)
            # A malformed request is rejected before any rate limiter would see it.
            fault = None if problem else self._pick_fault_locked(text)
            record.fault = fault.kind if fault else None
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            return await self._answer(request, record, fault, problem)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _answer(
        self,
        request: web.Request,
        record: RecordedRequest,
        fault: Fault | None,
        problem: str | None,
    ) -> web.StreamResponse:
        wait = fault.hang_seconds if fault is not None and fault.kind == "hang" else self.latency
        if fault is not None and fault.kind == "status" and self.fault_latency is not None:
            wait = self.fault_latency
        if await self._wait(wait):
            return await self._drop_connection(request)
        if fault is not None and fault.kind == "reset":
            return await self._drop_connection(request)

        if problem is not None:
            return self._error_response(record, Fault(status=400, message=problem))
        if fault is not None and fault.kind == "status":
            return self._error_response(record, fault)
        if fault is not None and fault.kind == "garbage":
            self._set_status(record, 200)
            return web.Response(status=200, text=fault.message or "<html><body>502 upstream error</body></html>",
                                content_type="text/html", headers=self._id_headers(record))
        reply = self._respond(record.body)
        if isinstance(reply, Fault):
            return self._error_response(record, reply)
        return self._success_response(record, reply)

    def _respond(self, body: dict[str, Any]) -> str | Fault:
        """The responder's reply to ``body``, or the 500 that surfaces a responder bug to the test (not a hang)."""
        try:
            reply = self.responder(body)
            if not isinstance(reply, str):
                raise TypeError(f"responder returned {type(reply).__name__}, expected str")
        except Exception as exc:
            return Fault(status=500, message=f"fake responder failed: {exc!r}")
        return reply

    def answer_item(self, api: API, body: dict[str, Any], failure: ItemFailure | None) -> ItemAnswer:
        """Answer one item of a batch exactly as an online request with ``body`` would be answered.

        A malformed body gets the 400 an online request gets, ``failure`` its error, anything else
        the responder's reply. The item takes a request number (so its ids never repeat an online
        request's) but is not recorded: ``requests`` and ``request_count`` count online requests only.
        Runs on the server's event-loop thread, like every responder call.
        """
        path = _API_PATHS[api]
        with self._lock:
            self._seq += 1
            seq = self._seq
        problem = _validation_problem(path, body)
        outcome: str | Fault
        if problem is not None:
            outcome = Fault(status=400, message=problem)
        elif failure is not None:
            outcome = _fault_of(failure)
        else:
            outcome = self._respond(body)
        if isinstance(outcome, Fault):
            payload = _error_payload(path, outcome, str(body.get("model", "")), _request_id(seq))
            return ItemAnswer(outcome.status, payload, _request_id(seq))
        return ItemAnswer(200, reply_payload(path, body, outcome, seq), _request_id(seq))

    def error_body(self, api: API, failure: ItemFailure, request_id: str) -> dict[str, Any]:
        """The error body ``api`` answers ``failure`` with (for the batch endpoints' own errors)."""
        return _error_payload(_API_PATHS[api], _fault_of(failure), "", request_id)

    async def _drop_connection(self, request: web.Request) -> web.StreamResponse:
        """Abort the TCP connection so the client sees a reset, never an HTTP response."""
        if request.transport is not None:
            request.transport.abort()
        # The abort makes aiohttp cancel this handler (handler_cancellation=True); waiting here
        # keeps it from trying to write a response to the dead socket and logging about it.
        await asyncio.Future()
        raise AssertionError("unreachable")  # pragma: no cover

    def _success_response(self, record: RecordedRequest, reply: str) -> web.Response:
        payload = reply_payload(record.path, record.body, reply, record.seq)
        self._set_status(record, 200)
        headers = self._id_headers(record)
        if self.success_headers is not None:
            headers.update(self.success_headers(record.seq))
        return web.json_response(payload, headers=headers)

    def _error_response(self, record: RecordedRequest, fault: Fault) -> web.Response:
        payload = _error_payload(record.path, fault, str(record.body.get("model", "")), record.request_id)
        headers = self._id_headers(record)
        if fault.retry_after is not None:
            headers["Retry-After"] = _format_seconds(fault.retry_after)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(int(fault.retry_after_ms))
        self._set_status(record, fault.status)
        return web.json_response(payload, status=fault.status, headers=headers)

    @staticmethod
    def _id_headers(record: RecordedRequest) -> dict[str, str]:
        name = "x-request-id" if record.path == OPENAI_PATH else "request-id"
        return {name: record.request_id}

    async def _handle_stats(self, request: web.Request) -> web.Response:
        """Counters as JSON, for benchmarks that run the server in another process."""
        stats: dict[str, Any] = {
            "request_count": self.request_count,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "status_counts": {str(k): v for k, v in self.status_counts().items()},
        }
        if "contains" in request.query:
            stats["count_for"] = self.count_for(request.query["contains"])
        stats["batches"] = self.batches.stats()
        return web.json_response(stats)


def _fault_of(failure: ItemFailure) -> Fault:
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


# --------------------------------------------------------------------------------------------
# Command line: a standalone server for benchmarks
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM, after printing ``READY <base_url>`` on stdout."""
    parser = argparse.ArgumentParser(description="Loopback fake OpenAI/Anthropic API server.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="probability each request fails")
    parser.add_argument("--fail-status", type=int, default=500, help="HTTP status of --fail-rate failures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --fail-rate RNG")
    parser.add_argument("--fault-latency", type=float, default=None,
                        help="seconds before a --fail-rate failure is answered (default: --latency)")
    parser.add_argument("--fail-retry-after", type=float, default=None,
                        help="Retry-After seconds sent with --fail-rate failures (default: none)")
    args = parser.parse_args(argv)

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    server = FakeServer(latency=args.latency, port=args.port)
    server.fault_latency = args.fault_latency
    if args.fail_rate > 0:
        server.fail_rate(args.fail_rate, status=args.fail_status, seed=args.seed, retry_after=args.fail_retry_after)
    with server:
        print(f"READY {server.base_url}", flush=True)
        # Waiting with a timeout keeps the main thread responsive to signals.
        while not stop_requested.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
