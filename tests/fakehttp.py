"""``FakeServer``: the loopback fake's online endpoints, the requests it recorded, and its counters.

Each POST to an API endpoint is recorded, checked against the fault rules (fakefaults.py) and
answered in its API's wire format (fakewire.py); the batch endpoints (fakebatch.py) are served
beside them and their items answered through ``answer_item``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web
from fakebatch import API, FakeBatches, ItemAnswer, ItemFailure
from fakefaults import Fault, FaultInjection, FaultKind, error_payload, fault_of
from fakeloop import AppThread
from fakewire import (
    ANTHROPIC_PATH,
    API_PATHS,
    OPENAI_PATH,
    Responder,
    answer_from_marker,
    reply_payload,
    request_text,
    validation_problem,
)

STATS_PATH = "/_fake/stats"


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


def _format_seconds(seconds: float) -> str:
    """Retry-After value: an integer when whole (as servers send it), else a decimal."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class FakeServer(FaultInjection):
    """Fake OpenAI + Anthropic API on 127.0.0.1, served from a background thread.

    All public methods and properties are safe to call from any thread while the server runs.
    The responder runs on the server's event-loop thread, one call at a time. The fault rules
    (``fail_next``, ``fail_when``, ``fail_always``, ``fail_rate``, ``clear_faults``) come from
    ``FaultInjection``.
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

        # One lock (the fault rules' ``_lock``) guards every piece of state shared between the
        # test thread and the loop thread.
        super().__init__()
        self._seq = 0
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._peak_in_flight = 0
        #: the batch endpoints' controls and counters
        self.batches = FakeBatches(self, request_text)
        self._site = AppThread("fakeserver", port, shutdown_timeout)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeServer:
        """Start serving in a background thread; returns self once the port is bound."""
        if self._site.running:
            raise RuntimeError("FakeServer already started")
        self._site.start(self._add_routes)
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread. Idempotent.

        Requests still waiting (latency or ``hang``) are cut off: their connections are dropped.
        """
        self._site.stop()

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
        if self._site.port is None:
            raise RuntimeError("FakeServer not started")
        return self._site.port

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

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post(OPENAI_PATH, self._handle)
        app.router.add_post(ANTHROPIC_PATH, self._handle)
        app.router.add_get(STATS_PATH, self._handle_stats)
        self.batches.install(app)

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
        problem = validation_problem(request.path, parsed)
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
        if await self._site.wait(wait):
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
        path = API_PATHS[api]
        with self._lock:
            self._seq += 1
            seq = self._seq
        problem = validation_problem(path, body)
        outcome: str | Fault
        if problem is not None:
            outcome = Fault(status=400, message=problem)
        elif failure is not None:
            outcome = fault_of(failure)
        else:
            outcome = self._respond(body)
        if isinstance(outcome, Fault):
            payload = error_payload(path, outcome, str(body.get("model", "")), _request_id(seq))
            return ItemAnswer(outcome.status, payload, _request_id(seq))
        return ItemAnswer(200, reply_payload(path, body, outcome, seq), _request_id(seq))

    def error_body(self, api: API, failure: ItemFailure, request_id: str) -> dict[str, Any]:
        """The error body ``api`` answers ``failure`` with (for the batch endpoints' own errors)."""
        return error_payload(API_PATHS[api], fault_of(failure), "", request_id)

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
        payload = error_payload(record.path, fault, str(record.body.get("model", "")), record.request_id)
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

