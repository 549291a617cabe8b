"""Anthropic Messages through ``anthropic.AsyncAnthropic``, online and through Message Batches."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from evalledger.errors import UsageError
from evalledger.providers.base import (
    ChatRequest,
    ChatResponse,
    SDKProvider,
    as_count,
    as_text,
    post_json,
    ratelimit_headers,
)
from evalledger.providers.batch import (
    BatchAPI,
    BatchCounts,
    BatchInfo,
    BatchItem,
    BatchLimits,
    BatchResult,
    check_batch,
    created_since,
    field_of,
    item_error,
    jsonl_objects,
    unix_seconds,
)

#: Batches a page when listing.
LIST_PAGE = 100


class AnthropicProvider(SDKProvider, BatchAPI):
    """``anthropic/<model>``. Honours ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``; ``max_retries=0``.
    The client is built when requests are about to be sent (see :class:`SDKProvider`); the key is checked here."""

    #: 100,000 requests and 256 MB a batch (counted in decimal megabytes, to stay inside).
    batch_limits = BatchLimits(max_requests=100_000, max_bytes=256_000_000)

    def __init__(
        self,
        model: str,
        api_model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        concurrency: int = 8,
    ) -> None:
        self.model = model
        self.api_model = api_model
        self.concurrency = concurrency
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key and not os.environ.get("ANTHROPIC_AUTH_TOKEN"):
            raise UsageError(f"--model {model}: ANTHROPIC_API_KEY is not set. Export it and run again.")
        base = base_url or os.environ.get("ANTHROPIC_BASE_URL")
        self.base_url = base
        self._client_options: dict[str, Any] = {"max_retries": 0, "timeout": timeout}
        if key:
            self._client_options["api_key"] = key
        if base:
            self._client_options["base_url"] = base

    @property
    def _sdk(self) -> Any:
        import anthropic  # the SDK (~0.5 s to import): only when requests are to be sent

        return anthropic

    def build_client(self, sdk: Any, http_client: Any | None) -> Any:
        extra: dict[str, Any] = {"http_client": http_client} if http_client is not None else {}
        return sdk.AsyncAnthropic(**self._client_options, **extra)

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The Messages body for ``request``: what an online call posts and a batch request's ``params``."""
        # The Messages API takes system prompts apart from the turns.
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        turns = [m for m in request.messages if m["role"] != "system"]
        body: dict[str, Any] = {
            "model": self.api_model,
            "messages": turns,
            "max_tokens": request.max_tokens,
        }
        # No temperature/top_p: API version 2026-10-21 rejects them (HTTP 400, even at defaults)
        # and SDK 2.x no longer takes them. RunConfig refuses non-default values for anthropic/.
        if system:
            body["system"] = system
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        data, raw = await post_json(self._client, self._sdk, "/v1/messages", self.request_body(request))
        return message_response(data, raw.headers.get("request-id"), ratelimit_headers(raw.headers))

    # ---- Message Batches ----------------------------------------------------------------------

    def batch_item_bytes(self, item: BatchItem) -> int:
        # its entry in the create body's "requests" list, and the comma after it
        return len(orjson.dumps(batch_request(item.custom_id, self.request_body(item.request)))) + 1

    async def create_batch(self, items: Sequence[BatchItem], metadata: Mapping[str, str]) -> BatchInfo:
        """One ``messages.batches.create``; ``metadata`` is not sent (Message Batches keep none)."""
        requests = [batch_request(item.custom_id, self.request_body(item.request)) for item in items]
        check_batch(items, (len(orjson.dumps(r)) + 1 for r in requests), self.batch_limits,
                    overhead=len(b'{"requests":[]}'))
        return batch_info(await self._client.messages.batches.create(requests=requests))

    async def retrieve_batch(self, batch_id: str) -> BatchInfo:
        return batch_info(await self._client.messages.batches.retrieve(batch_id))

    async def list_batches(self, created_after: float) -> list[BatchInfo]:
        return await created_since(self._client.messages.batches.list(limit=LIST_PAGE), batch_info, created_after)

    async def batch_results(self, info: BatchInfo) -> list[BatchResult]:
        lines = await self._result_lines(info.id)
        if lines is None:
            raise ValueError(f"batch {info.id} has not ended: its results are read once it has")
        return [r for r in map(batch_line_result, lines) if r is not None]

    async def batch_custom_ids(self, info: BatchInfo) -> frozenset[str] | None:
        """The custom ids of the batch's results: known only once it has ended (None before)."""
        lines = await self._result_lines(info.id)
        if lines is None:
            return None
        return frozenset(cid for cid in (as_text(line.get("custom_id")) for line in lines) if cid is not None)

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        return batch_info(await self._client.messages.batches.cancel(batch_id))

    async def _result_lines(self, batch_id: str) -> list[dict[str, Any]] | None:
        """The lines of the batch's results file (read from its ``results_url``, as the SDK's
        ``batches.results`` does, but as JSON objects for the same parser as an online reply);
        None while the batch has not ended."""
        import httpx2  # the SDK's HTTP layer, as in post_json

        batch = await self._client.messages.batches.retrieve(batch_id)
        url = field_of(batch, "results_url")
        if as_text(field_of(batch, "processing_status")) != "ended" or not isinstance(url, str) or not url:
            return None
        raw = await self._client.get(url, cast_to=httpx2.Response,
                                     options={"headers": {"Accept": "application/binary"}})
        return jsonl_objects(await raw.aread())


def message_response(data: dict[str, Any], request_id: str | None = None,
                     ratelimit: dict[str, str] | None = None) -> ChatResponse:
    """A Messages reply (online, or a succeeded batch result's ``message``) as a :class:`ChatResponse`;
    ``request_id`` falls back to the message id. Missing or mistyped fields read as empty."""
    blocks = data.get("content")
    blocks = blocks if isinstance(blocks, list) else []
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return ChatResponse(
        text="".join(b["text"] for b in blocks
                     if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)),
        input_tokens=as_count(usage.get("input_tokens")),
        output_tokens=as_count(usage.get("output_tokens")),
        request_id=request_id or as_text(data.get("id")),
        finish_reason=as_text(data.get("stop_reason")),
        model=as_text(data.get("model")),
        ratelimit_headers=ratelimit or {},
    )


def batch_request(custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """One entry of a Message Batch's ``requests``."""
    return {"custom_id": custom_id, "params": params}


def batch_line_result(line: dict[str, Any]) -> BatchResult | None:
    """One line of a Message Batch's results as a result; None without a custom id.

    ``{"custom_id", "result": {"type": "succeeded", "message"} | {"type": "errored", "error":
    {"type": "error", "error": {"type", "message"}, "request_id"}} | {"type": "expired"} |
    {"type": "canceled"}}``.
    """
    custom_id = as_text(line.get("custom_id"))
    if custom_id is None:
        return None
    result = line.get("result")
    result = result if isinstance(result, dict) else {}
    kind = as_text(result.get("type"))
    if kind in ("expired", "canceled"):
        return BatchResult(custom_id, unfinished=True)
    if kind == "succeeded":
        message = result.get("message")
        if isinstance(message, dict):
            return BatchResult(custom_id, response=message_response(message))
        return BatchResult(custom_id, error=item_error("invalid_response", "a succeeded result without a message"))
    if kind != "errored":
        return BatchResult(custom_id, error=item_error("invalid_response", f"a result of unknown type {kind!r}"))
    envelope = result.get("error")
    envelope = envelope if isinstance(envelope, dict) else {}
    detail = envelope.get("error")
    detail = detail if isinstance(detail, dict) else envelope  # the error object itself, unwrapped
    error_type = as_text(detail.get("type")) or "api_error"
    message = as_text(detail.get("message")) or error_type
    return BatchResult(custom_id, error=item_error(error_type, message, None, as_text(envelope.get("request_id"))))


def batch_info(batch: Any) -> BatchInfo:
    """An SDK ``MessageBatch`` (or its JSON object) as a :class:`BatchInfo`."""
    status = as_text(field_of(batch, "processing_status")) or "unknown"
    counts = field_of(batch, "request_counts")
    succeeded, failed, processing, expired, canceled = (
        as_count(field_of(counts, name)) for name in ("succeeded", "errored", "processing", "expired", "canceled"))
    return BatchInfo(
        id=as_text(field_of(batch, "id")) or "",
        status=status,
        ended=status == "ended",
        counts=BatchCounts(total=succeeded + failed + processing + expired + canceled, succeeded=succeeded,
                           failed=failed, processing=processing, expired=expired, canceled=canceled),
        created_at=unix_seconds(field_of(batch, "created_at")),
        metadata={},
    )
