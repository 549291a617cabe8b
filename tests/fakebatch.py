"""The batch endpoints of the loopback fake API: OpenAI Files + Batches and Anthropic Message Batches.

``FakeServer`` serves them beside the online endpoints and exposes the controller as
``server.batches``; the official SDKs reach them with the same ``base_url`` as the online calls
(``client.files`` / ``client.batches``, ``client.messages.batches``). Replies follow the wire
formats of ``openai.types.Batch`` / ``FileObject`` and ``anthropic.types.messages.MessageBatch``.

A batch moves on with time, one state every ``step_seconds`` (OpenAI: validating → in_progress →
finalizing → completed; Anthropic: in_progress → ended). Its items are answered by the server's
responder exactly as online requests with the same body would be (same reply, token estimate and
id scheme) but are not counted as online requests. Controls, all callable from any thread::

    server.batches.step_seconds = 0.01
    server.batches.hold()                       # no batch leaves in_progress until release()
    server.batches.fail_items("s00003", status=500)
    server.batches.expire(done_fraction=0.5)    # every open batch expires now, half of it done
    server.batches.hang_create = True           # the batch is created, its create call never answered
    assert server.batches.submitted("s00003") == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeVar

from aiohttp import web

__all__ = ["API", "BatchInfo", "CallKind", "FakeBatches", "ItemAnswer", "ItemFailure", "OnlineAPI"]

API = Literal["openai", "anthropic"]
CallKind = Literal["upload", "file", "create", "retrieve", "list", "cancel", "results"]
"""Endpoint kinds ``calls`` counts: ``file`` is a file's metadata, ``results`` a download of
results (an OpenAI file's content or Anthropic's results)."""

OPENAI_ENDPOINT = "/v1/chat/completions"
"""The one ``endpoint`` (and line ``url``) the fake's OpenAI batches accept: the online endpoint it serves."""
_OPENAI_ENDPOINTS = frozenset({"/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                               "/v1/moderations", "/v1/images/generations", "/v1/images/edits"})
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DAY = 24 * 3600
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
# How often open batches are moved on: fine enough for step_seconds of a few hundredths.
_TICK, _IDLE_TICK = 0.005, 0.05
_OPENAI_OPEN = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_EXPIRABLE = frozenset({"validating", "in_progress"})
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Values shared with the online fake
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemFailure:
    """An error answer: for an item (``fail_items``) or a batch endpoint's own refusal.

    ``message`` and ``error_type`` default to what the API says for ``status``; ``code`` is
    OpenAI's ``error.code``.
    """

    status: int = 400
    message: str | None = None
    error_type: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class ItemAnswer:
    """How the online API answered one batch item."""

    status: int
    body: dict[str, Any]
    request_id: str


class OnlineAPI(Protocol):
    """What the batch endpoints borrow from the online fake (``FakeServer``)."""

    @property
    def base_url(self) -> str: ...

    def answer_item(self, api: API, body: dict[str, Any], failure: ItemFailure | None) -> ItemAnswer: ...

    def error_body(self, api: API, failure: ItemFailure, request_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BatchInfo:
    """One created batch, as ``FakeBatches.created`` reports it."""

    id: str
    api: API
    custom_ids: tuple[str, ...]
    """Every custom id submitted in it, in order (an OpenAI file's unparseable lines have none)."""
    metadata: dict[str, str] | None
    status: str
    """OpenAI's ``status`` or Anthropic's ``processing_status``."""
    created_at: float
    """Unix time of creation."""
    outcomes: dict[str, int]
    """Items per outcome: ``pending``, ``succeeded``, ``errored``, ``expired``, ``canceled``."""


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class _Item:
    custom_id: str
    body: dict[str, Any]
    text: str
    line_id: str
    """OpenAI's ``batch_req_…`` id of the item's result line."""
    outcome: str = "pending"
    answer: ItemAnswer | None = None


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: float


@dataclass
class _Batch:
    id: str
    api: API
    items: list[_Item]
    custom_ids: list[str]
    metadata: dict[str, str] | None
    step: float
    items_per_second: float | None
    created_at: float
    status: str
    since: float
    """``time.monotonic()`` when ``status`` began."""
    times: dict[str, float] = field(default_factory=dict)
    """Unix time of each transition, by the API's field name (``in_progress_at``, ``ended_at``, …)."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    """OpenAI: the input file's problems, found while validating (the batch then fails)."""
    input_file_id: str | None = None
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    hold_key: str = ""
    answered: int = 0
    """Items are answered in order: those before this index are, none after it is."""

    def count(self, outcome: str) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)


@dataclass
class _ItemRule:
    substring: str
    failure: ItemFailure
    remaining: int | None


@dataclass(frozen=True)
class _CallFault:
    failure: ItemFailure
    retry_after: float | None


class _Refused(Exception):
    """A batch endpoint refuses the call with this error."""

    def __init__(self, status: int, message: str, error_type: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.failure = ItemFailure(status=status, message=message, error_type=error_type, code=code)


_Handler = Callable[[web.Request, API], Awaitable[web.StreamResponse | dict[str, Any]]]


# --------------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------------


class FakeBatches:
    """The batch endpoints' state, controls and counters (``server.batches``).

    Every public method is safe to call from any thread; items are answered on the server's
    event-loop thread. Settings are read when a batch is created (``step_seconds``,
    ``items_per_second``) or when a call arrives (limits, ``hang_*``).
    """

    def __init__(self, api: OnlineAPI, request_text: Callable[[dict[str, Any]], str]) -> None:
        """Serve batches whose items ``api`` answers; ``request_text`` is a body's message text."""
        self._api = api
        self._text_of = request_text
        #: seconds each state lasts (validating, in_progress, finalizing; cancelling)
        self.step_seconds: float = 0.05
        #: items done per second of in_progress (counts move); None: all at the end of in_progress
        self.items_per_second: float | None = None
        self.openai_max_requests: int = 50_000
        self.openai_max_bytes: int = 200_000_000
        self.anthropic_max_requests: int = 100_000
        self.anthropic_max_bytes: int = 256_000_000
        #: the batch is created and recorded, but the create call is never answered
        self.hang_create: bool = False
        #: downloads of results (OpenAI output/error file content, Anthropic results) never answer
        self.hang_results: bool = False
        #: retrieving a batch never answers
        self.hang_retrieve: bool = False

        self._lock = threading.RLock()
        self._ids = 0
        self._call_ids = 0
        self._batches: dict[str, _Batch] = {}
        self._files: dict[str, _File] = {}
        self._holds: list[str | None] = []
        self._item_rules: list[_ItemRule] = []
        self._call_faults: dict[str, deque[_CallFault]] = {}
        self._calls: Counter[tuple[str, str]] = Counter()
        self._submitted: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stopping: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None

    # ---- controls ----------------------------------------------------------------------------

    def hold(self, substring: str | None = None) -> None:
        """Keep batches from leaving in_progress until ``release``.

        With ``substring``, only batches whose id or one of whose custom ids contains it (now or
        created later). While held, items with ``items_per_second`` still complete; without it
        none does. Cancelling and ``expire`` still end a held batch.
        """
        with self._lock:
            self._holds.append(substring)

    def release(self, substring: str | None = None) -> None:
        """Lift the ``hold(substring)`` holds; with None, every hold. Held batches then move on."""
        with self._lock:
            self._holds = [] if substring is None else [h for h in self._holds if h != substring]

    def fail_items(self, substring: str, status: int = 400, *, message: str | None = None,
                   error_type: str | None = None, code: str | None = None, times: int | None = None) -> None:
        """Items whose custom id or message text contains ``substring`` are answered with an error.

        ``status`` 400 makes a permanent failure, 429/500/529 a transient one; ``times`` bounds how
        many items fail (None: all). OpenAI puts them in the error file, Anthropic reports
        ``errored``. Rules are tried in the order they were added.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"an item's error status must be 4xx or 5xx, got {status}")
        if times is not None and times < 0:
            raise ValueError(f"times must be >= 0 or None, got {times}")
        with self._lock:
            self._item_rules.append(_ItemRule(substring, ItemFailure(status, message, error_type, code), times))

    def fail_calls(self, kind: CallKind, status: int = 500, times: int = 1, *, retry_after: float | None = None,
                   message: str | None = None) -> None:
        """The next ``times`` calls of endpoint ``kind`` (either API) answer ``status`` and do nothing."""
        if not 400 <= status <= 599:
            raise ValueError(f"an injected error status must be 4xx or 5xx, got {status}")
        with self._lock:
            self._call_faults.setdefault(kind, deque()).extend(
                [_CallFault(ItemFailure(status, message), retry_after)] * times)

    def fail_create(self, status: int = 500, times: int = 1, *, retry_after: float | None = None) -> None:
        """The next ``times`` batch creates answer ``status`` and create nothing."""
        self.fail_calls("create", status, times, retry_after=retry_after)

    def expire(self, batch_id: str | None = None, done_fraction: float = 0.5) -> list[str]:
        """End ``batch_id`` (or every batch still validating or in progress) by expiry, now.

        Items already done stay done; then the first ``done_fraction`` of the items are done, the
        rest expire. Returns the ids of the batches that expired.
        """
        if not 0.0 <= done_fraction <= 1.0:
            raise ValueError(f"done_fraction must be in [0, 1], got {done_fraction}")
        return self._on_loop(lambda: self._expire(batch_id, done_fraction))

    # ---- counters ----------------------------------------------------------------------------

    def created(self) -> list[BatchInfo]:
        """Every batch created so far (including ones whose create call never got its answer), oldest first.

        States are as of the server's last look: it moves open batches on every few milliseconds.
        """
        with self._lock:
            return [BatchInfo(b.id, b.api, tuple(b.custom_ids), None if b.metadata is None else dict(b.metadata),
                              b.status, b.created_at, dict(Counter(item.outcome for item in b.items)))
                    for b in self._batches.values()]

    def submitted(self, custom_id: str) -> int:
        """How many times ``custom_id`` was submitted, over every batch of either API."""
        with self._lock:
            return self._submitted[custom_id]

    def total_items(self) -> int:
        """Requests submitted in batches, all batches together."""
        with self._lock:
            return sum(self._submitted.values())

    def calls(self, kind: CallKind | None = None, api: API | None = None) -> int:
        """Calls that reached the batch endpoints of ``kind`` (None: any) of ``api`` (None: both)."""
        with self._lock:
            return sum(n for (k, a), n in self._calls.items() if kind in (None, k) and api in (None, a))

    def stats(self) -> dict[str, Any]:
        """The counters as JSON-ready values (the server's ``/_fake/stats`` reports them)."""
        with self._lock:
            statuses = Counter(b.status for b in self._batches.values())
            calls = Counter[str]()
            for (kind, _), n in self._calls.items():
                calls[kind] += n
            return {
                "created": len(self._batches),
                "items": sum(self._submitted.values()),
                "statuses": dict(statuses),
                "calls": dict(calls),
                "max_submitted": max(self._submitted.values(), default=0),
                "resubmitted": sorted(c for c, n in self._submitted.items() if n > 1),
            }

    # ---- serving -----------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Add the batch routes to the server's ``app`` (before it starts)."""
        routes: list[tuple[str, str, API, CallKind, _Handler]] = [
            ("POST", "/v1/files", "openai", "upload", self._upload),
            ("GET", "/v1/files/{id}", "openai", "file", self._file),
            ("GET", "/v1/files/{id}/content", "openai", "results", self._file_content),
            ("POST", "/v1/batches", "openai", "create", self._openai_create),
            ("GET", "/v1/batches", "openai", "list", self._openai_list),
            ("GET", "/v1/batches/{id}", "openai", "retrieve", self._retrieve),
            ("POST", "/v1/batches/{id}/cancel", "openai", "cancel", self._cancel),
            ("POST", "/v1/messages/batches", "anthropic", "create", self._anthropic_create),
            ("GET", "/v1/messages/batches", "anthropic", "list", self._anthropic_list),
            ("GET", "/v1/messages/batches/{id}", "anthropic", "retrieve", self._retrieve),
            ("POST", "/v1/messages/batches/{id}/cancel", "anthropic", "cancel", self._cancel),
            ("GET", "/v1/messages/batches/{id}/results", "anthropic", "results", self._anthropic_results),
        ]
        for method, path, api, kind, handler in routes:
            app.router.add_route(method, path, self._endpoint(api, kind, handler))
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._shutdown)

    async def _start(self, app: web.Application) -> None:
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        self._stopping = asyncio.Event()
        self._ticker = asyncio.create_task(self._tick())

    async def _shutdown(self, app: web.Application) -> None:
        assert self._stopping is not None and self._ticker is not None
        self._stopping.set()  # hung calls drop their connections
        self._ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._ticker
        self._loop = self._loop_thread = None

    async def _tick(self) -> None:
        while True:
            try:
                self._advance_all()
            except Exception:  # the next call's own advance reports the same error to its client
                pass
            with self._lock:
                busy = any(self._is_open(b) for b in self._batches.values())
            await asyncio.sleep(_TICK if busy else _IDLE_TICK)

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the server's loop thread (where the responder runs) and return its result."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            return fn()

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=60)

    def _endpoint(self, api: API, kind: CallKind, handler: _Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            with self._lock:
                self._call_ids += 1
                request_id = f"req_batch_{self._call_ids}"
                self._calls[(kind, api)] += 1
                queue = self._call_faults.get(kind)
                injected = queue.popleft() if queue else None
            headers = {"x-request-id" if api == "openai" else "request-id": request_id}
            if injected is not None:
                if injected.retry_after is not None:
                    headers["Retry-After"] = f"{injected.retry_after:g}"
                return web.json_response(self._api.error_body(api, injected.failure, request_id),
                                         status=injected.failure.status, headers=headers)
            try:
                self._advance_all()
                answer = await handler(request, api)
            except _Refused as refused:
                return web.json_response(self._api.error_body(api, refused.failure, request_id),
                                         status=refused.failure.status, headers=headers)
            if isinstance(answer, dict):
                return web.json_response(answer, headers=headers)
            answer.headers.update(headers)
            return answer

        return handle

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        """Never answer: wait until the client hangs up (the handler is cancelled) or the server stops."""
        assert self._stopping is not None
        await self._stopping.wait()
        if request.transport is not None:
            request.transport.abort()
        await asyncio.Future()  # the abort cancels this handler
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- OpenAI ------------------------------------------------------------------------------

    async def _upload(self, request: web.Request, api: API) -> dict[str, Any]:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            raise _Refused(400, "Missing required parameter: 'file'.", code="missing_required_parameter")
        if purpose != "batch":
            raise _Refused(400, f"Invalid value for 'purpose': {purpose!r}. The fake server takes only 'batch'.",
                           code="invalid_value")
        content = upload.file.read()
        with self._lock:
            stored = self._new_file(upload.filename or "upload.jsonl", "batch", content)
            return _file_json(stored)

    async def _file(self, request: web.Request, api: API) -> dict[str, Any]:
        with self._lock:
            return _file_json(self._find_file(request.match_info["id"]))

    async def _file_content(self, request: web.Request, api: API) -> web.StreamResponse:
        with self._lock:
            stored = self._find_file(request.match_info["id"])
        if stored.purpose == "batch_output" and self.hang_results:
            return await self._hang(request)
        return web.Response(body=stored.content, content_type="application/octet-stream")

    async def _openai_create(self, request: web.Request, api: API) -> dict[str, Any] | web.StreamResponse:
        body = await _json_object(request)
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        if body.get("completion_window") != "24h":
            raise _Refused(400, "Invalid value for 'completion_window': only '24h' is supported.",
                           code="invalid_value")
        if endpoint not in _OPENAI_ENDPOINTS:
            raise _Refused(400, f"Invalid value for 'endpoint': {endpoint!r}.", code="invalid_value")
        if endpoint != OPENAI_ENDPOINT:
            raise _Refused(400, f"The fake server runs only {OPENAI_ENDPOINT} batches, not {endpoint}.",
                           code="invalid_value")
        metadata = _checked_metadata(body.get("metadata"))
        if not isinstance(file_id, str):
            raise _Refused(400, "Missing required parameter: 'input_file_id'.", code="missing_required_parameter")
        with self._lock:
            stored = self._find_file(file_id)
            if stored.purpose != "batch":
                raise _Refused(400, f"File {stored.id} was not uploaded with purpose 'batch'.", code="invalid_value")
            batch = self._new_batch("openai", "validating", metadata, *self._openai_lines(stored.content))
            batch.input_file_id = stored.id
            reply = self._openai_json(batch)
        if self.hang_create:
            return await self._hang(request)
        return reply

    def _openai_lines(self, content: bytes) -> tuple[list[_Item], list[str], list[dict[str, Any]]]:
        """The items of an input file, every custom id it submits, and the problems validating finds."""
        items: list[_Item] = []
        custom_ids: list[str] = []
        seen: set[str] = set()
        errors: list[dict[str, Any]] = []
        model: str | None = None
        lines = [(n, raw) for n, raw in enumerate(content.split(b"\n"), 1) if raw.strip()]
        for number, raw in lines:
            try:
                line = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                line = None
            if not isinstance(line, dict):
                errors.append(_line_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
                continue
            custom_id, body = line.get("custom_id"), line.get("body")
            if not isinstance(custom_id, str) or not custom_id:
                errors.append(_line_error("missing_required_parameter", "Missing required parameter: 'custom_id'.",
                                          number, "custom_id"))
                continue
            problem: tuple[str, str, str] | None = None
            if custom_id in seen:
                problem = ("duplicate_custom_id", "The custom_id for this request is a duplicate of another "
                           "request. The custom_id parameter must be unique for each request in a batch.", "custom_id")
            elif line.get("method") != "POST":
                problem = ("invalid_value", "The method must be 'POST'.", "method")
            elif line.get("url") != OPENAI_ENDPOINT:
                problem = ("invalid_url", "The URL provided for this request does not match the batch endpoint.",
                           "url")
            elif not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
                problem = ("missing_required_parameter", "Missing required parameter: 'body.model'.", "body.model")
            elif model is not None and body["model"] != model:
                problem = ("mismatched_model", f"The model '{body['model']}' of this request differs from the model "
                           f"'{model}' of the batch's other requests; a batch uses one model.", "body.model")
            custom_ids.append(custom_id)
            seen.add(custom_id)
            if problem is not None:
                errors.append(_line_error(*problem[:2], number, problem[2]))
                continue
            assert isinstance(body, dict)
            model = body["model"]
            items.append(self._new_item(custom_id, body))
        if not lines:
            errors.append(_line_error("empty_file", "The input file has no requests.", None))
        if len(lines) > self.openai_max_requests:
            errors.append(_line_error("too_many_requests", f"The input file has {len(lines)} requests; a batch "
                                      f"holds at most {self.openai_max_requests}.", None))
        if len(content) > self.openai_max_bytes:
            errors.append(_line_error("file_too_large", f"The input file has {len(content)} bytes; a batch "
                                      f"input file holds at most {self.openai_max_bytes}.", None))
        return items, custom_ids, errors

    async def _openai_list(self, request: web.Request, api: API) -> dict[str, Any]:
        limit = _int_query(request, "limit", 20, 100)
        after = request.query.get("after")
        with self._lock:
            batches = self._newest_first("openai")
            start = self._position(batches, after) + 1 if after else 0
            page = batches[start:start + limit]
            return {"object": "list", "data": [self._openai_json(b) for b in page],
                    "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                    "has_more": start + limit < len(batches)}

    def _openai_json(self, b: _Batch) -> dict[str, Any]:
        """The batch as ``openai.types.Batch``."""
        counted = b.status not in ("validating", "failed")
        stamp = {name: _int_time(b.times.get(name)) for name in (
            "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
            "cancelled_at")}
        return {
            "id": b.id, "object": "batch", "endpoint": OPENAI_ENDPOINT, "model": b.model,
            "errors": {"object": "list", "data": b.errors} if b.status == "failed" else None,
            "input_file_id": b.input_file_id, "completion_window": "24h", "status": b.status,
            "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
            "created_at": int(b.created_at), "expires_at": int(b.created_at) + _DAY, **stamp,
            "request_counts": {"total": len(b.items) if counted else 0, "completed": b.count("succeeded"),
                               "failed": b.count("errored")},
            "metadata": b.metadata, "usage": _openai_usage(b) if b.status not in _OPENAI_OPEN else None,
        }

    def _openai_files(self, b: _Batch) -> None:
        """Write the output and error files of a batch that ended (each only if it has lines)."""
        output: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for item in b.items:
            line: dict[str, Any] = {"id": item.line_id, "custom_id": item.custom_id, "response": None, "error": None}
            if item.answer is not None:
                line["response"] = {"status_code": item.answer.status, "request_id": item.answer.request_id,
                                    "body": item.answer.body}
                (output if item.answer.status == 200 else failed).append(line)
            elif item.outcome in ("expired", "canceled"):
                code = "batch_expired" if item.outcome == "expired" else "batch_cancelled"
                reason = ("the batch expired before this request was run" if item.outcome == "expired"
                          else "the batch was cancelled before this request was run")
                line["error"] = {"code": code, "message": f"This request could not be executed: {reason}."}
                failed.append(line)
        if output:
            b.output_file_id = self._new_file(f"{b.id}_output.jsonl", "batch_output", _jsonl(output)).id
        if failed:
            b.error_file_id = self._new_file(f"{b.id}_error.jsonl", "batch_output", _jsonl(failed)).id

    # ---- Anthropic ---------------------------------------------------------------------------

    async def _anthropic_create(self, request: web.Request, api: API) -> dict[str, Any] | web.StreamResponse:
        if (request.content_length or 0) > self.anthropic_max_bytes:
            raise _Refused(413, f"A Message Batch request holds at most {self.anthropic_max_bytes} bytes.",
                           error_type="request_too_large")
        body = await _json_object(request)
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise _Refused(400, "requests: Field required (a non-empty list)")
        if len(requests) > self.anthropic_max_requests:
            raise _Refused(400, f"requests: {len(requests)} requests; a Message Batch holds at most "
                           f"{self.anthropic_max_requests}.")
        seen: set[str] = set()
        for i, entry in enumerate(requests):
            _check_anthropic_request(i, entry, seen)
        with self._lock:
            items = [self._new_item(entry["custom_id"], entry["params"]) for entry in requests]
            batch = self._new_batch("anthropic", "in_progress", None, items, [item.custom_id for item in items], [])
            reply = self._anthropic_json(batch)
        if self.hang_create:
            return await self._hang(request)
        return reply

    async def _anthropic_list(self, request: web.Request, api: API) -> dict[str, Any]:
        limit = _int_query(request, "limit", 20, 1000)
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if after and before:
            raise _Refused(400, "Give at most one of after_id and before_id.")
        with self._lock:
            batches = self._newest_first("anthropic")
            if before:
                end = self._position(batches, before)
                start = max(0, end - limit)
                has_more = start > 0
            else:
                start = self._position(batches, after) + 1 if after else 0
                end = start + limit
                has_more = end < len(batches)
            page = batches[start:end]
            return {"data": [self._anthropic_json(b) for b in page], "has_more": has_more,
                    "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None}

    async def _anthropic_results(self, request: web.Request, api: API) -> web.StreamResponse:
        with self._lock:
            batch = self._find_batch(request.match_info["id"], "anthropic")
            if batch.status != "ended":
                raise _Refused(400, f"Message Batch {batch.id} has not ended yet; its results are available "
                               "once processing_status is 'ended'.")
            lines = [{"custom_id": item.custom_id, "result": _anthropic_result(item)} for item in batch.items]
        if self.hang_results:
            return await self._hang(request)
        return web.Response(body=_jsonl(lines), content_type="application/binary")

    def _anthropic_json(self, b: _Batch) -> dict[str, Any]:
        """The batch as ``anthropic.types.messages.MessageBatch``."""
        ended = b.status == "ended"
        counts = {outcome: b.count(outcome) if ended else 0
                  for outcome in ("succeeded", "errored", "canceled", "expired")}
        return {
            "id": b.id, "type": "message_batch", "processing_status": b.status,
            "request_counts": {"processing": 0 if ended else len(b.items), **counts},
            "created_at": _rfc3339(b.created_at), "expires_at": _rfc3339(b.created_at + _DAY),
            "ended_at": _rfc3339(b.times.get("ended_at")), "archived_at": None,
            "cancel_initiated_at": _rfc3339(b.times.get("cancel_initiated_at")),
            "results_url": f"{self._api.base_url}/v1/messages/batches/{b.id}/results" if ended else None,
        }

    # ---- both APIs ---------------------------------------------------------------------------

    async def _retrieve(self, request: web.Request, api: API) -> dict[str, Any] | web.StreamResponse:
        with self._lock:
            batch = self._find_batch(request.match_info["id"], api)
            reply = self._json(batch)
        if self.hang_retrieve:
            return await self._hang(request)
        return reply

    async def _cancel(self, request: web.Request, api: API) -> dict[str, Any]:
        with self._lock:
            batch = self._find_batch(request.match_info["id"], api)
            if batch.status in ("validating", "in_progress"):
                self._move(batch, "cancelling" if api == "openai" else "canceling",
                           "cancelling_at" if api == "openai" else "cancel_initiated_at", time.monotonic())
            elif batch.status not in ("cancelling", "canceling", "cancelled"):
                raise _Refused(409, f"Cannot cancel a batch whose status is {batch.status!r}.")
            return self._json(batch)

    def _json(self, b: _Batch) -> dict[str, Any]:
        return self._openai_json(b) if b.api == "openai" else self._anthropic_json(b)

    # ---- the state machine (on the loop thread) ----------------------------------------------

    def _advance_all(self) -> None:
        now = time.monotonic()
        with self._lock:
            for batch in self._batches.values():
                if self._is_open(batch):
                    self._advance(batch, now)

    def _advance(self, b: _Batch, now: float) -> None:
        """Move ``b`` through every state whose time has come."""
        while True:
            due = now >= b.since + b.step
            if b.status == "validating" and due:
                if b.errors:
                    b.items = []
                    self._move(b, "failed", "failed_at", now)
                else:
                    b.model = b.items[0].body["model"]
                    self._move(b, "in_progress", "in_progress_at", now)
            elif b.status == "in_progress":
                scheduled = len(b.items)
                if b.items_per_second is not None:
                    scheduled = math.floor((now - b.since) * b.items_per_second)
                    self._answer_first(b, scheduled)
                if not due or scheduled < len(b.items) or self._held(b):
                    return
                self._answer_first(b, len(b.items))
                if b.api == "openai":
                    self._move(b, "finalizing", "finalizing_at", now)
                else:
                    self._end(b, "ended", "ended_at", now, "")
            elif b.status == "finalizing" and due:
                self._end(b, "completed", "completed_at", now, "")
            elif b.status in ("cancelling", "canceling") and due:
                self._end(b, "cancelled" if b.api == "openai" else "ended",
                          "cancelled_at" if b.api == "openai" else "ended_at", now, "canceled")
            else:
                return

    def _expire(self, batch_id: str | None, done_fraction: float) -> list[str]:
        now = time.monotonic()
        with self._lock:
            if batch_id is not None:
                batch = self._batches.get(batch_id)
                if batch is None or batch.status not in _EXPIRABLE:
                    raise ValueError(f"no batch {batch_id!r} that is validating or in progress")
                targets = [batch]
            else:
                targets = [b for b in self._batches.values() if b.status in _EXPIRABLE]
            for b in targets:
                if b.status == "in_progress":
                    self._answer_first(b, math.floor(done_fraction * len(b.items)))
                if b.api == "openai":
                    self._end(b, "expired", "expired_at", now, "expired")
                else:
                    self._end(b, "ended", "ended_at", now, "expired")
            return [b.id for b in targets]

    def _answer_first(self, b: _Batch, n: int) -> None:
        """Answer every pending item among the first ``n``."""
        while b.answered < min(n, len(b.items)):
            item = b.items[b.answered]
            item.answer = self._api.answer_item(b.api, item.body, self._item_failure(item))
            item.outcome = "succeeded" if item.answer.status == 200 else "errored"
            b.answered += 1

    def _end(self, b: _Batch, status: str, stamp: str, now: float, unfinished: str) -> None:
        """End ``b``: its pending items become ``unfinished`` (expired/canceled); OpenAI writes its files."""
        for item in b.items[b.answered:]:
            item.outcome = unfinished
        self._move(b, status, stamp, now)
        if b.api == "openai":
            self._openai_files(b)

    @staticmethod
    def _move(b: _Batch, status: str, stamp: str, now: float) -> None:
        b.status, b.since = status, now
        b.times[stamp] = time.time()

    def _held(self, b: _Batch) -> bool:
        return any(h is None or h in b.hold_key for h in self._holds)

    def _item_failure(self, item: _Item) -> ItemFailure | None:
        for rule in self._item_rules:
            if rule.remaining != 0 and (rule.substring in item.custom_id or rule.substring in item.text):
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule.failure
        return None

    @staticmethod
    def _is_open(b: _Batch) -> bool:
        return b.status in _OPENAI_OPEN if b.api == "openai" else b.status != "ended"

    # ---- records (under the lock) --------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:08d}"

    def _new_file(self, filename: str, purpose: str, content: bytes) -> _File:
        stored = _File(self._new_id("file-fake"), filename, purpose, content, time.time())
        self._files[stored.id] = stored
        return stored

    def _new_item(self, custom_id: str, body: dict[str, Any]) -> _Item:
        return _Item(custom_id, body, self._text_of(body), self._new_id("batch_req_fake"))

    def _new_batch(self, api: API, status: str, metadata: dict[str, str] | None, items: list[_Item],
                   custom_ids: list[str], errors: list[dict[str, Any]]) -> _Batch:
        batch = _Batch(self._new_id("batch_fake" if api == "openai" else "msgbatch_fake"), api, items, custom_ids,
                       metadata, self.step_seconds, self.items_per_second, time.time(), status, time.monotonic(),
                       errors=errors)
        batch.hold_key = "\n".join([batch.id, *custom_ids])
        self._batches[batch.id] = batch
        self._submitted.update(custom_ids)
        return batch

    def _find_file(self, file_id: str) -> _File:
        if file_id not in self._files:
            raise _Refused(404, f"No such File object: {file_id}")
        return self._files[file_id]

    def _find_batch(self, batch_id: str, api: API) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.api != api:
            raise _Refused(404, f"No batch found with id '{batch_id}'.", error_type="not_found_error")
        return batch

    def _newest_first(self, api: API) -> list[_Batch]:
        return [b for b in reversed(self._batches.values()) if b.api == api]

    @staticmethod
    def _position(batches: list[_Batch], batch_id: str | None) -> int:
        for i, b in enumerate(batches):
            if b.id == batch_id:
                return i
        raise _Refused(400, f"No batch {batch_id!r} to page from.")


# --------------------------------------------------------------------------------------------
# Wire formats
# --------------------------------------------------------------------------------------------


def _file_json(stored: _File) -> dict[str, Any]:
    """The file as ``openai.types.FileObject``."""
    return {"id": stored.id, "object": "file", "bytes": len(stored.content), "created_at": int(stored.created_at),
            "filename": stored.filename, "purpose": stored.purpose, "status": "processed", "status_details": None,
            "expires_at": None}


def _openai_usage(b: _Batch) -> dict[str, Any]:
    usages = [item.answer.body["usage"] for item in b.items if item.answer is not None and item.answer.status == 200]
    prompt, completion = sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


def _anthropic_result(item: _Item) -> dict[str, Any]:
    if item.answer is None:
        return {"type": item.outcome}
    if item.answer.status == 200:
        return {"type": "succeeded", "message": item.answer.body}
    # A result's error carries no request id: the batch item was never a request of its own.
    return {"type": "errored", "error": {k: v for k, v in item.answer.body.items() if k != "request_id"}}


def _check_anthropic_request(i: int, entry: Any, seen: set[str]) -> None:
    """Refuse a Message Batch whose request ``i`` the real API would refuse (400)."""
    if not isinstance(entry, dict):
        raise _Refused(400, f"requests.{i}: Input should be an object")
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
        raise _Refused(400, f"requests.{i}.custom_id: String should match pattern '{_CUSTOM_ID.pattern}'")
    if custom_id in seen:
        raise _Refused(400, f"requests.{i}.custom_id: Duplicate custom_id '{custom_id}'; each custom_id must be "
                       "unique within a Message Batch.")
    seen.add(custom_id)
    params = entry.get("params")
    if not isinstance(params, dict):
        raise _Refused(400, f"requests.{i}.params: Field required")
    if not isinstance(params.get("model"), str) or not params["model"]:
        raise _Refused(400, f"requests.{i}.params.model: Field required")
    if not isinstance(params.get("max_tokens"), int):
        raise _Refused(400, f"requests.{i}.params.max_tokens: Field required")
    if not isinstance(params.get("messages"), list) or not params["messages"]:
        raise _Refused(400, f"requests.{i}.params.messages: Field required (a non-empty list)")


def _checked_metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's metadata, refused (400) beyond 16 pairs, 64-character keys or 512-character values."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > _METADATA_PAIRS:
        raise _Refused(400, f"Invalid 'metadata': at most {_METADATA_PAIRS} key-value pairs.", code="invalid_value")
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY:
            raise _Refused(400, f"Invalid 'metadata': key {key!r} is longer than {_METADATA_KEY} characters.",
                           code="invalid_value")
        if not isinstance(value, str) or len(value) > _METADATA_VALUE:
            raise _Refused(400, f"Invalid 'metadata': the value of {key!r} must be a string of at most "
                           f"{_METADATA_VALUE} characters.", code="invalid_value")
    return dict(metadata)


def _line_error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "line": line, "param": param}


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise _Refused(400, "We could not parse the JSON body of your request: expected a JSON object.")
    return body


def _int_query(request: web.Request, name: str, default: int, most: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise _Refused(400, f"Invalid '{name}': an integer from 1 to {most}.")
    return int(raw)


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _int_time(t: float | None) -> int | None:
    return None if t is None else int(t)


def _rfc3339(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
