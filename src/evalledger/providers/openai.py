"""OpenAI Chat Completions through ``openai.AsyncOpenAI``; also any OpenAI-compatible server."""

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


class OpenAIProvider(SDKProvider):
    """``openai/<model>``, or an OpenAI-compatible server (vLLM, Ollama, llama.cpp) via ``base_url``.

    The client honours ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` as the SDK does, and is built
    with ``max_retries=0``: the runner's retry policy is the only retry loop. It is built when
    requests are about to be sent (see :class:`SDKProvider`); the key is checked here.
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


def message_text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of a list of content parts (some
    OpenAI-compatible servers answer that way); anything else is no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
