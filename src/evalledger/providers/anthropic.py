"""Anthropic Messages through ``anthropic.AsyncAnthropic``."""

from __future__ import annotations

import os
from typing import Any

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


class AnthropicProvider(SDKProvider):
    """``anthropic/<model>``. Honours ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``; ``max_retries=0``.
    The client is built when requests are about to be sent (see :class:`SDKProvider`); the key is checked here."""

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

    async def complete(self, request: ChatRequest) -> ChatResponse:
        # The Messages API takes system prompts apart from the turns.
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        turns = [m for m in request.messages if m["role"] != "system"]
        kwargs: dict[str, Any] = {
            "model": self.api_model,
            "messages": turns,
            "max_tokens": request.max_tokens,
        }
        # No temperature/top_p: API version 2026-10-21 rejects them (HTTP 400, even at defaults)
        # and SDK 2.x no longer takes them. RunConfig refuses non-default values for anthropic/.
        if system:
            kwargs["system"] = system
        data, raw = await post_json(self._client, self._sdk, "/v1/messages", kwargs)
        blocks = data.get("content")
        blocks = blocks if isinstance(blocks, list) else []
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return ChatResponse(
            text="".join(b["text"] for b in blocks
                         if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)),
            input_tokens=as_count(usage.get("input_tokens")),
            output_tokens=as_count(usage.get("output_tokens")),
            request_id=raw.headers.get("request-id") or as_text(data.get("id")),
            finish_reason=as_text(data.get("stop_reason")),
            model=as_text(data.get("model")),
            ratelimit_headers=ratelimit_headers(raw.headers),
        )
