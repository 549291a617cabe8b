"""OpenAI Chat Completions through ``openai.AsyncOpenAI``; also any OpenAI-compatible server."""

from __future__ import annotations

import os
from typing import Any

from evalledger.errors import UsageError
from evalledger.providers.base import (
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    Provider,
    aiohttp_client,
    as_count,
    as_text,
    classify_sdk_error,
    post_json,
    ratelimit_headers,
)


class OpenAIProvider(Provider):
    """``openai/<model>``, or an OpenAI-compatible server (vLLM, Ollama, llama.cpp) via ``base_url``.

    The client honours ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` as the SDK does, and is built
    with ``max_retries=0``: the runner's retry policy is the only retry loop.
    """

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
        import openai  # the SDK (~1 s to import): only once a provider is built

        self.model = model
        self.api_model = api_model
        self.send_seed = send_seed
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
        http_client = aiohttp_client(openai, concurrency)
        extra: dict[str, Any] = {"http_client": http_client} if http_client is not None else {}
        self._client = openai.AsyncOpenAI(api_key=key, base_url=base, max_retries=0, timeout=timeout, **extra)
        self._sdk = openai

    async def complete(self, request: ChatRequest) -> ChatResponse:
        kwargs: dict[str, Any] = {
            "model": self.api_model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.seed is not None and self.send_seed:
            kwargs["seed"] = request.seed
        # The security option is the one chat.completions.create passes (bearer auth only).
        data, raw = await post_json(self._client, self._sdk, "/chat/completions", kwargs,
                                    {"security": {"bearer_auth": True}})
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = choice.get("message")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return ChatResponse(
            text=message_text(message.get("content") if isinstance(message, dict) else None),
            input_tokens=as_count(usage.get("prompt_tokens")),
            output_tokens=as_count(usage.get("completion_tokens")),
            request_id=raw.headers.get("x-request-id") or as_text(data.get("id")),
            finish_reason=as_text(choice.get("finish_reason")),
            model=as_text(data.get("model")),
            ratelimit_headers=ratelimit_headers(raw.headers),
        )

    def classify(self, exc: BaseException) -> ErrorInfo:
        return classify_sdk_error(exc, self._sdk)

    async def aclose(self) -> None:
        await self._client.close()


def message_text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of a list of content parts (some
    OpenAI-compatible servers answer that way); anything else is no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
