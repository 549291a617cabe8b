"""Anthropic Messages through ``anthropic.AsyncAnthropic``."""

from __future__ import annotations

import os
from typing import Any

from ..errors import UsageError
from .base import (
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    Provider,
    aiohttp_client,
    classify_sdk_error,
    parse_raw,
    ratelimit_headers,
)


class AnthropicProvider(Provider):
    """``anthropic/<model>``. Honours ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``; ``max_retries=0``."""

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
        import anthropic

        self.model = model
        self.api_model = api_model
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key and not os.environ.get("ANTHROPIC_AUTH_TOKEN"):
            raise UsageError(f"--model {model}: ANTHROPIC_API_KEY is not set. Export it and run again.")
        base = base_url or os.environ.get("ANTHROPIC_BASE_URL")
        self.base_url = base
        kwargs: dict[str, Any] = {"max_retries": 0, "timeout": timeout}
        if key:
            kwargs["api_key"] = key
        if base:
            kwargs["base_url"] = base
        http_client = aiohttp_client(anthropic, concurrency)  # see aiohttp_client: less CPU per request
        if http_client is not None:
            kwargs["http_client"] = http_client
        self._client = anthropic.AsyncAnthropic(**kwargs)
        self._sdk = anthropic

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
        raw = await self._client.messages.with_raw_response.create(**kwargs)
        resp = await parse_raw(raw)
        text = "".join(getattr(b, "text", "") for b in resp.content if getattr(b, "type", None) == "text")
        return ChatResponse(
            text=text,
            input_tokens=int(resp.usage.input_tokens or 0),
            output_tokens=int(resp.usage.output_tokens or 0),
            request_id=getattr(resp, "_request_id", None) or resp.id,
            finish_reason=resp.stop_reason,
            model=resp.model,
            ratelimit_headers=ratelimit_headers(raw.headers),
        )

    def classify(self, exc: BaseException) -> ErrorInfo:
        return classify_sdk_error(exc, self._sdk)

    async def aclose(self) -> None:
        await self._client.close()
