"""OpenAI Chat Completions through ``openai.AsyncOpenAI``, online and through the Batch API; also any
OpenAI-compatible server (online only)."""

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
    check_metadata,
    created_since,
    field_of,
    item_error,
    jsonl_objects,
    string_dict,
    unix_seconds,
)

#: The endpoint every batch line posts to.
CHAT_COMPLETIONS_URL = "/v1/chat/completions"
#: A batch's final states: its output and error files are written and nothing changes any more.
ENDED_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
#: Error codes of requests the batch never ran: nothing was paid, the run sends them again.
UNFINISHED_CODES = frozenset({"batch_expired", "batch_cancelled"})
#: Batches a page when listing (the API's most).
LIST_PAGE = 100


class OpenAIProvider(SDKProvider, BatchAPI):
    """``openai/<model>``, or an OpenAI-compatible server (vLLM, Ollama, llama.cpp) via ``base_url``.

    The client honours ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` as the SDK does, and is built
    with ``max_retries=0``: the runner's retry policy is the only retry loop. It is built when
    requests are about to be sent (see :class:`SDKProvider`); the key is checked here.
    """

    #: 50,000 requests and 200 MB an input file (counted in decimal megabytes, to stay inside).
    batch_limits = BatchLimits(max_requests=50_000, max_bytes=200_000_000)

    def __init__(
        self,
        model: str,
        api_model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        send_seed: bool = True,
        concurrency: int = 8,
    ) -> None:
        self.model = model
        self.api_model = api_model
        self.send_seed = send_seed
        self.timeout = timeout
        self.concurrency = concurrency
        key = api_key or os.environ.get("OPENAI_API_KEY")
        base = base_url or os.environ.get("OPENAI_BASE_URL")
        if not key:
            if base:
                key = "EMPTY"  # self-hosted servers usually ignore the key, but the SDK needs one
            else:
                raise UsageError(
                    f"--model {model}: OPENAI_API_KEY is not set. Export it, or point --base-url at an "
                    "OpenAI-compatible server (vLLM, Ollama), or use --model local/smollm2 (no key needed)."
                )
        self.base_url = base
        self._api_key = key

    @property
    def _sdk(self) -> Any:
        import openai  # the SDK (~0.5 s to import): only when requests are to be sent

        return openai

    def build_client(self, sdk: Any, http_client: Any | None) -> Any:
        extra: dict[str, Any] = {"http_client": http_client} if http_client is not None else {}
        return sdk.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout,
                               **extra)

    @property
    def batch_available(self) -> bool:
        """Only OpenAI itself (``openai/``) has the Batch API; compatible servers do not."""
        return self.model.startswith("openai/")

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat completion body for ``request``: what an online call posts and a batch line holds."""
        body: dict[str, Any] = {
            "model": self.api_model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.seed is not None and self.send_seed:
            body["seed"] = request.seed
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        # The security option is the one chat.completions.create passes (bearer auth only).
        data, raw = await post_json(self._client, self._sdk, "/chat/completions", self.request_body(request),
                                    {"security": {"bearer_auth": True}})
        return chat_completion_response(data, raw.headers.get("x-request-id"), ratelimit_headers(raw.headers))

    # ---- the Batch API ------------------------------------------------------------------------

    def batch_item_bytes(self, item: BatchItem) -> int:
        return len(batch_line(item.custom_id, self.request_body(item.request)))

    async def create_batch(self, items: Sequence[BatchItem], metadata: Mapping[str, str]) -> BatchInfo:
        """Upload the items as one JSONL file (``purpose=batch``), then create the batch from it."""
        lines = [batch_line(item.custom_id, self.request_body(item.request)) for item in items]
        check_batch(items, map(len, lines), self.batch_limits)
        pairs = check_metadata(metadata)
        client = self._client
        upload = await client.files.create(file=(f"evalledger-{items[0].custom_id}.jsonl", b"".join(lines),
                                                 "application/jsonl"), purpose="batch")
        batch = await client.batches.create(input_file_id=upload.id, endpoint=CHAT_COMPLETIONS_URL,
                                            completion_window="24h", metadata=pairs)
        return batch_info(batch)

    async def retrieve_batch(self, batch_id: str) -> BatchInfo:
        return batch_info(await self._client.batches.retrieve(batch_id))

    async def list_batches(self, created_after: float) -> list[BatchInfo]:
        return await created_since(self._client.batches.list(limit=LIST_PAGE), batch_info, created_after)

    async def batch_results(self, info: BatchInfo) -> list[BatchResult]:
        """The output file's lines and the error file's (a ``failed`` batch has neither)."""
        batch = await self._client.batches.retrieve(info.id)
        fresh = batch_info(batch)
        if not fresh.ended:
            raise ValueError(f"batch {info.id} is {fresh.status}: its results are read once it has ended")
        results: dict[str, BatchResult] = {}
        for file_id in (field_of(batch, "output_file_id"), field_of(batch, "error_file_id")):
            if not isinstance(file_id, str) or not file_id:
                continue
            for line in jsonl_objects(await self._file_bytes(file_id)):
                result = batch_line_result(line)
                # A success is never replaced by a line of the error file for the same id.
                if result is not None and (result.custom_id not in results or result.response is not None):
                    results[result.custom_id] = result
        return list(results.values())

    async def batch_custom_ids(self, info: BatchInfo) -> frozenset[str] | None:
        """The custom ids of the batch's input file."""
        file_id = field_of(await self._client.batches.retrieve(info.id), "input_file_id")
        if not isinstance(file_id, str) or not file_id:
            return None
        lines = jsonl_objects(await self._file_bytes(file_id))
        return frozenset(cid for cid in (as_text(line.get("custom_id")) for line in lines) if cid is not None)

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        return batch_info(await self._client.batches.cancel(batch_id))

    async def _file_bytes(self, file_id: str) -> bytes:
        content = await self._client.files.content(file_id)
        return bytes(content.content)


def chat_completion_response(data: dict[str, Any], request_id: str | None = None,
                             ratelimit: dict[str, str] | None = None) -> ChatResponse:
    """A chat completion object (an online reply, or a batch output line's ``response.body``) as a
    :class:`ChatResponse`; ``request_id`` falls back to the completion's own id. Missing or
    mistyped fields read as empty, never as an exception."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return ChatResponse(
        text=message_text(message.get("content") if isinstance(message, dict) else None),
        input_tokens=as_count(usage.get("prompt_tokens")),
        output_tokens=as_count(usage.get("completion_tokens")),
        request_id=request_id or as_text(data.get("id")),
        finish_reason=as_text(choice.get("finish_reason")),
        model=as_text(data.get("model")),
        ratelimit_headers=ratelimit or {},
    )


def batch_line(custom_id: str, body: dict[str, Any]) -> bytes:
    """One request of a batch input file, newline included."""
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT_COMPLETIONS_URL, "body": body}
    return orjson.dumps(line) + b"\n"


def batch_line_result(line: dict[str, Any]) -> BatchResult | None:
    """One line of a batch's output or error file as a result; None without a custom id.

    ``{"custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code",
    "message"} | null}``: a 2xx response is a success, any other status a failed request, and an
    error without a response is either an unfinished request (``batch_expired``,
    ``batch_cancelled``) or a failed one.
    """
    custom_id = as_text(line.get("custom_id"))
    if custom_id is None:
        return None
    response = line.get("response")
    response = response if isinstance(response, dict) else {}
    error = line.get("error")
    error = error if isinstance(error, dict) else None
    status = response.get("status_code")
    status = status if type(status) is int else None
    body = response.get("body")
    body = body if isinstance(body, dict) else {}
    request_id = as_text(response.get("request_id"))
    if error is not None and as_text(error.get("code")) in UNFINISHED_CODES:
        return BatchResult(custom_id, unfinished=True)
    if status is not None and 200 <= status < 300 and error is None:
        if not body:
            return BatchResult(custom_id, error=item_error("invalid_response", f"HTTP {status}: no body",
                                                           status, request_id))
        return BatchResult(custom_id, response=chat_completion_response(body, request_id))
    detail = body.get("error")
    detail = detail if isinstance(detail, dict) else (error or {})
    error_type = as_text(detail.get("type")) or as_text(detail.get("code")) or "batch_request_error"
    message = as_text(detail.get("message")) or error_type
    if status is not None:
        message = f"HTTP {status}: {message}"
    return BatchResult(custom_id, error=item_error(error_type, message, status, request_id))


def batch_info(batch: Any) -> BatchInfo:
    """An SDK ``Batch`` (or its JSON object) as a :class:`BatchInfo`."""
    status = as_text(field_of(batch, "status")) or "unknown"
    ended = status in ENDED_STATUSES
    counts = field_of(batch, "request_counts")
    total = as_count(field_of(counts, "total"))
    succeeded = as_count(field_of(counts, "completed"))
    failed = as_count(field_of(counts, "failed"))
    rest = max(total - succeeded - failed, 0)
    errors = field_of(field_of(batch, "errors"), "data")
    messages = []
    for e in errors if isinstance(errors, list) else []:
        text = as_text(field_of(e, "message")) or as_text(field_of(e, "code"))
        line = field_of(e, "line")
        if text:
            messages.append(f"{text} (line {line})" if type(line) is int else text)
    return BatchInfo(
        id=as_text(field_of(batch, "id")) or "",
        status=status,
        ended=ended,
        counts=BatchCounts(total=total, succeeded=succeeded, failed=failed,
                           processing=0 if ended else rest,
                           expired=rest if status == "expired" else 0,
                           canceled=rest if status == "cancelled" else 0),
        created_at=unix_seconds(field_of(batch, "created_at")),
        metadata=string_dict(field_of(batch, "metadata")),
        error="; ".join(messages) or None,
    )

def message_text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of a list of content parts (some
    OpenAI-compatible servers answer that way); anything else is no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
