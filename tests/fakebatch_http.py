"""The aiohttp handlers of the fake batch endpoints: OpenAI Files + Batches, Anthropic Message Batches.

``BatchEndpoints`` adds the routes to the server's application, counts every call, answers the
injected call faults and hangs, and moves open batches on with a ticker on the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from fakebatch_model import API, Batch, CallFault, CallKind, OnlineAPI, Refused
from fakebatch_state import BatchState
from fakebatch_wire import (
    anthropic_batch_json,
    anthropic_result,
    checked_anthropic_requests,
    checked_openai_create,
    file_json,
    int_query,
    json_object,
    jsonl,
    openai_batch_json,
    openai_lines,
)

# How often open batches are moved on: fine enough for step_seconds of a few hundredths.
_TICK, _IDLE_TICK = 0.005, 0.05
_T = TypeVar("_T")

_Handler = Callable[[web.Request, API], Awaitable[web.StreamResponse | dict[str, Any]]]


class BatchEndpoints(BatchState):
    """The batch endpoints of both APIs, served on the online fake's application and event loop."""

    def __init__(self, api: OnlineAPI, request_text: Callable[[dict[str, Any]], str]) -> None:
        """Serve batches whose items ``api`` answers; ``request_text`` is a body's message text."""
        super().__init__(api, request_text)
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

        self._call_ids = 0
        self._call_faults: dict[str, deque[CallFault]] = {}
        self._calls: Counter[tuple[str, str]] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stopping: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None

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
            except Refused as refused:
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
            raise Refused(400, "Missing required parameter: 'file'.", code="missing_required_parameter")
        if purpose != "batch":
            raise Refused(400, f"Invalid value for 'purpose': {purpose!r}. The fake server takes only 'batch'.",
                          code="invalid_value")
        content = upload.file.read()
        with self._lock:
            stored = self._new_file(upload.filename or "upload.jsonl", "batch", content)
            return file_json(stored)

    async def _file(self, request: web.Request, api: API) -> dict[str, Any]:
        with self._lock:
            return file_json(self._find_file(request.match_info["id"]))

    async def _file_content(self, request: web.Request, api: API) -> web.StreamResponse:
        with self._lock:
            stored = self._find_file(request.match_info["id"])
        if stored.purpose == "batch_output" and self.hang_results:
            return await self._hang(request)
        return web.Response(body=stored.content, content_type="application/octet-stream")

    async def _openai_create(self, request: web.Request, api: API) -> dict[str, Any] | web.StreamResponse:
        file_id, metadata = checked_openai_create(await json_object(request))
        with self._lock:
            stored = self._find_file(file_id)
            if stored.purpose != "batch":
                raise Refused(400, f"File {stored.id} was not uploaded with purpose 'batch'.", code="invalid_value")
            lines = openai_lines(stored.content, self._new_item, self.openai_max_requests, self.openai_max_bytes)
            batch = self._new_batch("openai", "validating", metadata, *lines)
            batch.input_file_id = stored.id
            reply = openai_batch_json(batch)
        if self.hang_create:
            return await self._hang(request)
        return reply

    async def _openai_list(self, request: web.Request, api: API) -> dict[str, Any]:
        limit = int_query(request, "limit", 20, 100)
        after = request.query.get("after")
        with self._lock:
            batches = self._newest_first("openai")
            start = self._position(batches, after) + 1 if after else 0
            page = batches[start:start + limit]
            return {"object": "list", "data": [openai_batch_json(b) for b in page],
                    "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                    "has_more": start + limit < len(batches)}

    # ---- Anthropic ---------------------------------------------------------------------------

    async def _anthropic_create(self, request: web.Request, api: API) -> dict[str, Any] | web.StreamResponse:
        if (request.content_length or 0) > self.anthropic_max_bytes:
            raise Refused(413, f"A Message Batch request holds at most {self.anthropic_max_bytes} bytes.",
                          error_type="request_too_large")
        requests = checked_anthropic_requests(await json_object(request), self.anthropic_max_requests)
        with self._lock:
            items = [self._new_item(entry["custom_id"], entry["params"]) for entry in requests]
            batch = self._new_batch("anthropic", "in_progress", None, items, [item.custom_id for item in items], [])
            reply = anthropic_batch_json(batch, self._api.base_url)
        if self.hang_create:
            return await self._hang(request)
        return reply

    async def _anthropic_list(self, request: web.Request, api: API) -> dict[str, Any]:
        limit = int_query(request, "limit", 20, 1000)
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if after and before:
            raise Refused(400, "Give at most one of after_id and before_id.")
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
            return {"data": [anthropic_batch_json(b, self._api.base_url) for b in page], "has_more": has_more,
                    "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None}

    async def _anthropic_results(self, request: web.Request, api: API) -> web.StreamResponse:
        with self._lock:
            batch = self._find_batch(request.match_info["id"], "anthropic")
            if batch.status != "ended":
                raise Refused(400, f"Message Batch {batch.id} has not ended yet; its results are available "
                              "once processing_status is 'ended'.")
            lines = [{"custom_id": item.custom_id, "result": anthropic_result(item)} for item in batch.items]
        if self.hang_results:
            return await self._hang(request)
        return web.Response(body=jsonl(lines), content_type="application/binary")

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
                raise Refused(409, f"Cannot cancel a batch whose status is {batch.status!r}.")
            return self._json(batch)

    def _json(self, b: Batch) -> dict[str, Any]:
        return openai_batch_json(b) if b.api == "openai" else anthropic_batch_json(b, self._api.base_url)
